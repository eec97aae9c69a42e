"""From run records to the tables of the report: the paper-shaped table (per-marketplace ROC-AUC after the
whole sequence, mean ± std over seeds and orders, BWT, forgetting, trainable parameters, training time), the
R matrices, Table 2's per-order averages, Figure 4's fraction sweep and the performance figures.

Standard deviations are sample standard deviations (ddof = 1) over runs; a single run has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.benchmark.config import AD_METHOD, FULL_FINE_TUNING, PLAIN_FUSION
from tasks.benchmark.results import RunRecord

STAGE_COLUMNS = ["method", "stage", "runs", "examples_per_second", "train_seconds", "trainable_parameters"]


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``0.812 ± 0.004``; one value has no spread, so it is shown alone."""
    values = [float(v) for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def human_count(n: float) -> str:
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


@dataclass
class BenchmarkSummary:
    """Numbers first (``stats``: one row per method, columns ``<metric>.mean``/``.std``), then what is shown."""

    methods: list[str]
    marketplaces: list[str]  # the first order's marketplaces, in that order
    first_order: list[str]
    stats: pd.DataFrame  # index: method
    table: pd.DataFrame  # the paper-shaped table, formatted
    matrices: dict[str, pd.DataFrame]  # mean R[t][k] over seeds, first order, per method
    orders: pd.DataFrame  # per method × order: average ROC-AUC mean ± std (Table 2), formatted
    fractions: pd.DataFrame  # the learner's sweep (Figure 4); empty without one
    arrival_seconds: pd.DataFrame  # method × arrival (first order), mean seconds
    speedup: pd.DataFrame  # per arrival: the learner's seconds, full fine-tuning's, the ratio; empty without both
    full_reference: str | None
    ad_overhead: dict[str, float] = field(default_factory=dict)  # vs plain fusion; empty without both
    stages: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STAGE_COLUMNS))
    replaying: list[str] = field(default_factory=list)  # methods that use old marketplaces' training data
    translation_missing: bool = False  # a fraction > 0 was asked for and nothing was translated


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _method_order(records: Sequence[RunRecord]) -> list[str]:
    return list(dict.fromkeys(r.method for r in records))


def _stats(main: Sequence[RunRecord], methods: list[str], marketplaces: list[str]) -> pd.DataFrame:
    rows = {}
    for method in methods:
        runs = [r for r in main if r.method == method]
        row: dict[str, float] = {"runs": len(runs)}
        series = {f"auc.{m}": [r.final.get(m, np.nan) for r in runs] for m in marketplaces}
        series.update(average=[r.average for r in runs], bwt=[r.bwt for r in runs],
                      valid_average=[np.nan if r.valid_average is None else r.valid_average for r in runs],
                      forgetting=[r.forgetting for r in runs], train_seconds=[r.train_seconds for r in runs],
                      translation_seconds=[r.translation_seconds for r in runs])
        for name, values in series.items():
            row[f"{name}.mean"] = _mean(values)
            row[f"{name}.std"] = _std(values)
        row["trainable_parameters"] = _mean([r.trainable_parameters for r in runs])
        row["total_parameters"] = _mean([r.total_parameters for r in runs])
        row["breaks_no_replay"] = float(any(r.breaks_no_replay for r in runs))
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _table(main: Sequence[RunRecord], methods: list[str], marketplaces: list[str]) -> pd.DataFrame:
    rows = []
    for method in methods:
        runs = [r for r in main if r.method == method]
        trainable = _mean([r.trainable_parameters for r in runs])
        total = _mean([r.total_parameters for r in runs])
        row = {"method": method + (" †" if any(r.breaks_no_replay for r in runs) else "")}
        row.update({m: mean_std([r.final.get(m, np.nan) for r in runs]) for m in marketplaces})
        row.update({
            "average": mean_std([r.average for r in runs]),
            "BWT": mean_std([r.bwt for r in runs]),
            "forgetting": mean_std([r.forgetting for r in runs]),
            "valid average": mean_std([np.nan if r.valid_average is None else r.valid_average for r in runs]),
            "trainable params": f"{human_count(trainable)} ({100 * trainable / total:.1f}%)" if total else "–",
            "train time (s)": mean_std([r.train_seconds for r in runs], digits=1),
            "runs": str(len(runs)),
        })
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def _matrices(main: Sequence[RunRecord], methods: list[str], order: list[str]) -> dict[str, pd.DataFrame]:
    out = {}
    for method in methods:
        runs = [r for r in main if r.method == method and r.order == order]
        if runs:
            mean = np.mean(np.stack([r.r() for r in runs]), axis=0)  # NaN stays NaN above the diagonal
            out[method] = pd.DataFrame(mean, index=order, columns=order)
    return out


def _orders(main: Sequence[RunRecord], methods: list[str]) -> pd.DataFrame:
    orders = list(dict.fromkeys(tuple(r.order) for r in main))
    table = pd.DataFrame(index=methods, columns=[" > ".join(o) for o in orders], dtype=object)
    for method in methods:
        for order in orders:
            runs = [r for r in main if r.method == method and tuple(r.order) == order]
            table.loc[method, " > ".join(order)] = mean_std([r.average for r in runs]) if runs else "–"
    if len(orders) > 1:
        table["over orders"] = [mean_std([r.average for r in main if r.method == m]) for m in methods]
    return table


def _fractions(sweep: Sequence[RunRecord]) -> tuple[pd.DataFrame, bool]:
    """Per fraction: training and translation time, ROC-AUC on the old marketplaces after the sequence and its
    gain over the smallest fraction swept (0 = no translation: L_AD on D_t itself, paper §4.2)."""
    if not sweep:
        return pd.DataFrame(), False
    rows, missing = [], False
    for fraction in sorted({r.fraction for r in sweep if r.fraction is not None}):
        runs = [r for r in sweep if r.fraction == fraction]
        old = [_mean([r.final[m] for m in r.order[:-1]]) for r in runs]
        rows_translated = [sum(sum(v.values()) for v in r.translated_rows.values()) for r in runs]
        missing |= fraction > 0 and not any(rows_translated)
        rows.append({
            "fraction": fraction, "runs": len(runs),
            "train_seconds": _mean([r.train_seconds for r in runs]),
            "train_seconds_std": _std([r.train_seconds for r in runs]),
            "translation_seconds": _mean([r.translation_seconds for r in runs]),
            "translated_rows": _mean(rows_translated),
            "average": _mean([r.average for r in runs]),
            "old_auc": _mean(old), "old_auc_std": _std(old),
            "bwt": _mean([r.bwt for r in runs]),
        })
    table = pd.DataFrame(rows).set_index("fraction")
    table["gain"] = table["old_auc"] - table["old_auc"].iloc[0]
    return table, missing


def _arrival_seconds(main: Sequence[RunRecord], methods: list[str], order: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(index=methods, columns=[f"t={t + 1} ({m})" for t, m in enumerate(order)], dtype=float)
    for method in methods:
        runs = [r for r in main if r.method == method and r.order == order]
        if runs:
            table.loc[method] = np.mean([r.arrival_seconds for r in runs], axis=0)
    return table.dropna(how="all")


def _speedup(arrivals: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    reference = next((m for m in FULL_FINE_TUNING if m in arrivals.index), None)
    if AD_METHOD not in arrivals.index or reference is None:
        return pd.DataFrame(), reference
    table = pd.DataFrame({f"{AD_METHOD} (s)": arrivals.loc[AD_METHOD], f"{reference} (s)": arrivals.loc[reference]})
    table["cheaper by"] = table[f"{reference} (s)"] / table[f"{AD_METHOD} (s)"]
    return table, reference


def _stage_table(main: Sequence[RunRecord]) -> pd.DataFrame:
    rows = [{"method": r.method, "stage": s.stage, "examples_per_second": s.examples_per_second,
             "train_seconds": s.train_seconds, "trainable_parameters": s.trainable_parameters}
            for r in main for s in r.stages]
    if not rows:
        return pd.DataFrame(columns=STAGE_COLUMNS)
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["method", "stage"], sort=False)
    table = grouped.agg(examples_per_second=("examples_per_second", "mean"), train_seconds=("train_seconds", "sum"),
                        trainable_parameters=("trainable_parameters", "max"))
    table["runs"] = [len({id(r) for r in main if r.method == m}) for m, _ in table.index]
    table["train_seconds"] = table["train_seconds"] / table["runs"]  # per run: the stage summed over arrivals
    return table.reset_index()[STAGE_COLUMNS]


def _ad_overhead(main: Sequence[RunRecord], stages: pd.DataFrame) -> dict[str, float]:
    methods = {r.method for r in main}
    if AD_METHOD not in methods or PLAIN_FUSION not in methods:
        return {}
    fusion = stages[stages["stage"] == "fusion"].set_index("method")
    out = {
        "train_seconds_ratio": _mean([r.train_seconds for r in main if r.method == AD_METHOD])
        / _mean([r.train_seconds for r in main if r.method == PLAIN_FUSION]),
    }
    if AD_METHOD in fusion.index and PLAIN_FUSION in fusion.index:
        out["fusion_seconds_ratio"] = fusion.loc[AD_METHOD, "train_seconds"] / fusion.loc[PLAIN_FUSION, "train_seconds"]
        out["fusion_examples_per_second_ratio"] = (fusion.loc[AD_METHOD, "examples_per_second"]
                                                   / fusion.loc[PLAIN_FUSION, "examples_per_second"])
    return out


def summarise(records: Sequence[RunRecord]) -> BenchmarkSummary:
    """Everything the report shows, from the plan's records (``main`` runs for the tables, ``sweep`` runs for
    the fraction sweep)."""
    main = [r for r in records if r.main]
    sweep = [r for r in records if r.sweep]
    if not main and not sweep:
        raise ValueError("no finished runs to summarise")
    first = (main or sweep)[0].order
    methods = _method_order(main)
    marketplaces = list(first)
    stats = _stats(main, methods, marketplaces) if main else pd.DataFrame()
    arrivals = _arrival_seconds(main, methods, first)
    speedup, reference = _speedup(arrivals)
    stages = _stage_table(main)
    fractions, missing = _fractions(sweep)
    return BenchmarkSummary(
        methods=methods, marketplaces=marketplaces, first_order=list(first), stats=stats,
        table=_table(main, methods, marketplaces) if main else pd.DataFrame(),
        matrices=_matrices(main, methods, list(first)), orders=_orders(main, methods), fractions=fractions,
        arrival_seconds=arrivals, speedup=speedup, full_reference=reference,
        ad_overhead=_ad_overhead(main, stages), stages=stages,
        replaying=[m for m in methods if any(r.breaks_no_replay for r in main if r.method == m)],
        translation_missing=missing,
    )
