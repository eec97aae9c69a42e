"""The promotion gate as a pure function: champion scores and candidate scores in, a verdict out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from models.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]
    checks: list[str]


def promotion_decision(
    champion: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    new_marketplace: str | None,
    adapter_auc: float | None,
    gate: GateConfig,
    measured_on: Mapping[str, str] | None = None,
) -> GateDecision:
    """Promote only if no old marketplace drops more than ``gate.max_regression`` below the champion and the
    new marketplace's fused score beats its adapter-only score by more than ``gate.adapter_margin``.

    ``adapter_auc`` is None when the candidate has no fusion (first arrival): then the model *is*
    the adapter and there is nothing to beat. ``measured_on`` names the split each marketplace's scores come
    from (default: validation), so every check line says what it compared.
    """
    on = dict(measured_on or {})
    max_regression, adapter_margin = gate.max_regression, gate.adapter_margin
    # a replaced marketplace is judged against its adapter, not its old self
    old = {mid: score for mid, score in champion.items() if mid != new_marketplace}
    reasons, checks = _within(old, candidate, max_regression, lambda mid, before, after: (
        f"{mid}: {on.get(mid, 'validation')} ROC-AUC {after:.4f} vs champion {before:.4f} "
        f"(drop {before - after:+.4f}, max {max_regression})"))
    if new_marketplace is not None and adapter_auc is not None:
        fused = candidate[new_marketplace]
        line = (f"{new_marketplace}: {on.get(new_marketplace, 'validation')} ROC-AUC fused {fused:.4f} vs "
                f"adapter-only {adapter_auc:.4f} "
                f"(must exceed it by more than {adapter_margin})")
        checks.append(line)
        if not fused > adapter_auc + adapter_margin:
            reasons.append(line)
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)


def student_decision(teachers: Mapping[str, float], student: Mapping[str, float], margin: float) -> GateDecision:
    """The serving student's gate: every marketplace's validation ROC-AUC within ``margin`` of its teacher's (a
    marketplace the student was not scored on fails)."""
    reasons, checks = _within(teachers, student, margin, lambda mid, teacher, score: (
        f"{mid}: validation ROC-AUC student {score:.4f} vs teacher {teacher:.4f} "
        f"(margin {teacher - score:+.4f}, max {margin})"))
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)


def _within(reference: Mapping[str, float], scores: Mapping[str, float], limit: float,
            describe: Callable[[str, float, float], str]) -> tuple[list[str], list[str]]:
    """Each marketplace's score against its reference: a check line each, and a reason where it falls more than
    ``limit`` below (exactly ``limit`` passes) or was not scored. Both gates compare this way."""
    reasons, checks = [], []
    for mid, before in reference.items():
        after = scores.get(mid)
        if after is None:
            reasons.append(f"{mid}: not evaluated")
            continue
        line = describe(mid, before, after)
        checks.append(line)
        if before - after > limit + 1e-9:
            reasons.append(line)
    return reasons, checks
