"""Full fine-tuning, shared by sm, seq-ft, EWC, LwF and replay: the whole encoder + a linear head.

The input and the head's read-out follow the learner's text format (``TextFormat``: prefixes, [CLS] or mean
pooling), like the relevance model's heads, so full fine-tuning and the adapter methods are compared on the same
input recipe: a baseline reading [CLS] without e5's prefixes against a learner reading the mean with them would
measure the recipe, not the method.

Vocabulary pruning (``prune_vocabulary=True``). Full fine-tuning of multilingual-e5-small on CPU is
slow mostly because AdamW updates the 250k-row word embedding (96M of its 118M parameters), although a
run only ever looks up the few thousand rows of the tokens in its data. :class:`PrunedEmbedding` keeps
only those rows and maps token ids through a lookup table inside the embedding module, so the encoder
still receives the original ids (position ids, padding handling and everything else are untouched).
The forward pass is identical on every input whose tokens were kept, and training is too: a row that
is never looked up gets an exactly zero gradient, so Adam never moves it, and it adds nothing to the
clipped gradient norm. The kept set grows at each arrival with the tokens of that marketplace's
train/valid/test pairs, new rows starting from the pretrained table — exactly the value an unpruned
model would still hold for a token it has never trained on. A token outside the kept set (only possible
for text the method was never given) is mapped to the tokenizer's unknown token, a documented
departure from the unpruned model for such inputs only.

Parameter counts: :meth:`FullModel.full_parameters` counts the unpruned model (all 250k rows), which
is what full fine-tuning trains and stores in production; the methods report that figure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from models.config import Pooling, TrainConfig
from models.device import autocast, resolve_device
from models.losses import relevance_loss
from models.metrics import roc_auc
from models.pairs import Batch, EncodedPairs, Pairs, TextFormat, batches, pool
from models.relevance import NUM_LABELS
from models.training import FitResult, fit, seed_everything

if TYPE_CHECKING:
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)

ExtraLoss = Callable[[Batch, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


class PrunedEmbedding(nn.Module):
    """A word embedding holding only the rows of ``kept_ids``; any other id reads the unknown token's row.

    ``weight`` row i belongs to token ``kept_ids[i]``; ``lookup`` maps a full-vocabulary id to its row.
    ``padding_idx`` is preserved (the pad row gets no gradient, as in ``nn.Embedding``).
    """

    def __init__(self, full_weight: torch.Tensor, kept_ids: Iterable[int], unk_id: int,
                 padding_idx: int | None) -> None:
        super().__init__()
        self.vocab_size = int(full_weight.shape[0])
        self.unk_id = int(unk_id)
        self.full_padding_idx = padding_idx
        ids = sorted({int(i) for i in kept_ids} | {self.unk_id} | ({padding_idx} if padding_idx is not None else set()))
        kept = torch.tensor(ids, dtype=torch.long)
        self.weight = nn.Parameter(full_weight.detach()[kept.to(full_weight.device)].clone())
        self.register_buffer("kept_ids", kept.to(full_weight.device))
        self.register_buffer("lookup", self._lookup(kept).to(full_weight.device))

    def _lookup(self, kept: torch.Tensor) -> torch.Tensor:
        row_of = {int(t): i for i, t in enumerate(kept.tolist())}
        lookup = torch.full((self.vocab_size,), row_of[self.unk_id], dtype=torch.long)
        lookup[kept] = torch.arange(len(kept))
        return lookup

    @property
    def embedding_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def num_embeddings(self) -> int:
        return int(self.weight.shape[0])

    def padding_row(self) -> int | None:
        return None if self.full_padding_idx is None else int(self.lookup[self.full_padding_idx])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.lookup[input_ids], self.weight, padding_idx=self.padding_row())

    def extend(self, new_ids: Iterable[int], full_weight: torch.Tensor) -> torch.Tensor:
        """Add rows for ``new_ids`` (initialised from ``full_weight``); trained rows keep their values.

        Returns, for each previously kept row, its index in the new table (to re-index per-row state such
        as an EWC Fisher).
        """
        old = self.kept_ids.cpu()
        ids = sorted(set(old.tolist()) | {int(i) for i in new_ids})
        kept = torch.tensor(ids, dtype=torch.long)
        lookup = self._lookup(kept)
        weight = full_weight.detach()[kept].to(self.weight.device, self.weight.dtype).clone()
        moved = lookup[old].to(self.weight.device)
        with torch.no_grad():
            weight[moved] = self.weight.detach()
        self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        self.kept_ids = kept.to(self.weight.device)
        self.lookup = lookup.to(self.weight.device)
        return moved


class EncoderClassifier(nn.Module):
    """Encoder + dropout + a linear head on the last layer's [CLS] token, or its mean over the pair's tokens."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int = NUM_LABELS, pooling: Pooling = "cls") -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        config = encoder.config
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1))
        self.head = nn.Linear(config.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden = self.encoder(**batch.model_inputs()).last_hidden_state
        return self.head(self.dropout(pool(hidden, batch.attention_mask, self.pooling)))


def load_encoder(path: str) -> PreTrainedModel:
    """The bare encoder (no pooler: the head reads [CLS], and the embedded encoders ship none)."""
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:  # architectures without a pooler option
        return AutoModel.from_pretrained(path)


class FullModel:
    """One fully fine-tuned classifier with its tokenizer, optional pruned vocabulary and training step."""

    def __init__(self, encoder: EncoderRef, *, text: TextFormat, device: str = "auto",
                 prune_vocabulary: bool = True) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(encoder.path))
        self.text = text
        base = load_encoder(str(encoder.path))
        self.net = EncoderClassifier(base, pooling=text.pooling)
        self.vocabulary: PrunedEmbedding | None = None
        self._pretrained_rows: torch.Tensor | None = None
        if prune_vocabulary:
            full = base.get_input_embeddings()
            self._pretrained_rows = full.weight.detach()  # the original table, kept (not copied) to grow from
            self.vocabulary = PrunedEmbedding(self._pretrained_rows, [], self.unk_id(), full.padding_idx)
            base.set_input_embeddings(self.vocabulary)
        self.net.to(resolve_device(device))
        self._hidden = int(base.config.hidden_size)
        self._full_vocab = int(base.config.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def unk_id(self) -> int:
        unk = self.tokenizer.unk_token_id
        if unk is None:
            raise ValueError("vocabulary pruning needs a tokenizer with an unknown token; use prune_vocabulary=False")
        return int(unk)

    # ------------------------------------------------------------ vocabulary
    def cover(self, *splits: Pairs) -> torch.Tensor | None:
        """Keep the embedding rows of every token in ``splits`` (no-op without pruning).

        Returns the new row index of each previously kept row (None without pruning).
        """
        if self.vocabulary is None:
            return None
        if self._pretrained_rows is None:
            raise RuntimeError("this model's vocabulary was frozen; it cannot cover new text")
        ids: set[int] = set(self.tokenizer.all_special_ids)
        for pairs in splits:
            for row in self.encode(pairs).input_ids:
                ids.update(row)
        moved = self.vocabulary.extend(ids, self._pretrained_rows)
        log.debug("vocabulary: %d of %d rows kept", self.vocabulary.num_embeddings, self._full_vocab)
        return moved

    def freeze_vocabulary(self) -> None:
        """Drop the pretrained table (memory): the model will never cover new text again."""
        self._pretrained_rows = None

    # ------------------------------------------------------------ parameters
    def parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.net.named_parameters())

    def held_parameters(self) -> int:
        """Parameters actually held (and trained) here: the pruned count."""
        return sum(p.numel() for p in self.net.parameters())

    def full_parameters(self) -> int:
        """Parameters of the unpruned model: what full fine-tuning trains and stores in production."""
        pruned = 0 if self.vocabulary is None else (self._full_vocab - self.vocabulary.num_embeddings) * self._hidden
        return self.held_parameters() + pruned

    # ------------------------------------------------------------- inference
    def encode(self, pairs: Pairs) -> EncodedPairs:
        return self.text.encode(pairs, self.tokenizer)

    @torch.no_grad()
    def predict_logits(self, data: EncodedPairs, batch_size: int = 64, precision: str = "auto") -> torch.Tensor:
        """Logits (float32, CPU) of every row of ``data`` in input order, in eval mode."""
        was_training = self.net.training
        self.net.eval()
        out = torch.empty(len(data), NUM_LABELS, dtype=torch.float32)
        try:
            for batch in batches(data, batch_size, self.tokenizer.pad_token_id, shuffle=False):
                with autocast(self.device, precision):
                    logits = self.net(batch.to(self.device))
                out[batch.index] = logits.float().cpu()
        finally:
            self.net.train(was_training)
        return out

    def predict_proba(self, pairs: Pairs, batch_size: int = 64, precision: str = "auto") -> np.ndarray:
        logits = self.predict_logits(self.encode(pairs), batch_size, precision)
        return torch.softmax(logits, dim=-1)[:, 1].numpy()

    # -------------------------------------------------------------- training
    def train(self, train: Pairs, valid: Pairs, cfg: TrainConfig, *, seed: int, desc: str,
              extra_loss: ExtraLoss | None = None, data: EncodedPairs | None = None) -> FitResult:
        """Fine-tune everything on ``train`` with cross-entropy (+ ``extra_loss(batch, logits)``) via ``fit``.

        ``data`` may pass ``train`` already encoded (LwF looks its cached outputs up by row index).
        """
        seed_everything(seed)
        data = data if data is not None else self.encode(train)
        params = [p for p in self.net.parameters()]
        for p in params:
            p.requires_grad_(True)
        pad = self.tokenizer.pad_token_id

        def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
            logits = self.net(batch)
            ce = relevance_loss(logits, batch.labels)
            parts = {"ce": float(ce.detach())}
            total = ce
            if extra_loss is not None:
                extra, extra_parts = extra_loss(batch, logits)
                total = total + extra
                parts.update(extra_parts)
            return total, parts

        def evaluate() -> float:
            return roc_auc(valid.labels, self.predict_proba(valid, cfg.eval_batch_size, cfg.precision))

        return fit(
            self.net, params,
            epoch_batches=lambda epoch: batches(data, cfg.batch_size, pad, shuffle=True, seed=seed + epoch),
            loss_fn=loss_fn, evaluate=evaluate, cfg=cfg,
            steps_per_epoch=math.ceil(len(data) / cfg.batch_size), desc=desc,
        )
