"""Marketplaces arriving one after another: stages 2 and 3 per arrival, then the ROC-AUC matrix.

``learn_marketplace`` is one arrival (what a flow runs); ``learn_sequence`` chains arrivals and
evaluates every marketplace seen so far after each one (what ``mcl train-sequence`` and the
benchmark run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.device import resolve_device
from models.fusion_attention import FusionAttentionRecorder
from models.metrics import ContinualMetrics, continual_metrics, roc_auc
from models.pairs import Pairs, batches, encode_pairs
from models.relevance import MarketplaceSpec, RelevanceModel
from models.stages import DistillConfig, StageReport, distill_fusion, train_language_adapter
from models.training import TrainConfig

if TYPE_CHECKING:
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)


@dataclass
class MarketplaceSplits:
    spec: MarketplaceSpec
    train: Pairs
    valid: Pairs
    test: Pairs


@dataclass
class LearnerConfig:
    """Everything one arrival needs besides data (paper: 5 + 5 epochs with early stopping)."""

    adapter: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-3))
    # AdapterFusion keeps every adapter's output and its key/value projections per layer for the backward pass;
    # micro-batches of 16 keep stage 3's peak memory near stage 2's at the same batch size.
    fusion: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4, micro_batch_size=16))
    distill: DistillConfig = field(default_factory=DistillConfig)
    max_length: int = 64
    device: str = "auto"


def learn_marketplace(
    model: RelevanceModel | None,
    encoder: EncoderRef,
    data: MarketplaceSplits,
    translated: Sequence[Pairs],
    cfg: LearnerConfig,
    *,
    checkpoint_dir: Path | None = None,
    train_adapter: Callable[..., StageReport] = train_language_adapter,
) -> tuple[RelevanceModel, list[StageReport]]:
    """One arrival: M_{t-1} (or nothing) + D_t (+ T_1..T_{t-1}) -> M_t. ``model`` is modified in place.

    ``train_adapter`` is stage 2 (the benchmark passes an adapter bank that reuses identical adapters)."""
    if model is None:
        model = RelevanceModel.create(encoder, max_length=cfg.max_length)
        model.net.to(resolve_device(cfg.device))
    ckpt = (lambda name: checkpoint_dir / f"{data.spec.id}-{name}.pt") if checkpoint_dir else (lambda name: None)
    reports = [train_adapter(model, data.spec, data.train, data.valid, cfg.adapter, checkpoint=ckpt("adapter"))]
    if len(model.marketplaces) > 1:
        reports.append(distill_fusion(model, data.train, data.valid, translated, cfg.fusion, cfg.distill,
                                      checkpoint=ckpt("fusion")))
    return model, reports


def evaluate_marketplaces(model: RelevanceModel, tests: dict[str, Pairs], batch_size: int = 64) -> dict[str, float]:
    """ROC-AUC of the model's current setup on each marketplace's test set."""
    return {mid: roc_auc(p.labels, model.predict_proba(p, batch_size=batch_size)) for mid, p in tests.items()}


@torch.no_grad()
def fusion_attention_profile(model: RelevanceModel, tests: dict[str, Pairs], batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Mean fusion attention each adapter receives on each marketplace's text (over layers and real tokens).

    The question a reviewer asks of a fused model: does Spanish text lean on the Spanish adapter?
    """
    if model.fusion is None:
        return {}
    recorder = FusionAttentionRecorder(model.net, model.fusion)
    head = model.activate(None)
    model.net.eval()
    profile = {}
    for mid, pairs in tests.items():
        total = torch.zeros(len(model.adapter_names), dtype=torch.float64)
        count = 0.0
        data = encode_pairs(pairs, model.tokenizer, model.max_length)
        for batch in batches(data, batch_size, model.tokenizer.pad_token_id, shuffle=False):
            batch = batch.to(model.device)
            with recorder.record() as scores:
                model.logits(batch, head)
            mask = batch.attention_mask.unsqueeze(-1).double()
            for layer in scores:
                total += (layer.double() * mask).sum(dim=(0, 1)).cpu()
                count += float(mask.sum())
        profile[mid] = {name: float(v) for name, v in zip(model.adapter_names, total / max(count, 1.0), strict=True)}
    return profile


@dataclass
class SequenceResult:
    model: RelevanceModel
    metrics: ContinualMetrics
    reports: list[StageReport]
    attention: dict[str, dict[str, float]]


TranslatedFor = Callable[[MarketplaceSplits, list[MarketplaceSpec]], Sequence[Pairs]]
Arrive = Callable[[MarketplaceSplits, Sequence[Pairs]], list[StageReport]]
Score = Callable[[str, Pairs], np.ndarray]


@dataclass
class ArrivalsResult:
    """What any continual learner leaves after a sequence: R[t][k], the stage reports, wall time per arrival."""

    metrics: ContinualMetrics
    reports: list[StageReport]
    arrival_seconds: list[float]


def run_arrivals(
    marketplaces: Sequence[MarketplaceSplits],
    arrive: Arrive,
    score: Score,
    translated_for: TranslatedFor | None = None,
    *,
    on_arrival: Callable[[int, dict[str, float]], None] | None = None,
) -> ArrivalsResult:
    """Feed ``marketplaces`` to ``arrive`` in order; after each, fill row t of R on every test set seen so far.

    The one evaluation protocol shared by the method (``learn_sequence``) and every baseline
    (``models.baselines.run_method``), so their matrices are comparable by construction.
    ``score(marketplace_id, pairs)`` returns P(relevant); ``translated_for`` is asked for T_1..T_{t-1}
    from the second arrival on. ``arrival_seconds`` times ``arrive`` alone (not the evaluation), plus the
    original training time of any stage a report says was reused (``details["reused_seconds"]``).
    """
    n = len(marketplaces)
    matrix = np.full((n, n), np.nan)
    reports: list[StageReport] = []
    seconds: list[float] = []
    for t, data in enumerate(marketplaces):
        old = [m.spec for m in marketplaces[:t]]
        translated = list(translated_for(data, old)) if (translated_for and old) else []
        log.info("arrival %d/%d: %s (%s), %d translated sets", t + 1, n, data.spec.id, data.spec.language,
                 len(translated))
        start = time.perf_counter()
        arrived = list(arrive(data, translated))
        reused = sum(r.details.get("reused_seconds", 0.0) for r in arrived)
        seconds.append(time.perf_counter() - start + reused)
        reports.extend(arrived)
        scores = {m.spec.id: roc_auc(m.test.labels, score(m.spec.id, m.test)) for m in marketplaces[: t + 1]}
        for k, m in enumerate(marketplaces[: t + 1]):
            matrix[t, k] = scores[m.spec.id]
        log.info("after %s: %s", data.spec.id, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if on_arrival is not None:
            on_arrival(t, scores)
    return ArrivalsResult(continual_metrics(matrix, [m.spec.id for m in marketplaces]), reports, seconds)


def learn_sequence(
    encoder: EncoderRef,
    marketplaces: Sequence[MarketplaceSplits],
    cfg: LearnerConfig,
    translated_for: TranslatedFor | None = None,
    *,
    on_step: Callable[[int, RelevanceModel, dict[str, float]], None] | None = None,
) -> SequenceResult:
    """Learn ``marketplaces`` in order; R[t][k] is measured after each arrival on every test set seen."""
    state: dict[str, RelevanceModel | None] = {"model": None}

    def arrive(data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        state["model"], step_reports = learn_marketplace(state["model"], encoder, data, translated, cfg)
        return step_reports

    def score(marketplace_id: str, pairs: Pairs) -> np.ndarray:
        assert state["model"] is not None
        return state["model"].predict_proba(pairs, batch_size=64)

    def on_arrival(t: int, scores: dict[str, float]) -> None:
        if on_step is not None:
            on_step(t, state["model"], scores)

    result = run_arrivals(marketplaces, arrive, score, translated_for, on_arrival=on_arrival)
    model = state["model"]
    assert model is not None
    attention = fusion_attention_profile(model, {m.spec.id: m.test for m in marketplaces})
    return SequenceResult(model, result.metrics, result.reports, attention)
