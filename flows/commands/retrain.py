"""``mcl retrain``: the scheduled retraining, run now in this process (a local Prefect flow run).

The same flow the weekly deployment runs: re-distil the champion's fusion on the ready fresh folders of its
marketplaces under a landing zone, through the promotion gate; folders some version already trained on are
skipped. Useful to retrain on a new upload without waiting for the schedule, or to try settings first.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.commands.arrive import print_registry
from flows.commands.local_prefect import patient_local_prefect
from flows.commands.settings import ConfigOption, PresetOption, SetOption, run_configs
from flows.console import configure_logging, console


def retrain(
    data_root: Annotated[str, typer.Argument(help="Landing zone of fresh data: <root>/<marketplace>/{train,valid,test} "
                                                  "with a _READY marker (a local folder or s3://).")],
    preset: PresetOption = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder (default from settings); must match the champion's.")] = None,
    method: Annotated[str | None, typer.Option(help="Retraining method: redistill, async-kd, uniform, dwa or gradnorm "
                                                    "(the same as --set retrain.method=...).")] = None,
    verbose: bool = False,
) -> None:
    """Run the scheduled retraining now on fresh data, through the gate: by default a fresh fusion over the champion's
    adapters distilling its attention; --method async-kd trains the champion's fusion on every fresh marketplace at
    once, each converging on its own schedule.

    Learner settings come from --preset, --config and --set (`mcl config show --entry retrain` lists them).
    Exits 0 when a version was registered as champion or there was nothing new to retrain on (the log says
    why), 1 when the gate refused the retrained version or the input was bad."""
    configure_logging(verbose)
    overrides = [*(sets or []), *([f"retrain.method={method}"] if method else [])]
    learner, gate = run_configs("retrain", preset, config, overrides)
    patient_local_prefect()
    outcome = run_retraining({"data_root": data_root, "learner": learner, "gate": gate, "encoder": encoder})
    if outcome is False:
        raise typer.Exit(1)
    if outcome is not None:
        print_registry()


def run_retraining(parameters: dict[str, Any]) -> dict | bool | None:
    """Run the flow here; print the outcome or the one reason it stopped. Returns the flow's summary, None when
    there was nothing to retrain, False when it stopped (refused, bad input)."""
    from flows.retrain import scheduled_retraining
    from models.encoders import EncoderNotFoundError
    from tasks.data import DataValidationError
    from tasks.registry import PromotionRefused

    try:
        result = scheduled_retraining(**parameters)
    except (PromotionRefused, DataValidationError, EncoderNotFoundError, FileNotFoundError) as err:
        console.print(f"[red]retrain: {type(err).__name__}:[/red] {err}", soft_wrap=True)
        return False
    if result is None:
        console.print(f"nothing to retrain under {parameters['data_root']} (the log above says why)", soft_wrap=True)
        return None
    retrained = ",".join(result.get("retrained_on", [])) or "its marketplace"
    already = " (already registered earlier: nothing trained)" if result.get("already_registered") else ""
    console.print(f"[green]retrained on {retrained}: version {result['version']} as @{result['alias']}[/green]"
                  f"{already}  test ROC-AUC " + "  ".join(f"{k} {v:.4f}" for k, v in result["aucs"].items()),
                  soft_wrap=True)
    return result
