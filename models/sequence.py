"""A sequence of marketplaces learnt by the paper's method, and what a reviewer reads off the result.

``learn_sequence`` is the ``ad`` method (``models.methods.adapter_fusion.AttentionDistillation``) under the
one protocol every baseline runs under (``models.methods.protocol.run_protocol``): what
``mcl train-sequence`` runs. ``fusion_attention_profile`` answers "does Spanish text lean on the Spanish
adapter?" for any fused model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.fusion_attention import fusion_attention_profile
from models.methods.adapter_fusion import AttentionDistillation
from models.methods.protocol import MarketplaceSplits, TranslatedFor, run_protocol
from models.metrics import ContinualMetrics, roc_auc
from models.pairs import Pairs
from models.relevance import RelevanceModel
from models.stages import StageReport

if TYPE_CHECKING:
    from models.config import LearnerConfig
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)


def evaluate_marketplaces(model: RelevanceModel, tests: dict[str, Pairs], batch_size: int = 64) -> dict[str, float]:
    """ROC-AUC of the model's current setup on each marketplace's test set."""
    return {mid: roc_auc(p.labels, model.predict_proba(p, batch_size=batch_size)) for mid, p in tests.items()}


@dataclass
class SequenceResult:
    model: RelevanceModel
    metrics: ContinualMetrics
    reports: list[StageReport]
    attention: dict[str, dict[str, float]]
    arrival_seconds: list[float]


def learn_sequence(
    encoder: EncoderRef,
    marketplaces: Sequence[MarketplaceSplits],
    cfg: LearnerConfig,
    translated_for: TranslatedFor | None = None,
    *,
    on_step: Callable[[int, RelevanceModel, dict[str, float]], None] | None = None,
) -> SequenceResult:
    """Learn ``marketplaces`` in order; R[t][k] is measured after each arrival on every test set seen."""
    method = AttentionDistillation(encoder, cfg)

    def on_arrival(t: int, scores: dict[str, float]) -> None:
        if on_step is not None:
            on_step(t, method.model, scores)

    result = run_protocol(method, marketplaces, translated_for, on_arrival=on_arrival)
    assert method.model is not None
    attention = fusion_attention_profile(method.model, {m.spec.id: m.test for m in marketplaces})
    return SequenceResult(method.model, result.metrics, result.reports, attention, result.arrival_seconds)
