"""``mcl alerts install``: the automations in ``infra/automations.yaml`` (alerts on failed and refused flow
runs) installed on the Prefect server, sending through a notification block the operator created."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from flows.console import console

if TYPE_CHECKING:
    from prefect.events.schemas.automations import AutomationCore

AUTOMATIONS_FILE = Path(__file__).resolve().parents[2] / "infra" / "automations.yaml"

app = typer.Typer(help="Prefect automations that alert on failed and refused flow runs.", no_args_is_help=True)


def load_automations(path: Path, block_document_id: UUID) -> list[AutomationCore]:
    """The file's automations, validated against Prefect's schema, each notification sent through the block.

    The file names no block id (an id belongs to one Prefect server): it is filled in here."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    data = yaml.safe_load(Path(path).read_text())
    specs: list[dict[str, Any]] = data["automations"] if isinstance(data, dict) else data
    for spec in specs:
        for action in spec.get("actions", []):
            if action.get("type") == "send-notification":
                action["block_document_id"] = str(block_document_id)
    return [AutomationCore.model_validate(spec) for spec in specs]


def install_automations(client: Any, automations: list[AutomationCore]) -> list[UUID]:
    """Create each automation, replacing any of the same name (installing twice leaves one of each)."""
    ids = []
    for automation in automations:
        for existing in client.read_automations_by_name(automation.name):
            client.delete_automation(existing.id)
        ids.append(client.create_automation(automation))
    return ids


def install(
    block: Annotated[str, typer.Option(help="Notification block as <block type>/<name>, e.g. slack-webhook/mcl-oncall.")],
    file: Annotated[Path, typer.Option(help="Automations file (Prefect's automation schema).")] = AUTOMATIONS_FILE,
) -> None:
    """Install (or update) the alerts on failed, crashed and refused marketplace-cl flow runs."""
    from prefect.client.orchestration import get_client

    block_type, _, name = block.partition("/")
    if not name:
        raise typer.BadParameter("expected <block type>/<name>, e.g. slack-webhook/mcl-oncall", param_hint="--block")
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name=name, block_type_slug=block_type, include_secrets=False)
        automations = load_automations(file, document.id)
        install_automations(client, automations)
    for automation in automations:
        console.print(f"automation {automation.name!r} installed (notifies through {block})")


app.command("install")(install)
