"""Settings for the Prefect a command starts in its own process when no server is configured."""

from __future__ import annotations

import os


def patient_local_prefect() -> None:
    """Give the ephemeral Prefect server time to create its database on a first run or a busy machine
    (Prefect's default of 20 s is not always enough on 2 cores), and keep it quiet on offline machines (its
    telemetry logs an ERROR when it cannot reach the internet); must run before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
