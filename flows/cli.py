"""The ``mcl`` command line: one entry point for operators.

Each command group lives in ``flows/commands/<group>.py`` and imports heavy libraries
(torch, transformers) inside its functions, so ``mcl --help`` stays instant.
"""

from __future__ import annotations

import typer

from flows.commands import (
    alerts,
    arrive,
    benchmark,
    data,
    demo,
    encoder,
    registry,
    retrain,
    settings,
    student,
    train,
    translate,
    watch,
)
from flows.commands.local_prefect import exit_on_sigterm, quiet_event_drain

app = typer.Typer(
    name="mcl",
    help="marketplace-cl: continual learning of one multilingual relevance model, marketplace by marketplace.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _every_command() -> None:
    # A terminated command exits like a failed one, cleaning up after itself (local_prefect.exit_on_sigterm).
    exit_on_sigterm()
    quiet_event_drain()


app.add_typer(encoder.app, name="encoder")
app.add_typer(data.app, name="data")
app.add_typer(settings.app, name="config")
app.add_typer(alerts.app, name="alerts")
app.add_typer(registry.app, name="registry")
app.add_typer(student.app, name="student")
app.command("train-sequence")(train.train_sequence)
app.command("translate")(translate.translate)
app.command("arrive")(arrive.arrive)
app.command("retrain")(retrain.retrain)
app.command("watch")(watch.watch)
app.command("demo")(demo.demo)
app.command("benchmark")(benchmark.benchmark)


if __name__ == "__main__":
    app()
