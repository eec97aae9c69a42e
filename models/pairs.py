"""Query–product pairs as the model sees them: tokenised once, padded per batch.

Tokenising a split once (no padding) and padding only inside the collator keeps every
example's token sequence identical across epochs and across the teacher and student
passes, which is what lets the teacher's fusion attention be cached per example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    from models.config import LearnerConfig, Pooling

TASK_SOURCE = "task"


@dataclass(frozen=True)
class Pairs:
    """Texts and 0/1 labels of one split; ``source`` routes its batches to a loss."""

    queries: Sequence[str]
    titles: Sequence[str]
    labels: Sequence[int]
    source: str = TASK_SOURCE

    def __post_init__(self) -> None:
        if not (len(self.queries) == len(self.titles) == len(self.labels)):
            raise ValueError(
                f"pairs of source {self.source!r} have {len(self.queries)} queries, "
                f"{len(self.titles)} titles and {len(self.labels)} labels; they must match"
            )

    def __len__(self) -> int:
        return len(self.queries)

    def head(self, n: int) -> Pairs:
        return Pairs(self.queries[:n], self.titles[:n], self.labels[:n], self.source)


@dataclass
class EncodedPairs(Dataset):
    """A tokenised split; items carry their index so per-example caches can be looked up."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray
    source: str = TASK_SOURCE
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "label": int(self.labels[i]), "index": i}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        return item


def encode_pairs(pairs: Pairs, tokenizer: PreTrainedTokenizerBase, max_length: int) -> EncodedPairs:
    """Tokenise (query, title) as a sentence pair, truncating the title first."""
    enc = tokenizer(
        list(pairs.queries), list(pairs.titles), truncation="longest_first", max_length=max_length,
        padding=False, return_attention_mask=False,
    )
    return EncodedPairs(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        labels=np.asarray(pairs.labels, dtype=np.int64),
        source=pairs.source,
    )


@dataclass(frozen=True)
class TextFormat:
    """How a model turns pairs into input and which vector its heads read. It belongs to the trained model (saved
    in its manifest): a teacher, a champion or a served copy read another way would score differently."""

    max_length: int
    pooling: Pooling
    query_prefix: str
    title_prefix: str

    @classmethod
    def of(cls, learner: LearnerConfig) -> TextFormat:
        return cls(learner.max_length, learner.pooling, learner.query_prefix, learner.title_prefix)

    @classmethod
    def raw(cls, max_length: int) -> TextFormat:
        """The texts as given, read at [CLS]: what a manifest without a text format (written before it existed)
        means."""
        return cls(max_length, "cls", "", "")

    def encode(self, pairs: Pairs, tokenizer: PreTrainedTokenizerBase) -> EncodedPairs:
        if self.query_prefix or self.title_prefix:
            pairs = Pairs([self.query_prefix + q for q in pairs.queries], [self.title_prefix + t for t in pairs.titles],
                          pairs.labels, pairs.source)
        return encode_pairs(pairs, tokenizer, self.max_length)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the last layer over real tokens (padding excluded): multilingual-e5's sentence vector."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """The vector a plain linear head reads under a text format's ``pooling``: the first token or the mean."""
    return hidden[:, 0] if pooling == "cls" else mean_pool(hidden, attention_mask)


@dataclass(frozen=True)
class Batch:
    """A padded batch plus where it came from (the loss is chosen by ``source``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor
    index: torch.Tensor
    source: str

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.token_type_ids),
                     move(self.labels), self.index, self.source)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def split(self, size: int) -> list[Batch]:
        """Micro-batches of at most ``size`` rows, each trimmed to its own longest sequence."""
        if size >= len(self):
            return [self]
        parts = []
        for start in range(0, len(self), size):
            rows = slice(start, start + size)
            mask = self.attention_mask[rows]
            width = int(mask.sum(dim=1).max())
            cut = lambda t: None if t is None else t[rows, :width]  # noqa: E731
            parts.append(Batch(cut(self.input_ids), mask[:, :width], cut(self.token_type_ids),
                               self.labels[rows], self.index[rows], self.source))
        return parts


class PadCollator:
    """Right-pads a list of items into a :class:`Batch`."""

    def __init__(self, pad_token_id: int, source: str) -> None:
        self.pad_token_id = pad_token_id
        self.source = source

    def __call__(self, items: list[dict]) -> Batch:
        width = max(len(it["input_ids"]) for it in items)
        n = len(items)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        has_types = "token_type_ids" in items[0]
        types = torch.zeros((n, width), dtype=torch.long) if has_types else None
        for row, it in enumerate(items):
            length = len(it["input_ids"])
            input_ids[row, :length] = torch.tensor(it["input_ids"])
            mask[row, :length] = 1
            if has_types:
                types[row, :length] = torch.tensor(it["token_type_ids"])
        labels = torch.tensor([it["label"] for it in items], dtype=torch.long)
        index = torch.tensor([it["index"] for it in items], dtype=torch.long)
        return Batch(input_ids, mask, types, labels, index, self.source)


def batches(
    data: EncodedPairs, batch_size: int, pad_token_id: int, *, shuffle: bool, seed: int = 0
) -> Iterator[Batch]:
    """Batches of one split; evaluation batches are length-sorted so padding is minimal."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator,
                            collate_fn=PadCollator(pad_token_id, data.source))
        yield from loader
        return
    order = np.argsort(data.lengths, kind="stable")
    collate = PadCollator(pad_token_id, data.source)
    for start in range(0, len(order), batch_size):
        yield collate([data[int(i)] for i in order[start:start + batch_size]])
