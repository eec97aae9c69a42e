"""The paper's method, its ablations and its non-sequential reference, all on one RelevanceModel.

- ``ad``: language adapter + attention-distilled AdapterFusion (the paper).
- ``ad-no-translation``: the same without translated sets (paper §4.2: D_t batches get CE + L_AD).
- ``fusion-no-distill``: a fresh fusion per arrival trained with cross-entropy only (λ = 0): what the
  distillation adds.
- ``adapter-only``: one adapter + head per marketplace and no fusion: no forgetting by construction, no
  cross-lingual transfer.
- ``joint-fusion``: adapters trained once each, plus one fusion trained from scratch on D_1..D_t together
  at every arrival. It keeps old training data, so it is an upper reference, not a continual method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from models.baselines.adapter_bank import SHARED
from models.baselines.method import ContinualMethod, MethodConfig, concat_pairs
from models.device import resolve_device
from models.pairs import Pairs
from models.relevance import RelevanceModel
from models.sequence import LearnerConfig, MarketplaceSplits, learn_marketplace
from models.stages import StageReport, distill_fusion

if TYPE_CHECKING:
    from models.encoders import EncoderRef


def _seeded(cfg: LearnerConfig, seed: int) -> LearnerConfig:
    """The learner configuration with the run's seed in both stages (the benchmark varies seeds)."""
    return dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, seed=seed),
                               fusion=dataclasses.replace(cfg.fusion, seed=seed))


class _RelevanceMethod(ContinualMethod):
    """Shared state: one growing RelevanceModel and the reports of the latest arrival."""

    def __init__(self, encoder: EncoderRef, cfg: MethodConfig, seed: int) -> None:
        super().__init__(encoder, cfg, seed)
        self.learner = _seeded(cfg.learner, seed)
        self.model: RelevanceModel | None = None
        self.last_reports: list[StageReport] = []

    def _model(self) -> RelevanceModel:
        if self.model is None:
            self.model = RelevanceModel.create(self.encoder, max_length=self.learner.max_length)
            self.model.net.to(resolve_device(self.learner.device))
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

    def trainable_parameters(self) -> int:
        return sum(r.fit.trainable_parameters for r in self.last_reports)

    def total_parameters(self) -> int:
        """The frozen encoder plus every adapter, fusion and head the model holds."""
        return 0 if self.model is None else sum(p.numel() for p in self.model.net.parameters())


class AttentionDistillation(_RelevanceMethod):
    name = "ad"
    description = "language adapter + AdapterFusion with attention distillation on translated data (the paper)"
    uses_translation = True

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        self.model, self.last_reports = learn_marketplace(self._model(), self.encoder, data, translated, self.learner,
                                                          train_adapter=SHARED.train)
        return self.last_reports


class AttentionDistillationNoTranslation(AttentionDistillation):
    name = "ad-no-translation"
    description = "the paper's method without translations: every D_t batch gets CE + L_AD (paper §4.2)"
    uses_translation = False

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        return super().learn(data, [])


class FusionNoDistillation(AttentionDistillation):
    name = "fusion-no-distill"
    description = "language adapter + a fresh AdapterFusion per arrival trained on D_t with CE only (λ = 0)"
    uses_translation = False

    def __init__(self, encoder: EncoderRef, cfg: MethodConfig, seed: int) -> None:
        super().__init__(encoder, cfg, seed)
        self.learner = dataclasses.replace(self.learner, distill=dataclasses.replace(self.learner.distill, weight=0.0))

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        return super().learn(data, [])


class AdapterOnly(_RelevanceMethod):
    name = "adapter-only"
    description = "one language adapter + head per marketplace, no fusion; marketplace k is scored by A_k"

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        model = self._model()
        self.last_reports = [SHARED.train(model, data.spec, data.train, data.valid, self.learner.adapter)]
        return self.last_reports

    def _setup(self, marketplace_id: str) -> str | None:
        return marketplace_id


class JointFusion(_RelevanceMethod):
    name = "joint-fusion"
    description = ("reference, not continual: adapters A_1..A_t each trained once on its D_k, plus one fusion "
                   "trained from scratch on D_1..D_t together at every arrival (keeps old training data)")
    breaks_no_replay = True

    def __init__(self, encoder: EncoderRef, cfg: MethodConfig, seed: int) -> None:
        super().__init__(encoder, cfg, seed)
        # A fresh fusion and head, cross-entropy only: the non-sequential AdapterFusion of the paper's tables.
        distill = dataclasses.replace(self.learner.distill, weight=0.0, warm_start=False, head_init="random")
        self.learner = dataclasses.replace(self.learner, distill=distill)
        self.seen: list[MarketplaceSplits] = []

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        model = self._model()
        self.seen.append(data)
        reports = [SHARED.train(model, data.spec, data.train, data.valid, self.learner.adapter)]
        if len(self.seen) > 1:
            train = concat_pairs([m.train for m in self.seen])
            valid = concat_pairs([m.valid for m in self.seen])
            report = distill_fusion(model, train, valid, [], self.learner.fusion, self.learner.distill)
            report.details["joint_marketplaces"] = [m.spec.id for m in self.seen]
            reports.append(report)
        self.last_reports = reports
        return reports
