"""What the pipeline's steps hand each other: plain, picklable records (Prefect persists them as task results)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageOutput:
    """A training step's result: where its model folder is and what the stage reported."""

    model_dir: str
    report: dict


@dataclass(frozen=True)
class Evaluation:
    """The candidate's ROC-AUC per marketplace on validation (what the gate decides on) and test (reported,
    never used to choose), the new marketplace's adapter-only scores, the fusion attention profile and the raw
    test scores (for ROC curves)."""

    aucs: dict[str, float]
    adapter_auc: float | None
    attention: dict[str, dict[str, float]]
    labels: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    valid_aucs: dict[str, float] = field(default_factory=dict)
    adapter_valid_auc: float | None = None


@dataclass(frozen=True)
class Registration:
    version: str
    alias: str
    passed: bool
    reasons: list[str]
    checks: list[str]
    adapter_version: str | None
