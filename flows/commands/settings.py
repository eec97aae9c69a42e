"""The learner's settings on the command line, the same three ways for every command.

``--preset NAME`` (a TOML file shipped in ``tasks/presets/``), ``--config FILE`` (your own TOML, the same
format) and ``--set section.name=value`` (repeatable, highest priority), as Hugging Face's
``HfArgumentParser`` layers a file and arguments over one dataclass. No command declares a learner option
or a default of its own: ``mcl config show`` prints every setting with its value and description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.console import console

PresetOption = Annotated[Optional[str], typer.Option(
    "--preset", help="Named learner preset (see `mcl config presets`); default: the command's own.")]
ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML file of learner settings (the format `mcl config show` prints).")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one setting, e.g. --set fusion.epochs=2 --set distill.omega=renorm "
                  "(gate.max_regression=0.02 for the gate); repeatable.")]

app = typer.Typer(help="The learner's settings: presets, defaults and descriptions.", no_args_is_help=True)


def run_configs(entry: str, preset: str | None, config: Path | None, sets: list[str] | None):
    """(learner, gate) for a command, or a usage error naming the bad field before any work starts."""
    from tasks.config import ConfigError
    from tasks.config import run_configs as build

    try:
        return build(entry, preset=preset, file=config, overrides=sets or ())
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--preset/--config/--set") from None


@app.command("show")
def show(preset: PresetOption = None, config: ConfigOption = None, sets: SetOption = None,
         entry: Annotated[str, typer.Option(help="Whose default to start from: arrival, retrain, demo, "
                                                 "train-sequence.")] = "arrival") -> None:
    """Print the resulting learner and gate settings as TOML, each with its description."""
    from tasks.config import to_toml

    learner, gate = run_configs(entry, preset, config, sets)
    text = to_toml(learner) + "\n[gate]\n" + "\n".join(to_toml(gate).splitlines()) + "\n"
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("presets")
def presets() -> None:
    """List the shipped presets with their first comment line."""
    from tasks.config import preset_names, read_preset_text

    for kind in ("", "benchmark"):
        for name in preset_names(kind):
            first = next((line.lstrip("# ").strip() for line in read_preset_text(name, kind).splitlines()
                          if line.startswith("#")), "")
            label = f"{kind}/{name}" if kind else name
            console.print(f"[bold]{label}[/bold]  {first}", soft_wrap=True)
