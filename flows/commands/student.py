"""``mcl student``: the compact serving student (AMTSS): distil it from the champion's marketplaces, add a
marketplace to it, print its settings. Runs the ``distill-student`` flow here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from flows.console import configure_logging, console

app = typer.Typer(help="The compact serving student (relevance-student): one small encoder, one head per marketplace, "
                       "distilled from each marketplace's best teacher.", no_args_is_help=True)

DataOption = Annotated[str, typer.Option(
    "--data", help="Data root with one folder per marketplace (<root>/<id>/{train,valid,test}); the student trains "
                   "on each marketplace's own training data.")]
CandidateOption = Annotated[Optional[list[str]], typer.Option(
    "--candidate", help="Extra teacher candidate, NAME/VERSION or NAME@ALIAS (e.g. relevance/4); repeatable.")]
BaseOption = Annotated[Optional[str], typer.Option(
    "--base-encoder", help="Encoder whose layers the student copies (e.g. a domain-distilled encoder folder); "
                           "default: the relevance models' encoder.")]
EncoderOption = Annotated[Optional[str], typer.Option(
    help="The relevance models' encoder (default from settings); must match the champion's.")]
StudentConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML file of student settings (the format `mcl student config` prints).")]
StudentSetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one student setting, e.g. --set top_k=3 --set train.epochs=5 "
                  "--set teacher_weights=softmax; repeatable.")]


def student_settings(config: Path | None, sets: list[str] | None):
    """The student settings from --config and --set over the defaults, or a usage error naming the bad field."""
    from models.config import StudentConfig
    from tasks.config import ConfigError, build

    try:
        return build(StudentConfig, file=config, overrides=sets or ())
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--config/--set") from None


@app.command("config")
def show_config(config: StudentConfigOption = None, sets: StudentSetOption = None) -> None:
    """Print the student settings `mcl student distill` would use, as TOML, each with its description."""
    from tasks.config import to_toml

    console.print(to_toml(student_settings(config, sets)), markup=False, highlight=False, soft_wrap=True)


@app.command()
def distill(data: DataOption, candidates: CandidateOption = None, base_encoder: BaseOption = None,
            encoder: EncoderOption = None, config: StudentConfigOption = None, sets: StudentSetOption = None,
            verbose: bool = False) -> None:
    """Distil every marketplace of relevance@champion into a fresh student and register it as relevance-student
    (@champion when each marketplace is within the gate's margin of its teacher, else @challenger)."""
    configure_logging(verbose)
    run(data, None, candidates, student_settings(config, sets), base_encoder, encoder)


@app.command("add-marketplace")
def add_marketplace(
    marketplace: Annotated[str, typer.Option(help="Marketplace to add; relevance@champion must already know it.")],
    data: DataOption, candidates: CandidateOption = None, encoder: EncoderOption = None,
    config: StudentConfigOption = None, sets: StudentSetOption = None, verbose: bool = False,
) -> None:
    """Add a marketplace to relevance-student@champion: a new head, forced into the active set as a max-margin
    teacher, training continued from the current student on every marketplace's data."""
    configure_logging(verbose)
    run(data, marketplace, candidates, student_settings(config, sets), None, encoder)


def run(data: str, marketplace: str | None, candidates: list[str] | None, cfg: Any, base_encoder: str | None,
        encoder: str | None) -> None:
    """Check the request against the registry and the data contract (one line and exit 1 when it cannot run), then
    run the flow here and print the margins table."""
    from flows.commands.local_prefect import patient_local_prefect
    from models.encoders import EncoderNotFoundError
    from models.relevance import ModelFormatError
    from tasks.data import DataValidationError
    from tasks.registry import PromotionRefused
    from tasks.student_steps import StudentRequestError

    refusals = (StudentRequestError, DataValidationError, EncoderNotFoundError, ModelFormatError, FileNotFoundError)
    try:
        preflight(data, marketplace, candidates or [])
    except refusals as err:
        _fail(err)
    patient_local_prefect()
    from flows.student import distill_student

    try:
        result = distill_student(data=data, add_marketplace=marketplace, candidates=candidates or [], student=cfg,
                                 base_encoder=base_encoder, encoder=encoder)
    except PromotionRefused as err:
        _fail(err)
    except refusals as err:
        _fail(err)
    if result.get("epochs"):
        console.print(margins_table(result["epochs"]))
    console.print(f"[green]registered relevance-student version {result['version']} as @{result['alias']}[/green]"
                  + (" (already registered earlier: nothing trained)" if result["already_registered"] else "")
                  + f"; {result['stop_reason']}", soft_wrap=True)


def preflight(data: str, marketplace: str | None, candidates: list[str]) -> None:
    """What the flow would refuse first, before a Prefect server starts: the registry request and the data."""
    from mlflow.tracking import MlflowClient

    from flows.candidate import start_tracking
    from tasks.data import load_data_root
    from tasks.settings import get_settings
    from tasks.student_steps import candidate_version, plan_student

    settings = get_settings()
    start_tracking(settings)
    client = MlflowClient()
    plan = plan_student(client, marketplace)
    for reference in candidates:
        candidate_version(client, reference)
    load_data_root(data, plan.marketplaces, s3_endpoint_url=settings.s3_endpoint_url)


def margins_table(epochs: list[dict]) -> Table:
    """One row per epoch: what it trained on, each marketplace's margin (rank), the next active set."""
    ids = list(epochs[0]["margin"])
    table = Table(title="student margins (teacher − student validation ROC-AUC, rank)")
    for column in ("epoch", "trained on", *ids, "next A"):
        table.add_column(column, justify="right" if column in ids else "left")
    for e in epochs:
        table.add_row(str(e["epoch"]), ",".join(e["trained_on"]) or "-",
                      *(f"{e['margin'][m]:+.4f} ({e['rank'][m]})" for m in ids), ",".join(e["next_active"]))
    return table


def _fail(err: Exception) -> None:
    console.print(f"[red]student: {type(err).__name__}:[/red] {err}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)
