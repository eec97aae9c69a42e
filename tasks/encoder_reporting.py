"""What a reviewer reads about a distilled encoder in MLflow: its loss curves, the frozen-evaluation plot and a card.

Figures use matplotlib's object API (no global pyplot state, safe in worker threads), as :mod:`tasks.reporting`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tasks.encoder_evaluation import KINDS, MEAN_ROW, EncoderEvaluation

if TYPE_CHECKING:
    from models.encoder_distill import DistillResult


def trained_phrase(result: DistillResult) -> str:
    """Which student layers distillation changed, in words a reviewer checks against the adapter view."""
    trained = result.trained
    if not trained:
        return "no distillation (max_steps = 0): every weight is the teacher's, bit for bit"
    if len(trained) == len(result.layers):
        return "every layer distilled"
    kept = [layer for k, layer in enumerate(result.layers) if k not in trained]
    return (f"distillation trained student layers {trained} (matched to teacher layers "
            f"{[result.matched_layers[k] for k in trained]}); the embeddings and teacher layers {kept} are the "
            "teacher's, bit for bit")


def loss_figure(history: Sequence[Mapping[str, float]], losses: Sequence[str]) -> Figure:
    """The weighted total and each loss term against the optimiser step (log scale: the terms differ by orders)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    steps = [r["step"] for r in history]
    for key in ["loss", *losses]:
        ax.plot(steps, [r[key] for r in history], label="total (weighted)" if key == "loss" else key,
                linewidth=2 if key == "loss" else 1)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    if not history:
        ax.text(0.5, 0.5, "no distillation steps (max_steps = 0): the undistilled copy", ha="center",
                va="center", transform=ax.transAxes)
    elif all(r[k] > 0 for r in history for k in ["loss", *losses]):
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.set_title("encoder distillation")
    fig.tight_layout()
    return fig


def _bars(ax, markets: Sequence[str], values: Mapping[str, Sequence[float]],
          spread: Mapping[str, Sequence[float]] | None, ylabel: str, title: str) -> None:
    """Grouped bars: one group per marketplace, one bar per encoder kind."""
    width = 0.8 / len(KINDS)
    for i, kind in enumerate(KINDS):
        ax.bar(np.arange(len(markets)) + i * width, values[kind], width, capsize=3, label=kind,
               yerr=None if spread is None else spread[kind])
    ax.set_xticks(np.arange(len(markets)) + width * (len(KINDS) - 1) / 2, markets)
    low = min(v - (spread[k][j] if spread else 0.0) for k in KINDS for j, v in enumerate(values[k]))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)  # the lowest bar, error bar included, stays in view
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    ax.set_title(title)


def evaluation_figure(evaluation: EncoderEvaluation) -> Figure:
    """Per marketplace, each encoder's mean probe ROC-AUC with the seeds' spread as error bars; beneath it, when
    measured, the adapter view's ROC-AUC (one fit per marketplace and encoder)."""
    markets = evaluation.marketplaces
    panels = 2 if evaluation.adapter_aucs else 1
    fig = Figure(figsize=(1.5 + 1.4 * len(markets), 4 * panels))
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    _bars(axes[0], markets, {k: [evaluation.mean(k, m) for m in markets] for k in KINDS},
          {k: [float(np.std(evaluation.aucs[k][m])) for m in markets] for k in KINDS},
          "probe ROC-AUC (frozen encoder)", "frozen-encoder probes per marketplace (mean ± std over seeds)")
    if evaluation.adapter_aucs:
        _bars(axes[1], markets, {k: [evaluation.adapter_aucs[k][m] for m in markets] for k in KINDS}, None,
              "adapter ROC-AUC (frozen encoder)", "adapter view: one adapter and head per marketplace")
    fig.tight_layout()
    return fig


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|---" * len(table.columns) + "|"
    rows = ["| " + " | ".join(v if isinstance(v, str) else ("" if np.isnan(v) else f"{v:.4f}") for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def encoder_card(*, name: str, checksum: str, result: DistillResult,
                 evaluation: EncoderEvaluation, data: Mapping[str, object]) -> str:
    """The registered version's description: what was distilled from what, on which text, and how it compares."""
    table = evaluation.table()
    mean = table[table["marketplace"] == MEAN_ROW].iloc[0]
    latency = "; ".join(f"batch {size}: {evaluation.latency_ms['student'][size]:.2f} ms vs "
                        f"{evaluation.latency_ms['teacher'][size]:.2f} ms ({evaluation.latency_ratio(size):.2f}×)"
                        for size in evaluation.latency_ms["student"])
    kind = "MLM teacher: DistilBERT's losses" if result.mlm_teacher else "no MLM head: hidden states and attention"
    lines = [
        f"# {name}",
        "",
        ("A base encoder distilled from its teacher on unlabelled in-domain text (Howell et al., *Domain-specific "
         "knowledge distillation yields smaller and better models for conversational commerce*), for use frozen "
         "under adapters: `--encoder <folder>` starts a lineage on it."),
        "",
        f"- **Teacher**: `{result.teacher}` ({result.teacher_layers} layers, checksum "
        + f"`{result.teacher_checksum[:12]}`)",
        f"- **Student**: {len(result.layers)} layers initialised from teacher layers {result.layers}; "
        + f"{trained_phrase(result)}; checksum `{checksum}`",
        f"- **Losses**: {', '.join(result.losses)} ({kind})",
        f"- **Text**: {result.texts:,} distinct texts from {data.get('marketplaces', '')} (splits "
        + f"{data.get('splits', '')})",
        f"- **Training**: {result.steps} optimiser steps ({result.epochs:g} epochs) in {result.seconds:.0f} s",
        f"- **Parameters**: {evaluation.parameters['student']:,} vs {evaluation.parameters['teacher']:,}",
        f"- **Latency per pair, one CPU thread**: {latency}",
        "",
        "## Frozen-encoder probes (test ROC-AUC, mean and std over seeds; KS p-values of the student's seeds)",
        "",
        _markdown(table),
        "",
        (f"On average the student scores {mean['vs_teacher']:+.4f} against the teacher and "
         f"{mean['vs_undistilled']:+.4f} against the undistilled copy of the same layers."),
    ]
    if evaluation.adapter_aucs:
        columns = ["marketplace", *(f"{k}_adapter" for k in KINDS), "adapter_vs_teacher", "adapter_vs_undistilled"]
        lines += [
            "",
            "## Adapter view (test ROC-AUC of one language adapter and head per marketplace on each frozen encoder)",
            "",
            ("How this project's models use a base: the (query, title) pair as one sequence through an adapter, "
             "trained as an arrival trains it. The probes above read each text alone; the two can disagree, and "
             "this view is the one a lineage on this encoder will see."),
            "",
            _markdown(table[columns]),
            "",
            (f"On average the student's adapters score {mean['adapter_vs_teacher']:+.4f} against the teacher's and "
             f"{mean['adapter_vs_undistilled']:+.4f} against the undistilled copy's."),
        ]
    return "\n".join(lines) + "\n"
