"""One finished run as a plain record, and ``results.jsonl``: appended after every run, read back on resume.

A record keeps what the report needs and nothing that needs a model to read: the ROC-AUC matrix,
wall time per arrival, the stages' sizes and speeds, the translation done for the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.benchmark.config import RunSpec

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"


@dataclass
class StageRecord:
    stage: str
    marketplace: str
    trainable_parameters: int
    train_examples: int
    train_seconds: float
    examples_per_second: float
    epochs_run: int

    @classmethod
    def from_report(cls, report: Any) -> StageRecord:
        """From a ``models.stages.StageReport`` (or its ``as_dict()``)."""
        if isinstance(report, Mapping):
            stage, marketplace, fit = report["stage"], report["marketplace"], report["fit"]
            get = fit.__getitem__
        else:
            stage, marketplace, fit = report.stage, report.marketplace, report.fit
            get = lambda name: getattr(fit, name)  # noqa: E731
        return cls(stage, marketplace, int(get("trainable_parameters")), int(get("train_examples")),
                   float(get("train_seconds")), float(get("examples_per_second")), int(get("epochs_run")))


@dataclass
class RunRecord:
    """What one (method, seed, order, fraction) run produced."""

    key: str
    run_hash: str
    method: str
    seed: int
    order: list[str]
    fraction: float | None
    main: bool  # in the main table (refreshed from the current plan on resume)
    sweep: bool  # a point of the fraction sweep (likewise)
    matrix: list[list[float | None]]  # R[t][k] in arrival order; None above the diagonal
    average: float
    bwt: float
    forgetting: float
    arrival_seconds: list[float]
    trainable_parameters: int
    total_parameters: int
    breaks_no_replay: bool
    stages: list[StageRecord] = field(default_factory=list)
    translation_seconds: float = 0.0
    translated_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # new id -> old language -> rows
    finished_at: float = 0.0
    valid_matrix: list[list[float | None]] = field(default_factory=list)  # R on validation sets (defaults are chosen
    valid_average: float | None = None  # on these, never on test)
    own_attention: list[float | None] = field(default_factory=list)  # per arrival: the new adapter's attention share

    @property
    def train_seconds(self) -> float:
        return float(sum(self.arrival_seconds))

    @property
    def final(self) -> dict[str, float]:
        """ROC-AUC on every marketplace after the whole sequence."""
        return {mid: float(v) for mid, v in zip(self.order, self.matrix[-1], strict=True) if v is not None}

    def r(self) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in row] for row in self.matrix], dtype=float)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        values = dict(data)
        values["stages"] = [StageRecord(**s) for s in values.get("stages", [])]
        return cls(**values)

    @classmethod
    def from_result(cls, spec: RunSpec, run_hash: str, result: Any, *, translation_seconds: float = 0.0,
                    translated_rows: Mapping[str, Mapping[str, int]] | None = None) -> RunRecord:
        """From a ``models.methods.MethodResult``: its metrics, timings and stage reports."""
        metrics = result.metrics
        if list(metrics.marketplaces) != list(spec.order):
            raise ValueError(f"{spec.label}: the result covers {list(metrics.marketplaces)}, not {list(spec.order)}")
        matrix = [[None if (v is None or math.isnan(v)) else float(v) for v in row] for row in np.asarray(metrics.matrix)]
        return cls(
            key=spec.key(run_hash), run_hash=run_hash, method=spec.method, seed=spec.seed, order=list(spec.order),
            fraction=spec.fraction, main=spec.main, sweep=spec.sweep, matrix=matrix, average=float(metrics.average),
            bwt=float(metrics.bwt), forgetting=float(metrics.forgetting),
            arrival_seconds=[float(s) for s in result.arrival_seconds],
            trainable_parameters=int(result.trainable_parameters), total_parameters=int(result.total_parameters),
            breaks_no_replay=bool(result.breaks_no_replay),
            stages=[StageRecord.from_report(r) for r in result.reports],
            translation_seconds=float(translation_seconds),
            translated_rows={k: dict(v) for k, v in (translated_rows or {}).items()},
            finished_at=time.time(),
            **_valid(result),
        )


def _valid(result: Any) -> dict[str, Any]:
    valid = getattr(result, "valid_metrics", None)
    if valid is None:
        return {}
    return {"valid_matrix": [[None if (v is None or math.isnan(v)) else float(v) for v in row]
                             for row in np.asarray(valid.matrix)], "valid_average": float(valid.average),
            "own_attention": list(getattr(result, "own_attention", None) or [])}


class ResultsFile:
    """``<out>/results.jsonl``: one JSON record per line, appended and flushed after each run.

    A line cut short by a crash is skipped with a warning (its run simply runs again).
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / RESULTS_FILE

    def read(self) -> list[RunRecord]:
        if not self.path.is_file():
            return []
        records = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(RunRecord.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError) as err:
                log.warning("%s line %d is not a complete record (%s); that run will run again", self.path, number, err)
        return records

    def finished(self) -> dict[str, RunRecord]:
        return {r.key: r for r in self.read()}

    def append(self, record: RunRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        with self.path.open("a") as fh:
            if torn:  # a crash mid-line: start on a fresh line so this record stays readable
                fh.write("\n")
            fh.write(json.dumps(record.as_dict(), allow_nan=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def select(records: Iterable[RunRecord], keys: Iterable[str]) -> list[RunRecord]:
    """The records of ``keys``, in that order (a plan's records out of everything the file holds)."""
    by_key = {r.key: r for r in records}
    return [by_key[k] for k in keys if k in by_key]
