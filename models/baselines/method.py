"""What every continual learner in the benchmark is: one interface, one configuration.

The benchmark compares the paper's method with its ablations and with the classic
continual-learning baselines under one protocol (``run_method``). Each method is a small class
behind :class:`ContinualMethod`: it learns one arrival at a time and scores any marketplace it has
seen, knowing which marketplace a row belongs to (the marketplace id travels with every query in
production, so per-marketplace heads, adapters or masks are legitimate at inference).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from models.pairs import TASK_SOURCE, Pairs
from models.sequence import LearnerConfig, MarketplaceSplits
from models.stages import StageReport
from models.training import TrainConfig

if TYPE_CHECKING:
    from models.encoders import EncoderRef


@dataclass
class MethodConfig:
    """Hyper-parameters of every method; each method reads only its own fields.

    - ``learner``: the adapter/fusion stages of the method and its ablations (and HAT's adapter
      stage: its learning rate, epochs and batch size), the distillation options, ``max_length``
      and ``device``, shared by all methods.
    - ``full``: full fine-tuning (sm, seq-ft, ewc, lwf, replay). 2e-5 is the usual BERT fine-tuning
      rate (Devlin et al. 2019); higher rates make a 12-layer encoder diverge on small data.
    - ``ewc_lambda``: weight of the EWC penalty λ/2·Σ F_i (θ_i − θ*_i)². 1000 suits a Fisher estimated as
      mean squared mini-batch gradients of a batch-mean cross-entropy (values ~1e-6..1e-3 per weight), so
      the penalty's gradient is of the order of the task gradient for the most important weights; it is
      the middle of the 10²..10⁴ range used for BERT-size models — tune it on validation data.
    - ``ewc_fisher_examples``: training pairs used to estimate the Fisher (a cap; the Fisher costs one
      forward/backward pass per batch over them).
    - ``lwf_alpha``/``lwf_temperature``: λ_o = 1 and T = 2 as in Li & Hoiem (2017).
    - ``replay_per_marketplace``: 200 pairs per old marketplace: a small episodic memory (a few per cent
      of a marketplace), the regime in which replay is a cheap but data-keeping baseline.
    - ``hat_smax``/``hat_lambda``: s_max = 400 and c = 0.75, the defaults of Serra et al. (2018).
    - ``prune_vocabulary``: full fine-tuning keeps only the embedding rows of tokens that occur in the
      method's data (exact; see :mod:`models.baselines.full_model`).
    """

    learner: LearnerConfig = field(default_factory=LearnerConfig)
    full: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=2e-5))
    ewc_lambda: float = 1000.0
    ewc_fisher_examples: int = 2048
    lwf_alpha: float = 1.0
    lwf_temperature: float = 2.0
    replay_per_marketplace: int = 200
    hat_smax: float = 400.0
    hat_lambda: float = 0.75
    prune_vocabulary: bool = True


class ContinualMethod(ABC):
    """A learner that sees marketplaces one at a time and scores any marketplace it has seen."""

    name: ClassVar[str]
    description: ClassVar[str]
    breaks_no_replay: ClassVar[bool] = False  # keeps old marketplaces' training data (replay, joint)
    uses_translation: ClassVar[bool] = False  # wants T_1..T_{t-1} at each arrival

    def __init__(self, encoder: EncoderRef, cfg: MethodConfig, seed: int) -> None:
        self.encoder = encoder
        self.cfg = cfg
        self.seed = seed

    @abstractmethod
    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        """One arrival: learn D_t (``translated`` is empty unless ``uses_translation``)."""

    @abstractmethod
    def predict_proba(self, marketplace_id: str, pairs: Pairs) -> np.ndarray:
        """P(relevant) of each pair of marketplace ``marketplace_id``, in input order."""

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
