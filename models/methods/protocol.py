"""The one protocol every continual learner runs under, the paper's method included.

Marketplaces arrive in order; after each arrival the learner is scored on the test set of every
marketplace seen so far, filling row t of R[t][k]. Each method is a small class behind
:class:`ContinualMethod`: it learns one arrival at a time and scores any marketplace it has seen, knowing
which marketplace a row belongs to (the marketplace id travels with every query in production, so
per-marketplace heads, adapters or masks are legitimate at inference). ``mcl train-sequence``, the
benchmark and every baseline go through :func:`run_protocol`, so their matrices are comparable by
construction.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from models.config import BaselinesConfig, LearnerConfig
from models.metrics import ContinualMetrics, continual_metrics, roc_auc
from models.pairs import TASK_SOURCE, Pairs
from models.relevance import MarketplaceSpec
from models.stages import StageReport

if TYPE_CHECKING:
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)


@dataclass
class MarketplaceSplits:
    spec: MarketplaceSpec
    train: Pairs
    valid: Pairs
    test: Pairs

    def head(self, limit: int) -> MarketplaceSplits:
        """At most ``limit`` rows of each split (quick runs)."""
        return MarketplaceSplits(self.spec, self.train.head(limit), self.valid.head(limit), self.test.head(limit))


#: T_1..T_{t-1} for an arrival, given the arrival and the marketplaces before it.
TranslatedFor = Callable[[MarketplaceSplits, list[MarketplaceSpec]], Sequence[Pairs]]


class ContinualMethod(ABC):
    """A learner that sees marketplaces one at a time and scores any marketplace it has seen."""

    name: ClassVar[str]
    description: ClassVar[str]
    breaks_no_replay: ClassVar[bool] = False  # keeps old marketplaces' training data (replay, joint)
    uses_translation: ClassVar[bool] = False  # can use T_1..T_{t-1} at each arrival

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        self.encoder = encoder
        self.learner = learner
        self.baselines = baselines or BaselinesConfig()

    @property
    def seed(self) -> int:
        return self.learner.seed

    @property
    def wants_translation(self) -> bool:
        """Whether this run should be handed T_1..T_{t-1}: the method uses them and its learner translates."""
        return self.uses_translation and self.learner.translation.fraction > 0

    @abstractmethod
    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        """One arrival: learn D_t (``translated`` is empty unless ``wants_translation``)."""

    @abstractmethod
    def predict_proba(self, marketplace_id: str, pairs: Pairs) -> np.ndarray:
        """P(relevant) of each pair of marketplace ``marketplace_id``, in input order."""

    def own_attention(self, data: MarketplaceSplits) -> float | None:
        """Mean fusion attention the newest marketplace's adapter gets on its own test text (None: no fusion).
        A fused model that gives its new language's adapter almost nothing is serving it with the old ones."""
        return None

    @abstractmethod
    def trainable_parameters(self) -> int:
        """Parameters trained when the last marketplace was added."""

    @abstractmethod
    def total_parameters(self) -> int:
        """Parameters the method holds to serve every marketplace seen so far."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, seed={self.seed})"


def concat_pairs(parts: Sequence[Pairs], source: str = TASK_SOURCE) -> Pairs:
    """Several splits as one (joint training, replay); the result is a task split unless told."""
    return Pairs(
        [q for p in parts for q in p.queries],
        [t for p in parts for t in p.titles],
        [int(y) for p in parts for y in p.labels],
        source=source,
    )


def subsample_pairs(pairs: Pairs, n: int, seed: int) -> Pairs:
    """``n`` rows drawn without replacement, stratified by label so a small buffer keeps both classes."""
    if n >= len(pairs):
        return concat_pairs([pairs])
    labels = np.asarray(pairs.labels)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    classes = np.unique(labels)
    for i, label in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        share = round(n * len(rows) / len(labels)) if i < len(classes) - 1 else n - len(chosen)
        chosen.extend(rng.choice(rows, size=min(share, len(rows)), replace=False).tolist())
    chosen.sort()
    return Pairs([pairs.queries[i] for i in chosen], [pairs.titles[i] for i in chosen],
                 [int(pairs.labels[i]) for i in chosen], source=pairs.source)


@dataclass
class MethodResult:
    """One run of one method: its ROC-AUC matrix, time per arrival, stage reports and parameter counts."""

    method: str
    seed: int
    order: list[str]
    metrics: ContinualMetrics
    arrival_seconds: list[float]
    reports: list[StageReport]
    trainable_parameters: int  # trained when adding the last marketplace
    total_parameters: int  # held to serve every marketplace after the last arrival
    breaks_no_replay: bool
    valid_metrics: ContinualMetrics | None = None  # the same matrix on validation sets: what defaults are chosen on
    own_attention: list[float | None] | None = None  # per arrival: the new adapter's fusion attention on its text


def run_protocol(
    method: ContinualMethod,
    marketplaces: Sequence[MarketplaceSplits],
    translated_for: TranslatedFor | None = None,
    *,
    name: str | None = None,
    on_arrival: Callable[[int, dict[str, float]], None] | None = None,
) -> MethodResult:
    """Feed ``marketplaces`` to ``method`` in order; after each, fill row t of R on every test set seen so far.

    ``translated_for`` is asked for T_1..T_{t-1} from the second arrival on, when the method wants them.
    ``arrival_seconds`` times ``learn`` alone (not the evaluation), plus the original training time of any
    stage a report says was reused (``details["reused_seconds"]``); ``on_arrival(t, scores)`` sees each row
    as soon as it is measured; ``name`` labels the result (an ablation runs its method's class under its own
    name).
    """
    if not marketplaces:
        raise ValueError("a sequence needs at least one marketplace")
    n = len(marketplaces)
    matrix = np.full((n, n), np.nan)
    valid_matrix = np.full((n, n), np.nan)
    reports: list[StageReport] = []
    seconds: list[float] = []
    own: list[float | None] = []
    for t, data in enumerate(marketplaces):
        old = [m.spec for m in marketplaces[:t]]
        translated = list(translated_for(data, old)) if (translated_for and old and method.wants_translation) else []
        log.info("arrival %d/%d: %s (%s), %d translated sets", t + 1, n, data.spec.id, data.spec.language,
                 len(translated))
        start = time.perf_counter()
        arrived = list(method.learn(data, translated))
        reused = sum(r.details.get("reused_seconds", 0.0) for r in arrived)
        seconds.append(time.perf_counter() - start + reused)
        reports.extend(arrived)
        scores = {m.spec.id: roc_auc(m.test.labels, method.predict_proba(m.spec.id, m.test))
                  for m in marketplaces[: t + 1]}
        matrix[t, : t + 1] = [scores[m.spec.id] for m in marketplaces[: t + 1]]
        valid_matrix[t, : t + 1] = [roc_auc(m.valid.labels, method.predict_proba(m.spec.id, m.valid))
                                    for m in marketplaces[: t + 1]]
        own.append(method.own_attention(data))
        log.info("after %s: %s", data.spec.id, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if on_arrival is not None:
            on_arrival(t, scores)
    return MethodResult(
        method=name or method.name,
        seed=method.seed,
        order=[m.spec.id for m in marketplaces],
        metrics=continual_metrics(matrix, [m.spec.id for m in marketplaces]),
        arrival_seconds=seconds,
        reports=reports,
        trainable_parameters=method.trainable_parameters(),
        total_parameters=method.total_parameters(),
        breaks_no_replay=method.breaks_no_replay,
        valid_metrics=continual_metrics(valid_matrix, [m.spec.id for m in marketplaces]),
        own_attention=own,
    )
