"""Distilling per-marketplace teachers into the student with AMTSS's adaptive loop (Chen et al., Algorithm 1).

Loss of a batch of marketplace i: CE(y_i, ŷ_i^S) + λ·KL(ŷ_i^T ‖ ŷ_i^S), with ŷ_i^T the cached soft target of each
row (:mod:`models.student_teachers`); an epoch's batches of every active marketplace sum to Σ_i CE + λ·Σ_i KL.
Each epoch trains on the active set A only; afterwards the student is scored on every validation set, the margin
M_i = ROC-AUC(T_i) − ROC-AUC(S) is taken per marketplace, and A becomes the K marketplaces with the largest margins.
Training stops once the largest margin is below ε, after M epochs (``train.epochs``), or when the largest margin
has not shrunk for ``train.patience`` epochs; the epoch with the smallest largest margin is kept.

Epoch 1 trains on every marketplace (a fresh student has learnt none); a marketplace that joins an existing student
is forced into A as if its margin were the largest, beside the K − 1 largest margins of the current student.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.config import StudentConfig
from models.metrics import roc_auc
from models.pairs import Batch, Pairs
from models.relevance import MarketplaceSpec
from models.stages import mixed_epoch
from models.student import StudentModel
from models.training import FitResult, fit, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentData:
    """One marketplace as the student learns it: its own training pairs with the teacher's cached P(relevant)
    per row, its validation pairs and its teacher's validation ROC-AUC (what margins are measured against)."""

    spec: MarketplaceSpec
    train: Pairs
    valid: Pairs
    targets: np.ndarray
    teacher_auc: float

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.train):
            raise ValueError(f"{self.spec.id}: {len(self.targets)} soft targets for {len(self.train)} training pairs")


# ------------------------------------------------------------------------------------------- the rules
def margins(teacher_aucs: Mapping[str, float], student_aucs: Mapping[str, float]) -> dict[str, float]:
    """M_i = metric(T_i) − metric(S) on marketplace i."""
    return {mid: teacher_aucs[mid] - student_aucs[mid] for mid in teacher_aucs}


def ranks(margin: Mapping[str, float]) -> dict[str, int]:
    """1 for the largest margin; ties keep the marketplaces' order."""
    order = sorted(margin, key=lambda mid: -margin[mid])
    return {mid: order.index(mid) + 1 for mid in margin}


def select_active(margin: Mapping[str, float], top_k: int, forced: Sequence[str] = ()) -> list[str]:
    """A: the forced marketplaces first (a newcomer is a max-margin teacher), then the largest margins, K in all
    (more only when more are forced), in rank order."""
    rank = ranks(margin)
    rest = sorted((mid for mid in margin if mid not in forced), key=rank.__getitem__)
    return [*forced, *rest][:max(top_k, len(forced))]


def converged(margin: Mapping[str, float], epsilon: float) -> bool:
    """The stop rule: the largest margin is below ε."""
    return max(margin.values()) < epsilon


def student_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_p: torch.Tensor,
                 weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """CE(y, ŷ^S) + λ·KL(ŷ^T ‖ ŷ^S), each a mean over the batch's rows; ``teacher_p`` is the teacher's P(relevant)."""
    log_student = F.log_softmax(logits.float(), dim=-1)
    ce = F.nll_loss(log_student, labels)
    target = torch.stack([1 - teacher_p, teacher_p], dim=-1).float()
    kl = F.kl_div(log_student, target, reduction="batchmean")
    return ce + weight * kl, {"ce": float(ce.detach()), "kl": float(kl.detach())}


def student_valid_aucs(student: StudentModel, data: Sequence[StudentData], batch_size: int) -> dict[str, float]:
    """The student's validation ROC-AUC on every marketplace (the metric margins are taken on)."""
    return {d.spec.id: roc_auc(d.valid.labels, student.predict_proba(d.spec.id, d.valid, batch_size=batch_size))
            for d in data}


# ------------------------------------------------------------------------------------------- the loop
@dataclass
class StudentReport:
    """How the distillation went: the loop's result, one row per epoch (epoch 0: before training) with what it
    trained on, the student's ROC-AUC, margins, ranks and the next A; and why it stopped."""

    fit: FitResult
    epochs: list[dict]
    stop_reason: str
    best_epoch: int
    teacher_aucs: dict[str, float]
    details: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        """The row of the kept epoch: the student that is saved."""
        return self.epochs[self.best_epoch]

    def as_dict(self) -> dict:
        return {**asdict(self), "final": self.final}


def _epoch_record(epoch: int, trained_on: Sequence[str], student_aucs: Mapping[str, float],
                  teacher_aucs: Mapping[str, float], top_k: int, forced: Sequence[str] = ()) -> dict:
    margin = margins(teacher_aucs, student_aucs)
    return {"epoch": epoch, "trained_on": list(trained_on), "student_auc": dict(student_aucs), "margin": margin,
            "rank": ranks(margin), "max_margin": max(margin.values()),
            "next_active": select_active(margin, top_k, forced)}


def distill_student(student: StudentModel, data: Sequence[StudentData], cfg: StudentConfig, *,
                    forced: Sequence[str] = ()) -> StudentReport:
    """Train ``student`` (which has a head for every marketplace of ``data``) by Algorithm 1; returns the report.

    ``forced``: marketplaces that have just joined; empty means a fresh student, whose first epoch trains on all.
    """
    train_cfg = cfg.train
    ids = [d.spec.id for d in data]
    missing = [mid for mid in [*ids, *forced] if mid not in student.heads]
    if missing:
        raise ValueError(f"the student has no head for {missing}; add_marketplace first")
    seed_everything(cfg.seed)
    teacher_aucs = {d.spec.id: d.teacher_auc for d in data}
    encoded = {d.spec.id: student.encode(Pairs(d.train.queries, d.train.titles, d.train.labels, source=d.spec.id))
               for d in data}
    targets = {d.spec.id: torch.from_numpy(np.asarray(d.targets, dtype=np.float32)) for d in data}
    pad = student.tokenizer.pad_token_id

    start = _epoch_record(0, [], student_valid_aucs(student, data, train_cfg.eval_batch_size), teacher_aucs,
                          cfg.top_k, forced)
    if not forced:
        start["next_active"] = list(ids)
    history = [start]
    active = list(start["next_active"])
    state = {"converged": False}
    log.info("student: teachers' validation ROC-AUC %s; epoch 1 trains on %s",
             ", ".join(f"{k} {v:.4f}" for k, v in teacher_aucs.items()), ",".join(active))

    def epoch_batches(epoch: int) -> list[Batch]:
        return mixed_epoch([encoded[mid] for mid in active], train_cfg.batch_size, pad, cfg.seed + epoch)

    def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        teacher_p = targets[batch.source][batch.index].to(batch.labels.device)
        return student_loss(student.logits(batch, batch.source), batch.labels, teacher_p, cfg.weight)

    def evaluate() -> float:
        record = _epoch_record(len(history), active, student_valid_aucs(student, data, train_cfg.eval_batch_size),
                               teacher_aucs, cfg.top_k)
        history.append(record)
        log.info("student epoch %d: trained on %s; margins %s; ranks %s; next A = %s", record["epoch"],
                 ",".join(record["trained_on"]), ", ".join(f"{k} {v:+.4f}" for k, v in record["margin"].items()),
                 ", ".join(f"{k} {v}" for k, v in record["rank"].items()), ",".join(record["next_active"]))
        active[:] = record["next_active"]
        state["converged"] = converged(record["margin"], cfg.epsilon)
        return -record["max_margin"]  # the kept epoch is the one with the smallest largest margin

    # The schedule is laid out for every marketplace each epoch, an upper bound of what A holds: it never decays to
    # zero before the last epoch.
    steps = sum(math.ceil(len(e) / train_cfg.batch_size) for e in encoded.values())
    params = [p for p in student.parameters() if p.requires_grad]
    result = fit(student, params, epoch_batches=epoch_batches, loss_fn=loss_fn, evaluate=evaluate, cfg=train_cfg,
                 steps_per_epoch=steps, desc="student", stop=lambda: state["converged"])
    best = result.best_epoch
    final = history[best]
    if state["converged"]:
        reason = (f"converged after epoch {len(history) - 1}: largest margin {history[-1]['max_margin']:.4f} < "
                  f"epsilon {cfg.epsilon}")
    elif result.stopped_early:
        reason = (f"patience: the largest margin did not shrink for {train_cfg.patience} epochs after epoch {best} "
                  f"({final['max_margin']:.4f})")
    else:
        reason = (f"max epochs: {train_cfg.epochs} epochs run, largest margin {final['max_margin']:.4f} >= epsilon "
                  f"{cfg.epsilon}")
    log.info("student: %s; kept epoch %d", reason, best)
    return StudentReport(result, history, reason, best, teacher_aucs,
                         {"forced": list(forced), "marketplaces": ids, "config": cfg.model_dump()})
