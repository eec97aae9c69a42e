"""HAT — Hard Attention to the Task (Serra et al. 2018) on one shared Pfeiffer adapter over the frozen encoder.

Every marketplace t owns an embedding e_t per adapter layer and a head. The adapter's bottleneck units
are gated by a_t = σ(s·e_t) (a forward hook on the ``adapters`` library's ``Adapter.adapter_down``, so the
library's module is used as is); s is annealed from 1/s_max to s_max over each epoch's batches. Units
that earlier marketplaces use (a_{<t} = max over their binary masks) are protected by zeroing the
gradients of their weights; the embedding gradient is compensated for the annealing and the embedding
clamped to ±6; a sparsity regulariser c·Σ a_t(1 − a_{<t}) / Σ(1 − a_{<t}) keeps units free for later
marketplaces. Prediction uses the marketplace's own mask and head.

Binary masks. A marketplace's mask is frozen at the end of its training as 1[e_t > 0] (that is,
σ(s_max·e_t) > ½; with s_max = 400 it differs from σ(s_max·e_t) only where |e_t| < 0.01) and validation
uses the same binary mask, so early stopping selects what will be served. Binary masks make the
protection exact even with AdamW (which rescales any non-zero gradient, so HAT's soft gradient
attenuation would leak): a protected weight gets an exactly zero gradient, Adam never moves it, and an
unused unit contributes exactly zero, so earlier marketplaces' predictions stay bitwise identical.
Weight decay is forced to 0 for the same reason (decoupled decay would shrink protected weights).
The up-projection's bias feeds every unit's output, so it is frozen once a marketplace has been learned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from adapters import AutoAdapterModel, SeqBnConfig
from adapters.methods.modeling import Adapter
from torch import nn
from transformers import AutoTokenizer

from models.adapter_parts import adapter_modules, head_module, parameters_in
from models.device import autocast, resolve_device
from models.losses import relevance_loss
from models.methods.protocol import ContinualMethod, MarketplaceSplits
from models.metrics import roc_auc
from models.pairs import Batch, Pairs, batches, encode_pairs
from models.relevance import NUM_LABELS
from models.stages import StageReport
from models.training import fit, seed_everything

if TYPE_CHECKING:
    from models.config import BaselinesConfig, LearnerConfig
    from models.encoders import EncoderRef

ADAPTER = "hat"
THRES_COSH = 50.0  # Serra et al.'s code: clamp of s·e inside cosh (overflow guard)
THRES_EMB = 6.0  # and of the embeddings themselves


class HATGates(nn.Module):
    """Task embeddings and masks gating the bottleneck units of one adapter, one hook per layer."""

    def __init__(self, adapter_layers: Sequence[Adapter], smax: float) -> None:
        super().__init__()
        if not adapter_layers:
            raise ValueError("HAT needs at least one bottleneck adapter layer")
        self.layers = list(adapter_layers)
        self.units = int(self.layers[0].down_sample)
        self.smax = float(smax)
        self.embeddings = nn.ParameterDict()
        self.masks: dict[str, torch.Tensor] = {}  # binary (layers, units) of learned marketplaces
        self.register_buffer("used", torch.zeros(len(self.layers), self.units))  # a_{<t}
        self.task: str | None = None
        self.s: float | None = None  # None: binary mask; a float: σ(s·e) while training
        self._handles = [layer.adapter_down.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, index: int):
        def gate(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return output * self.gate(index).to(output.dtype)

        return gate

    def add_task(self, task: str) -> nn.Parameter:
        """e_t ~ N(0, 1), as HAT's ``nn.Embedding`` initialisation."""
        e = nn.Parameter(torch.randn(len(self.layers), self.units, device=self.used.device))
        self.embeddings[task] = e
        return e

    def gate(self, index: int) -> torch.Tensor:
        if self.task is None:
            raise RuntimeError("HAT gates have no marketplace selected")
        if self.s is not None:
            return torch.sigmoid(self.s * self.embeddings[self.task][index])
        if self.task in self.masks:
            return self.masks[self.task][index]
        return (self.embeddings[self.task][index] > 0).float()

    def finish(self, task: str) -> torch.Tensor:
        """Freeze ``task``'s binary mask and add it to the units used so far."""
        mask = (self.embeddings[task].detach() > 0).float()
        self.masks[task] = mask
        self.used = torch.maximum(self.used, mask)
        return mask

    def regularizer(self) -> torch.Tensor:
        """c's term: the share of still-free units the current task's soft mask uses."""
        assert self.task is not None and self.s is not None
        mask = torch.sigmoid(self.s * self.embeddings[self.task])
        free = 1.0 - self.used
        return (mask * free).sum() / free.sum().clamp_min(1.0)

    def linears(self, index: int) -> tuple[nn.Linear, nn.Linear]:
        layer = self.layers[index]
        down = next(m for m in layer.adapter_down if isinstance(m, nn.Linear))
        return down, layer.adapter_up

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradient of every weight into or out of a unit used by an earlier task."""
        free = 1.0 - self.used
        protect_bias = bool(self.masks)
        for i in range(len(self.layers)):
            down, up = self.linears(i)
            if down.weight.grad is not None:
                down.weight.grad.mul_(free[i].unsqueeze(1).to(down.weight.grad.dtype))
            if down.bias is not None and down.bias.grad is not None:
                down.bias.grad.mul_(free[i].to(down.bias.grad.dtype))
            if up.weight.grad is not None:
                up.weight.grad.mul_(free[i].unsqueeze(0).to(up.weight.grad.dtype))
            if protect_bias and up.bias is not None and up.bias.grad is not None:
                up.bias.grad.zero_()

    @torch.no_grad()
    def compensate_embedding_gradient(self) -> None:
        """Serra et al.'s compensation: the annealed sigmoid's gradient rescaled to that at s_max."""
        assert self.task is not None and self.s is not None
        e = self.embeddings[self.task]
        if e.grad is None:
            return
        num = torch.cosh(torch.clamp(self.s * e, -THRES_COSH, THRES_COSH)) + 1
        den = torch.cosh(e) + 1
        e.grad.mul_(self.smax / self.s * num / den)

    @torch.no_grad()
    def clamp_embedding(self) -> None:
        assert self.task is not None
        self.embeddings[self.task].clamp_(-THRES_EMB, THRES_EMB)

    def anneal(self, batch: int, batches_per_epoch: int) -> float:
        """s for batch ``batch`` (0-based) of an epoch: 1/s_max at the first, s_max at the last."""
        span = max(batches_per_epoch - 1, 1)
        return 1.0 / self.smax + (self.smax - 1.0 / self.smax) * min(batch, span) / span


class HardAttentionToTask(ContinualMethod):
    name = "hat"
    description = ("HAT (Serra et al. 2018): one shared Pfeiffer adapter whose bottleneck units are gated per "
                   "marketplace, units of earlier marketplaces protected, one head per marketplace")

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        # HAT's own regulariser replaces weight decay, which would shrink the protected units.
        self.train_cfg = learner.adapter.model_copy(update={"weight_decay": 0.0})
        self.max_length = learner.max_length
        seed = learner.seed
        self.tokenizer = AutoTokenizer.from_pretrained(str(encoder.path))
        seed_everything(seed)
        self.net = AutoAdapterModel.from_pretrained(str(encoder.path))
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.add_adapter(ADAPTER, config=SeqBnConfig())
        self.net.set_active_adapters(ADAPTER)
        layers = [m for m in self.net.modules() if isinstance(m, Adapter) and m.name == ADAPTER]
        self.gates = HATGates(layers, self.baselines.hat_smax)
        self.device = resolve_device(learner.device)
        self.net.to(self.device)
        self.gates.to(self.device)
        self.heads: list[str] = []
        self._last_trained = 0

    def adapter_parameters(self) -> list[nn.Parameter]:
        return parameters_in(self.net, adapter_modules(self.net, ADAPTER))

    def head_parameters(self, marketplace_id: str) -> list[nn.Parameter]:
        return parameters_in(self.net, [head_module(self.net, marketplace_id)])

    def logits(self, batch: Batch, marketplace_id: str) -> torch.Tensor:
        out = self.net(**batch.model_inputs(), head=marketplace_id)
        return out.logits if hasattr(out, "logits") else out[0]

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        cfg, mid = self.train_cfg, data.spec.id
        seed_everything(self.seed + len(self.heads))
        self.net.add_classification_head(mid, num_labels=NUM_LABELS)
        self.net.to(self.device)
        embedding = self.gates.add_task(mid)
        params = [*self.adapter_parameters(), embedding, *self.head_parameters(mid)]
        wanted = {id(p) for p in params}
        for p in self.net.parameters():
            p.requires_grad_(id(p) in wanted)
        self.heads.append(mid)
        encoded = encode_pairs(data.train, self.tokenizer, self.max_length)
        pad = self.tokenizer.pad_token_id
        steps = math.ceil(len(encoded) / cfg.batch_size)
        position = {"batch": 0}
        gates = self.gates

        def epoch_batches(epoch: int):
            position["batch"] = 0
            return batches(encoded, cfg.batch_size, pad, shuffle=True, seed=self.seed + epoch)

        def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
            gates.task, gates.s = mid, gates.anneal(position["batch"], steps)
            ce = relevance_loss(self.logits(batch, mid), batch.labels)
            reg = gates.regularizer()
            return ce + self.baselines.hat_lambda * reg, {"ce": float(ce.detach()), "hat_reg": float(reg.detach())}

        def before_step() -> None:
            gates.mask_gradients()
            gates.compensate_embedding_gradient()

        def after_step() -> None:
            gates.clamp_embedding()
            position["batch"] += 1

        def evaluate() -> float:
            return roc_auc(data.valid.labels, self.predict_proba(mid, data.valid))

        try:
            result = fit(self.net, params, epoch_batches, loss_fn, evaluate, cfg, steps_per_epoch=steps,
                         desc=f"hat[{mid}]", before_step=before_step, after_step=after_step)
        finally:
            for p in params:
                p.requires_grad_(False)
            gates.s = None
        mask = gates.finish(mid)
        self._last_trained = result.trainable_parameters
        details = {"units_used": int(mask.sum()), "units_used_so_far": int(gates.used.sum()),
                   "units_total": int(gates.used.numel())}
        return [StageReport("hat", mid, result, self.total_parameters(), details)]

    @torch.no_grad()
    def predict_proba(self, marketplace_id: str, pairs: Pairs) -> np.ndarray:
        if marketplace_id not in self.heads:
            raise KeyError(f"hat has no head for marketplace {marketplace_id!r}; it has {self.heads}")
        previous = (self.gates.task, self.gates.s)
        self.gates.task, self.gates.s = marketplace_id, None
        was_training = self.net.training
        self.net.eval()
        data = encode_pairs(pairs, self.tokenizer, self.max_length)
        out = np.empty(len(data), dtype=np.float32)
        try:
            for batch in batches(data, self.train_cfg.eval_batch_size, self.tokenizer.pad_token_id, shuffle=False):
                with autocast(self.device, self.train_cfg.precision):
                    logits = self.logits(batch.to(self.device), marketplace_id)
                out[batch.index.numpy()] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
        finally:
            self.net.train(was_training)
            self.gates.task, self.gates.s = previous
        return out

    def trainable_parameters(self) -> int:
        """The shared adapter (all of it: free units train), the new task embedding and head."""
        return self._last_trained

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters()) + sum(p.numel() for p in self.gates.parameters())

