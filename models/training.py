"""The one training loop every stage and baseline uses.

A stage supplies small hooks — which batches make an epoch, the loss of one batch, a
validation metric — and the loop does the rest: AdamW with linear warm-up/decay, gradient
clipping, mixed precision on GPU, early stopping on the validation metric (best weights
restored), per-epoch checkpoints it can resume from, progress bars and examples/s in the log.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from models.config import TrainConfig
from models.device import autocast, autocast_dtype
from models.pairs import Batch, EncodedPairs, batches

log = logging.getLogger(__name__)

LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]
LogitsFn = Callable[[Batch], torch.Tensor]


@dataclass
class FitResult:
    """What a stage reports: enough to compare runs and to debug one."""

    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    trainable_parameters: int
    train_examples: int
    train_seconds: float
    examples_per_second: float
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(params: list[torch.nn.Parameter], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


def save_checkpoint(path: Path, state: dict) -> None:
    """Written beside ``path`` and renamed over it, so a run killed mid-write leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _accumulate(batch: Batch, loss_fn: LossFn, scaler: torch.amp.GradScaler, device: torch.device,
                cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward and backward over micro-batches, each weighted by its share of the rows.

    Activation memory then scales with the micro-batch while the update stays that of the batch (exactly for
    row-mean losses; token-mean terms such as L_AD are weighted by rows, not tokens).
    """
    chunks = batch.split(cfg.micro_batch_size) if cfg.micro_batch_size else [batch]
    total = torch.zeros((), device=device)
    parts: dict[str, float] = {}
    for chunk in chunks:
        share = len(chunk) / len(batch)
        with autocast(device, cfg.precision):
            loss, chunk_parts = loss_fn(chunk)
        scaler.scale(loss * share).backward()
        total = total + loss.detach() * share
        for key, value in chunk_parts.items():
            parts[key] = parts.get(key, 0.0) + value * share
    return total, parts


def fit(
    module: torch.nn.Module,
    params: list[torch.nn.Parameter],
    epoch_batches: Callable[[int], Iterable[Batch]],
    loss_fn: LossFn,
    evaluate: Callable[[], float],
    cfg: TrainConfig,
    *,
    steps_per_epoch: int,
    desc: str,
    checkpoint: Path | None = None,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    stop: Callable[[], bool] | None = None,
    bind_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
    restore_best: bool = True,
) -> FitResult:
    """Train ``params`` (everything else must already be frozen) and keep the best epoch.

    ``epoch_batches(epoch)`` yields that epoch's batches already on the right device order;
    ``loss_fn`` returns the loss and the float components to log; ``evaluate`` returns the
    validation metric (higher is better). With ``checkpoint``, state is saved after every
    epoch and a rerun resumes after the last finished epoch instead of starting over.

    ``before_step`` runs once per batch when the gradients are complete and unscaled, before
    clipping and the optimizer step (HAT masks gradients there); ``after_step`` runs after the
    optimizer step (HAT clamps its task embeddings there).

    ``stop`` is asked after each epoch's evaluation (and checkpoint): True ends training there, for a stage with a
    convergence rule of its own besides patience (the serving student stops once every margin is below ε).

    ``bind_optimizer`` receives the optimizer once it exists, for a stage that rewinds it together with the
    parameters inside ``evaluate`` (asynchronous convergence); ``restore_best=False`` keeps the last epoch's weights
    instead of the best epoch's, for a stage that chooses its checkpoints itself.
    """
    device = next(module.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(device, cfg.precision) == torch.float16)
    if bind_optimizer is not None:
        bind_optimizer(optimizer)
    trainable = sum(p.numel() for p in params)
    best_metric, best_epoch, best_state = -math.inf, -1, _snapshot(params)
    history: list[dict] = []
    start_epoch, seen, train_seconds = 0, 0, 0.0

    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("desc") != desc or len(state["params"]) != len(params):
            raise RuntimeError(f"checkpoint {checkpoint} belongs to another stage ({state.get('desc')!r}); remove it")
        _restore(params, state["params"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_metric, best_epoch = state["best_metric"], state["best_epoch"]
        best_state = [t.to(device) for t in state["best_params"]]
        history, seen, train_seconds = state["history"], state["seen"], state["train_seconds"]
        start_epoch = state["epoch"] + 1
        log.info("%s: resumed from %s after epoch %d (best %.4f at epoch %d)",
                 desc, checkpoint, state["epoch"] + 1, best_metric, best_epoch + 1)

    log.info("%s: %d trainable parameters, %d steps/epoch, up to %d epochs", desc, trainable, steps_per_epoch, cfg.epochs)
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs):
        if epoch - best_epoch > cfg.patience and best_epoch >= 0:
            stopped_early = True
            break
        module.train()
        sums: dict[str, float] = {}
        n_batches, epoch_examples, t0 = 0, 0, time.perf_counter()
        bar = tqdm(epoch_batches(epoch), total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
                   leave=False, dynamic_ncols=True)
        for batch in bar:
            batch = batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss, parts = _accumulate(batch, loss_fn, scaler, device, cfg)
            if cfg.max_grad_norm or before_step is not None:
                scaler.unscale_(optimizer)
            if before_step is not None:
                before_step()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if after_step is not None:
                after_step()
            n_batches += 1
            epoch_examples += len(batch)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{sums['loss'] / n_batches:.4f}")
        epoch_seconds = time.perf_counter() - t0
        seen += epoch_examples
        train_seconds += epoch_seconds
        metric = float(evaluate())
        improved = metric > best_metric
        if improved:
            best_metric, best_epoch = metric, epoch
            if restore_best:  # a stage that keeps its last weights needs no copy of the best ones
                best_state = _snapshot(params)
        record = {
            "epoch": epoch + 1,
            **{k: v / max(n_batches, 1) for k, v in sums.items()},
            "valid_metric": metric,
            "examples_per_second": epoch_examples / max(epoch_seconds, 1e-9),
            "seconds": epoch_seconds,
        }
        history.append(record)
        log.info("%s epoch %d/%d: loss %.4f, valid ROC-AUC %.4f%s, %.1f ex/s", desc, epoch + 1, cfg.epochs,
                 record.get("loss", float("nan")), metric, " (best)" if improved else "",
                 record["examples_per_second"])
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "desc": desc, "epoch": epoch, "params": _snapshot(params), "best_params": best_state,
                "best_metric": best_metric, "best_epoch": best_epoch, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, "seen": seen,
                "train_seconds": train_seconds,
            })
        if stop is not None and stop():
            stopped_early = True
            break
    if restore_best:
        _restore(params, best_state)
    if stopped_early and restore_best:
        log.info("%s: stopped early after epoch %d; restored epoch %d", desc, len(history), best_epoch + 1)
    return FitResult(
        best_metric=best_metric,
        best_epoch=best_epoch + 1,
        epochs_run=len(history),
        stopped_early=stopped_early,
        trainable_parameters=trainable,
        train_examples=seen,
        train_seconds=train_seconds,
        examples_per_second=seen / max(train_seconds, 1e-9),
        history=history,
    )


def predict_proba(module: torch.nn.Module, logits_fn: LogitsFn, data: EncodedPairs, pad: int, batch_size: int,
                  precision: str) -> np.ndarray:
    """P(relevant) for every row of ``data``, in row order, with dropout off (length-sorted batches: little padding)."""
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    out = np.empty(len(data), dtype=np.float32)
    try:
        with torch.no_grad():
            for batch in batches(data, batch_size, pad, shuffle=False):
                with autocast(device, precision):
                    logits = logits_fn(batch.to(device))
                out[batch.index.numpy()] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
    finally:
        module.train(was_training)
    return out
