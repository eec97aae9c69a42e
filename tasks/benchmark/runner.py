"""Running a benchmark plan: data loaded and capped once, translations made once per (arrival, older languages,
fraction, seed), each run through ``models.methods.run_method``, each record appended to ``results.jsonl`` as
soon as its run ends. A rerun with the same configuration skips every run already in the file.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from models.config import BaselinesConfig, LearnerConfig
from tasks.benchmark.config import BenchmarkConfig, RunSpec, plan_runs
from tasks.benchmark.results import ResultsFile, RunRecord
from tasks.benchmark.workers import run_executor
from tasks.config import build
from tasks.hashing import code_fingerprint, table_hash
from tasks.learner import marketplace_splits, to_pairs, translated_source
from tasks.translation.subset import select_subset

if TYPE_CHECKING:
    from models.encoders import EncoderRef
    from models.methods import MarketplaceSplits
    from models.pairs import Pairs
    from models.relevance import MarketplaceSpec
    from tasks.data import Marketplace

log = logging.getLogger(__name__)

#: ``run_method``'s signature: (name, encoder, marketplaces, learner, baselines, translated_for=None) -> MethodResult.
Runner = Callable[..., Any]
CONFIG_FILE = "benchmark.json"


# --------------------------------------------------------------------------- methods
def method_learner(learner: LearnerConfig, method: str) -> LearnerConfig:
    """The learner ``method`` runs with: the benchmark's, plus the method's preset (an ablation's settings)."""
    from models.methods import METHOD_PRESETS

    preset = METHOD_PRESETS.get(method)
    return learner if preset is None else build(LearnerConfig, base=learner.model_dump(), preset=preset)


def translating(method: str) -> bool:
    """Whether a method's runs are handed translated sets: its class uses them and its preset does not switch
    translation off (``ad`` at a fraction of 0 is still the translating method, at that fraction)."""
    from models.methods import METHODS

    probe = LearnerConfig(translation={"fraction": 1.0})
    return METHODS[method].uses_translation and method_learner(probe, method).translation.fraction > 0


def method_config(cfg: BenchmarkConfig, spec: RunSpec) -> tuple[LearnerConfig, BaselinesConfig]:
    """One run's configuration: the benchmark's learner with the method's preset, the run's seed and (for a
    translating run) its fraction; the baselines' hyper-parameters as the benchmark holds them."""
    learner = method_learner(cfg.learner, spec.method)
    update: dict[str, Any] = {"seed": spec.seed}
    if spec.fraction is not None:
        update["translation"] = learner.translation.model_copy(update={"fraction": spec.fraction})
    return learner.model_copy(update=update), cfg.baselines


def run_identity(spec: RunSpec, learner: LearnerConfig, baselines: BaselinesConfig) -> str:
    """What a run computes: the method's class, the configuration it runs under (with the share of translated
    pairs it is actually handed), its seed and its order. Specs with one identity are one run, trained once:
    ``ad`` at fraction 0 (the sweep's first point) is ``ad-no-translation``."""
    from models.methods import METHODS

    kind = METHODS[spec.method].__qualname__ if spec.method in METHODS else spec.method
    handed = learner.translation.model_copy(update={"fraction": spec.fraction or 0.0})
    return json.dumps({"class": kind, "order": list(spec.order),
                       "learner": learner.model_copy(update={"translation": handed}).model_dump(mode="json"),
                       "baselines": baselines.model_dump(mode="json")}, sort_keys=True)


# --------------------------------------------------------------------------- data
def adapter_bank_folder(root: Path) -> Path:
    """Where the adapters this code (``models/`` and ``tasks/``) trains are kept under ``root``: a code change gets
    a fresh folder, so a bank never hands out adapters an older trainer made."""
    return Path(root) / code_fingerprint()[:16]


def cap_table(table: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most about ``limit`` rows: whole queries, the label ratio kept (the translation subset's sampler)."""
    if not limit or len(table) <= limit:
        return table
    return select_subset(table, limit / len(table), seed).reset_index(drop=True)


@dataclass
class BenchmarkData:
    """The marketplaces of the benchmark, validated and capped once; every run reads the same rows."""

    marketplaces: dict[str, Marketplace]

    @classmethod
    def load(cls, root: Path | str, cfg: BenchmarkConfig, *, s3_endpoint_url: str | None = None) -> BenchmarkData:
        """Read and validate every marketplace before anything trains (bad input: one ``DataValidationError``)."""
        from tasks.data import load_data_root

        return cls.capped(load_data_root(root, list(cfg.order), s3_endpoint_url=s3_endpoint_url), cfg)

    @classmethod
    def from_esci(cls, examples: Path | str, products: Path | str | None, cfg: BenchmarkConfig, *,
                  s3_endpoint_url: str | None = None) -> BenchmarkData:
        """ESCI in its published layout: the order names locales (``us``, ``es``, ``jp``)."""
        from tasks.data import load_esci

        return cls.capped([load_esci(examples, products, locale, seed=cfg.data_seed, s3_endpoint_url=s3_endpoint_url)
                           for locale in cfg.order], cfg)

    @classmethod
    def capped(cls, marketplaces: Sequence[Marketplace], cfg: BenchmarkConfig) -> BenchmarkData:
        return cls({m.id: replace(m, train=cap_table(m.train, cfg.max_train_pairs, cfg.data_seed),
                                  valid=cap_table(m.valid, cfg.max_eval_pairs, cfg.data_seed),
                                  test=cap_table(m.test, cfg.max_eval_pairs, cfg.data_seed))
                   for m in marketplaces})

    def splits(self, order: Sequence[str]) -> list[MarketplaceSplits]:
        return [marketplace_splits(self.marketplaces[mid]) for mid in order]

    def hashes(self) -> dict[str, dict[str, str]]:
        return {mid: {s: table_hash(getattr(m, s)) for s in ("train", "valid", "test")}
                for mid, m in sorted(self.marketplaces.items())}


# --------------------------------------------------------------------------- translations
@dataclass
class Translations:
    """T_1..T_{t-1} for each arrival, made once per (new marketplace, older languages, fraction, seed) and kept
    for the whole benchmark; the translation cache on disk makes a rerun free. Without a translator for a pair
    (``backend="auto"``) the arrival goes on untranslated, with a warning (``tasks.steps.translate_step``)."""

    data: BenchmarkData
    backend: str
    cache_dir: Path
    made: dict[tuple, tuple[dict[str, pd.DataFrame], float]] = field(default_factory=dict)

    def for_arrival(self, new: str, old: Sequence[str], fraction: float, seed: int) -> tuple[dict[str, pd.DataFrame], float]:
        market = self.data.marketplaces[new]
        languages = tuple(dict.fromkeys(self.data.marketplaces[m].language for m in old))
        key = (new, languages, float(fraction), seed)
        if key not in self.made and fraction <= 0:  # nothing to translate (and no orchestration imports)
            self.made[key] = ({}, 0.0)
        if key not in self.made:
            from tasks.steps import translate_step

            start = time.perf_counter()
            tables = translate_step(market.train, market.language, list(languages), fraction=fraction, seed=seed,
                                    backend=self.backend, cache_dir=self.cache_dir)
            self.made[key] = (tables, time.perf_counter() - start)
        return self.made[key]

    def for_run(self, spec: RunSpec) -> tuple[TranslatedSets | None, float, dict[str, dict[str, int]]]:
        """The run's ``translated_for``, the seconds spent translating for it and the rows per language."""
        if spec.fraction is None:
            return None, 0.0, {}
        pairs: dict[str, dict[str, Pairs]] = {}
        seconds, rows = 0.0, {}
        for t in range(1, len(spec.order)):
            tables, spent = self.for_arrival(spec.order[t], spec.order[:t], spec.fraction, spec.seed)
            seconds += spent
            rows[spec.order[t]] = {lang: len(table) for lang, table in tables.items()}
            pairs[spec.order[t]] = {lang: to_pairs(table, translated_source(lang)) for lang, table in tables.items()}
        return TranslatedSets(pairs), seconds, rows


@dataclass(frozen=True)
class TranslatedSets:
    """One run's ``translated_for``: T_1..T_{t-1} by new marketplace and older language. Plain data, so a worker
    process receives it whole (a closure would not pickle)."""

    by_arrival: dict[str, dict[str, Pairs]]

    def __call__(self, data: MarketplaceSplits, old: list[MarketplaceSpec]) -> list[Pairs]:
        sets = self.by_arrival.get(data.spec.id, {})
        languages = dict.fromkeys(spec_.language for spec_ in old)
        return [sets[lang] for lang in languages if lang in sets]


# --------------------------------------------------------------------------- the loop
def execute_run(runner: Runner, spec: RunSpec, run_hash: str, encoder: EncoderRef, splits: list[MarketplaceSplits],
                learner: LearnerConfig, baselines: BaselinesConfig, translated_for: TranslatedSets | None,
                translation_seconds: float, translated_rows: dict[str, dict[str, int]]) -> RunRecord:
    """One run, wherever it executes (this process or a worker): the method learns the order, a record comes back."""
    result = runner(spec.method, encoder, splits, learner, baselines, translated_for=translated_for)
    record = RunRecord.from_result(spec, run_hash, result, translation_seconds=translation_seconds,
                                   translated_rows=translated_rows)
    log.info("%s: average %.4f, BWT %+.4f, forgetting %.4f, %.1f s", spec.label, record.average, record.bwt,
             record.forgetting, record.train_seconds)
    del result
    gc.collect()
    return record


@dataclass
class BenchmarkRun:
    """What ``run_benchmark`` returns: the plan's records (finished earlier or now) and what it did."""

    records: list[RunRecord]
    ran: int
    skipped: int
    run_hash: str


def run_benchmark(
    cfg: BenchmarkConfig,
    data: BenchmarkData,
    out: Path,
    *,
    encoder: EncoderRef,
    runner: Runner | None = None,
    translation_uses: Callable[[str], bool] | None = None,
    configure: Callable[[BenchmarkConfig, RunSpec], tuple[LearnerConfig, BaselinesConfig]] = method_config,
    translation_cache: Path | None = None,
    progress: bool = True,
) -> BenchmarkRun:
    """Run every planned run not yet in ``<out>/results.jsonl`` and append its record there as soon as it ends.

    ``runner`` defaults to ``models.methods.run_method``, ``configure`` (a run's learner and baselines) to
    ``method_config`` and ``translation_uses`` (which methods translate) to the methods' own ``uses_translation``.
    The key of a run is (method, seed, order, fraction, configuration hash); the hash covers every knob that
    changes a run's result, the encoder's checksum and the capped data's content. A spec whose ``run_identity``
    equals a finished run's is recorded as that run, not trained again: the sweep's fraction-0 point of a method
    that translates is its no-translation ablation.
    """
    from tqdm.auto import tqdm

    if runner is None:
        from models.methods import run_method as runner
    if translation_cache is None:
        from tasks.settings import get_settings

        translation_cache = get_settings().cache_dir / "translations"
    plan = plan_runs(cfg, translation_uses or translating)
    run_hash = cfg.run_hash(encoder.checksum, data.hashes())
    results = ResultsFile(out)
    finished = results.finished()
    todo = deque(s for s in plan if s.key(run_hash) not in finished)
    to_run = len(todo)
    log.info("benchmark: %d runs planned, %d already in %s, %d to run", len(plan), len(plan) - to_run,
             results.path, to_run)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / CONFIG_FILE).write_text(json.dumps({
        "config": cfg.model_dump(mode="json"), "run_hash": run_hash, "encoder": {"name": encoder.name, "checksum": encoder.checksum},
        "data": data.hashes(), "plan": [s.key(run_hash) for s in plan],
    }, indent=2))
    translations = Translations(data, cfg.learner.translation.backend, Path(translation_cache))
    done_as: dict[str, RunRecord] = {}
    for spec in plan:
        if spec.key(run_hash) in finished:
            done_as.setdefault(run_identity(spec, *configure(cfg, spec)), finished[spec.key(run_hash)])
    bar = tqdm(total=to_run, desc="benchmark", unit="run", disable=not progress or not to_run, position=0)

    def keep(record: RunRecord, identity: str) -> None:
        results.append(record)
        done_as.setdefault(identity, record)
        finished[record.key] = record
        bar.update(1)

    def as_run_of(spec: RunSpec, identity: str) -> RunRecord:
        log.info("%s is the run %s (same class, configuration, seed and order): its record, not a rerun",
                 spec.label, done_as[identity].key)
        return replace(done_as[identity], key=spec.key(run_hash), method=spec.method, fraction=spec.fraction,
                       main=spec.main, sweep=spec.sweep)

    in_flight: dict[Future, tuple[RunSpec, str]] = {}
    twins: dict[str, list[RunSpec]] = {}  # identity of a run in flight -> later specs that are the same run
    failure: BaseException | None = None
    bank = adapter_bank_folder(Path(out) / "adapters")  # shared by this benchmark's workers and reruns
    try:
        with run_executor(cfg.workers, bank) as pool:
            while todo or in_flight:
                while todo and len(in_flight) < cfg.workers:
                    spec = todo.popleft()
                    learner, baselines = configure(cfg, spec)
                    identity = run_identity(spec, learner, baselines)
                    if identity in done_as:
                        keep(as_run_of(spec, identity), identity)
                    elif identity in twins:
                        twins[identity].append(spec)
                    else:
                        bar.set_postfix_str(spec.label)
                        translated_for, seconds, rows = translations.for_run(spec)
                        future = pool.submit(execute_run, runner, spec, run_hash, encoder, data.splits(spec.order),
                                             learner, baselines, translated_for, seconds, rows)
                        in_flight[future] = (spec, identity)
                        twins[identity] = []
                if not in_flight:
                    continue
                for future in wait(in_flight, return_when=FIRST_COMPLETED).done:
                    spec, identity = in_flight.pop(future)
                    try:
                        keep(future.result(), identity)
                    except Exception as err:
                        log.error("%s failed: %s; %d run(s) in flight finish and are recorded, nothing new starts",
                                  spec.label, err, len(in_flight))
                        failure, todo = failure or err, deque()
                        continue
                    for twin in twins.pop(identity):
                        keep(as_run_of(twin, identity), identity)
    finally:
        bar.close()
    if failure is not None:
        raise failure
    records = [replace(finished[s.key(run_hash)], main=s.main, sweep=s.sweep) for s in plan]
    return BenchmarkRun(records, ran=to_run, skipped=len(plan) - to_run, run_hash=run_hash)

