"""The teacher's fusion attention Ω_{t-1}, computed once per example and reused every epoch.

The teacher M_{t-1} never changes during distillation and runs in eval mode (fusion dropout
sits before the softmax, so a train-mode teacher would be noisy). Its attention on a fixed,
pre-tokenised example is therefore a constant: caching it (fp16, real tokens only) removes the
teacher forward pass from every epoch after the first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch

from models.device import autocast
from models.fusion_attention import FusionAttentionRecorder
from models.pairs import Batch, EncodedPairs, batches
from models.relevance import RelevanceModel

log = logging.getLogger(__name__)


@contextlib.contextmanager
def as_teacher(model: RelevanceModel, setup: str) -> Iterator[str]:
    """Route through M_{t-1}'s ``setup`` in eval mode (yields its head), then give the student back its mode and
    routing: the teacher runs inside the student's training loop."""
    net = model.net
    was_training, previous = net.training, net.active_adapters
    net.eval()
    try:
        yield model.activate(setup)
    finally:
        net.train(was_training)
        if previous is not None:
            net.set_active_adapters(previous)


class TeacherPredictions:
    """M_{t-1}'s relevance logits (batch, 2), computed once per example and reused every epoch.

    ``setup`` is the teacher's fusion, or its only adapter at t = 2. Output distillation needs these on the same
    batches L_AD sees; like Ω they are constants of a fixed example, so caching them costs two floats an example.
    """

    def __init__(self, model: RelevanceModel, setup: str, precision: str = "auto") -> None:
        self.model = model
        self.setup = setup
        self.precision = precision
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def compute(self, batch: Batch) -> torch.Tensor:
        with as_teacher(self.model, self.setup) as head, autocast(self.model.device, self.precision):
            return self.model.logits(batch, head).float()

    def build_cache(self, data: Sequence[EncodedPairs], batch_size: int) -> None:
        pad = self.model.tokenizer.pad_token_id
        for split in data:
            logits = torch.empty(len(split), 2)
            for batch in batches(split, batch_size, pad, shuffle=False):
                logits[batch.index] = self.compute(batch.to(self.model.device)).cpu()
            self._cache[split.source] = logits
            log.info("teacher predictions cached for %d examples of %s", len(split), split.source)

    def for_batch(self, batch: Batch) -> torch.Tensor:
        cached = self._cache.get(batch.source)
        if cached is None:
            return self.compute(batch)
        return cached[batch.index.cpu()].to(batch.input_ids.device)


class TeacherAttention:
    """Ω_{t-1} per fusion layer for a batch, shaped (batch, tokens, t-1).

    ``teacher_fusion`` is None when M_{t-1} is a single adapter (t = 2): its "fusion" puts all
    attention on that adapter, Ω = 1, and no forward pass is needed.
    """

    def __init__(self, model: RelevanceModel, teacher_fusion: str | None, num_layers: int,
                 precision: str = "auto") -> None:
        self.model = model
        self.teacher_fusion = teacher_fusion
        self.num_layers = num_layers
        self.precision = precision
        self.num_old = len(model.fusion_block(teacher_fusion).children) if teacher_fusion else 1
        self.recorder = FusionAttentionRecorder(model.net, teacher_fusion) if teacher_fusion else None
        self._cache: dict[str, list[torch.Tensor]] = {}

    @torch.no_grad()
    def compute(self, batch: Batch) -> list[torch.Tensor]:
        """Run the teacher (eval mode, no gradient), then give the student back its mode and routing."""
        if self.recorder is None:
            ones = torch.ones(*batch.input_ids.shape, 1, device=batch.input_ids.device)
            return [ones for _ in range(self.num_layers)]
        with as_teacher(self.model, self.teacher_fusion) as head, self.recorder.record() as scores, \
                autocast(self.model.device, self.precision):
            self.model.logits(batch, head)
        return [s.float() for s in scores]

    def build_cache(self, data: Sequence[EncodedPairs], batch_size: int) -> None:
        """Ω for every example of ``data``, stored per source as (layers, real tokens, t-1) fp16."""
        if self.recorder is None:
            return
        pad = self.model.tokenizer.pad_token_id
        for split in data:
            rows: list[torch.Tensor | None] = [None] * len(split)
            for batch in batches(split, batch_size, pad, shuffle=False):
                batch = batch.to(self.model.device)
                layers = torch.stack(self.compute(batch), dim=1).to(torch.float16).cpu()  # B, layers, L, k
                lengths = batch.attention_mask.sum(-1).cpu()
                for row, (index, length) in enumerate(zip(batch.index.tolist(), lengths.tolist(), strict=True)):
                    rows[index] = layers[row, :, :length].clone()
            self._cache[split.source] = rows
            log.info("teacher attention cached for %d examples of %s", len(split), split.source)

    def cached(self, source: str) -> bool:
        return source in self._cache

    def for_batch(self, batch: Batch) -> list[torch.Tensor]:
        """Ω for ``batch``, from the cache when this source was cached, else computed now."""
        if self.recorder is None or not self.cached(batch.source):
            return self.compute(batch)
        rows = self._cache[batch.source]
        width = batch.input_ids.shape[1]
        out = torch.full((len(batch), self.num_layers, width, self.num_old), 1.0 / self.num_old)
        for row, index in enumerate(batch.index.tolist()):
            cached = rows[index]
            out[row, :, : cached.shape[1]] = cached.float()
        out = out.to(batch.input_ids.device)
        return list(out.unbind(dim=1))
