"""The registry lock: one arrival, retraining or registry command changes the registry at a time.

It is a Prefect global concurrency limit of one slot, held as a lease the holder renews while it runs. A Prefect
server frees the slot of a holder that died when the lease expires (its repossessor service). A local command's
temporary server does not: it runs no services and keeps its leases in its own memory, so a local run that was
killed left the slot taken in ``~/.prefect``'s database for good, and the next local arrival waited without a word.
Hence three things here: local servers keep their leases on disk beside that database (:data:`LEASES_ON_DISK`,
which the CLI sets before Prefect starts), a process waiting for the lock revokes the expired leases on disk
itself, and while it waits it says, every :data:`WAIT_REPORT_SECONDS`, what it waits for and how to free it.

Prefect is imported in the functions: the CLI reads :data:`LEASES_ON_DISK` from here before Prefect may be imported
(Prefect reads its settings once, at import).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.server.utilities.leasing import ResourceLease
    from prefect.types._concurrency import ConcurrencyLeaseHolder

log = logging.getLogger(__name__)

REGISTRY_LOCK = "mcl-registry"
REGISTRY_LOCK_LEASE_SECONDS = 60  # the least a Prefect server accepts; a dead holder's slot is free after this
WAIT_REPORT_SECONDS = 30.0
#: Prefect's lease storage that keeps leases as files under PREFECT_HOME, where every local server reads them.
LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"


def release_command(name: str = REGISTRY_LOCK) -> str:
    """The command an operator runs to free the lock by hand (when no run holds it but the server says one does)."""
    return f"prefect gcl update {name} --active-slots 0"


def _leases_on_disk() -> list[ResourceLease]:
    """The leases this machine's local Prefect servers keep on disk, none when they keep them elsewhere."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
    from prefect.settings import get_current_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    if get_current_settings().server.concurrency.lease_storage != LEASES_ON_DISK:
        return []

    storage = ConcurrencyLeaseStorage()
    if not storage.storage_path.is_dir():
        return []
    ids = run_coro_as_sync(storage.read_active_lease_ids()) + run_coro_as_sync(storage.read_expired_lease_ids())
    leases = (run_coro_as_sync(storage.read_lease(lease_id)) for lease_id in ids)
    return [lease for lease in leases if lease is not None]


def _limit_leases(client: SyncPrefectClient, name: str) -> list[ResourceLease]:
    leases = _leases_on_disk()
    if not leases:  # a configured server's, or none held: no need to ask the server for the limit
        return []
    limit = client.read_global_concurrency_limit_by_name(name)
    return [lease for lease in leases if limit.id in lease.resource_ids]


def release_expired_holders(client: SyncPrefectClient, name: str = REGISTRY_LOCK) -> list[UUID]:
    """Free the slots of holders whose lease expired (they stopped without releasing them): what a server's
    repossessor would do, for the local servers that run none. Returns the released leases' ids.

    The release goes through the server's API (``decrement-with-lease``), so the database and the lease storage
    change together; a lease the server does not know (another server's) is left as it is."""
    return _release_lapsed(client, name, _limit_leases(client, name))


def _release_lapsed(client: SyncPrefectClient, name: str, leases: list[ResourceLease]) -> list[UUID]:
    now = time.time()
    released = []
    for lease in leases:
        if lease.expiration.timestamp() >= now:
            continue
        client.release_concurrency_slots_with_lease(lease.id)
        holder = lease.metadata.holder if lease.metadata else None
        log.warning("released the registry lock %r: its holder%s stopped renewing it %.0f s ago without releasing "
                    "it (a killed run); lease %s", name, f" ({holder.type} {holder.id})" if holder else "",
                    now - lease.expiration.timestamp(), lease.id)
        released.append(lease.id)
    return released


def _holder_text(leases: list[ResourceLease]) -> str:
    holders = [lease.metadata.holder for lease in leases if lease.metadata and lease.metadata.holder]
    return "; held by " + ", ".join(f"{h.type} {h.id}" for h in holders) if holders else ""


def _this_run() -> ConcurrencyLeaseHolder | None:
    """The flow run this process holds the lock for, recorded on the lease so a waiting operator can find it."""
    from prefect.context import FlowRunContext
    from prefect.types._concurrency import ConcurrencyLeaseHolder

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=context.flow_run.id)


class _TimedOutAttempts(logging.Filter):
    """Drops Prefect's ERROR line for an acquisition attempt that timed out: the waiting loop bounds each attempt
    to report between them, and an operator reading "failed to process item" every 30 s would look for a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) == 2 and args[0] == "ConcurrencySlotAcquisitionWithLeaseService"
                    and "TimeoutError" in repr(args[1]))


@contextmanager
def _quiet_timeouts() -> Iterator[None]:
    prefect_log, quiet = logging.getLogger("prefect._internal.concurrency"), _TimedOutAttempts()
    prefect_log.addFilter(quiet)
    try:
        yield
    finally:
        prefect_log.removeFilter(quiet)


def _take_slot(name: str, timeout_seconds: float | None) -> ExitStack:
    """Wait for the lock's slot in bounded attempts, freeing lapsed holders and reporting between them; returns the
    stack whose closing releases the slot."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    started, level = time.monotonic(), logging.DEBUG  # INFO once it had to wait: the end of the WARNINGs above it
    with _quiet_timeouts(), ExitStack() as attempt:
        while True:
            left = None if timeout_seconds is None else timeout_seconds - (time.monotonic() - started)
            try:
                attempt.enter_context(concurrency(
                    name, occupy=1, strict=True, lease_duration=REGISTRY_LOCK_LEASE_SECONDS, holder=_this_run(),
                    timeout_seconds=WAIT_REPORT_SECONDS if left is None else max(min(WAIT_REPORT_SECONDS, left), 0)))
                log.log(level, "holding the registry lock %r (waited %.0f s)", name, time.monotonic() - started)
                return attempt.pop_all()
            except TimeoutError:
                level = logging.INFO
                with get_client(sync_client=True) as client:
                    leases = _limit_leases(client, name)
                    if _release_lapsed(client, name, leases):
                        continue
                holders = _holder_text(leases)  # every one left is live
            waited = time.monotonic() - started
            message = (f"the registry lock {name!r} is held by another arrival, retraining or registry command"
                       f"{holders}; a holder that was killed frees it {REGISTRY_LOCK_LEASE_SECONDS} s after its last "
                       f"renewal; if none is running, free it with: {release_command(name)}")
            if left is not None and left <= WAIT_REPORT_SECONDS:
                raise TimeoutError(f"waited {waited:.0f} s: {message}")
            log.warning("waiting %.0f s so far: %s", waited, message)


@contextmanager
def registry_lock(name: str = REGISTRY_LOCK, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the registry: the champion read, the candidate registered and the alias moved with no other run between.

    The limit is created on first use, so a fresh server needs no set-up; every process talking to the same Prefect
    server (any machine), and every local command sharing this machine's Prefect home, queues on it. Raises
    ``TimeoutError`` naming the lock and how to free it when ``timeout_seconds`` pass first.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
        release_expired_holders(client, name)
    with _take_slot(name, timeout_seconds):
        yield
