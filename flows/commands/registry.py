"""``mcl registry``: what an on-call engineer does with the model registry by hand.

``list`` and ``show`` read every version's tags (what it knows, how it scored, the gate's verdict);
``promote`` and ``rollback`` move ``relevance@champion``, the alias every server loads, keeping
``previous-champion`` on the version it leaves so a bad promotion is one command to undo. The store is the
project's (``MCL_TRACKING_URI``, or the local SQLite store in the cache), the same one the flows register in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.console import console

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from rich.table import Table

    from tasks.registry import VersionInfo

app = typer.Typer(help="The model registry: list versions, show one, promote one to @champion, roll back.",
                  no_args_is_help=True)

VersionArgument = Annotated[str, typer.Argument(help="Version number of the relevance model, e.g. 3.")]


def _store_uri() -> str:
    """The project's tracking URI; a local SQLite store that does not exist yet is an error, not a new store
    (a mistyped MCL_CACHE_DIR must not look like an empty registry)."""
    from pathlib import Path

    from tasks.registry import RegistryError
    from tasks.settings import get_settings

    uri = get_settings().resolved_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise RegistryError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: nothing is registered yet "
                            "(MCL_TRACKING_URI or MCL_CACHE_DIR names the store)")
    return uri


@contextmanager
def registry_client() -> Iterator[MlflowClient]:
    """A client on the project's registry; a refused command or an unreachable store ends the command with one
    red line and exit code 1, never a traceback."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.registry import RegistryError

    try:
        uri = _store_uri()
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    except RegistryError as err:
        console.print(f"[red]{err}[/red]", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    except MlflowException as err:
        console.print(f"[red]registry error: {err.message}[/red]", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None


def _scores(scores: dict[str, float]) -> str:
    return "  ".join(f"{m} {v:.4f}" for m, v in scores.items()) or "-"


def versions_table(versions: Sequence[VersionInfo], title: str = "registry: relevance") -> Table:
    """One row per version, newest first: what serves (aliases), what it knows (marketplaces), whether the gate
    passed it, and its ROC-AUC per marketplace on validation (what the gate decides on) and test (reported)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for column in ("version", "aliases", "kind", "marketplaces", "gate", "valid ROC-AUC", "test ROC-AUC", "created"):
        table.add_column(column, justify="right" if column == "version" else "left")
    for v in sorted(versions, key=lambda v: -int(v.version)):
        table.add_row(v.version, " ".join(f"@{a}" for a in sorted(v.aliases)) or "-", v.tags.get("kind", "-"),
                      ",".join(v.marketplaces) or "-", v.tags.get("gate", "-"), _scores(v.valid_aucs),
                      _scores(v.aucs), v.created.strftime("%Y-%m-%d %H:%M") if v.created else "-")
    return table


def list_versions() -> None:
    """Every version of relevance: aliases, marketplaces, gate verdict, validation/test ROC-AUC, creation time."""
    from tasks import registry

    with registry_client() as client:
        versions = registry.registry_state(client)
    if not versions:
        console.print(f"no versions of {registry.MODEL_NAME!r} registered yet")
        return
    console.print(versions_table(versions))


def show(version: VersionArgument) -> None:
    """One version: aliases, source run, every tag, and its model card (the version's description)."""
    from rich.markdown import Markdown
    from rich.table import Table

    from tasks import registry

    with registry_client() as client:
        info = registry.require_version(client, version)
    console.print(f"[bold]{registry.MODEL_NAME} version {info.version}[/bold]  "
                  + (" ".join(f"@{a}" for a in sorted(info.aliases)) or "(no alias)")
                  + (f"  created {info.created:%Y-%m-%d %H:%M:%S} UTC" if info.created else ""), highlight=False)
    if info.run_id:
        console.print(f"source run {info.run_id}  ({info.source})", highlight=False)
    tags = Table(title="tags", show_header=True)
    tags.add_column("tag", style="bold", no_wrap=True)
    tags.add_column("value", overflow="fold")
    for key in sorted(info.tags):
        tags.add_row(key, info.tags[key])
    console.print(tags)
    console.print(Markdown(info.description) if info.description else "(no model card: the version has no description)")


def announce(move: Any, how: str) -> None:
    """On a team stack, tell the automations that @champion moved (the serving student re-distils on it); a local
    registry without a Prefect server has none to tell."""
    from flows.commands.local_prefect import configured_prefect_api

    if configured_prefect_api() is None:
        return
    from tasks import registry
    from tasks.events import emit_champion_moved

    emit_champion_moved(registry.MODEL_NAME, move.champion, move.replaced, how)


@contextmanager
def alias_lock() -> Iterator[None]:
    """Hold the lock arrivals and retrainings hold from reading the champion to moving its alias, so a promotion
    never lands under a run that is building on the champion it replaces; it waits for such a run to finish. Without
    a configured server too: local `mcl arrive`, `retrain` and `demo` runs on this machine hold the same lock through
    their temporary Prefect servers (its slot is in this machine's Prefect home), so the command starts one as well."""
    from flows.commands.local_prefect import patient_local_prefect

    patient_local_prefect()
    from tasks.registry_lock import REGISTRY_LOCK, registry_lock

    console.print(f"holding the registry lock {REGISTRY_LOCK!r} (waits while an arrival or retraining runs)",
                  highlight=False)
    with registry_lock():
        yield


def promote(
    version: VersionArgument,
    force: Annotated[bool, typer.Option(
        "--force", help="Promote even if the version lacks a marketplace the current champion serves.")] = False,
) -> None:
    """Move @champion to VERSION (bypassing the gate); the replaced champion keeps @previous-champion."""
    from tasks import registry

    with alias_lock(), registry_client() as client:
        move = registry.promote(client, version, force=force)
    announce(move, "promote")
    console.print(f"[green]{registry.MODEL_NAME}@{registry.CHAMPION} -> version {move.champion}[/green]"
                  + (f" (was version {move.replaced}, now @{registry.PREVIOUS_CHAMPION})" if move.replaced else "")
                  + (f"; no longer serves {','.join(move.dropped)}" if move.dropped else ""), highlight=False)


def rollback() -> None:
    """Move @champion back to @previous-champion (recorded on the version rolled back from)."""
    from tasks import registry

    with alias_lock(), registry_client() as client:
        move = registry.rollback(client)
    announce(move, "rollback")
    console.print(f"[green]{registry.MODEL_NAME}@{registry.CHAMPION} rolled back to version {move.champion}[/green]"
                  + (f" (from version {move.replaced})" if move.replaced else "")
                  + (f"; @{registry.PREVIOUS_CHAMPION} is now version {move.previous_champion}"
                     if move.previous_champion else f"; no older champion recorded (@{registry.PREVIOUS_CHAMPION} "
                                                    "removed)"), highlight=False)


def registry_tables(client: Any) -> list[Any]:
    """The registry as a reviewer wants it after a run: every version (:func:`versions_table`) and R[t][k]
    along the champion's lineage."""
    import numpy as np

    from flows.console import matrix_table
    from tasks import registry

    tables: list[Any] = [versions_table(registry.registry_state(client), title=f"registry: {registry.MODEL_NAME}")]
    champion = registry.alias_version(client, registry.CHAMPION)
    if champion is not None:
        chain = registry.lineage(client, champion)
        ids = champion.marketplaces
        matrix = np.array([[v.aucs.get(m, np.nan) for m in ids] for v in chain])
        if len(chain) == len(ids):
            tables.append(matrix_table(ids, matrix, title=f"ROC-AUC R[t][k] along {registry.MODEL_NAME}@champion"))
    return tables


app.command("list")(list_versions)
app.command("show")(show)
app.command("promote")(promote)
app.command("rollback")(rollback)
