"""The attention-distillation loss (paper eq. 9) and the task loss."""

from __future__ import annotations

import math
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
    new_share: float = 0.0,
) -> torch.Tensor:
    """L_AD = sum over fusion layers of the token-mean KL(Ω_{t-1} || ω_t).

    ``teacher`` holds Ω_{t-1} (batch, tokens, t-1) per layer and ``student`` holds the new
    fusion's attention (batch, tokens, t) per layer, old adapters first. ω_t is the student's
    attention restricted to the t-1 old adapters: the raw slice as in eq. 9 (``"slice"``: the
    new adapter's share counts as divergence, pulling translated old-language text back to the
    old adapters), or renormalised over the old adapters (``"renorm"``: only their relative
    weighting is distilled). Padding tokens are excluded; each layer's KL is averaged over
    real tokens.

    ``new_share`` (ρ, slice only) sets ρ of the target aside for the new adapter: the target becomes
    [(1 − ρ)·Ω_{t-1}, ρ] over all t adapters, so translated old-language text is pulled towards the old
    adapters' weighting with the new adapter at ρ instead of at 0 (ρ = 0 is eq. 9). Eq. 9 at 0 teaches
    the fusion that A_t has no place on any text like the old marketplaces', and the fusion carries that
    to A_t's own language too.
    """
    if not 0.0 <= new_share < 1.0:
        raise ValueError(f"new_share must be in [0, 1), got {new_share}")
    if new_share and omega != "slice":
        raise ValueError("new_share sets the new adapter's part of the raw-slice target; renorm has none")
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
        target = big_omega.to(torch.float32) * (1.0 - new_share)
        restricted = small_omega[..., :old].to(torch.float32)
        if omega == "renorm":
            restricted = restricted / restricted.sum(-1, keepdim=True).clamp_min(eps)
        kl = (torch.special.xlogy(target, target) - target * torch.log(restricted.clamp_min(eps))).sum(-1)
        if new_share:
            new = small_omega[..., old:].to(torch.float32).sum(-1)
            kl = kl + new_share * (math.log(new_share) - torch.log(new.clamp_min(eps)))
        total = total + (kl * mask).sum() / denom
    return total / len(teacher) if reduction == "mean" else total


def relevance_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the two relevance classes."""
    return F.cross_entropy(logits.float(), labels)
