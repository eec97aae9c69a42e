"""Full fine-tuning baselines: sm, seq-ft, EWC, LwF and replay, each a small variation of one step.

- ``sm``: one separately fine-tuned encoder + head per marketplace (no transfer, no forgetting, n models).
- ``seq-ft``: one encoder + head fine-tuned on each marketplace in turn (the forgetting reference).
- ``ewc``: seq-ft + the EWC penalty anchored at the previous marketplaces' optimum.
- ``lwf``: seq-ft + distillation of the previous model's outputs on D_t's inputs.
- ``replay``: seq-ft with a small buffer of old marketplaces' training pairs (keeps old data).

Parameter counts are those of the unpruned model (see :mod:`models.methods.full_model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.methods.full_model import ExtraLoss, FullModel
from models.methods.protocol import ContinualMethod, MarketplaceSplits, concat_pairs, subsample_pairs
from models.methods.regularizers import EWCPenalty, estimate_fisher, lwf_loss
from models.pairs import EncodedPairs, Pairs, TextFormat
from models.stages import StageReport
from models.training import FitResult

if TYPE_CHECKING:
    from models.config import BaselinesConfig, LearnerConfig
    from models.encoders import EncoderRef


def _report(model: FullModel, marketplace: str, result: FitResult, details: dict) -> StageReport:
    """A stage report counting the unpruned model (what production full fine-tuning trains)."""
    full = model.full_parameters()
    fit = dataclasses.replace(result, trainable_parameters=full)
    rows = None if model.vocabulary is None else model.vocabulary.num_embeddings
    return StageReport("full-finetune", marketplace, fit, full,
                       {"held_parameters": model.held_parameters(), "vocabulary_rows": rows, **details})


class _FullFineTuning(ContinualMethod):
    """Shared: building a FullModel with the run's configuration and seed."""

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        self.train_cfg = self.baselines.full

    def _new_model(self) -> FullModel:
        return FullModel(self.encoder, text=TextFormat.of(self.learner), device=self.learner.device,
                         prune_vocabulary=self.baselines.prune_vocabulary)


class SingleMarketplace(_FullFineTuning):
    name = "sm"
    description = "a separate fully fine-tuned encoder + head per marketplace, each scoring its own marketplace"

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        self.models: dict[str, FullModel] = {}
        self.last: str | None = None

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        model = self._new_model()
        model.cover(data.train, data.valid, data.test)
        model.freeze_vocabulary()  # this model only ever scores its own marketplace
        result = model.train(data.train, data.valid, self.train_cfg, seed=self.seed, desc=f"sm[{data.spec.id}]")
        self.models[data.spec.id] = model
        self.last = data.spec.id
        return [_report(model, data.spec.id, result, {})]

    def predict_proba(self, marketplace_id: str, pairs: Pairs) -> np.ndarray:
        if marketplace_id not in self.models:
            raise KeyError(f"sm has no model for marketplace {marketplace_id!r}; it has {sorted(self.models)}")
        return self.models[marketplace_id].predict_proba(pairs, self.train_cfg.eval_batch_size, self.train_cfg.precision)

    def trainable_parameters(self) -> int:
        """The unpruned model's count (every vocabulary row): what full fine-tuning trains in production."""
        return 0 if self.last is None else self.models[self.last].full_parameters()

    def total_parameters(self) -> int:
        return sum(m.full_parameters() for m in self.models.values())


class SequentialFineTuning(_FullFineTuning):
    name = "seq-ft"
    description = "one encoder + head fully fine-tuned on each marketplace in turn"

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        self.model: FullModel | None = None

    # Hooks for the variations; seq-ft itself adds nothing.
    def _vocabulary_grew(self, moved: torch.Tensor | None) -> None:
        """The kept vocabulary grew; ``moved`` gives old rows' new indices."""

    def _training_pairs(self, data: MarketplaceSplits) -> tuple[Pairs, dict]:
        return data.train, {}

    def _extra_loss(self, model: FullModel, train: EncodedPairs) -> ExtraLoss | None:
        return None

    def _learned(self, model: FullModel, data: MarketplaceSplits) -> None:
        """After D_t is learned (EWC's Fisher, replay's buffer)."""

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        if self.model is None:
            self.model = self._new_model()
        model = self.model
        self._vocabulary_grew(model.cover(data.train, data.valid, data.test))
        train, details = self._training_pairs(data)
        encoded = model.encode(train)
        result = model.train(train, data.valid, self.train_cfg, seed=self.seed, desc=f"{self.name}[{data.spec.id}]",
                             extra_loss=self._extra_loss(model, encoded), data=encoded)
        self._learned(model, data)
        return [_report(model, data.spec.id, result, details)]

    def predict_proba(self, marketplace_id: str, pairs: Pairs) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(f"{self.name} has learned no marketplace yet")
        return self.model.predict_proba(pairs, self.train_cfg.eval_batch_size, self.train_cfg.precision)

    def trainable_parameters(self) -> int:
        """The unpruned model's count (every vocabulary row): what full fine-tuning trains in production."""
        return 0 if self.model is None else self.model.full_parameters()

    def total_parameters(self) -> int:
        return self.trainable_parameters()


class ElasticWeightConsolidation(SequentialFineTuning):
    name = "ewc"
    description = "seq-ft + EWC penalty (diagonal Fisher of previous marketplaces, accumulated)"

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        self.penalty = EWCPenalty(self.baselines.ewc_lambda)

    def _embedding_name(self, model: FullModel) -> str | None:
        if model.vocabulary is None:
            return None
        return next(n for n, p in model.named_parameters() if p is model.vocabulary.weight)

    def _vocabulary_grew(self, moved: torch.Tensor | None) -> None:
        assert self.model is not None
        name = self._embedding_name(self.model)
        if moved is not None and name is not None:
            self.penalty.remap_rows(name, moved, self.model.vocabulary.weight)

    def _extra_loss(self, model: FullModel, train: EncodedPairs) -> ExtraLoss | None:
        if not self.penalty.active:
            return None

        def ewc(batch, logits):
            penalty = self.penalty(model.named_parameters())
            return penalty, {"ewc": float(penalty.detach())}

        return ewc

    def _learned(self, model: FullModel, data: MarketplaceSplits) -> None:
        fisher = estimate_fisher(model.net, model.encode(data.train), self.train_cfg.batch_size,
                                 model.tokenizer.pad_token_id, self.baselines.ewc_fisher_examples)
        self.penalty.consolidate(model.named_parameters(), fisher)


class LearningWithoutForgetting(SequentialFineTuning):
    name = "lwf"
    description = "seq-ft + KL to the previous model's softened outputs on D_t inputs (Li & Hoiem 2017)"

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        self.arrivals = 0

    def _extra_loss(self, model: FullModel, train: EncodedPairs) -> ExtraLoss | None:
        if self.arrivals == 0 or self.baselines.lwf_alpha <= 0:
            return None
        # The model has not trained on D_t yet: it is M_{t-1}, frozen in effect, and its outputs on D_t's
        # fixed token sequences are constants, computed once (eval mode: no dropout in the targets).
        previous = model.predict_logits(train, self.train_cfg.eval_batch_size, self.train_cfg.precision)
        alpha, temperature = self.baselines.lwf_alpha, self.baselines.lwf_temperature

        def lwf(batch, logits):
            loss = lwf_loss(logits, previous[batch.index].to(logits.device), temperature)
            return alpha * loss, {"lwf": float(loss.detach())}

        return lwf

    def _learned(self, model: FullModel, data: MarketplaceSplits) -> None:
        self.arrivals += 1


class Replay(SequentialFineTuning):
    name = "replay"
    description = "seq-ft with a buffer of old marketplaces' training pairs mixed into training (keeps old data)"
    breaks_no_replay = True

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        self.buffer: dict[str, Pairs] = {}

    def _training_pairs(self, data: MarketplaceSplits) -> tuple[Pairs, dict]:
        if not self.buffer:
            return data.train, {"replayed_examples": 0}
        replayed = sum(len(p) for p in self.buffer.values())
        return (concat_pairs([data.train, *self.buffer.values()]),
                {"replayed_examples": replayed, "replayed_from": sorted(self.buffer)})

    def _learned(self, model: FullModel, data: MarketplaceSplits) -> None:
        if self.baselines.replay_per_marketplace > 0:
            self.buffer[data.spec.id] = subsample_pairs(data.train, self.baselines.replay_per_marketplace,
                                                        self.seed + len(self.buffer))
