"""What a benchmark runs: the configuration, the plan (method × seed × order, plus the translation-fraction
sweep of the attention-distillation learner) and the identity of each run.

Everything here is plain data: a plan can be printed, hashed and compared with the runs already in
``results.jsonl`` before any model is built.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.config import BaselinesConfig, LearnerConfig
from tasks.config import BENCHMARK_PRESET, build, merge, parse_overrides, read_file
from tasks.hashing import fingerprint

#: The learner of the paper; the translation-fraction sweep (Figure 4) runs it.
AD_METHOD = "ad"
#: Full fine-tuning references for the "cost of adding marketplace t" comparison, first present wins.
FULL_FINE_TUNING = ("seq-ft", "sm")
#: The plain-fusion ablation that the attention-distillation overhead is measured against.
PLAIN_FUSION = "fusion-no-distill"
DEFAULT_FRACTIONS = (0.0, 0.1, 0.3, 0.5, 1.0)


class BenchmarkConfig(BaseModel):
    """Every knob of a benchmark: the plan (which runs), the data caps, and the learner and baselines every run
    derives its configuration from (``method_config``). Presets in ``tasks/presets/benchmark/`` size it: ``cpu``
    (the default: every method × 2 seeds in two worker processes, about 55 minutes on 2 CPU cores) and
    ``quick`` (a few-minute smoke run); a full-scale GPU run raises the caps (0 = none), the epochs and
    ``learner.max_length``.

    Size knobs, biggest effect first: ``methods`` and ``seeds`` (runs = methods × seeds × orders, plus
    ``len(fractions) - 1`` sweep runs per seed), ``max_train_pairs`` (training time is linear in it), the stages'
    epochs, ``learner.max_length`` (attention is quadratic in it), ``max_eval_pairs``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    order: tuple[str, ...] = Field(description="Marketplace ids in arrival order (ESCI: locales).")
    methods: tuple[str, ...] = Field((), description="Methods to run; empty: every registered method (the cpu "
                                                     "preset names the ones the learner is judged against).")
    seeds: int = Field(2, ge=1, description="Seeds per method and order: learner.seed, learner.seed + 1, ...")
    orders: int = Field(1, ge=1, description="1: the given order only; N > 1: it plus N - 1 distinct random "
                                             "permutations (the paper's Table 2).")
    order_seed: int = Field(0, description="Seeds the random orders.")
    fractions: tuple[float, ...] = Field(DEFAULT_FRACTIONS, description="The learner's translation-fraction sweep "
                                                                        "on the first order; () skips it.")
    sweep_seeds: int = Field(1, ge=0, description="How many of the seeds the sweep runs for (each point is a whole "
                                                  "ad sequence).")
    workers: int = Field(1, ge=1, description="Processes the runs are shared out to, the machine's cores split "
                                              "evenly between them (1: every run in this process). Results do not "
                                              "depend on it; speed does (tasks/benchmark/workers.py).")
    max_train_pairs: int = Field(300, ge=0, description="Train pairs per marketplace, whole queries, label ratio "
                                                        "kept; 0 = no cap.")
    max_eval_pairs: int = Field(200, ge=0, description="Valid and test pairs per marketplace; 0 = no cap.")
    data_seed: int = Field(13, description="Which pairs the caps keep (the same for every run).")
    encoder: str = Field("", description="A label for the report; the resolved encoder's checksum goes into the "
                                         "run keys.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="The learner every adapter-based "
                                   "method starts from (an ablation adds its preset on top).")
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig, description="The reference methods' own "
                                       "hyper-parameters.")

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for f in value:
            if not 0 <= f <= 1:
                raise ValueError(f"translation fractions must lie in [0, 1], got {f}")
        return value

    @model_validator(mode="after")
    def _plan_is_possible(self) -> BenchmarkConfig:
        if len(self.order) < 2:
            raise ValueError(f"a continual-learning benchmark needs at least two marketplaces, got {list(self.order)}")
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"marketplace ids repeat in the order {list(self.order)}")
        if self.orders > math.factorial(len(self.order)):
            raise ValueError(f"{len(self.order)} marketplaces have only {math.factorial(len(self.order))} orders, "
                             f"not {self.orders}")
        return self

    @property
    def seed_values(self) -> list[int]:
        return [self.learner.seed + i for i in range(self.seeds)]

    def run_hash(self, *extra: object) -> str:
        """Identity of what every run computes from: caps, the learner and the baselines (not the plan's lists).

        ``extra`` adds what the configuration does not hold: the encoder's checksum and the data's hashes.
        Changing a knob changes the hash, so old results are not mixed with new ones on resume. The seed and the
        translation fraction are part of each run's own key instead.
        """
        learner = self.learner.model_dump()
        learner.pop("seed")
        learner["translation"].pop("fraction")
        knobs = {"max_train_pairs": self.max_train_pairs, "max_eval_pairs": self.max_eval_pairs,
                 "data_seed": self.data_seed, "learner": learner, "baselines": self.baselines.model_dump()}
        return fingerprint("benchmark-run", knobs, *extra)[:16]


def method_names() -> list[str]:
    from models.methods import METHODS

    return list(METHODS)


def check_methods(methods: Sequence[str]) -> None:
    known = method_names()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")


def benchmark_config(order: Sequence[str], methods: Sequence[str] = (), *, preset: str | None = BENCHMARK_PRESET,
                     file: str | Path | None = None, overrides: Sequence[str] = (), **plan: Any) -> BenchmarkConfig:
    """A benchmark from a preset (``tasks/presets/benchmark/``), a TOML file and ``--set`` overrides, plus plan
    values given directly (``order``, ``methods``: none keeps the preset's list, ``["all"]`` every method...). A setting that is not a benchmark field is a learner
    setting: ``--set fusion.epochs=3`` means ``learner.fusion.epochs``; ``baselines.full.epochs`` reaches the
    references."""
    values = merge(read_file(file), {}) if file is not None else {}
    given = parse_overrides(overrides)
    fields = BenchmarkConfig.model_fields

    def routed(tree: dict[str, Any]) -> dict[str, Any]:
        learner = {k: v for k, v in tree.items() if k not in fields}
        rest = {k: v for k, v in tree.items() if k in fields}
        return merge(rest, {"learner": learner}) if learner else rest

    overlay = merge(routed(values), routed(given))
    methods = tuple(method_names()) if tuple(methods) == ("all",) else tuple(methods)
    direct = {"order": tuple(order), **({"methods": methods} if methods else {}), **plan}
    cfg = build(BenchmarkConfig, preset=preset, kind="benchmark", overrides=merge(overlay, direct))
    check_methods(cfg.methods)
    return cfg if cfg.methods else cfg.model_copy(update={"methods": tuple(method_names())})


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
    """method × seed × order (each translation-using method at ``cfg.learner.translation.fraction``), then the learner's
    fraction sweep on the first order for the first ``cfg.sweep_seeds`` seeds; a sweep point equal to a main run
    is that run."""
    if not cfg.methods:
        raise ValueError("no methods to run")
    orders = random_orders(cfg.order, cfg.orders, cfg.order_seed)
    runs: dict[tuple, RunSpec] = {}
    for order in orders:
        for method in cfg.methods:
            fraction = cfg.learner.translation.fraction if uses_translation(method) else None
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
