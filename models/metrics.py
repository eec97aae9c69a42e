"""Ranking quality and the continual-learning summaries of the ROC-AUC matrix R[t][k]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC-AUC; a split with one class has none, which is an input error, not a 0.5."""
    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        raise ValueError("ROC-AUC needs both relevant and irrelevant pairs; this split has one class")
    return float(roc_auc_score(labels, np.asarray(scores)))


@dataclass(frozen=True)
class ContinualMetrics:
    """R[t][k]: ROC-AUC on marketplace k after learning marketplace t (NaN above the diagonal).

    average: mean of the last row. BWT (backward transfer): mean over old marketplaces of
    R[T][k] - R[k][k]; negative means forgetting. forgetting: mean over old marketplaces of
    the best earlier score minus the final one (Chaudhry et al. 2018).
    """

    marketplaces: tuple[str, ...]
    matrix: np.ndarray
    average: float
    bwt: float
    forgetting: float

    def as_dict(self) -> dict:
        return {
            "marketplaces": list(self.marketplaces),
            "matrix": [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in self.matrix],
            "average": self.average,
            "bwt": self.bwt,
            "forgetting": self.forgetting,
        }


def continual_metrics(matrix: np.ndarray, marketplaces: Sequence[str]) -> ContinualMetrics:
    r = np.asarray(matrix, dtype=np.float64)
    steps = r.shape[0]
    if r.shape != (steps, steps) or len(marketplaces) != steps:
        raise ValueError(f"R must be square over the {len(marketplaces)} marketplaces, got shape {r.shape}")
    last = r[-1]
    average = float(np.nanmean(last))
    if steps < 2:
        return ContinualMetrics(tuple(marketplaces), r, average, 0.0, 0.0)
    old = range(steps - 1)
    bwt = float(np.mean([last[k] - r[k, k] for k in old]))
    forgetting = float(np.mean([np.nanmax(r[k:steps - 1, k]) - last[k] for k in old]))
    return ContinualMetrics(tuple(marketplaces), r, average, bwt, forgetting)
