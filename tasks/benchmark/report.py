"""The benchmark report: ``report.md`` with PNG plots beside it, and the same folder logged to MLflow.

Figures use matplotlib's object API (no pyplot state), like ``tasks.reporting``, whose R heatmap is reused.

Length: one section function per part of the report (table, ablations, sweep, performance), each next to the
figure it embeds; they are read top to bottom as the report is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tasks.benchmark.config import AD_METHOD, PLAIN_FUSION, BenchmarkConfig
from tasks.benchmark.results import RunRecord
from tasks.benchmark.summary import BenchmarkSummary, human_count, summarise
from tasks.config import flat
from tasks.reporting import heatmap_figure

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.csv"
EXPERIMENT = "marketplace-benchmark"
#: The ablations of issue 6 and what each one removes from the learner.
ABLATIONS = {
    "ad-no-translation": "attention distillation without translation (L_AD on D_t itself, paper §4.2)",
    PLAIN_FUSION: "fusion without distillation (λ = 0)",
    "ad-paper": "the project's defaults: the paper's recipe as written instead (eq. 9 summed, 5 + 5 epochs, random head)",
}
SPEEDUP_GOAL = 3.0


# --------------------------------------------------------------------------- figures
def curves_figure(matrix: pd.DataFrame, title: str) -> Figure:
    """One line per marketplace: its ROC-AUC after each arrival from the one that added it."""
    fig = Figure(figsize=(1.8 + 1.2 * matrix.shape[0], 3.6))
    ax = fig.add_subplot()
    steps = np.arange(matrix.shape[0])
    for k, marketplace in enumerate(matrix.columns):
        values = matrix.iloc[:, k].to_numpy(dtype=float)
        ax.plot(steps[k:], values[k:], marker="o", label=marketplace)
    ax.set_xticks(steps, [f"after {m}" for m in matrix.index])
    ax.set_ylabel("test ROC-AUC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="evaluated on")
    fig.tight_layout()
    return fig


def fraction_figure(fractions: pd.DataFrame) -> Figure:
    """Figure 4's two views of the sweep: what translating more costs, and what it buys on old marketplaces."""
    fig = Figure(figsize=(9, 3.6))
    x = fractions.index.to_numpy(dtype=float)
    ax = fig.add_subplot(1, 2, 1)
    ax.errorbar(x, fractions["train_seconds"], yerr=fractions["train_seconds_std"].fillna(0), marker="o",
                label="training (all arrivals)")
    ax.plot(x, fractions["translation_seconds"], marker="s", linestyle="--", label="translation")
    ax.set_xlabel("translated fraction of D_t")
    ax.set_ylabel("seconds")
    ax.set_title("time vs translation fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax = fig.add_subplot(1, 2, 2)
    ax.errorbar(x, fractions["gain"], yerr=fractions["old_auc_std"].fillna(0), marker="o", color="C2")
    ax.axhline(0, color="grey", linestyle=":")
    ax.set_xlabel("translated fraction of D_t")
    ax.set_ylabel(f"ROC-AUC gain on old marketplaces\n(vs fraction {x[0]:g})")
    ax.set_title("gain vs translation fraction")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def parameters_figure(stats: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(1.5 + 0.7 * len(stats), 3.6))
    ax = fig.add_subplot()
    values = stats["trainable_parameters"].to_numpy(dtype=float)
    ax.bar(range(len(stats)), values, color="C0")
    for i, v in enumerate(values):
        ax.text(i, v, human_count(v), ha="center", va="bottom", fontsize="small")
    ax.set_xticks(range(len(stats)), stats.index, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("trainable parameters")
    ax.set_title("trainable parameters per method")
    fig.tight_layout()
    return fig


def arrival_figure(arrivals: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(2 + 0.9 * len(arrivals), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(arrivals.shape[1], 1)
    for j, column in enumerate(arrivals.columns):
        ax.bar(np.arange(len(arrivals)) + j * width, arrivals[column].to_numpy(dtype=float), width, label=column)
    ax.set_xticks(np.arange(len(arrivals)) + width * (arrivals.shape[1] - 1) / 2, arrivals.index, rotation=30,
                  ha="right")
    ax.set_ylabel("wall seconds")
    ax.set_title("time to add marketplace t")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def throughput_figure(stages: pd.DataFrame) -> Figure:
    labels = [f"{m}: {s}" for m, s in zip(stages["method"], stages["stage"], strict=True)]
    fig = Figure(figsize=(7, 1.2 + 0.3 * len(stages)))
    ax = fig.add_subplot()
    ax.barh(range(len(stages)), stages["examples_per_second"].to_numpy(dtype=float), color="C1")
    ax.set_yticks(range(len(stages)), labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("training examples / s")
    ax.set_title("throughput per stage")
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return path.name


# --------------------------------------------------------------------------- markdown
def markdown_table(frame: pd.DataFrame, index_name: str | None = None, floats: str = "{:.4f}") -> str:
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else floats.format(v)
        return str(v)

    header = [index_name or frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(idx)] + [cell(v) for v in row]) + " |"
              for idx, row in zip(frame.index, frame.itertuples(index=False), strict=True)]
    return "\n".join(lines)


def _config_lines(cfg: BenchmarkConfig | None, records: Sequence[RunRecord]) -> list[str]:
    if cfg is None:
        return [f"- runs: {len(records)}"]
    return [
        f"- encoder: `{cfg.encoder or 'default'}`, device `{cfg.learner.device}`",
        f"- first order: {' > '.join(cfg.order)}; orders: {cfg.orders}; seeds: {', '.join(map(str, cfg.seed_values))}",
        f"- pairs per marketplace: train ≤ {cfg.max_train_pairs or 'all'}, valid/test ≤ {cfg.max_eval_pairs or 'all'}; "
        f"max length {cfg.learner.max_length}; batch {cfg.learner.adapter.batch_size}",
        f"- epochs: {cfg.learner.adapter.epochs} per adapter stage, {cfg.learner.fusion.epochs} per fusion stage, "
        f"{cfg.baselines.full.epochs} per full fine-tuning stage; learning rates adapter "
        f"{cfg.learner.adapter.learning_rate:g}, fusion {cfg.learner.fusion.learning_rate:g}, "
        f"full {cfg.baselines.full.learning_rate:g}",
        f"- translation: fraction {cfg.learner.translation.fraction:g} for the methods that translate, backend "
        f"`{cfg.learner.translation.backend}`; sweep {', '.join(f'{f:g}' for f in cfg.fractions) or 'none'}",
        f"- runs: {len(records)} (configuration hash `{records[0].run_hash if records else '-'}`)",
    ]


def _ablation_lines(summary: BenchmarkSummary) -> list[str]:
    stats = summary.stats
    if AD_METHOD not in stats.index:
        return []
    present = [m for m in ABLATIONS if m in stats.index]
    if not present:
        return []
    lines = ["## Ablations", "", "Change against the full learner (`ad`), after the whole sequence:", "",
             "| ablation | removes | average ROC-AUC | Δ average | Δ BWT | Δ forgetting |", "|---|---|---|---|---|---|"]
    base = stats.loc[AD_METHOD]
    for method in present:
        row = stats.loc[method]
        lines.append(f"| `{method}` | {ABLATIONS[method]} | {row['average.mean']:.4f} | "
                     f"{row['average.mean'] - base['average.mean']:+.4f} | {row['bwt.mean'] - base['bwt.mean']:+.4f} | "
                     f"{row['forgetting.mean'] - base['forgetting.mean']:+.4f} |")
    lines += ["", "The translation-fraction sweep below is the third ablation (fraction 0 = no translation).", ""]
    return lines


def _performance_lines(summary: BenchmarkSummary, figures: Mapping[str, str]) -> list[str]:
    lines = ["## Performance", ""]
    if not summary.stats.empty:
        params = pd.DataFrame({
            "trainable": [human_count(v) for v in summary.stats["trainable_parameters"]],
            "total": [human_count(v) for v in summary.stats["total_parameters"]],
            "trainable %": [f"{100 * a / b:.2f}" if b else "–" for a, b in
                            zip(summary.stats["trainable_parameters"], summary.stats["total_parameters"], strict=True)],
        }, index=summary.stats.index)
        lines += ["### Trainable parameters", "", markdown_table(params, "method"), "",
                  f"![trainable parameters]({figures['parameters']})", ""]
    if not summary.arrival_seconds.empty:
        lines += [f"### Wall time to add marketplace t (order {' > '.join(summary.first_order)}, mean over seeds)", "",
                  markdown_table(summary.arrival_seconds, "method", "{:.1f}"), ""]
        if not summary.speedup.empty:
            ratios = summary.speedup["cheaper by"].iloc[1:]
            verdict = "met" if (ratios >= SPEEDUP_GOAL).all() else "not met"
            lines += [f"Learner versus full fine-tuning (`{summary.full_reference}`) on the same data:", "",
                      markdown_table(summary.speedup, "arrival", "{:.2f}"), "",
                      f"Goal ≥ {SPEEDUP_GOAL:g}x cheaper for every arrival after the first: **{verdict}** "
                      f"(mean {ratios.mean():.2f}x).", ""]
        else:
            lines += ["(Run `ad` together with `seq-ft` or `sm` to compare with full fine-tuning.)", ""]
        lines += [f"![time per arrival]({figures['arrivals']})", ""]
    if summary.ad_overhead:
        o = summary.ad_overhead
        lines += ["### Attention-distillation overhead versus plain fusion", "",
                  f"- whole sequence: `{AD_METHOD}` takes {o['train_seconds_ratio']:.2f}x the time of `{PLAIN_FUSION}`"]
        if "fusion_seconds_ratio" in o:
            lines += [f"- fusion stages: {o['fusion_seconds_ratio']:.2f}x the time (more batches: the translated sets), "
                      f"{o['fusion_examples_per_second_ratio']:.2f}x the examples/s"]
        lines.append("")
    if not summary.stages.empty:
        shown = summary.stages.set_index("method")
        lines += ["### Examples/s per stage", "",
                  "`train_seconds` is one run's time in the stage, summed over arrivals.", "",
                  markdown_table(shown, "method", "{:.1f}"), "", f"![throughput]({figures['throughput']})", ""]
    return lines


def report_markdown(summary: BenchmarkSummary, figures: Mapping[str, Any], cfg: BenchmarkConfig | None,
                    records: Sequence[RunRecord]) -> str:
    lines = ["# Continual-learning benchmark", "", *_config_lines(cfg, records), ""]
    if not summary.table.empty:
        lines += ["## Results after the whole sequence", "",
                  "Test ROC-AUC per marketplace after the last arrival, mean ± std over seeds"
                  + (" and orders" if cfg is not None and cfg.orders > 1 else "") + "; BWT and forgetting from R.", "",
                  markdown_table(summary.table, "method"), ""]
        if summary.replaying:
            lines += ["† uses old marketplaces' training data (replay or joint training): breaks the no-replay "
                      "constraint of the setting, shown for reference.", ""]
    if summary.orders.shape[1] > 1:
        lines += ["## Sequence orders (Table 2)", "", "Average ROC-AUC after the whole sequence, per order:", "",
                  markdown_table(summary.orders, "method"), ""]
    lines += _ablation_lines(summary)
    if summary.matrices:
        lines += ["## R matrices", "",
                  f"R[t][k]: ROC-AUC on marketplace k (column) after learning marketplace t (row), order "
                  f"{' > '.join(summary.first_order)}, mean over seeds.", ""]
        for method, matrix in summary.matrices.items():
            lines += [f"### {method}", "", markdown_table(matrix.rename(index=lambda m: f"after {m}"), "after \\ on"),
                      "", f"![R {method}]({figures['heatmaps'][method]})",
                      f"![ROC-AUC over the sequence, {method}]({figures['curves'][method]})", ""]
    if not summary.fractions.empty:
        shown = summary.fractions[["runs", "train_seconds", "translation_seconds", "translated_rows", "average",
                                   "old_auc", "gain"]]
        lines += ["## Translation fraction (Figure 4)", "",
                  f"`{AD_METHOD}` on order {' > '.join(summary.first_order)}: training time, translation time, "
                  "ROC-AUC on the old marketplaces after the sequence, and its gain over the smallest fraction.", "",
                  markdown_table(shown, "fraction", "{:.3f}"), ""]
        if "fractions" in figures:
            lines += [f"![translation fraction]({figures['fractions']})", ""]
        if summary.translation_missing:
            lines += ["**Warning**: no translation was available for some language pairs on this machine, so those "
                      "runs distilled on D_t itself; their points are not translation results.", ""]
    lines += _attention_lines(records)
    lines += _performance_lines(summary, figures)
    return "\n".join(lines).rstrip() + "\n"


def _attention_lines(records: Sequence[RunRecord]) -> list[str]:
    """Per fused method and arrival: the mean fusion attention the new adapter gets on its own language's test
    text (mean over seeds). Near 0, the model serves that language through the old adapters."""
    rows: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if not r.main:
            continue
        for t, share in enumerate(r.own_attention):
            if share is not None:
                rows.setdefault(r.method, {}).setdefault(f"t={t + 1} ({r.order[t]})", []).append(share)
    if not rows:
        return []
    table = pd.DataFrame({m: {k: float(np.mean(v)) for k, v in cols.items()} for m, cols in rows.items()}).T
    return ["## Fusion attention on the new marketplace's own adapter", "",
            "Mean attention the adapter of the marketplace that just arrived receives on its own test text, per "
            "arrival (mean over seeds; 1/t would be uniform).", "", markdown_table(table, "method", "{:.3f}"), ""]


def write_report(out: Path, records: Sequence[RunRecord], cfg: BenchmarkConfig | None = None,
                 summary: BenchmarkSummary | None = None) -> Path:
    """``<out>/report.md``, the PNGs it names and ``summary.csv``; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary or summarise(records)
    figures: dict[str, Any] = {"heatmaps": {}, "curves": {}}
    for method, matrix in summary.matrices.items():
        figures["heatmaps"][method] = _save(heatmap_figure(matrix, f"ROC-AUC R[t][k]: {method}"),
                                            out / f"heatmap_{method}.png")
        figures["curves"][method] = _save(curves_figure(matrix, f"ROC-AUC over the sequence: {method}"),
                                          out / f"curves_{method}.png")
    if not summary.fractions.empty and len(summary.fractions) > 1:
        figures["fractions"] = _save(fraction_figure(summary.fractions), out / "translation_fraction.png")
    if not summary.stats.empty:
        figures["parameters"] = _save(parameters_figure(summary.stats), out / "trainable_parameters.png")
    if not summary.arrival_seconds.empty:
        figures["arrivals"] = _save(arrival_figure(summary.arrival_seconds), out / "arrival_seconds.png")
    if not summary.stages.empty:
        figures["throughput"] = _save(throughput_figure(summary.stages), out / "examples_per_second.png")
    if not summary.stats.empty:
        summary.stats.to_csv(out / SUMMARY_FILE, index_label="method")
    path = out / REPORT_FILE
    path.write_text(report_markdown(summary, figures, cfg, records))
    return path


# --------------------------------------------------------------------------- MLflow
def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-/ " else "_" for c in name)


def log_report_to_mlflow(out: Path, records: Sequence[RunRecord], cfg: BenchmarkConfig | None = None,
                         summary: BenchmarkSummary | None = None, *, tracking_uri: str | None = None,
                         artifact_location: str | None = None, experiment: str = EXPERIMENT,
                         run_name: str = "benchmark") -> str:
    """One MLflow run: the configuration as params, every method's summary numbers as metrics, the fraction
    sweep as stepped metrics, and the report folder as artifacts. Tracking defaults come from the settings."""
    import mlflow

    from tasks.registry import setup_tracking
    from tasks.settings import get_settings

    settings = get_settings()
    setup_tracking(tracking_uri or settings.resolved_tracking_uri,
                   artifact_location or settings.resolved_artifact_location, experiment)
    summary = summary or summarise(records)
    with mlflow.start_run(run_name=run_name) as run:
        params: dict[str, Any] = {"runs": len(records), "methods": ",".join(summary.methods),
                                  "first_order": ",".join(summary.first_order)}
        if cfg is not None:
            params.update({k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                           for k, v in flat(cfg).items()})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics: dict[str, float] = {}
        for method, row in summary.stats.iterrows():
            for column, value in row.items():
                if isinstance(value, (int, float, np.number)) and not np.isnan(value):
                    metrics[_metric_name(f"{method}.{column}")] = float(value)
        if not summary.speedup.empty:
            metrics["speedup_vs_full.mean"] = float(summary.speedup["cheaper by"].iloc[1:].mean())
        metrics.update({f"ad_overhead.{k}": float(v) for k, v in summary.ad_overhead.items()})
        mlflow.log_metrics(metrics)
        for step, (fraction, row) in enumerate(summary.fractions.iterrows()):
            mlflow.log_metrics({"sweep.fraction": float(fraction), "sweep.train_seconds": float(row["train_seconds"]),
                                "sweep.old_auc": float(row["old_auc"]), "sweep.gain": float(row["gain"])}, step=step)
        for path in sorted(Path(out).iterdir()):
            if path.is_file() and path.suffix in (".md", ".png", ".csv", ".jsonl", ".json"):
                mlflow.log_artifact(str(path), artifact_path="benchmark")
        return run.info.run_id
