"""The retraining comparison (issue 14): a refresh of several marketplaces at once, by every joint method.

Shaped like Lu et al.'s Tables 3-5: per marketplace and on average, each method's change in test ROC-AUC over
uniform weighting's final checkpoint, with the steps it ran. Per seed:

1. a champion is built on "old" rows of every marketplace (the rows the refresh does not use): one adapter each
   (stage 2), then a fusion over them trained on the pooled old rows (no distillation: there is no teacher);
2. the refresh: ``sizes`` fresh training rows per marketplace (different sizes, as real refreshes have), and every
   method in ``RETRAIN_METHODS`` retrains that champion's fusion and head on them from the same start
   (``models.stages.retrain_jointly``), scored on the validation sets it monitors and on the test sets it never sees;
3. uniform weighting also yields the oracle row: each marketplace's test ROC-AUC at the step of its own best
   validation ROC-AUC (a checkpoint per marketplace, which one served model cannot be).

Finished (seed, method) runs are appended to ``retraining.jsonl``, so a rerun after an interruption goes on.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.config import LearnerConfig, RetrainConfig
from tasks.benchmark.config import BenchmarkConfig
from tasks.benchmark.runner import BenchmarkData, cap_table
from tasks.hashing import fingerprint, table_hash

log = logging.getLogger(__name__)

RETRAIN_METHODS = ("uniform", "dwa", "gradnorm", "async-kd")
ORACLE = "uniform (best checkpoint per marketplace)"
RESULTS = "retraining.jsonl"


def fresh_and_old(train: pd.DataFrame, size: int, old: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``size`` fresh rows (whole queries, label ratio kept) and at most ``old`` of the remaining rows."""
    fresh = cap_table(train, size, seed)
    keys = pd.MultiIndex.from_frame(fresh[["query", "product_title"]])
    rest = train[~pd.MultiIndex.from_frame(train[["query", "product_title"]]).isin(keys)].reset_index(drop=True)
    if len(rest) == 0:
        raise ValueError(f"no training rows are left for the champion after taking {size} fresh ones; lower the "
                         f"size or give more data")
    return fresh.reset_index(drop=True), cap_table(rest, old, seed)


def build_champion(data: BenchmarkData, old: Mapping[str, pd.DataFrame], learner: LearnerConfig, encoder: Any,
                   folder: Path) -> Path:
    """The champion a refresh starts from, saved in ``folder`` (reused when it is already there)."""
    from models.pairs import TextFormat
    from models.relevance import MarketplaceSpec, RelevanceModel
    from models.stages import distill_fusion, train_language_adapter
    from tasks.learner import to_pairs

    if (folder / "manifest.json").is_file():
        return folder
    model = RelevanceModel.create(encoder, text=TextFormat.of(learner), device=learner.device)
    for mid, table in old.items():
        market = data.marketplaces[mid]
        train_language_adapter(model, MarketplaceSpec(mid, market.language), to_pairs(table), to_pairs(market.valid),
                               learner)
    pooled = to_pairs(pd.concat(list(old.values()), ignore_index=True))
    valid = to_pairs(pd.concat([data.marketplaces[m].valid for m in old], ignore_index=True))
    plain = learner.model_copy(update={"distill": learner.distill.model_copy(update={"weight": 0.0})})
    distill_fusion(model, pooled, valid, [], plain)
    return model.save(folder)


def _oracle(result: Mapping[str, Any]) -> dict[str, float]:
    """Each marketplace's test ROC-AUC at the evaluation where its validation ROC-AUC was best."""
    out = {}
    for mid, curve in result["curves"].items():
        best = int(np.argmax([v for _, v in curve]))
        out[mid] = result["report_curves"][mid][best][1]
    return out


def check_retrain_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in RETRAIN_METHODS]
    if unknown:
        raise ValueError(f"unknown retraining method(s) {', '.join(unknown)}; known: {', '.join(RETRAIN_METHODS)}")


def run_retraining(cfg: BenchmarkConfig, data: BenchmarkData, sizes: Mapping[str, int], methods: Sequence[str],
                   out: Path, *, encoder: Any) -> list[dict]:
    """Every method × seed of the comparison; returns one record per run (old records of the same key included),
    and the records of the same champions and step budget run earlier into ``out`` under another variant (async-kd
    without the rewind), so one table compares them."""
    from models.device import resolve_device
    from models.relevance import RelevanceModel
    from models.stages import retrain_jointly
    from tasks.learner import to_pairs

    check_retrain_methods(methods)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    done = {r["key"]: r for r in map(json.loads, results.read_text().splitlines())} if results.is_file() else {}
    records = []
    for seed in cfg.seed_values:
        learner = cfg.learner.model_copy(update={"seed": seed})
        split = {mid: fresh_and_old(data.marketplaces[mid].train, sizes[mid], cfg.max_train_pairs, cfg.data_seed + seed)
                 for mid in sizes}
        base = fingerprint("retraining", learner.model_dump(exclude={"retrain"}), encoder.checksum,
                           {m: [table_hash(f), table_hash(o)] for m, (f, o) in split.items()},
                           {m: table_hash(data.marketplaces[m].valid) for m in sizes})[:16]
        champion = None
        for method in methods:
            settings = learner.model_copy(update={"retrain": learner.retrain.model_copy(update={"method": method})})
            key = f"{base}-{fingerprint(method_settings(settings.retrain))[:12]}"
            if key in done:
                records.append(done[key])
                continue
            if champion is None:
                log.info("seed %d: building the champion on old rows (%s)", seed,
                         ", ".join(f"{m} {len(o)}" for m, (_, o) in split.items()))
                champion = build_champion(data, {m: o for m, (_, o) in split.items()}, learner, encoder,
                                          out / f"champion-{base}")
            model = RelevanceModel.load(champion, encoder, device=resolve_device(learner.device))
            start = time.perf_counter()
            report = retrain_jointly(model, {m: to_pairs(f) for m, (f, _) in split.items()},
                                     {m: to_pairs(data.marketplaces[m].valid) for m in sizes}, settings,
                                     report={m: to_pairs(data.marketplaces[m].test) for m in sizes})
            joint = report.details["joint"]
            record = {"key": key, "seed": seed, "method": method_label(settings.retrain), "sizes": dict(sizes),
                      "retrain": settings.retrain.model_dump(),
                      "seconds": time.perf_counter() - start, "steps": joint["steps"], "stopped": joint["stopped"],
                      "test": {m: c[-1][1] for m, c in joint["report_curves"].items()},
                      "oracle_test": _oracle(joint) if method == "uniform" else None,
                      "best_valid": joint["best"], "final_valid": joint["final"], "best_step": joint["best_step"],
                      "switch_step": joint["switch_step"], "curves": joint["curves"],
                      "report_curves": joint["report_curves"]}
            with results.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            log.info("seed %d %s: %d steps (%s), test %s", seed, record["method"], record["steps"], record["stopped"],
                     ", ".join(f"{m} {v:.4f}" for m, v in record["test"].items()))
            records.append(record)
        keys = {r["key"] for r in records}
        records += [r for k, r in done.items() if k.startswith(f"{base}-") and k not in keys
                    and _budget(r.get("retrain")) == _budget(learner.retrain.model_dump())]
    return records


def _budget(retrain: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What makes two runs comparable in one table: every retraining setting but the method and its variant."""
    return None if retrain is None else {k: v for k, v in retrain.items() if k not in ("method", "rewind")}


def method_settings(retrain: RetrainConfig) -> dict[str, Any]:
    """The settings a run of this method depends on (its record's key): the rewind matters to async-kd only."""
    return retrain.model_dump(exclude=None if retrain.method == "async-kd" else {"rewind"})


def method_label(retrain: RetrainConfig) -> str:
    """The method's row in the table: async-kd without the rewind is a variant of its own."""
    if retrain.method == "async-kd" and not retrain.rewind:
        return "async-kd (no rewind)"
    return retrain.method


def retraining_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows: methods (and uniform's oracle); columns: per marketplace and on average the change in test ROC-AUC over
    uniform weighting's final checkpoint of the same seed (mean ± std over seeds), the absolute mean test ROC-AUC,
    the largest drop of a final validation ROC-AUC below that marketplace's best, and the steps run."""
    by_seed = {r["seed"]: r for r in records if r["method"] == "uniform"}
    if not by_seed:
        raise ValueError("the retraining table needs uniform weighting's runs: it is the reference")
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, test: Mapping[str, float], ref: Mapping[str, float], extra: Mapping[str, float]) -> None:
        row = rows.setdefault(name, {})
        for mid, value in test.items():
            row.setdefault(mid, []).append(value - ref[mid])
        row.setdefault("average", []).append(float(np.mean(list(test.values()))) - float(np.mean(list(ref.values()))))
        row.setdefault("mean test ROC-AUC", []).append(float(np.mean(list(test.values()))))
        for k, v in extra.items():
            row.setdefault(k, []).append(v)

    for r in records:
        ref = by_seed.get(r["seed"])
        if ref is None:
            continue
        gap = max(r["best_valid"][m] - r["final_valid"][m] for m in r["final_valid"])
        add(r["method"], r["test"], ref["test"], {"final below best valid (max)": gap, "steps": r["steps"]})
        if r["oracle_test"]:
            add(ORACLE, r["oracle_test"], ref["test"], {"final below best valid (max)": 0.0, "steps": r["steps"]})

    def cell(values: list[float], column: str) -> str:
        if column == "steps":
            return f"{np.mean(values):.0f}"
        spread = f" ± {np.std(values):.4f}" if len(values) > 1 else ""
        sign = "+" if column not in ("mean test ROC-AUC", "final below best valid (max)") else ""
        return f"{np.mean(values):{sign}.4f}{spread}"

    table = pd.DataFrame({name: {c: cell(v, c) for c, v in row.items()} for name, row in rows.items()}).T
    table.index.name = "method"
    return table


def curves_figure(record: Mapping[str, Any]):
    from tasks.reporting import joint_curves_figure

    return joint_curves_figure(record["curves"], record["switch_step"], f"{record['method']}, seed {record['seed']}")


def write_retraining_report(out: Path, records: Sequence[Mapping[str, Any]], cfg: BenchmarkConfig,
                            sizes: Mapping[str, int]) -> Path:
    """``retraining.md`` (the table, the settings, a curve plot per method of the first seed) beside the results."""
    from tasks.benchmark.report import markdown_table

    table = retraining_table(records)
    first = min(r["seed"] for r in records)
    lines = ["# Retraining comparison: several marketplaces refreshed at once", "",
             f"Fresh training rows: {', '.join(f'{m} {n}' for m, n in sizes.items())}; seeds "
             f"{sorted({r['seed'] for r in records})}; encoder {cfg.encoder or 'default'}.",
             f"Retraining settings: `{json.dumps(cfg.learner.retrain.model_dump(exclude={'method'}))}`; optimiser: "
             f"`learner.fusion` (`{json.dumps(cfg.learner.fusion.model_dump())}`).", "",
             "Change in test ROC-AUC over uniform weighting's final checkpoint (mean ± std over seeds):", "",
             markdown_table(table, "method"), ""]
    for r in records:
        if r["seed"] == first:
            name = f"retraining-{re.sub(r'[^a-z0-9]+', '-', r['method']).strip('-')}.png"
            curves_figure(r).savefig(out / name, dpi=110)
            lines += [f"![{r['method']}]({name})", ""]
    path = out / "retraining.md"
    path.write_text("\n".join(lines))
    return path


def log_retraining_to_mlflow(out: Path, records: Sequence[Mapping[str, Any]], cfg: BenchmarkConfig, *,
                             tracking_uri: str, artifact_location: str) -> str:
    """One MLflow run beside the sequence benchmark's: the settings as params, each method's mean test ROC-AUC per
    marketplace and its steps as metrics, the report folder as artifacts."""
    import mlflow

    from tasks.benchmark.report import EXPERIMENT, _metric_name
    from tasks.registry import setup_tracking

    setup_tracking(tracking_uri, artifact_location, EXPERIMENT)
    with mlflow.start_run(run_name="benchmark-retraining") as run:
        mlflow.log_params({"order": ",".join(cfg.order), "seeds": cfg.seeds,
                           **{f"retrain.{k}": v for k, v in cfg.learner.retrain.model_dump().items() if k != "method"},
                           "sizes": json.dumps(records[0]["sizes"]) if records else "{}"})
        metrics: dict[str, float] = {}
        for method in dict.fromkeys(r["method"] for r in records):
            runs = [r for r in records if r["method"] == method]
            for mid in runs[0]["test"]:
                metrics[_metric_name(f"{method}.test_auc.{mid}")] = float(np.mean([r["test"][mid] for r in runs]))
            metrics[_metric_name(f"{method}.steps")] = float(np.mean([r["steps"] for r in runs]))
        mlflow.log_metrics(metrics)
        for path in sorted(out.iterdir()):
            if path.is_file() and path.suffix in (".md", ".png", ".jsonl"):
                mlflow.log_artifact(str(path), artifact_path="retraining")
        return run.info.run_id
