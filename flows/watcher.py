"""The landing-zone watcher: on an interval, announce each newly ready marketplace folder as one
``marketplace.arrived`` event; the arrival deployment's trigger turns the event into a flow run
with the event's payload as parameters (see ``flows/prefect.yaml``).

Which markers were already announced is kept in a Prefect Variable, i.e. on the Prefect server,
so the watcher may run on any worker and still announce each upload exactly once.
"""

from __future__ import annotations

import logging

from prefect import flow
from prefect.events import emit_event
from prefect.variables import Variable

from tasks.landing import Landing, announce_arrivals
from tasks.settings import get_settings

log = logging.getLogger(__name__)

EVENT = "marketplace.arrived"
STATE_VARIABLE = "mcl_landing_announced"


def emit_arrival_event(landing: Landing) -> None:
    emit_event(
        event=EVENT,
        resource={"prefect.resource.id": f"mcl.marketplace.{landing.marketplace}",
                  "prefect.resource.name": landing.marketplace},
        payload=landing.as_payload(),
    )
    log.info("announced %s (%s): %s", landing.marketplace, landing.language, landing.train.rsplit("/", 1)[0])


@flow(name="landing-watcher")
def landing_watcher(root: str, state_variable: str = STATE_VARIABLE) -> list[str]:
    """Emit one event per ready, not yet announced ``<root>/<marketplace>/``; returns the marketplaces announced."""
    announced_before = set(Variable.get(state_variable, default=[]) or [])
    announced = announce_arrivals(root, announced_before, emit_arrival_event,
                                  s3_endpoint_url=get_settings().s3_endpoint_url)
    if announced:
        Variable.set(state_variable, sorted(announced_before), overwrite=True)
    return [a.marketplace for a in announced]
