"""How a joint training weighs its marketplaces' losses: uniformly, by DWA, or by GradNorm.

These are the baselines Lu et al. compare asynchronous convergence with, run by the same joint loop
(``models.joint_training``): each sees the per-marketplace losses of a batch and returns their weights.

GradNorm is written here rather than taken from ``gradnorm-pytorch`` (PyPI): that package runs the backward pass
itself (the loop's mixed-precision scaler and micro-batches could not), and it back-propagates its balancing loss
into the network's weights as well, where Chen et al. apply it to the task weights only. Its gradient with respect
to the weights is closed-form (G_i = w_i·‖∇_W L_i‖), so no second-order graph is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class TaskWeighting:
    """Uniform weighting: the joint loss is Σ_t L_t (every marketplace's weight is 1)."""

    def weights(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The weights of this batch's per-marketplace ``losses`` (``present``: which marketplaces have rows)."""
        return torch.ones_like(losses)

    def before_step(self) -> None:
        """Called once per optimiser step, when the network's gradients are complete."""

    def end_window(self, mean_losses: Sequence[float]) -> None:
        """Called after every E steps with each marketplace's mean loss over them (nan: no rows)."""


class DynamicWeightAverage(TaskWeighting):
    """DWA (Liu et al. 2019): λ_k = K·exp(r_k/T) / Σ_i exp(r_i/T), with r_k = L_k(w−1) / L_k(w−2) the ratio of
    marketplace k's mean losses over the last two windows; 1 for every marketplace until two windows exist."""

    def __init__(self, tasks: int, temperature: float) -> None:
        self.temperature = temperature
        self.history: list[list[float]] = []
        self.current = torch.ones(tasks)

    def weights(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.current.to(losses.device)

    def end_window(self, mean_losses: Sequence[float]) -> None:
        self.history.append(list(mean_losses))
        if len(self.history) < 2:
            return
        last, before = self.history[-1], self.history[-2]
        ratios = [a / b if b > 0 and not (math.isnan(a) or math.isnan(b)) else 1.0 for a, b in zip(last, before)]
        self.current = len(ratios) * torch.softmax(torch.tensor(ratios) / self.temperature, dim=0)


class GradNorm(TaskWeighting):
    """GradNorm (Chen et al. 2018): learnt weights w_i that pull each marketplace's gradient norm on the shared
    weights W, G_i = ‖∇_W w_i L_i‖, towards the mean norm times r_i^α (r_i: L_i / L_i(0), relative to the mean
    over marketplaces), by Adam on L_grad = Σ_i |G_i − Ḡ·r_i^α| with the target held constant. After each step the
    weights are renormalised to sum to the number of marketplaces."""

    def __init__(self, tasks: int, shared: torch.nn.Parameter, alpha: float, learning_rate: float) -> None:
        self.shared = shared
        self.alpha = alpha
        self.w = torch.ones(tasks, device=shared.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.w], lr=learning_rate)
        self.initial = torch.full((tasks,), math.nan, device=shared.device)

    def weights(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        idx = [int(i) for i in torch.nonzero(present).flatten()]
        with torch.no_grad():
            unseen = torch.isnan(self.initial) & present
            self.initial[unseen] = losses.detach()[unseen]
        if len(idx) > 1:
            norms = torch.stack([
                torch.autograd.grad(losses[i], self.shared, retain_graph=True)[0].float().norm() for i in idx])
            with torch.no_grad():
                w = self.w[idx]
                g = w * norms
                ratio = losses.detach()[idx] / self.initial[idx].clamp(min=1e-12)
                target = g.mean() * (ratio / ratio.mean()) ** self.alpha
                grad = torch.zeros_like(self.w)
                grad[idx] = torch.sign(g - target) * norms  # d|w_i·n_i − target_i| / dw_i
                self.w.grad = grad if self.w.grad is None else self.w.grad + grad
        return self.w.detach().clone()

    def before_step(self) -> None:
        if self.w.grad is None:
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.w.clamp_(min=1e-3)
            self.w.mul_(len(self.w) / self.w.sum())


def make_weighting(method: str, tasks: int, shared: torch.nn.Parameter, *, dwa_temperature: float,
                   gradnorm_alpha: float, gradnorm_learning_rate: float) -> TaskWeighting:
    """The weighting a joint method uses (async-kd and uniform: uniform)."""
    if method == "dwa":
        return DynamicWeightAverage(tasks, dwa_temperature)
    if method == "gradnorm":
        return GradNorm(tasks, shared, gradnorm_alpha, gradnorm_learning_rate)
    return TaskWeighting()
