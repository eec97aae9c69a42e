"""The paper's method and the references built on the same RelevanceModel.

- ``ad``: language adapter + attention-distilled AdapterFusion (the paper). Its ablations are the same
  class under another learner configuration (``models.methods.catalog.METHOD_PRESETS``): ``ad-no-translation``
  (paper §4.2: no translated sets, D_t batches get CE + L_AD) and ``fusion-no-distill`` (λ = 0).
- ``adapter-only``: one adapter + head per marketplace and no fusion: no forgetting by construction, no
  cross-lingual transfer.
- ``joint-fusion``: adapters trained once each, plus one fusion trained from scratch on D_1..D_t together
  at every arrival. It keeps old training data, so it is an upper reference, not a continual method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.fusion_attention import fusion_attention_profile
from models.methods.adapter_bank import SHARED
from models.methods.protocol import ContinualMethod, MarketplaceSplits, concat_pairs
from models.pairs import Pairs, TextFormat
from models.relevance import RelevanceModel
from models.stages import StageReport, distill_fusion, train_language_adapter

if TYPE_CHECKING:
    from models.config import LearnerConfig
    from models.encoders import EncoderRef


def learn_marketplace(
    model: RelevanceModel | None,
    encoder: EncoderRef,
    data: MarketplaceSplits,
    translated: Sequence[Pairs],
    cfg: LearnerConfig,
    *,
    kept_valid: Mapping[str, Pairs] | None = None,
    checkpoint_dir: Path | None = None,
    train_adapter: Callable[..., StageReport] = train_language_adapter,
) -> tuple[RelevanceModel, list[StageReport]]:
    """One arrival: M_{t-1} (or nothing) + D_t (+ T_1..T_{t-1}) -> M_t. ``model`` is modified in place.

    ``kept_valid``: the old marketplaces' validation sets (for ``early_stopping = "kept"``); ``train_adapter``
    is stage 2 (the benchmark passes an adapter bank that reuses identical adapters)."""
    if model is None:
        model = RelevanceModel.create(encoder, text=TextFormat.of(cfg), device=cfg.device)
    ckpt = (lambda name: checkpoint_dir / f"{data.spec.id}-{name}.pt") if checkpoint_dir else (lambda name: None)
    reports = [train_adapter(model, data.spec, data.train, data.valid, cfg, checkpoint=ckpt("adapter"))]
    if len(model.marketplaces) > 1:
        reports.append(distill_fusion(model, data.train, data.valid, translated, cfg, kept_valid=kept_valid,
                                      checkpoint=ckpt("fusion")))
    return model, reports


class _RelevanceMethod(ContinualMethod):
    """Shared state: one growing RelevanceModel and the reports of the latest arrival."""

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines=None) -> None:
        super().__init__(encoder, learner, baselines)
        self.model: RelevanceModel | None = None
        self.last_reports: list[StageReport] = []

    def _model(self) -> RelevanceModel:
        if self.model is None:
            self.model = RelevanceModel.create(self.encoder, text=TextFormat.of(self.learner),
                                               device=self.learner.device)
        return self.model

    def _setup(self, marketplace_id: str) -> str | None:
        """Which adapter setup scores ``marketplace_id``: the fusion (None) unless a method says otherwise."""
        return None

    def predict_proba(self, marketplace_id: str, pairs: Pairs) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(f"{self.name} has learned no marketplace yet")
        return self.model.predict_proba(pairs, setup=self._setup(marketplace_id),
                                        batch_size=self.learner.adapter.eval_batch_size,
                                        precision=self.learner.adapter.precision)

    def own_attention(self, data: MarketplaceSplits) -> float | None:
        if self.model is None or self.model.fusion is None or self._setup(data.spec.id) is not None:
            return None
        return fusion_attention_profile(self.model, {data.spec.id: data.test})[data.spec.id][data.spec.id]

    def trainable_parameters(self) -> int:
        return sum(r.fit.trainable_parameters for r in self.last_reports)

    def total_parameters(self) -> int:
        """The frozen encoder plus every adapter, fusion and head the model holds."""
        return 0 if self.model is None else sum(p.numel() for p in self.model.net.parameters())


class AttentionDistillation(_RelevanceMethod):
    name = "ad"
    description = "language adapter + AdapterFusion with attention distillation on translated data (the paper)"
    uses_translation = True

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines=None) -> None:
        super().__init__(encoder, learner, baselines)
        self.kept_valid: dict[str, Pairs] = {}  # old validation sets: kept like test sets, never trained on

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        self.model, self.last_reports = learn_marketplace(self._model(), self.encoder, data, translated, self.learner,
                                                          kept_valid=dict(self.kept_valid), train_adapter=SHARED.train)
        self.kept_valid[data.spec.id] = data.valid
        return self.last_reports


class AdapterOnly(_RelevanceMethod):
    name = "adapter-only"
    description = "one language adapter + head per marketplace, no fusion; marketplace k is scored by A_k"

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        self.last_reports = [SHARED.train(self._model(), data.spec, data.train, data.valid, self.learner)]
        return self.last_reports

    def _setup(self, marketplace_id: str) -> str | None:
        return marketplace_id


class JointFusion(_RelevanceMethod):
    name = "joint-fusion"
    description = ("reference, not continual: adapters A_1..A_t each trained once on its D_k, plus one fusion "
                   "trained from scratch on D_1..D_t together at every arrival (keeps old training data)")
    breaks_no_replay = True

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines=None) -> None:
        super().__init__(encoder, learner, baselines)
        self.seen: list[MarketplaceSplits] = []

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        model = self._model()
        self.seen.append(data)
        reports = [SHARED.train(model, data.spec, data.train, data.valid, self.learner)]
        if len(self.seen) > 1:
            train = concat_pairs([m.train for m in self.seen])
            valid = concat_pairs([m.valid for m in self.seen])
            report = distill_fusion(model, train, valid, [], self.learner)
            report.details["joint_marketplaces"] = [m.spec.id for m in self.seen]
            reports.append(report)
        self.last_reports = reports
        return reports
