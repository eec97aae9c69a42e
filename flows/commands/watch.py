"""``mcl watch``: the landing-zone watcher from a terminal, once or on an interval, without a deployment."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flows.commands.local_prefect import configured_prefect_api
from flows.console import configure_logging, console


def watch(
    root: Annotated[str, typer.Option(help="Landing zone: s3://bucket/prefix or a local folder of <marketplace>/ uploads.")],
    interval: Annotated[Optional[int], typer.Option(min=10, help="Keep watching: serve the watcher from this process every N seconds (Ctrl-C stops).")] = None,
    verbose: bool = False,
) -> None:
    """Announce each ready, not yet announced upload under ROOT as one marketplace.arrived event.

    The events reach the Prefect server of PREFECT_API_URL, where the arrival deployment's trigger starts a flow run
    per event; without a server they go to this process's own temporary server and start nothing."""
    configure_logging(verbose)
    if configured_prefect_api() is None:
        console.print("[yellow]no Prefect server configured (PREFECT_API_URL): the events go to a temporary local "
                      "server and trigger no arrival[/yellow]", soft_wrap=True)
    from flows.watcher import landing_watcher

    if interval is not None:
        landing_watcher.serve(name="mcl-watch", interval=interval, parameters={"root": root})
        return
    announced = landing_watcher(root)
    console.print(f"announced {', '.join(announced)}" if announced else f"nothing new under {root}")
