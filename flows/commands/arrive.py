"""``mcl arrive``: a marketplace joins the model now (a local Prefect flow run), or ``--deployment`` submits it."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from flows.commands.local_prefect import patient_local_prefect
from flows.commands.settings import ConfigOption, PresetOption, SetOption, run_configs
from flows.console import configure_logging, console


def print_registry() -> None:
    from mlflow.tracking import MlflowClient

    from flows.candidate import start_tracking
    from flows.commands.registry import registry_tables
    from tasks.settings import get_settings

    start_tracking(get_settings())
    for table in registry_tables(MlflowClient()):
        console.print(table)


def arrive(
    marketplace: Annotated[str, typer.Option(help="Marketplace id (names its adapter), e.g. es.")],
    language: Annotated[str, typer.Option(help="BCP-47 language of the marketplace, e.g. es.")],
    train: Annotated[str, typer.Option(help="Train table (parquet/csv/jsonl, local or s3://).")],
    valid: Annotated[str, typer.Option(help="Validation table.")],
    test: Annotated[str, typer.Option(help="Test table (stored in the registry for later re-evaluation).")],
    preset: PresetOption = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    replace: Annotated[bool, typer.Option(help="Retrain a marketplace the champion already has (its most recent one).")] = False,
    encoder: Annotated[Optional[str], typer.Option(help="Encoder (default from settings); must match the champion's.")] = None,
    deployment: Annotated[Optional[str], typer.Option(help="Submit to this deployment (e.g. marketplace-arrival/arrival-gpu) instead of running here.")] = None,
    watch: Annotated[bool, typer.Option(help="With --deployment: follow the flow run's states and logs until it ends (exit 1 unless Completed).")] = False,
    verbose: bool = False,
) -> None:
    """Run the arrival flow: translate-subset, adapter, attention-distilled fusion, evaluate, register + gate.

    Learner settings come from --preset, --config and --set (`mcl config show` lists them all)."""
    configure_logging(verbose)
    learner, gate = run_configs("arrival", preset, config, sets)
    parameters = {"marketplace": marketplace, "language": language, "train": train, "valid": valid, "test": test,
                  "learner": learner, "gate": gate, "replace": replace, "encoder": encoder}
    if not check_data(parameters):
        raise typer.Exit(1)
    patient_local_prefect()
    if deployment is not None:
        submitted = {**parameters, "learner": learner.model_dump(), "gate": gate.model_dump()}
        if not submit(deployment, submitted, watch=watch):
            raise typer.Exit(1)
        return
    outcome = run_arrival(parameters)
    print_registry()
    if outcome is None:
        raise typer.Exit(1)


def submit(deployment: str, parameters: dict[str, Any], *, watch: bool) -> bool:
    """Create a flow run of ``deployment`` and print where to follow it; with ``watch``, stream its states and
    logs here (Prefect's own `prefect flow-run watch`) and return whether it completed."""
    import asyncio

    from prefect.cli.flow_runs_watching import watch_flow_run
    from prefect.deployments import run_deployment
    from prefect.utilities.urls import url_for

    run = run_deployment(name=deployment, parameters=parameters, timeout=0)
    console.print(f"submitted flow run {run.name} ({run.id}) to deployment {deployment}: "
                  f"{url_for(run) or 'set PREFECT_UI_URL for a link'}", soft_wrap=True)
    if not watch:
        return True
    state = asyncio.run(watch_flow_run(run.id, console)).state
    name = state.name if state else "unknown"
    console.print(f"flow run {run.name} ended in state {name}" + (f": {state.message}" if state and state.message else ""),
                  soft_wrap=True)
    return bool(state and state.is_completed())


def check_data(parameters: dict[str, Any]) -> bool:
    """The data contract, checked here before a Prefect server starts: a bad file costs one line, not a server
    start-up, a traceback and an empty registry table."""
    from tasks.data import DataValidationError, load_marketplace
    from tasks.settings import get_settings

    try:
        load_marketplace(parameters["marketplace"], parameters["language"], parameters["train"],
                         parameters["valid"], parameters["test"], s3_endpoint_url=get_settings().s3_endpoint_url)
    except (DataValidationError, FileNotFoundError) as err:
        console.print(f"[red]{parameters['marketplace']}: {type(err).__name__}:[/red] {err}", soft_wrap=True)
        return False
    return True


def run_arrival(parameters: dict[str, Any]) -> dict | None:
    """Run the flow in this process; print the outcome or the one reason it stopped (None then)."""
    from flows.arrival import marketplace_arrival
    from models.encoders import EncoderNotFoundError
    from models.relevance import ModelFormatError
    from tasks.data import DataValidationError
    from tasks.registry import ArrivalRefused, PromotionRefused

    refusals = (ArrivalRefused, PromotionRefused, DataValidationError, EncoderNotFoundError, ModelFormatError,
                FileNotFoundError)
    try:
        result = marketplace_arrival(**parameters)
    except refusals as err:
        console.print(f"[red]{parameters['marketplace']}: {type(err).__name__}:[/red] {err}", soft_wrap=True)
        return None
    console.print(f"[green]{parameters['marketplace']}: registered version {result['version']} "
                  f"as @{result['alias']}[/green]  test ROC-AUC "
                  + "  ".join(f"{k} {v:.4f}" for k, v in result["aucs"].items())
                  + (f"  (adapter-only {result['adapter_auc']:.4f})" if result["adapter_auc"] is not None else ""))
    return result
