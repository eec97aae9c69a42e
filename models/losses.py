"""The attention-distillation loss (paper eq. 9) and the task loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.config import LayerReduction, OmegaMode


def attention_distillation_loss(
    teacher: Sequence[torch.Tensor],
    student: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    omega: OmegaMode,
    reduction: LayerReduction,
    eps: float = 1e-8,
) -> torch.Tensor:
    """L_AD = sum over fusion layers of the token-mean KL(Ω_{t-1} || ω_t).

    ``teacher`` holds Ω_{t-1} (batch, tokens, t-1) per layer and ``student`` holds the new
    fusion's attention (batch, tokens, t) per layer, old adapters first. ω_t is the student's
    attention restricted to the t-1 old adapters: the raw slice as in eq. 9 (``"slice"``: the
    new adapter's share counts as divergence, pulling translated old-language text back to the
    old adapters), or renormalised over the old adapters (``"renorm"``: only their relative
    weighting is distilled). Padding tokens are excluded; each layer's KL is averaged over
    real tokens.
    """
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} fusion layers, student has {len(student)}")
    mask = attention_mask.to(dtype=torch.float32)
    denom = mask.sum().clamp_min(1.0)
    total = torch.zeros((), device=mask.device, dtype=torch.float32)
    for big_omega, small_omega in zip(teacher, student, strict=True):
        old = big_omega.shape[-1]
        if small_omega.shape[-1] < old or small_omega.shape[:2] != big_omega.shape[:2]:
            raise ValueError(
                f"student attention {tuple(small_omega.shape)} does not extend teacher attention {tuple(big_omega.shape)}"
            )
        target = big_omega.to(torch.float32)
        restricted = small_omega[..., :old].to(torch.float32)
        if omega == "renorm":
            restricted = restricted / restricted.sum(-1, keepdim=True).clamp_min(eps)
        kl = (torch.special.xlogy(target, target) - target * torch.log(restricted.clamp_min(eps))).sum(-1)
        total = total + (kl * mask).sum() / denom
    return total / len(teacher) if reduction == "mean" else total


def relevance_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the two relevance classes."""
    return F.cross_entropy(logits.float(), labels)
