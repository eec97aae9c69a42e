"""The student's teachers: which model teaches each marketplace, with which weights, and their cached soft targets.

For marketplace i the candidates are every model that can score it: the champion (its fusion), the champion's
adapter-only model (A_i and its head) and any extra model the user names. The teacher T_i is the candidate with the
best validation ROC-AUC on i, and margins are measured against it. The soft target of a training row of i mixes the
candidates' probabilities with importance weights w_{t,i}: all on T_i (``own``) or a softmax over the candidates'
validation ROC-AUC on i (``softmax``). Teachers never change during the student's training, so each row's target is
computed once, before it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.config import TeacherWeights
from models.metrics import roc_auc
from models.pairs import Pairs
from models.relevance import RelevanceModel

log = logging.getLogger(__name__)

#: P(relevant) of each pair of a marketplace: ``score(marketplace_id, pairs)``.
Scorer = Callable[[str, Pairs], np.ndarray]


@dataclass(frozen=True)
class TeacherCandidate:
    """A model that may teach the marketplaces it knows; ``name`` is what the registry tags record."""

    name: str
    marketplaces: frozenset[str]
    score: Scorer


def relevance_candidates(model: RelevanceModel, label: str, *, batch_size: int = 64) -> list[TeacherCandidate]:
    """A relevance model as teacher candidates: its fusion (or its one adapter, when it has no fusion yet) and, with
    a fusion, its adapter-only model, which scores marketplace i with A_i and i's head."""
    known = frozenset(model.adapter_names)
    served = TeacherCandidate(f"{label} fusion" if model.fusion else f"{label} adapter", known,
                              lambda mid, pairs: model.predict_proba(pairs, batch_size=batch_size))
    if model.fusion is None:
        return [served]
    alone = TeacherCandidate(f"{label} adapter", known,
                             lambda mid, pairs: model.predict_proba(pairs, setup=mid, batch_size=batch_size))
    return [served, alone]


@dataclass(frozen=True)
class TeacherChoice:
    """Every candidate's validation ROC-AUC on every marketplace it knows (marketplace -> candidate -> ROC-AUC, in
    the candidates' order), and the teacher of each marketplace: the best, the first listed on a tie."""

    aucs: dict[str, dict[str, float]]

    def teacher(self, marketplace_id: str) -> str:
        scores = self.aucs[marketplace_id]
        return max(scores, key=lambda name: (scores[name], -list(scores).index(name)))

    def teacher_auc(self, marketplace_id: str) -> float:
        return self.aucs[marketplace_id][self.teacher(marketplace_id)]

    def weights(self, marketplace_id: str, mode: TeacherWeights, temperature: float = 1.0) -> dict[str, float]:
        """w_{t,i} over the candidates that know marketplace i."""
        scores = self.aucs[marketplace_id]
        if mode == "own":
            best = self.teacher(marketplace_id)
            return {name: float(name == best) for name in scores}
        soft = torch.softmax(torch.tensor(list(scores.values()), dtype=torch.float64) / temperature, dim=0)
        return dict(zip(scores, soft.tolist(), strict=True))


def choose_teachers(candidates: Sequence[TeacherCandidate], valid: Mapping[str, Pairs]) -> TeacherChoice:
    """Score every candidate on the validation set of every marketplace it knows; a marketplace no candidate knows
    has no teacher, which is the caller's input error."""
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"teacher candidates need distinct names, got {names}")
    aucs: dict[str, dict[str, float]] = {}
    for mid, pairs in valid.items():
        scores = {c.name: roc_auc(pairs.labels, c.score(mid, pairs)) for c in candidates if mid in c.marketplaces}
        if not scores:
            raise ValueError(f"no teacher candidate knows marketplace {mid!r} (candidates: {', '.join(names)})")
        aucs[mid] = scores
        log.info("teachers of %s (validation ROC-AUC): %s", mid, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return TeacherChoice(aucs)


def soft_targets(candidates: Sequence[TeacherCandidate], weights: Mapping[str, float], marketplace_id: str,
                 train: Pairs) -> np.ndarray:
    """ŷ_i^T = Σ_t w_{t,i}·p_t(x) for every training row of marketplace i, as P(relevant) (float32, row order);
    candidates with weight 0 are not run."""
    by_name = {c.name: c for c in candidates}
    total = np.zeros(len(train), dtype=np.float64)
    for name, weight in weights.items():
        if weight > 0:
            total += weight * np.asarray(by_name[name].score(marketplace_id, train), dtype=np.float64)
    return (total / sum(weights.values())).astype(np.float32)
