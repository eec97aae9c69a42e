"""Scheduled retraining: refresh the champion on fresh data, through the same gate as an arrival.

Fresh data for a marketplace sits in ``<data_root>/<id>/`` with a ready marker, the landing-zone
layout (local or ``s3://``). The champion's most recent marketplace is retrained from fresh data as a
replacing arrival: a new adapter on the model before it, a new fusion distilled from that model's
fusion attention, evaluated on every stored test set and promoted only if nothing regresses more
than ``max_regression`` against the champion. Older marketplaces sit under adapters and fusions
trained after them, so they are refreshed by a new arrival chain, not in place.
"""

from __future__ import annotations

import logging
from prefect import flow

from flows.arrival import marketplace_arrival, start_tracking
from tasks import registry
from tasks.landing import scan_landing_zone
from tasks.settings import get_settings

log = logging.getLogger(__name__)


@flow(name="scheduled-retraining")
def scheduled_retraining(
    data_root: str,
    max_regression: float = 0.01,
    adapter_margin: float = 0.0,
    translate_fraction: float = 0.3,
    adapter_epochs: int = 5,
    fusion_epochs: int = 5,
    batch_size: int = 32,
    max_length: int = 64,
) -> dict | None:
    """Retrain the champion's most recent marketplace on fresh data; None when there is nothing to retrain."""
    from mlflow.tracking import MlflowClient

    settings = get_settings()
    start_tracking(settings)
    champion = registry.alias_version(MlflowClient(), registry.CHAMPION)
    if champion is None:
        log.info("no champion yet: nothing to retrain")
        return None
    latest = champion.marketplaces[-1]
    fresh = {f.marketplace: f for f in scan_landing_zone(data_root, s3_endpoint_url=settings.s3_endpoint_url)}
    if latest not in fresh:
        log.info("no ready fresh data for %s under %s: nothing to retrain", latest, data_root)
        return None
    files = fresh[latest].as_payload()
    return marketplace_arrival(
        **files, replace=True, max_regression=max_regression,
        adapter_margin=adapter_margin, translate_fraction=translate_fraction, adapter_epochs=adapter_epochs,
        fusion_epochs=fusion_epochs, batch_size=batch_size, max_length=max_length,
    )
