"""AdapterFusion blocks that read their adapters' outputs from contiguous memory.

``adapters`` stacks the adapters' outputs and permutes them to (batch, tokens, adapters, hidden)
before calling ``BertFusion``: a non-contiguous view. ``nn.Linear`` on such a view does not flatten
it into one matrix product; it falls back to a batched product with the weight expanded per token,
which on CPU made the fusion's key and value projections over half of a fused forward pass when
scoring (62 ms per layer call at batch 64 x 30 tokens on 2 cores). Copying the view once into
contiguous memory gives the same arithmetic at the expected cost: scoring 1.23-1.35x faster, a
training step at batch 8 about the same (``benchmarks/bench_fusion_forward.py`` prints the figures).
"""

from __future__ import annotations

import torch
from adapters.methods.modeling import BertFusion
from torch import nn

from models.fusion_attention import fusion_modules


class ContiguousFusion(BertFusion):
    """``BertFusion`` with contiguous key and value inputs; parameters, dropout module (which the attention
    recorder hooks), temperature schedule and outputs are the library's own."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, residual: torch.Tensor,
                output_attentions: bool = False):
        if key is value:  # the library passes one tensor as both; keep them one (``residual_before`` adds in place)
            key = value = key.contiguous()
        else:
            key, value = key.contiguous(), value.contiguous()
        return super().forward(query, key, value, residual, output_attentions)


def use_contiguous_fusion(net: nn.Module, fusion_name: str) -> None:
    """Switch every block of fusion ``fusion_name`` to :class:`ContiguousFusion`, in place (no weights move)."""
    for module in fusion_modules(net, fusion_name):
        if type(module) is BertFusion:
            module.__class__ = ContiguousFusion
