"""Which Prefect a command talks to: a configured server, or one it starts in its own process (and its settings)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType


def patient_local_prefect() -> None:
    """Give the ephemeral Prefect server time to create its database on a first run or a busy machine
    (Prefect's default of 20 s is not always enough on 2 cores), and keep it quiet on offline machines (its
    telemetry logs an ERROR when it cannot reach the internet); keep its concurrency leases on disk, so a killed
    local run's hold on the registry lock can be freed by the next one (:mod:`tasks.registry_lock`); must run
    before Prefect is imported."""
    from tasks.registry_lock import LEASES_ON_DISK

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASES_ON_DISK)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def configured_prefect_api() -> str | None:
    """The Prefect server's API URL this process is configured for (PREFECT_API_URL or a profile), or None when a
    command would talk to a temporary server of its own; imports Prefect, after the settings above."""
    patient_local_prefect()
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``docker stop``, ``timeout``, a supervisor, a cancelled CI job) into an ordinary exit with status
    143, so exit handlers run: above all the one that stops the temporary Prefect server a command runs as a child
    process. Killed outright by the signal, a command left that server running, holding its port and database.
    Inside a flow, Prefect's own handler marks the run Crashed (and ends its MLflow runs as failed) first, then
    passes the signal on to this one."""
    def terminate(signum: int, _frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


class _DrainProgress(logging.Filter):
    """Drops Prefect's "Still processing items: N items remaining..." WARNING: its events worker logs it while it
    sends the command's last event (a released lock's, a flow run's end) as the process exits; the event is sent, and
    an operator reading a WARNING as the last line of a `mcl registry promote` looks for what was lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Still processing items")


def quiet_event_drain() -> None:
    """Keep Prefect's events worker from ending a successful command on a WARNING (its other warnings, such as
    dropped events, still show)."""
    events = logging.getLogger("EventsWorker")  # Prefect names its services' loggers after their class
    if not any(isinstance(f, _DrainProgress) for f in events.filters):
        events.addFilter(_DrainProgress())
