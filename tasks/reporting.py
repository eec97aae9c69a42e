"""What a reviewer reads in the MLflow UI: the ROC-AUC matrix heatmap, fusion attention by language,
ROC curves and a model card. Figures are built with matplotlib's object API (no global pyplot
state, safe in worker threads) and logged with ``mlflow.log_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

if TYPE_CHECKING:
    from tasks.records import Evaluation


def auc_matrix(rows: Sequence[tuple[str, Mapping[str, float]]], marketplaces: Sequence[str]) -> pd.DataFrame:
    """R[t][k] as a table: one row per model in the lineage (labelled by what it added), NaN where not learnt yet."""
    return pd.DataFrame([[aucs.get(m, np.nan) for m in marketplaces] for _, aucs in rows],
                        index=[label for label, _ in rows], columns=list(marketplaces), dtype=float)


def heatmap_figure(matrix: pd.DataFrame, title: str = "ROC-AUC R[t][k]") -> Figure:
    fig = Figure(figsize=(1.2 + 1.1 * matrix.shape[1], 1.0 + 0.8 * matrix.shape[0]))
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.5, vmax=1.0)
    ax.set_xticks(range(matrix.shape[1]), matrix.columns)
    ax.set_yticks(range(matrix.shape[0]), [f"after {r}" for r in matrix.index])
    ax.set_xlabel("evaluated on")
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white" if v < 0.8 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def attention_figure(profile: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped bars: for each marketplace's text, the mean fusion attention each adapter receives."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    texts = list(profile)
    adapters = list(next(iter(profile.values()))) if profile else []
    width = 0.8 / max(len(adapters), 1)
    for i, adapter in enumerate(adapters):
        ax.bar(np.arange(len(texts)) + i * width, [profile[t][adapter] for t in texts], width, label=f"adapter {adapter}")
    ax.set_xticks(np.arange(len(texts)) + width * (len(adapters) - 1) / 2, [f"{t} text" for t in texts])
    ax.set_ylabel("mean fusion attention")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    ax.set_title("fusion attention by language")
    fig.tight_layout()
    return fig


def roc_figure(labels: Mapping[str, Sequence[int]], scores: Mapping[str, Sequence[float]],
               aucs: Mapping[str, float]) -> Figure:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    for mid in labels:
        fpr, tpr, _ = roc_curve(np.asarray(labels[mid]), np.asarray(scores[mid]))
        ax.plot(fpr, tpr, label=f"{mid} (AUC {aucs[mid]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize="small")
    ax.set_title("ROC curves per marketplace")
    fig.tight_layout()
    return fig


def log_evaluation_figures(evaluation: Evaluation) -> None:
    """ROC curves and the attention plot of one evaluation, into the active run."""
    mlflow.log_figure(roc_figure(evaluation.labels, evaluation.scores, evaluation.aucs), "roc_curves.png")
    if evaluation.attention:
        mlflow.log_figure(attention_figure(evaluation.attention), "fusion_attention_by_language.png")
        mlflow.log_dict(evaluation.attention, "fusion_attention.json")


def registry_rows(versions: Sequence[Any]) -> list[dict[str, Any]]:
    """The registry as table rows (one per version, newest first), for a Prefect table artifact: what an operator
    checks after a run -- which version serves, which was refused and why, how each scored per marketplace."""
    marketplaces = sorted({m for v in versions for m in v.aucs})
    return [
        {"version": int(v.version), "aliases": ",".join(f"@{a}" for a in v.aliases), "kind": v.tags.get("kind", ""),
         "marketplaces": ",".join(v.marketplaces), "gate": v.tags.get("gate", ""),
         "gate_reasons": v.tags.get("gate_reasons", ""),
         **{f"auc.{m}": round(v.aucs[m], 4) if m in v.aucs else None for m in marketplaces}}
        for v in sorted(versions, key=lambda v: -int(v.version))
    ]


def _table(matrix: pd.DataFrame) -> str:
    header = "| after \\ on | " + " | ".join(matrix.columns) + " |"
    rule = "|---" * (matrix.shape[1] + 1) + "|"
    rows = ["| " + str(idx) + " | " + " | ".join("" if np.isnan(v) else f"{v:.4f}" for v in row) + " |"
            for idx, row in zip(matrix.index, matrix.to_numpy(dtype=float), strict=True)]
    return "\n".join([header, rule, *rows])


def model_card(
    *,
    version: str,
    alias: str,
    marketplaces: Sequence[tuple[str, str]],
    encoder: str,
    matrix: pd.DataFrame,
    gate_checks: Sequence[str],
    gate_reasons: Sequence[str],
    stages: Sequence[Mapping[str, Any]],
    attention: Mapping[str, Mapping[str, float]],
    data_hashes: Mapping[str, Mapping[str, str]],
    translation_routes: Mapping[str, str] | None = None,
) -> str:
    """The markdown a reviewer reads before promoting: what the model knows, how it scores, what the gate said."""
    lines = [
        f"# relevance v{version} (@{alias})",
        "",
        "Multilingual query–product relevance model grown by continual learning: frozen encoder, one Pfeiffer "
        "language adapter per marketplace, AdapterFusion trained with attention distillation "
        "(*Multilingual Continual Learning using Attention Distillation*).",
        "",
        f"- **Encoder**: `{encoder}` (frozen)",
        "- **Marketplaces (arrival order)**: " + ", ".join(f"`{m}` ({lang})" for m, lang in marketplaces),
        "- **Intended use**: score (marketplace, query, product_title) rows; P(relevant) in the `score` column.",
        "",
        *(["- **Translation of the new marketplace into each older language**: "
            + ", ".join(f"{lang}: `{route}`" for lang, route in translation_routes.items()), ""]
          if translation_routes else []),
        "## ROC-AUC matrix R[t][k]",
        "",
        _table(matrix),
        "",
        "## Promotion gate",
        "",
        *(f"- {c}" for c in gate_checks or ["first version: nothing to compare"]),
        "",
        f"**Verdict**: {'passed' if not gate_reasons else 'refused: ' + '; '.join(gate_reasons)}",
        "",
        "## Training stages",
        "",
        "| stage | marketplace | trainable parameters | best valid ROC-AUC | epochs | examples/s |",
        "|---|---|---|---|---|---|",
        *(f"| {s['stage']} | {s['marketplace']} | {s['fit']['trainable_parameters']:,} | "
          f"{s['fit']['best_metric']:.4f} | {s['fit']['epochs_run']} | {s['fit']['examples_per_second']:.1f} |"
          for s in stages),
        "",
    ]
    if attention:
        lines += ["## Mean fusion attention (rows: text of; columns: adapter)", ""]
        lines += [f"- `{mid}`: " + ", ".join(f"{a} {v:.3f}" for a, v in shares.items()) for mid, shares in attention.items()]
        lines.append("")
    lines += ["## Data (content hashes)", ""]
    lines += [f"- `{mid}`: " + ", ".join(f"{split} `{h[:12]}`" for split, h in hashes.items())
              for mid, hashes in data_hashes.items()]
    lines += ["", "Limitations: scores are calibrated on the marketplaces above only; a marketplace not listed is "
              "refused at prediction time."]
    return "\n".join(lines) + "\n"


def margin_rows(epochs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The student's per-epoch table, one row per (epoch, marketplace): its ROC-AUC, margin and rank, whether the
    epoch trained on it, and whether the next epoch does (epoch 0: before training)."""
    return [{"epoch": e["epoch"], "marketplace": mid, "student_auc": round(e["student_auc"][mid], 6),
             "margin": round(margin, 6), "rank": e["rank"][mid], "trained": mid in e["trained_on"],
             "next_active": mid in e["next_active"]}
            for e in epochs for mid, margin in e["margin"].items()]


def margin_figure(epochs: Sequence[Mapping[str, Any]], epsilon: float, kept_epoch: int) -> Figure:
    """Margin (teacher minus student validation ROC-AUC) per marketplace over the epochs; a filled marker where an
    epoch trained on the marketplace, ε as a dotted line, the kept epoch as a vertical one."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    x = [e["epoch"] for e in epochs]
    for mid in epochs[0]["margin"]:
        line, = ax.plot(x, [e["margin"][mid] for e in epochs], label=mid)
        trained = [e for e in epochs if mid in e["trained_on"]]
        ax.scatter([e["epoch"] for e in trained], [e["margin"][mid] for e in trained], color=line.get_color(), s=18)
    ax.axhline(epsilon, color="grey", linestyle=":", label=f"epsilon {epsilon}")
    ax.axvline(kept_epoch, color="black", linestyle="--", linewidth=0.8, label=f"kept epoch {kept_epoch}")
    ax.set_xlabel("epoch (dots: trained on it)")
    ax.set_ylabel("teacher − student ROC-AUC")
    ax.legend(fontsize="small")
    ax.set_title("student margins per marketplace (validation)")
    fig.tight_layout()
    return fig


def joint_rows(joint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per marketplace of a joint retraining: best and final validation ROC-AUC, best and switch steps."""
    return [{"marketplace": mid, "best_valid_auc": round(best, 6), "best_step": joint["best_step"][mid],
             "switch_step": joint["switch_step"][mid],
             "final_valid_auc": round(joint["final"][mid], 6) if mid in joint["final"] else None}
            for mid, best in joint["best"].items()]


def joint_curves_figure(curves: Mapping[str, Sequence[Sequence[float]]], switch_steps: Mapping[str, int | None],
                        method: str) -> Figure:
    """Validation ROC-AUC per marketplace over the steps of a joint retraining; a cross where a marketplace's loss
    switched to distillation (after the rewind to its best checkpoint, which the curve drops back to)."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    for mid, curve in curves.items():
        if not curve:
            continue
        steps, values = zip(*curve, strict=True)
        line, = ax.plot(steps, values, label=mid)
        switch = switch_steps.get(mid)
        if switch is not None:
            at = [v for s, v in curve if s == switch][-1]
            ax.scatter([switch], [at], marker="x", s=60, color=line.get_color(), zorder=3)
            ax.axvline(switch, color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.set_xlabel("step (x: loss switched to distillation from the best checkpoint)")
    ax.set_ylabel("validation ROC-AUC")
    ax.legend(fontsize="small")
    ax.set_title(f"joint retraining ({method}): validation per marketplace")
    fig.tight_layout()
    return fig
