"""The frozen-encoder evaluation of a distilled student (the paper's protocol), as one plain function and its record.

Three encoders, each frozen under a probe classifier per marketplace, fitted with several seeds: the distilled
student, its teacher, and the same shallow student without distillation (the teacher's layers copied, no training:
what distillation has to beat to be worth running). Per marketplace the seeds' ROC-AUCs are compared with a
two-sample Kolmogorov–Smirnov test, as the paper does; latency per pair is measured on one CPU thread.

Beside the probes, the adapter view: per marketplace one language adapter and head on each frozen encoder, trained
as an arrival trains them. The probe is the paper's protocol; the adapter view is how this project's models use the
encoder, and the two can disagree (see :mod:`models.encoder_probe`). A reviewer choosing the base of a new lineage
reads both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from models.encoder_distill import build_student
from models.encoder_probe import adapter_aucs, encoder_parameters, pair_latency_ms, probe_aucs
from models.encoders import resolve_encoder
from tasks.learner import marketplace_splits, to_pairs

if TYPE_CHECKING:
    from models.config import EncoderDistillConfig, LearnerConfig
    from models.encoders import EncoderRef
    from tasks.data import Marketplace

log = logging.getLogger(__name__)

STUDENT, TEACHER, UNDISTILLED = "student", "teacher", "undistilled"
KINDS = (STUDENT, TEACHER, UNDISTILLED)
MEAN_ROW = "mean"


@dataclass(frozen=True)
class EncoderEvaluation:
    """Probe ROC-AUC per encoder kind, marketplace and seed; KS p-values of the student against each other kind;
    milliseconds per pair per kind and batch size; parameters of each encoder; the adapter view's test ROC-AUC per
    kind and marketplace (empty when it was skipped: ``adapter_rows = 0``)."""

    marketplaces: list[str]
    aucs: dict[str, dict[str, list[float]]]  # kind -> marketplace -> one ROC-AUC per seed
    ks_pvalues: dict[str, dict[str, float]]  # teacher/undistilled -> marketplace -> p (student vs that kind)
    latency_ms: dict[str, dict[int, float]]  # student/teacher -> batch size -> ms per pair
    parameters: dict[str, int]  # student/teacher -> parameters of the encoder
    seconds: float
    adapter_aucs: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> marketplace -> ROC-AUC

    def as_dict(self) -> dict:
        return asdict(self)

    def mean(self, kind: str, marketplace: str | None = None) -> float:
        """Mean over seeds (of one marketplace, or averaged over the marketplaces)."""
        if marketplace is not None:
            return float(np.mean(self.aucs[kind][marketplace]))
        return float(np.mean([np.mean(self.aucs[kind][m]) for m in self.marketplaces]))

    def latency_ratio(self, batch_size: int) -> float:
        """Student's ms per pair over the teacher's at ``batch_size`` (the paper: 189 / 305 = 0.62 at batch 1)."""
        return self.latency_ms[STUDENT][batch_size] / self.latency_ms[TEACHER][batch_size]

    def adapter_mean(self, kind: str) -> float:
        """The adapter view's ROC-AUC averaged over the marketplaces."""
        return float(np.mean([self.adapter_aucs[kind][m] for m in self.marketplaces]))

    def table(self) -> pd.DataFrame:
        """One row per marketplace and a ``mean`` row: each kind's mean and spread (std over seeds), the student's
        margins over teacher and undistilled copy, and the KS p-values; then, when measured, each kind's adapter
        ROC-AUC and the student's margins there."""
        rows = []
        for m in self.marketplaces:
            row: dict[str, float | str] = {"marketplace": m}
            for kind in KINDS:
                row[f"{kind}_mean"] = self.mean(kind, m)
                row[f"{kind}_std"] = float(np.std(self.aucs[kind][m]))
            row["vs_teacher"] = row["student_mean"] - row["teacher_mean"]
            row["vs_undistilled"] = row["student_mean"] - row["undistilled_mean"]
            row["ks_p_teacher"] = self.ks_pvalues[TEACHER][m]
            row["ks_p_undistilled"] = self.ks_pvalues[UNDISTILLED][m]
            if self.adapter_aucs:
                for kind in KINDS:
                    row[f"{kind}_adapter"] = self.adapter_aucs[kind][m]
                row["adapter_vs_teacher"] = row["student_adapter"] - row["teacher_adapter"]
                row["adapter_vs_undistilled"] = row["student_adapter"] - row["undistilled_adapter"]
            rows.append(row)
        table = pd.DataFrame(rows)
        mean = {"marketplace": MEAN_ROW, **table.drop(columns="marketplace").mean().to_dict()}
        mean.update({c: np.nan for c in ("ks_p_teacher", "ks_p_undistilled")})
        return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: per-marketplace means, KS p-values, averages, latencies and their ratios."""
        out: dict[str, float] = {}
        for kind in KINDS:
            out[f"probe_auc.{kind}"] = self.mean(kind)
            out.update({f"probe_auc.{kind}.{m}": self.mean(kind, m) for m in self.marketplaces})
            if self.adapter_aucs:
                out[f"adapter_auc.{kind}"] = self.adapter_mean(kind)
                out.update({f"adapter_auc.{kind}.{m}": self.adapter_aucs[kind][m] for m in self.marketplaces})
        for other, pvalues in self.ks_pvalues.items():
            out.update({f"ks_p.{other}.{m}": p for m, p in pvalues.items()})
        for kind, by_size in self.latency_ms.items():
            out.update({f"ms_per_pair.{kind}.b{size}": ms for size, ms in by_size.items()})
        out.update({f"latency_ratio.b{size}": self.latency_ratio(size) for size in self.latency_ms[STUDENT]})
        out.update({f"parameters.{kind}": float(n) for kind, n in self.parameters.items()})
        return out


def ks_pvalues(aucs: Mapping[str, Mapping[str, Sequence[float]]],
               marketplaces: Sequence[str]) -> dict[str, dict[str, float]]:
    """Two-sample KS test of the student's seed ROC-AUCs against the teacher's and the undistilled copy's."""
    return {other: {m: float(ks_2samp(aucs[STUDENT][m], aucs[other][m]).pvalue) for m in marketplaces}
            for other in (TEACHER, UNDISTILLED)}


def evaluate_encoders(
    student: Path,
    teacher: EncoderRef,
    layers: Sequence[int],
    marketplaces: Mapping[str, Marketplace],
    cfg: EncoderDistillConfig,
    learner: LearnerConfig,
    *,
    work_dir: Path,
    student_is_copy: bool = False,
) -> EncoderEvaluation:
    """Probe the student, the teacher and the undistilled copy of ``layers`` on every marketplace (fitted on its
    train split, scored on its test split), train an adapter per marketplace on each (``learner``'s stage-1
    settings, ``cfg.adapter_rows`` pairs), then time student and teacher on the first marketplace's test pairs.

    ``student_is_copy`` (a run with ``max_steps = 0``): the student is the undistilled copy, so it is scored once
    and its figures stand for both, which saves a third of the evaluation."""
    started = time.perf_counter()
    folders = {STUDENT: Path(student), TEACHER: Path(teacher.path)}
    if student_is_copy:
        log.info("the student is the undistilled copy (max_steps = 0): scored once, its figures stand for both")
    else:
        folders[UNDISTILLED] = build_student(teacher.path, Path(work_dir) / "undistilled", layers)
    splits = {m: (to_pairs(mk.train), to_pairs(mk.test)) for m, mk in marketplaces.items()}
    aucs = {}
    for kind, folder in folders.items():
        aucs[kind] = probe_aucs(folder, splits, seeds=cfg.eval_seeds, fraction=cfg.probe_fraction, seed=cfg.seed,
                                batch_size=cfg.eval_batch_size, max_length=cfg.max_length, device=cfg.device)
        log.info("probe ROC-AUC of the %s: %s", kind,
                 ", ".join(f"{m} {np.mean(v):.4f}" for m, v in aucs[kind].items()))
    adapters = {}
    if cfg.adapter_rows:
        tables = {m: marketplace_splits(mk) for m, mk in marketplaces.items()}
        for kind, folder in folders.items():
            ref = teacher if kind == TEACHER else resolve_encoder(str(folder), Path(work_dir) / "checksums")
            adapters[kind] = adapter_aucs(ref, tables, learner, rows=cfg.adapter_rows)
            log.info("adapter ROC-AUC on the %s: %s", kind,
                     ", ".join(f"{m} {v:.4f}" for m, v in adapters[kind].items()))
    if student_is_copy:
        aucs[UNDISTILLED] = aucs[STUDENT]
        if adapters:
            adapters[UNDISTILLED] = adapters[STUDENT]
    ids = list(marketplaces)
    first = splits[ids[0]][1].head(cfg.latency_pairs)
    latency = {kind: pair_latency_ms(folders[kind], first, batch_sizes=cfg.latency_batch_sizes,
                                     max_length=cfg.max_length, repeats=cfg.latency_repeats)
               for kind in (STUDENT, TEACHER)}
    parameters = {kind: encoder_parameters(folders[kind]) for kind in (STUDENT, TEACHER)}
    return EncoderEvaluation(ids, aucs, ks_pvalues(aucs, ids), latency, parameters, time.perf_counter() - started,
                             adapters)
