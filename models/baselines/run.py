"""The benchmark protocol: one method, one order of marketplaces, one seed -> R[t][k] and costs.

Every method runs under the same ``models.sequence.run_arrivals`` loop as ``learn_sequence``: learn an
arrival (timed), then score the test set of every marketplace seen so far with ROC-AUC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.baselines.adapter_methods import (
    AdapterOnly,
    AttentionDistillation,
    AttentionDistillationNoTranslation,
    FusionNoDistillation,
    JointFusion,
)
from models.baselines.full_methods import (
    ElasticWeightConsolidation,
    LearningWithoutForgetting,
    Replay,
    SequentialFineTuning,
    SingleMarketplace,
)
from models.baselines.hat import HardAttentionToTask
from models.baselines.method import ContinualMethod, MethodConfig
from models.metrics import ContinualMetrics
from models.sequence import MarketplaceSplits, TranslatedFor, run_arrivals
from models.stages import StageReport

if TYPE_CHECKING:
    from models.encoders import EncoderRef

METHODS: dict[str, type[ContinualMethod]] = {
    cls.name: cls
    for cls in (
        AttentionDistillation,
        AttentionDistillationNoTranslation,
        FusionNoDistillation,
        AdapterOnly,
        JointFusion,
        SingleMarketplace,
        SequentialFineTuning,
        ElasticWeightConsolidation,
        LearningWithoutForgetting,
        HardAttentionToTask,
        Replay,
    )
}


@dataclass
class MethodResult:
    """One run of one method: its ROC-AUC matrix, time per arrival, stage reports and parameter counts."""

    method: str
    seed: int
    order: list[str]
    metrics: ContinualMetrics
    arrival_seconds: list[float]
    reports: list[StageReport]
    trainable_parameters: int  # trained when adding the last marketplace
    total_parameters: int  # held to serve every marketplace after the last arrival
    breaks_no_replay: bool


def method_class(name: str) -> type[ContinualMethod]:
    """The registered class for ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def run_method(
    name: str,
    encoder: EncoderRef,
    marketplaces: Sequence[MarketplaceSplits],
    cfg: MethodConfig,
    translated_for: TranslatedFor | None = None,
    seed: int = 13,
    on_arrival: Callable[[int, dict[str, float]], None] | None = None,
) -> MethodResult:
    """Learn ``marketplaces`` in order with method ``name``; row t of R holds ROC-AUC after arrival t.

    ``translated_for`` is only consulted by methods that use translation (``ad``); ``on_arrival(t,
    scores)`` sees each row as soon as it is measured.
    """
    cls = method_class(name)
    if not marketplaces:
        raise ValueError("run_method needs at least one marketplace")
    method = cls(encoder, cfg, seed)
    result = run_arrivals(marketplaces, method.learn, method.predict_proba,
                          translated_for if cls.uses_translation else None, on_arrival=on_arrival)
    return MethodResult(
        method=name,
        seed=seed,
        order=[m.spec.id for m in marketplaces],
        metrics=result.metrics,
        arrival_seconds=result.arrival_seconds,
        reports=result.reports,
        trainable_parameters=method.trainable_parameters(),
        total_parameters=method.total_parameters(),
        breaks_no_replay=cls.breaks_no_replay,
    )
