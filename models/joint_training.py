"""Several marketplaces trained together, and asynchronous convergence (Lu et al. 2024).

A refresh retrains the champion's shared parts on fresh data of several marketplaces at once. Their sizes and
difficulty differ, so they stop improving at different steps and no single checkpoint is best for all of them.
Every batch mixes the marketplaces (rows drawn in proportion to their size, with a floor), each marketplace has its
own loss, and every E steps each is scored on its validation set. Under ``async-kd`` a marketplace that has gone
``patience`` evaluations without improving has converged: the trained parameters and the optimizer rewind to its
best checkpoint, that checkpoint's predictions on its training rows are computed once, and from then on its loss is
the cross-entropy against those soft targets while the others keep learning from their labels. Training ends when
every marketplace has converged, or at the step budget; the last checkpoint is the result. With ``rewind=False``
the soft targets still come from the best checkpoint but training goes on from where it is: the marketplaces still
learning keep their progress, and the converged one is pulled back towards its best only through distillation.

The joint baselines (uniform, DWA, GradNorm) run the same loop with the same stopping rule but never rewind or
switch; they only weight the losses (``models.task_weighting``). The one training loop (``models.training.fit``)
drives all of them: an "epoch" here is E steps, and its evaluation hook is where convergence is decided.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.config import RetrainConfig, TrainConfig
from models.metrics import roc_auc
from models.pairs import TASK_SOURCE, Batch, EncodedPairs, PadCollator
from models.task_weighting import make_weighting
from models.training import FitResult, LogitsFn, fit, predict_proba

log = logging.getLogger(__name__)



@dataclass
class Track:
    """One marketplace's convergence bookkeeping (restored with the parameters on a rewind)."""

    best: float = -math.inf
    best_eval: int = -1
    best_step: int = 0
    since_best: int = 0
    active: bool = True


@dataclass
class JointResult:
    """What a joint retraining reports, per marketplace: its best validation ROC-AUC and the step it was reached,
    the step its loss switched to distillation (async-kd), its final validation ROC-AUC, and its curve."""

    method: str
    steps: int
    stopped: str
    best: dict[str, float]
    best_step: dict[str, int]
    switch_step: dict[str, int | None]
    final: dict[str, float]
    curves: dict[str, list[tuple[int, float]]]
    rewinds: list[dict] = field(default_factory=list)
    report_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    fit: FitResult | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def sampling_shares(rows: Mapping[str, int], floor: float) -> dict[str, float]:
    """Each marketplace's share of a batch: floor + (1 − K·floor)·n_k/N, so none falls below ``floor``."""
    total = sum(rows.values())
    k = len(rows)
    if k * floor >= 1:
        return {name: 1 / k for name in rows}
    return {name: floor + (1 - k * floor) * n / total for name, n in rows.items()}


class MixedSampler:
    """Batches whose rows are drawn from the active marketplaces by their sampling shares; within a marketplace
    rows come from a shuffled cycle, so every row is seen before any repeats."""

    def __init__(self, data: EncodedPairs, task_of: np.ndarray, names: list[str], batch_size: int, pad: int,
                 floor: float, seed: int) -> None:
        self.data, self.task_of, self.names = data, task_of, names
        self.batch_size, self.floor = batch_size, floor
        self.rng = np.random.default_rng(seed)
        self.collate = PadCollator(pad, TASK_SOURCE)
        self.rows = [np.flatnonzero(task_of == i) for i in range(len(names))]
        self.cycles = [self.rng.permutation(r) for r in self.rows]
        self.position = [0] * len(names)

    def _next_row(self, task: int) -> int:
        if self.position[task] == len(self.cycles[task]):
            self.cycles[task], self.position[task] = self.rng.permutation(self.rows[task]), 0
        row = self.cycles[task][self.position[task]]
        self.position[task] += 1
        return int(row)

    def batches(self, steps: int, active: list[bool]) -> list[Batch]:
        ids = [i for i, on in enumerate(active) if on]
        shares = sampling_shares({i: len(self.rows[i]) for i in ids}, self.floor)
        p = np.array([shares[i] for i in ids])
        out = []
        for _ in range(steps):
            tasks = self.rng.choice(ids, size=self.batch_size, p=p)
            out.append(self.collate([self.data[self._next_row(int(t))] for t in tasks]))
        return out


def concatenate(splits: Mapping[str, EncodedPairs]) -> tuple[EncodedPairs, np.ndarray]:
    """One table of every marketplace's rows and the marketplace index of each row."""
    parts = list(splits.values())
    types = None if any(p.token_type_ids is None for p in parts) else [t for p in parts for t in p.token_type_ids]
    data = EncodedPairs([ids for p in parts for ids in p.input_ids], types,
                        np.concatenate([p.labels for p in parts]))
    task_of = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
    return data, task_of


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: the cross-entropy −Σ_c p_c log q_c against soft targets p = (1 − P, P)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    p = torch.stack([1 - targets, targets], dim=-1)
    return -(p * logp).sum(dim=-1)


class JointTrainer:
    """The hooks the one training loop runs a joint retraining with (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, params: list[torch.nn.Parameter], logits_fn: LogitsFn,
                 train: Mapping[str, EncodedPairs], valid: Mapping[str, EncodedPairs], cfg: TrainConfig,
                 retrain: RetrainConfig, *, pad: int, seed: int,
                 regularizer: Callable[[], torch.Tensor | None] | None = None,
                 report: Mapping[str, EncodedPairs] | None = None) -> None:
        if set(valid) != set(train):
            raise ValueError(f"every marketplace needs training and validation rows: train {sorted(train)}, "
                             f"valid {sorted(valid)}")
        self.module, self.params, self.logits_fn = module, params, logits_fn
        self.cfg, self.retrain, self.pad, self.regularizer = cfg, retrain, pad, regularizer
        self.names = self._ordered(train)
        self.train = {n: train[n] for n in self.names}
        self.valid = {n: valid[n] for n in self.names}
        self.report = dict(report or {})
        self.data, self.task_of = concatenate(self.train)
        self.sampler = MixedSampler(self.data, self.task_of, self.names, cfg.batch_size, pad,
                                    retrain.sample_floor, seed)
        sequential = retrain.order != "joint"
        self.tracks = [Track(active=not sequential or i == 0) for i in range(len(self.names))]
        self.rewinds_on = retrain.method == "async-kd"
        self.converged: list[int | None] = [None] * len(self.names)  # switch step per marketplace
        self.soft = torch.full((len(self.data),), math.nan)
        self.weighting = make_weighting(retrain.method, len(self.names), self._shared_weight(),
                                        dwa_temperature=retrain.dwa_temperature,
                                        gradnorm_alpha=retrain.gradnorm_alpha,
                                        gradnorm_learning_rate=retrain.gradnorm_learning_rate)
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.evaluations = 0
        self.snapshots: dict[int, tuple[list[torch.Tensor], dict]] = {}
        self.states: dict[int, list[Track]] = {}  # every track as it was after evaluation i
        self.curves: dict[str, list[tuple[int, float]]] = {n: [] for n in self.names}
        self.report_curves: dict[str, list[tuple[int, float]]] = {n: [] for n in self.report}
        self.last: dict[str, float] = {}
        self.rewinds: list[dict] = []
        self.window_loss = np.zeros(len(self.names))
        self.window_rows = np.zeros(len(self.names))

    def _ordered(self, train: Mapping[str, EncodedPairs]) -> list[str]:
        names = list(train)
        if self.retrain.order == "joint":
            return names
        return sorted(names, key=lambda n: len(train[n]), reverse=self.retrain.order == "large-first")

    def _shared_weight(self) -> torch.nn.Parameter:
        """W of GradNorm: the last weight matrix among the trained parameters (the head's, for a fusion)."""
        matrices = [p for p in self.params if p.dim() == 2]
        return (matrices or self.params)[-1]

    # ------------------------------------------------------------------ the loop's hooks
    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._evaluate_and_decide()  # evaluation 0: the starting point is a checkpoint like any other

    def epoch_batches(self, epoch: int) -> list[Batch]:
        return self.sampler.batches(self.retrain.eval_every, [t.active for t in self.tracks])

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits_fn(batch)
        rows = batch.index.cpu()
        tasks = torch.as_tensor(self.task_of[rows.numpy()], device=logits.device)
        soft = self.soft[rows].to(logits.device)
        distilled = ~torch.isnan(soft)
        hard = F.cross_entropy(logits.float(), batch.labels, reduction="none")
        per_row = torch.where(distilled, soft_target_loss(logits, torch.nan_to_num(soft)), hard)
        k = len(self.names)
        counts = torch.bincount(tasks, minlength=k).to(per_row.dtype)
        losses = torch.zeros(k, device=logits.device).scatter_add(0, tasks, per_row) / counts.clamp(min=1)
        present = counts > 0
        weights = self.weighting.weights(losses, present)
        total = (weights * losses)[present].sum()
        if self.regularizer is not None:
            reg = self.regularizer()
            if reg is not None:
                total = total + reg
        detached = losses.detach().cpu().numpy()
        self.window_loss += detached * counts.cpu().numpy()
        self.window_rows += counts.cpu().numpy()
        parts = {f"loss.{n}": float(detached[i]) for i, n in enumerate(self.names) if bool(present[i])}
        return total, parts

    def before_step(self) -> None:
        self.weighting.before_step()

    def after_step(self) -> None:
        self.step += 1

    def evaluate(self) -> float:
        with np.errstate(invalid="ignore", divide="ignore"):
            self.weighting.end_window(list(self.window_loss / self.window_rows))
        self.window_loss[:], self.window_rows[:] = 0, 0
        self._evaluate_and_decide()
        return float(np.mean([self.last[n] for n, t in zip(self.names, self.tracks, strict=True) if t.active]))

    def done(self) -> bool:
        """Every marketplace has joined and converged (async-kd), or stopped improving (the baselines)."""
        if self.rewinds_on:
            return all(c is not None for c in self.converged)
        return all(t.active and t.since_best >= self.retrain.patience for t in self.tracks)

    # ------------------------------------------------------------------ convergence
    def score(self, data: EncodedPairs) -> float:
        probs = predict_proba(self.module, self.logits_fn, data, self.pad, self.cfg.eval_batch_size,
                              self.cfg.precision)
        return roc_auc(data.labels, probs)

    def _record_scores(self) -> None:
        for name, track in zip(self.names, self.tracks, strict=True):
            if track.active:
                self.last[name] = self.score(self.valid[name])
                self.curves[name].append((self.step, self.last[name]))
        for name, data in self.report.items():
            self.report_curves[name].append((self.step, self.score(data)))

    def _evaluate_and_decide(self) -> None:
        index = self.evaluations
        self.evaluations += 1
        self._record_scores()
        improved = False
        for i, (name, track) in enumerate(zip(self.names, self.tracks, strict=True)):
            if not track.active or self.converged[i] is not None:
                continue
            if self.last[name] > track.best:
                track.best, track.best_eval, track.best_step, track.since_best = self.last[name], index, self.step, 0
                improved = True
            else:
                track.since_best += 1
        if improved and self.rewinds_on:
            self.snapshots[index] = ([p.detach().clone() for p in self.params],
                                     copy.deepcopy(self.optimizer.state_dict()))
        self.states[index] = copy.deepcopy(self.tracks)
        log.info("step %d: valid ROC-AUC %s", self.step, ", ".join(
            f"{n} {self.last[n]:.4f}{'*' if t.best_eval == index else ''}" for n, t in zip(self.names, self.tracks,
                                                                                          strict=True) if t.active))
        if self.rewinds_on:
            self._converge_one()
            self._prune()

    def _prune(self) -> None:
        """Keep only the checkpoints a later rewind can reach: every unconverged marketplace's best, and the bests
        recorded with those (a rewind restores the bookkeeping of its checkpoint's evaluation)."""
        open_ = [i for i in range(len(self.tracks)) if self.converged[i] is None]
        needed: set[int] = set()
        frontier = [self.tracks[i].best_eval for i in open_ if self.tracks[i].best_eval >= 0]
        while frontier:
            e = frontier.pop()
            if e in needed:
                continue
            needed.add(e)
            frontier += [self.states[e][i].best_eval for i in open_ if self.states[e][i].best_eval >= 0]
        self.snapshots = {e: s for e, s in self.snapshots.items() if e in needed}

    def _converge_one(self) -> None:
        """Switch the marketplace (earliest best first) that has gone ``patience`` evaluations without improving."""
        due = [i for i, t in enumerate(self.tracks)
               if t.active and self.converged[i] is None and t.since_best >= self.retrain.patience]
        if not due:
            return
        i = min(due, key=lambda j: self.tracks[j].best_eval)
        name, best_eval, waited = self.names[i], self.tracks[i].best_eval, self.tracks[i].since_best
        params, optimizer = self.snapshots[best_eval]
        current = None if self.retrain.rewind else [p.detach().clone() for p in self.params]
        self._load(params)
        rows = np.flatnonzero(self.task_of == i)
        self.soft[rows] = torch.from_numpy(predict_proba(self.module, self.logits_fn, self.train[name], self.pad,
                                                   self.cfg.eval_batch_size, self.cfg.precision))
        if current is None:
            self.optimizer.load_state_dict(copy.deepcopy(optimizer))
            self._restore_tracks(best_eval)
        else:
            self._load(current)
        self.converged[i] = self.step
        self.rewinds.append({"marketplace": name, "step": self.step, "to_step": self.tracks[i].best_step,
                             "rewound": self.retrain.rewind, "best": self.tracks[i].best,
                             "evaluations_without_improvement": waited})
        log.info("%s converged at step %d (its best: step %d, valid ROC-AUC %.4f): %s; its loss is now "
                 "distillation from that checkpoint's predictions", name, self.step, self.tracks[i].best_step,
                 self.tracks[i].best, "rewound to it" if self.retrain.rewind else "training goes on from here")
        if self.retrain.order != "joint" and i + 1 < len(self.tracks) and not self.tracks[i + 1].active:
            self.tracks[i + 1] = Track()
            log.info("%s joins the training", self.names[i + 1])
        if self.retrain.rewind:
            self._record_scores()

    def _load(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, values, strict=True):
                p.copy_(v)

    def _restore_tracks(self, best_eval: int) -> None:
        """Every marketplace's bookkeeping as it was at the checkpoint rewound to."""
        joined = [t.active for t in self.tracks]
        restored = copy.deepcopy(self.states[best_eval])
        for j, (track, was_active) in enumerate(zip(restored, joined, strict=True)):
            if was_active and not track.active:  # joined after the checkpoint: it starts afresh from here
                restored[j] = Track()
        self.tracks = restored

    def run(self, desc: str) -> JointResult:
        """The one training loop with these hooks: an epoch is E steps, at most ``max_steps`` in all."""
        windows = max(1, self.retrain.max_steps // self.retrain.eval_every)
        loop = self.cfg.model_copy(update={"epochs": windows, "patience": windows})
        fit_result = fit(self.module, self.params, self.epoch_batches, self.loss, self.evaluate, loop,
                         steps_per_epoch=self.retrain.eval_every, desc=desc, before_step=self.before_step,
                         after_step=self.after_step, stop=self.done, bind_optimizer=self.bind, restore_best=False)
        return self.result(fit_result)

    def result(self, fit_result: FitResult) -> JointResult:
        stopped = "converged" if self.done() else "step budget"
        return JointResult(
            method=self.retrain.method, steps=self.step, stopped=stopped,
            best={n: t.best for n, t in zip(self.names, self.tracks, strict=True)},
            best_step={n: t.best_step for n, t in zip(self.names, self.tracks, strict=True)},
            switch_step=dict(zip(self.names, self.converged, strict=True)),
            final={n: c[-1][1] for n, c in self.curves.items() if c},
            curves=self.curves, rewinds=self.rewinds, report_curves=self.report_curves, fit=fit_result,
        )


def train_jointly(module: torch.nn.Module, params: list[torch.nn.Parameter], logits_fn: LogitsFn,
                  train: Mapping[str, EncodedPairs], valid: Mapping[str, EncodedPairs], cfg: TrainConfig,
                  retrain: RetrainConfig, *, pad: int, seed: int, desc: str,
                  regularizer: Callable[[], torch.Tensor | None] | None = None,
                  report: Mapping[str, EncodedPairs] | None = None) -> JointResult:
    """Train ``params`` (everything else frozen) on every marketplace at once by ``retrain.method``; the last
    checkpoint is kept. ``report`` sets (test data, in the benchmark) are scored at every evaluation, never used."""
    return JointTrainer(module, params, logits_fn, train, valid, cfg, retrain, pad=pad, seed=seed,
                        regularizer=regularizer, report=report).run(desc)
