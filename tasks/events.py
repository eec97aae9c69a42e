"""Events the registry's moves announce, for automations to start work on (``flows/prefect.yaml`` triggers).

``relevance.champion.moved`` is emitted whenever ``relevance@champion`` changes (a promoted arrival or retraining, a
manual promotion or rollback on a team stack): the serving student's deployment re-distils on it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CHAMPION_MOVED = "relevance.champion.moved"


def model_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mcl.model.{name}", "prefect.resource.name": name}


def emit_champion_moved(name: str, version: str, previous: str | None, how: str) -> None:
    """Announce that ``name@champion`` is now ``version`` (it was ``previous``; ``how``: arrival, retrain,
    promote, rollback). Outside a Prefect server (a local CLI without one) Prefect drops the event."""
    from prefect.events import emit_event

    emit_event(event=CHAMPION_MOVED, resource=model_resource(name),
               payload={"version": version, "previous": previous or "", "how": how})
    log.info("announced %s@champion -> version %s (%s)", name, version, how)
