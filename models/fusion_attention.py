"""Fusion attention with gradient.

``adapters`` only returns fusion attentions as detached numpy arrays
(``output_adapter_fusion_attentions=True``): good enough for a teacher, useless for a
student whose attention is a loss term. ``BertFusion.forward`` applies its dropout to the
raw scores and then ``softmax(scores / T)``; a forward hook on that dropout module sees the
exact (dropped-out) scores of the live forward pass, so recomputing the softmax there gives
the same probabilities the library uses, with the autograd graph intact and the same dropout
mask. Teacher and student use this one code path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from adapters.methods.bottleneck import BottleneckLayer
from adapters.methods.modeling import BertFusion
from torch import nn

from models.pairs import Pairs, batches

if TYPE_CHECKING:
    from models.relevance import RelevanceModel


def fusion_modules(model: nn.Module, fusion_name: str) -> list[BertFusion]:
    """The fusion blocks named ``fusion_name`` (e.g. ``"en,es"``), in layer order."""
    found = [
        layer.adapter_fusion_layer[fusion_name]
        for layer in model.modules()
        if isinstance(layer, BottleneckLayer) and fusion_name in layer.adapter_fusion_layer
    ]
    if not found:
        raise KeyError(f"the model has no fusion layer named {fusion_name!r}")
    return found


class FusionAttentionRecorder:
    """Records, per fusion layer, attention probabilities of shape (batch, tokens, adapters)."""

    def __init__(self, model: nn.Module, fusion_name: str) -> None:
        self.fusion_name = fusion_name
        self.modules = fusion_modules(model, fusion_name)
        self.scores: list[torch.Tensor] = []

    @property
    def num_layers(self) -> int:
        return len(self.modules)

    def _hook_for(self, fusion: BertFusion):
        def hook(_dropout: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            # Same expression as BertFusion.forward; T is read before the library updates it.
            self.scores.append(torch.softmax(output / fusion.T, dim=-1))

        return hook

    @contextmanager
    def record(self) -> Iterator[list[torch.Tensor]]:
        """Inside the block, every forward pass appends one tensor per fusion layer."""
        self.scores = []
        handles = [m.dropout.register_forward_hook(self._hook_for(m)) for m in self.modules]
        try:
            yield self.scores
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def attention_restricted(model: RelevanceModel, first: int) -> Iterator[None]:
    """Inside the block the fusion attends to its first ``first`` adapters only: the others' scores are -inf
    before the softmax. Scores an old marketplace by the adapters it had when it was learned, to measure what the
    newer adapters' share costs it (``benchmarks/bench_routing.py``). It hooks the dropout module the recorder
    reads; a recorder started inside the block hooks after it, so it records the restricted attention."""

    def restrict(_dropout: nn.Module, _inputs: tuple, scores: torch.Tensor) -> torch.Tensor:
        restricted = scores.clone()
        restricted[..., first:] = float("-inf")
        return restricted

    handles = [m.dropout.register_forward_hook(restrict) for m in fusion_modules(model.net, model.fusion)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def fusion_attention_by_layer(model: RelevanceModel, tests: dict[str, Pairs],
                              batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean fusion attention per layer, (layers, adapters), on each marketplace's text (over real tokens).

    The layer mean can hide routing that some layers do; ``benchmarks/bench_routing.py`` reads the layers.
    """
    if model.fusion is None:
        return {}
    recorder = FusionAttentionRecorder(model.net, model.fusion)
    head = model.activate(None)
    model.net.eval()
    profile = {}
    for mid, pairs in tests.items():
        total = torch.zeros(recorder.num_layers, len(model.adapter_names), dtype=torch.float64)
        count = 0.0
        data = model.encode(pairs)
        for batch in batches(data, batch_size, model.tokenizer.pad_token_id, shuffle=False):
            batch = batch.to(model.device)
            with recorder.record() as scores:
                model.logits(batch, head)
            mask = batch.attention_mask.unsqueeze(-1).double()
            for i, layer in enumerate(scores):
                total[i] += (layer.double() * mask).sum(dim=(0, 1)).cpu()
            count += float(mask.sum())
        profile[mid] = total / max(count, 1.0)
    return profile


def fusion_attention_profile(model: RelevanceModel, tests: dict[str, Pairs],
                             batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Mean fusion attention each adapter receives on each marketplace's text (over layers and real tokens).

    The question a reviewer asks of a fused model: does Spanish text lean on the Spanish adapter?
    """
    return {mid: {name: float(v) for name, v in zip(model.adapter_names, layers.mean(dim=0), strict=True)}
            for mid, layers in fusion_attention_by_layer(model, tests, batch_size).items()}
