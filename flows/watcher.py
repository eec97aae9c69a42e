"""The landing-zone watcher: on an interval, announce each newly ready marketplace folder as one
``marketplace.arrived`` event; the arrival deployment's trigger turns the event into a flow run
with the event's payload as parameters (see ``flows/prefect.yaml``).

What was announced is recorded per upload in the landing zone itself (``_ANNOUNCED`` beside
``_READY``, see :func:`tasks.landing.announce_arrivals`), so the watcher may run on any worker, scales
with the number of folders, and a crash costs at most one re-emission of the same event id. Overlapping
runs are prevented by the deployment's concurrency limit (one run, new ones cancelled).
"""

from __future__ import annotations

import logging

from prefect import flow
from prefect.events import emit_event

from tasks.landing import Landing, announce_arrivals
from tasks.prefect_tasks import load_storage_credentials, project_log_level
from tasks.settings import get_settings

log = logging.getLogger(__name__)

EVENT = "marketplace.arrived"


def emit_arrival_event(landing: Landing) -> None:
    """One ``marketplace.arrived`` event per upload, its id derived from the landing key (stable across runs)."""
    emit_event(
        event=EVENT,
        resource={"prefect.resource.id": f"mcl.marketplace.{landing.marketplace}",
                  "prefect.resource.name": landing.marketplace},
        payload=landing.as_payload(),
        id=landing.event_id,
    )
    log.info("announced %s (%s): %s (event %s)", landing.marketplace, landing.language, landing.folder,
             landing.event_id)


@flow(name="landing-watcher")
def landing_watcher(root: str) -> list[str]:
    """Emit one event per ready, not yet announced upload under ``root``; returns the marketplaces announced.

    Args:
        root: Landing zone holding one <marketplace>/ folder per upload (train, valid and test tables, then a
            _READY marker); a local folder or s3://bucket/prefix. The watcher writes _ANNOUNCED into each folder
            it announces, so it needs write access there.
    """
    project_log_level()
    load_storage_credentials()
    announced = announce_arrivals(root, emit_arrival_event, s3_endpoint_url=get_settings().s3_endpoint_url)
    return [a.marketplace for a in announced]
