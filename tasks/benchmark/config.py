"""What a benchmark runs: the configuration, the plan (method × seed × order, plus the translation-fraction
sweep of the attention-distillation learner) and the identity of each run.

Everything here is plain data: a plan can be printed, hashed and compared with the runs already in
``results.jsonl`` before any model is built.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from tasks.hashing import fingerprint

#: The learner of the paper; the translation-fraction sweep (Figure 4) runs it.
AD_METHOD = "ad"
#: Full fine-tuning references for the "cost of adding marketplace t" comparison, first present wins.
FULL_FINE_TUNING = ("seq-ft", "sm")
#: The plain-fusion ablation that the attention-distillation overhead is measured against.
PLAIN_FUSION = "fusion-no-distill"
DEFAULT_FRACTIONS = (0.0, 0.1, 0.3, 0.5, 1.0)


@dataclass(frozen=True)
class BenchmarkConfig:
    """Every knob of a benchmark. The defaults are sized for the demo data on 2 CPU cores (about an hour for
    every method × 2 seeds + the fraction sweep on one seed); ``quick()`` is a few-minute smoke run, and a full-scale GPU run
    raises ``max_train_pairs``/``max_eval_pairs`` (0 = no cap), ``epochs`` and ``max_length``.

    Size knobs, biggest effect first: ``methods`` and ``seeds`` (runs = methods × seeds × orders, plus
    ``len(fractions) - 1`` sweep runs per seed), ``max_train_pairs`` (training time is linear in it),
    ``epochs``/``fusion_epochs``/``full_epochs``, ``max_length`` (attention is quadratic in it), ``max_eval_pairs``.
    """

    order: tuple[str, ...]
    methods: tuple[str, ...] = ()  # empty: every registered method
    seeds: int = 2
    base_seed: int = 13  # seeds are base_seed, base_seed + 1, ...
    orders: int = 1  # 1: the given order only; N > 1: it plus N - 1 distinct random permutations (Table 2)
    order_seed: int = 0  # seeds the random orders
    translate_fraction: float = 0.3  # what every translation-using method gets (the paper's choice)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # the learner's sweep on the first order; () skips it
    sweep_seeds: int = 1  # how many of the seeds the sweep runs for (each point is a whole ad sequence)
    translation_backend: str = "auto"
    max_train_pairs: int = 300  # per marketplace, whole queries, label ratio kept; 0 = no cap
    max_eval_pairs: int = 200  # per valid and test split; 0 = no cap
    data_seed: int = 13  # which pairs the caps keep (the same for every run)
    # A new adapter needs ~1,000+ examples / ~100+ optimiser steps to separate the demo's hard negatives; a fusion
    # over trained adapters (its head copied from the previous model) learns in far fewer.
    epochs: int = 4  # adapter stages, HAT's included (paper: 5 with early stopping)
    fusion_epochs: int = 2  # fusion stages (paper: 5 with early stopping)
    full_epochs: int = 3  # full fine-tuning stages of the baselines
    batch_size: int = 8
    max_length: int = 32
    adapter_lr: float = 1e-3
    fusion_lr: float = 1e-4
    full_lr: float = 5e-5  # the top of BERT's fine-tuning grid: at 2e-5, ~110 steps leave en at 0.71 ROC-AUC
    patience: int = 2
    device: str = "auto"
    encoder: str = ""  # a label for the report; the resolved encoder's checksum goes into the run keys

    def __post_init__(self) -> None:
        if len(self.order) < 2:
            raise ValueError(f"a continual-learning benchmark needs at least two marketplaces, got {list(self.order)}")
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"marketplace ids repeat in the order {list(self.order)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.sweep_seeds < 0:
            raise ValueError(f"sweep_seeds must be 0 or more, got {self.sweep_seeds}")
        if self.orders < 1:
            raise ValueError(f"orders must be at least 1, got {self.orders}")
        if self.orders > math.factorial(len(self.order)):
            raise ValueError(f"{len(self.order)} marketplaces have only {math.factorial(len(self.order))} orders, "
                             f"not {self.orders}")
        for f in (self.translate_fraction, *self.fractions):
            if not 0 <= f <= 1:
                raise ValueError(f"translation fractions must lie in [0, 1], got {f}")
        for name in ("max_train_pairs", "max_eval_pairs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no cap) or positive")
        if min(self.epochs, self.fusion_epochs, self.full_epochs, self.batch_size, self.max_length) < 1:
            raise ValueError("epochs, fusion_epochs, full_epochs, batch_size and max_length must be positive")

    @classmethod
    def quick(cls, order: Sequence[str], **overrides) -> BenchmarkConfig:
        """A smoke run: one seed, small caps, a two-point sweep; minutes on a CPU."""
        base = dict(seeds=1, max_train_pairs=64, max_eval_pairs=64, fractions=(0.0, 0.3), max_length=24, epochs=1,
                    fusion_epochs=1, full_epochs=1)
        return cls(order=tuple(order), **{**base, **overrides})

    @property
    def seed_values(self) -> list[int]:
        return [self.base_seed + i for i in range(self.seeds)]

    def with_methods(self, methods: Sequence[str]) -> BenchmarkConfig:
        return replace(self, methods=tuple(methods))

    def run_hash(self, *extra: object) -> str:
        """Identity of what every run computes from: sizes, epochs, rates, device... (not the plan's lists).

        ``extra`` adds what the configuration does not hold: the encoder's checksum and the data's hashes.
        Changing a knob changes the hash, so old results are not mixed with new ones on resume.
        """
        knobs = {k: v for k, v in asdict(self).items()
                 if k not in ("methods", "seeds", "sweep_seeds", "orders", "order_seed", "fractions", "order", "encoder")}
        return fingerprint("benchmark-run", knobs, *extra)[:16]


def random_orders(order: Sequence[str], n: int, seed: int = 0) -> list[tuple[str, ...]]:
    """``order`` first, then ``n - 1`` distinct random permutations of it, the same for the same seed."""
    first = tuple(order)
    if n > math.factorial(len(first)):
        raise ValueError(f"{len(first)} marketplaces have only {math.factorial(len(first))} orders, not {n}")
    orders = [first]
    if n <= 1:
        return orders
    if len(first) <= 7:  # draw without replacement from all permutations
        rest = [p for p in itertools.permutations(first) if p != first]
        picks = np.random.default_rng(seed).permutation(len(rest))[: n - 1]
        return orders + [rest[i] for i in sorted(picks)]
    rng = np.random.default_rng(seed)
    seen = {first}
    while len(orders) < n:
        candidate = tuple(first[i] for i in rng.permutation(len(first)))
        if candidate not in seen:
            seen.add(candidate)
            orders.append(candidate)
    return orders


@dataclass(frozen=True)
class RunSpec:
    """One run: a method learns ``order`` with ``seed``; ``fraction`` is the share of each new marketplace
    translated into the older languages (None: the method uses no translation)."""

    method: str
    seed: int
    order: tuple[str, ...]
    fraction: float | None = None
    main: bool = field(default=True, compare=False)  # a method × seed × order run of the main table
    sweep: bool = field(default=False, compare=False)  # a point of the learner's translation-fraction sweep

    def key(self, run_hash: str) -> str:
        fraction = "none" if self.fraction is None else f"{self.fraction:g}"
        return f"{self.method}|seed={self.seed}|order={','.join(self.order)}|fraction={fraction}|{run_hash}"

    @property
    def label(self) -> str:
        extra = "" if self.fraction is None else f" fraction {self.fraction:g}"
        return f"{self.method} seed {self.seed} order {'>'.join(self.order)}{extra}"


def plan_runs(cfg: BenchmarkConfig, uses_translation: Callable[[str], bool]) -> list[RunSpec]:
    """method × seed × order (each translation-using method at ``cfg.translate_fraction``), then the learner's
    fraction sweep on the first order for the first ``cfg.sweep_seeds`` seeds; a sweep point equal to a main run
    is that run."""
    if not cfg.methods:
        raise ValueError("no methods to run")
    orders = random_orders(cfg.order, cfg.orders, cfg.order_seed)
    runs: dict[tuple, RunSpec] = {}
    for order in orders:
        for method in cfg.methods:
            fraction = cfg.translate_fraction if uses_translation(method) else None
            for seed in cfg.seed_values:
                spec = RunSpec(method, seed, order, fraction)
                runs.setdefault((method, seed, order, fraction), spec)
    if AD_METHOD in cfg.methods:
        for seed in cfg.seed_values[: cfg.sweep_seeds]:
            for fraction in cfg.fractions:
                spec = RunSpec(AD_METHOD, seed, orders[0], float(fraction), main=False, sweep=True)
                key = (AD_METHOD, seed, orders[0], float(fraction))
                runs[key] = replace(runs[key], sweep=True) if key in runs else spec
    return list(runs.values())
