"""The two regularisation baselines' losses: EWC's quadratic penalty and LwF's output distillation.

Kept apart from the method classes so that their defining properties (zero at the anchor, the
penalty's gradient λ·F·(θ − θ*), zero distillation loss when the model has not moved) are tested on the
functions themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from models.losses import relevance_loss
from models.pairs import EncodedPairs, batches

NamedParameters = Iterable[tuple[str, torch.Tensor]]


class EWCPenalty:
    """Elastic Weight Consolidation (Kirkpatrick et al. 2017) with a Fisher accumulated over marketplaces.

    penalty(θ) = λ/2 · Σ_i F_i (θ_i − θ*_i)², where F is the sum of the diagonal Fishers of every previous
    marketplace and θ* the parameters after the latest one (one quadratic anchor, as in online EWC without
    decay, Schwarz et al. 2018): its gradient is λ·F·(θ − θ*).
    """

    def __init__(self, lam: float) -> None:
        self.lam = lam
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return bool(self.fisher) and self.lam > 0

    def consolidate(self, named_params: NamedParameters, fisher: dict[str, torch.Tensor]) -> None:
        """After learning a marketplace: add its Fisher and move the anchor to the current parameters."""
        for name, p in named_params:
            if name not in fisher:
                continue
            self.fisher[name] = self.fisher[name] + fisher[name] if name in self.fisher else fisher[name].clone()
            self.anchor[name] = p.detach().clone()

    def remap_rows(self, name: str, moved: torch.Tensor, current: torch.Tensor) -> None:
        """A table grew (vocabulary pruning): old rows moved to ``moved``; new rows get Fisher 0."""
        if name not in self.fisher:
            return
        fisher = torch.zeros_like(current)
        fisher[moved] = self.fisher[name]
        anchor = current.detach().clone()
        anchor[moved] = self.anchor[name]
        self.fisher[name], self.anchor[name] = fisher, anchor

    def __call__(self, named_params: NamedParameters) -> torch.Tensor:
        total: torch.Tensor | None = None
        for name, p in named_params:
            if name in self.fisher:
                term = (self.fisher[name] * (p.float() - self.anchor[name]) ** 2).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.lam * total


def estimate_fisher(net: torch.nn.Module, data: EncodedPairs, batch_size: int, pad_token_id: int,
                    max_examples: int | None = None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over mini-batches of the squared gradient of the batch-mean CE.

    Mini-batch gradients (not per-example ones) keep the cost at one backward pass per batch on a
    118M-parameter model; they underestimate the per-example Fisher by a roughly constant factor that
    ``ewc_lambda`` absorbs. Eval mode: no dropout noise in the estimate. ``net(batch)`` returns logits.
    """
    was_training = net.training
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(net.parameters()).device
    limit = len(data) if max_examples is None else min(len(data), max_examples)
    n_batches, seen = 0, 0
    net.eval()
    try:
        for batch in batches(data, batch_size, pad_token_id, shuffle=True, seed=0):
            if seen >= limit:
                break
            batch = batch.to(device)
            net.zero_grad(set_to_none=True)
            relevance_loss(net(batch), batch.labels).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().float() ** 2
            n_batches += 1
            seen += len(batch)
    finally:
        net.zero_grad(set_to_none=True)
        net.train(was_training)
    return {n: f / max(n_batches, 1) for n, f in fisher.items()}


def lwf_loss(logits: torch.Tensor, previous_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Learning without Forgetting (Li & Hoiem 2017): T²·KL(p_prev^T ‖ p_cur^T), batch mean.

    The previous model's softened outputs are the target; T² keeps the gradient scale independent of T
    (Hinton et al. 2015). Zero when the current model outputs what the previous one did.
    """
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"LwF temperature must be positive, got {temperature}")
    target = F.log_softmax(previous_logits.float() / t, dim=-1)
    current = F.log_softmax(logits.float() / t, dim=-1)
    return F.kl_div(current, target, reduction="batchmean", log_target=True) * t * t
