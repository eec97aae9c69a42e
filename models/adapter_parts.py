"""Parameter groups taken from the ``adapters`` objects themselves, never from parameter-name patterns.

An ``adapters`` model knows which modules make up an adapter (``get_adapter``), a fusion (the
``BertFusion`` blocks of each bottleneck layer, :func:`models.fusion_attention.fusion_modules`) and a
head (``heads[name]``); asking it keeps the project working when the library renames its internals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from adapters.methods.bottleneck import BottleneckLayer
from torch import nn

from models.fusion_attention import fusion_modules


def adapter_modules(net: nn.Module, name: str) -> list[nn.Module]:
    """The modules of adapter ``name`` in layer order (for a Pfeiffer adapter, one bottleneck per layer)."""
    found = [module for layer in net.get_adapter(name).values() for module in layer.values()]
    if not found:
        raise KeyError(f"the model has no adapter named {name!r}")
    return found


def head_module(net: nn.Module, name: str) -> nn.Module:
    if name not in net.heads:
        raise KeyError(f"the model has no head named {name!r}")
    return net.heads[name]


def parameters_in(net: nn.Module, modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules``, in the model's own ``named_parameters`` order (so optimiser state and
    gradient-norm sums see them in the same order as before, whichever modules were asked for first)."""
    wanted = {id(p) for m in modules for p in m.parameters()}
    return [p for _, p in net.named_parameters() if id(p) in wanted]


def parts(net: nn.Module, *, adapters_: Iterable[str] = (), fusion: str | None = None,
          heads: Iterable[str] = ()) -> list[nn.Module]:
    """The modules of the named adapters, fusion and heads."""
    modules: list[nn.Module] = [m for a in adapters_ for m in adapter_modules(net, a)]
    if fusion is not None:
        modules.extend(fusion_modules(net, fusion))
    modules.extend(head_module(net, h) for h in heads)
    return modules


def bottleneck_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Every bottleneck adapter and fusion ``adapters`` added to the encoder's layers."""
    return parameters_in(net, [m for m in net.modules() if isinstance(m, BottleneckLayer)])


def state_of(modules: Sequence[nn.Module]) -> list[dict[str, torch.Tensor]]:
    """Detached copies of each module's state, to restore into the same or an identically shaped module."""
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def load_state(modules: Sequence[nn.Module], states: Sequence[dict[str, torch.Tensor]]) -> None:
    if len(modules) != len(states):
        raise ValueError(f"{len(states)} saved module states for {len(modules)} modules")
    for module, state in zip(modules, states, strict=True):
        module.load_state_dict(state)
