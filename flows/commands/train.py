"""``mcl train-sequence``: learn marketplaces in order and print the continual-learning matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.commands.settings import ConfigOption, PresetOption, SetOption, run_configs
from flows.console import configure_logging, console, matrix_table


def train_sequence(
    data: Annotated[Path, typer.Option(help="Data root holding one folder per marketplace (<data>/<id>/train.parquet ...).")],
    order: Annotated[str, typer.Option(help="Marketplace ids in arrival order, comma separated, e.g. en,es,fr.")],
    translated: Annotated[Optional[Path], typer.Option(help="Translated subsets: <dir>/<new id>/<old language>.parquet. Without it, D_t batches get CE + L_AD (paper §4.2).")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="Encoder: hub id, local folder, or the embedded default.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Save the final model folder here.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write R, metrics and stage reports as JSON here.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use at most this many rows per split (quick runs).")] = None,
    preset: PresetOption = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    verbose: bool = False,
) -> None:
    """Run stages 2-4 of the method for a sequence of marketplaces and print R, average, BWT and forgetting.

    Learner settings come from --preset, --config and --set (`mcl config show` lists them all)."""
    configure_logging(verbose)
    from tasks.data import DataValidationError
    from tasks.learner import resolve_settings_encoder, run_sequence
    from tasks.settings import get_settings

    settings = get_settings()
    cfg, _ = run_configs("train-sequence", preset, config, sets)
    ids = [x.strip() for x in order.split(",") if x.strip()]
    try:
        ref = resolve_settings_encoder(settings, encoder)
        result = run_sequence(data, ids, cfg, encoder=ref, translated_root=translated, limit=limit)
    except (DataValidationError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    m = result.metrics
    console.print(matrix_table(list(m.marketplaces), m.matrix))
    console.print(f"average {m.average:.4f}   BWT {m.bwt:+.4f}   forgetting {m.forgetting:.4f}")
    console.print("seconds per arrival: " + "  ".join(
        f"{mid} {sec:.1f}" for mid, sec in zip(m.marketplaces, result.arrival_seconds, strict=True)))
    for r in result.reports:
        console.print(f"  {r.stage:8s} {r.marketplace:6s} trainable {r.fit.trainable_parameters:>10,d} "
                      f"({100 * r.trainable_fraction:.2f}% of the encoder)  {r.fit.examples_per_second:7.1f} ex/s  "
                      f"best valid ROC-AUC {r.fit.best_metric:.4f} at epoch {r.fit.best_epoch}")
    if result.attention:
        console.print("mean fusion attention (rows: test text of; columns: adapter):")
        for mid, shares in result.attention.items():
            console.print(f"  {mid:6s} " + "  ".join(f"{k} {v:.3f}" for k, v in shares.items()))
    if out is not None:
        console.print(f"model saved to {result.model.save(out)}")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({
            "order": ids, "metrics": m.as_dict(), "attention": result.attention,
            "arrival_seconds": result.arrival_seconds, "learner": cfg.model_dump(),
            "stages": [r.as_dict() for r in result.reports],
        }, indent=2, default=str))
        console.print(f"report written to {report}")
