"""Stage 1 of the method: translate a stratified subset of the new marketplace into every older language."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data.contract import DataValidationError
from tasks.translation.backends.base import ModelInfo, TranslationBackend
from tasks.translation.backends.registry import build_backends, parse_model_specs
from tasks.translation.cache import CachedTranslation, TranslationCache
from tasks.translation.errors import ModelUnavailableError
from tasks.translation.languages import normalize_language
from tasks.translation.routing import Route, direct_fallback, find_route, no_route_error
from tasks.translation.subset import select_subset, validate_fraction

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("query", "product_title")
PROVENANCE_COLUMNS = ("source_language", "translation_backend", "translation_model", "translation_route")
#: (target language, texts done, texts in all) after every chunk; cache hits count as done at once.
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class TranslationReport:
    """What happened for one target language; the counts an operator checks before trusting T_k."""

    target: str
    route: str
    backends: str
    models: str
    rows: int
    unique_texts: int
    translated: int = 0  # texts sent to a backend (summed over hops)
    cache_hits: int = 0  # texts found in the cache (summed over hops)
    empty: dict[str, int] = field(default_factory=dict)  # empty cells per column, passed through untranslated
    truncated: int = 0  # unique texts longer than a model's maximum, truncated before translation
    empty_output: int = 0  # texts a backend returned empty; the source text is kept instead
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class TranslatedSubsets(dict):
    """``{language: table}``, plus the per-language reports and the source rows that were chosen."""

    def __init__(self, tables: Mapping[str, pd.DataFrame], reports: Mapping[str, TranslationReport],
                 subset: pd.DataFrame) -> None:
        super().__init__(tables)
        self.reports = dict(reports)
        self.subset = subset


@dataclass(frozen=True)
class _Plan:
    route: Route
    models: tuple[ModelInfo, ...]


def check_table(data: pd.DataFrame, columns: Sequence[str], *, label: str = "label", source_name: str = "data") -> None:
    """Everything translation relies on, checked up front: one error naming the row and column."""
    missing = [c for c in (*columns, label) if c not in data.columns]
    if missing:
        raise DataValidationError(source_name, f"missing column(s) {missing}; found {list(data.columns)}",
                                  column=missing[0])
    for column in columns:
        values = data[column]
        bad = ~values.map(_is_text_or_missing)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise DataValidationError(source_name, f"value {_shown(values.iloc[row])!r} is not text", row=row + 1, column=column)
    labels = data[label]
    ok = labels.map(_is_label)
    if not ok.all():
        row = int((~ok).to_numpy().argmax())
        raise DataValidationError(source_name, f"value {_shown(labels.iloc[row])!r} is not a relevance label (expected 0/1)",
                                  row=row + 1, column=label)


def _shown(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _is_text_or_missing(value: object) -> bool:
    return isinstance(value, str) or value is None or (isinstance(value, (float, np.floating)) and np.isnan(value))


def _is_label(value: object) -> bool:
    if isinstance(value, str):
        return value.strip() in ("0", "1")
    if isinstance(value, (bool, int, np.bool_, np.integer, float, np.floating)):
        return value in (0, 1)
    return False


def clean_text(value: object) -> str:
    """One line, single spaces: what every backend expects; ``""`` marks a cell that is not translated."""
    return " ".join(value.split()) if isinstance(value, str) else ""


def plan_routes(source: str, targets: Sequence[str], backends: Sequence[TranslationBackend]) -> dict[str, _Plan]:
    """A route per target and its models loaded, or the error, before any text is translated."""
    by_name = {b.name: b for b in backends}
    plans: dict[str, _Plan] = {}
    for target in targets:
        route = find_route(source, target, backends)
        fallback = route is None
        route = route or direct_fallback(source, target, backends)
        if route is None:
            raise no_route_error(source, target, backends)
        try:
            models = tuple(by_name[h.backend].prepare(h.pair) for h in route.hops)
        except ModelUnavailableError as err:
            if fallback:
                raise no_route_error(source, target, backends, reason=str(err)) from err
            raise
        plans[target] = _Plan(route, models)
    return plans


class _RouteRunner:
    """Translates unique texts along a route hop by hop, through the cache, chunk by chunk."""

    def __init__(self, backends: Sequence[TranslationBackend], cache: TranslationCache,
                 progress: ProgressCallback | None) -> None:
        self.backends = {b.name: b for b in backends}
        self.cache = cache
        self.progress = progress

    def run(self, target: str, plan: _Plan, texts: list[str], report: TranslationReport) -> dict[str, str]:
        """``{source text: text in the target language}``; progress counts source texts per hop."""
        current = {t: t for t in texts}
        truncated: set[str] = set()
        total, done = len(texts) * len(plan.route.hops), 0
        self._tick(target, done, total)
        for hop, info in zip(plan.route.hops, plan.models):
            backend = self.backends[hop.backend]
            weight = Counter(current.values())  # source texts behind each text of this hop
            known = self.cache.lookup(weight, hop.pair, info)
            report.cache_hits += len(known)
            done += sum(weight[t] for t in known)
            self._tick(target, done, total)
            missing = sorted(t for t in weight if t not in known)
            for start in range(0, len(missing), backend.chunk_size):
                chunk = missing[start : start + backend.chunk_size]
                result = backend.translate(chunk, hop.pair)
                self.cache.store(chunk, result.texts, result.truncated, hop.pair, info)
                known.update((t, CachedTranslation(out, cut)) for t, out, cut in zip(chunk, result.texts, result.truncated))
                report.translated += len(chunk)
                done += sum(weight[t] for t in chunk)
                self._tick(target, done, total)
            for original, text in current.items():
                out = known[text]
                if out.truncated:
                    truncated.add(original)
                if not out.translation.strip():
                    report.empty_output += 1
                current[original] = out.translation.strip() or text
        report.truncated = len(truncated)
        return current

    def _tick(self, target: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(target, done, total)


def _model_label(plan: _Plan) -> str:
    return "; ".join(f"{h.pair}: {m.name} ({m.version[:8]})" for h, m in zip(plan.route.hops, plan.models)) or "identity"


def translate_subset(
    data: pd.DataFrame,
    source_lang: str,
    target_langs: Sequence[str] | str,
    *,
    fraction: float,
    seed: int,
    backend: str | Sequence[TranslationBackend],
    cache_dir: Path | None = None,
    models: Mapping[str, str | Path] | Iterable[str | Path] = (),
    device: str = "auto",
    batch_size: int = 32,
    num_beams: int = 1,
    threads: int | None = None,
    columns: Sequence[str] = TEXT_COLUMNS,
    source_name: str = "data",
    progress: ProgressCallback | None = None,
) -> TranslatedSubsets:
    """Translate ``fraction`` of ``data`` (whole queries, label ratio kept, deterministic by ``seed``)
    from ``source_lang`` into each of ``target_langs``. The fraction, seed and backend have no defaults here:
    they are the learner's ``translation``/``seed`` settings (``models.config``), passed by every caller.

    Returns one table per target language: the chosen rows with ``columns`` translated, every other
    column kept, the source texts in ``original_<column>``, and provenance columns
    (``translation_backend``, ``translation_model``, ``translation_route``). Bad input, an unknown
    language or a pair no backend can serve fails before anything is translated. With ``cache_dir``
    every translation is kept on disk, so a rerun translates nothing twice.
    """
    fraction = validate_fraction(fraction)
    source = normalize_language(source_lang)
    wanted = [target_langs] if isinstance(target_langs, str) else list(target_langs)
    targets = list(dict.fromkeys(normalize_language(t) for t in wanted if t.strip()))
    if not targets:
        raise ValueError("no target language given")
    check_table(data, columns, source_name=source_name)
    if isinstance(backend, str):
        backends = build_backends(backend, models=parse_model_specs(models), device=device, batch_size=batch_size,
                                  num_beams=num_beams, work_dir=Path(cache_dir) / "models" if cache_dir else None,
                                  threads=threads)
    else:
        backends = list(backend)
    plans = plan_routes(source, targets, backends)

    subset = select_subset(data, fraction, seed).reset_index(drop=True)
    subset["label"] = subset["label"].map(lambda v: int(float(v)))  # "1", True, 1.0 -> 1, as the contract has it
    cleaned = {c: subset[c].map(clean_text) for c in columns}
    texts = sorted({t for c in columns for t in cleaned[c] if t})
    tables: dict[str, pd.DataFrame] = {}
    reports: dict[str, TranslationReport] = {}
    with TranslationCache(cache_dir) as cache:
        runner = _RouteRunner(backends, cache, progress)
        for target, plan in plans.items():
            started = time.perf_counter()
            report = TranslationReport(
                target=target, route=str(plan.route), backends=plan.route.backends, models=_model_label(plan),
                rows=len(subset), unique_texts=len(texts), empty={c: int((cleaned[c] == "").sum()) for c in columns},
            )
            translated = runner.run(target, plan, texts, report)
            table = subset.copy()
            for c in columns:
                table[f"original_{c}"] = subset[c]
                table[c] = [translated[t] if t else v for t, v in zip(cleaned[c], subset[c])]
            table["source_language"] = source
            table["translation_backend"] = plan.route.backends
            table["translation_model"] = report.models
            table["translation_route"] = str(plan.route)
            report.seconds = round(time.perf_counter() - started, 3)
            tables[target], reports[target] = table, report
            log.info("translated %d rows %s (%s): %d texts translated, %d from cache, %d truncated, %d empty cells",
                     len(table), plan.route, plan.route.backends, report.translated, report.cache_hits,
                     report.truncated, sum(report.empty.values()))
    return TranslatedSubsets(tables, reports, subset)
