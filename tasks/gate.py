"""The promotion gate as a pure function: champion scores and candidate scores in, a verdict out."""

from __future__ import annotations

from collections.abc import Mapping
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
    reasons, checks = [], []
    for mid, before in champion.items():
        if mid == new_marketplace:
            continue  # a replaced marketplace is judged against its adapter, not its old self
        after = candidate.get(mid)
        if after is None:
            reasons.append(f"{mid}: not evaluated")
            continue
        line = (f"{mid}: {on.get(mid, 'validation')} ROC-AUC {after:.4f} vs champion {before:.4f} "
                f"(drop {before - after:+.4f}, max {max_regression})")
        checks.append(line)
        if before - after > max_regression + 1e-9:  # a drop of exactly max_regression is allowed
            reasons.append(line)
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
    reasons, checks = [], []
    for mid, teacher in teachers.items():
        score = student.get(mid)
        if score is None:
            reasons.append(f"{mid}: not evaluated")
            continue
        line = (f"{mid}: validation ROC-AUC student {score:.4f} vs teacher {teacher:.4f} "
                f"(margin {teacher - score:+.4f}, max {margin})")
        checks.append(line)
        if teacher - score > margin + 1e-9:  # a margin of exactly the allowed one passes
            reasons.append(line)
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)
