"""The registry lock under a real (temporary) Prefect server: a killed holder never blocks the registry for good,
and a waiting run says what it waits for."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from datetime import timedelta

import pytest

from tasks import registry_lock as lock


@pytest.fixture()
def limit_name(prefect_server) -> str:
    """A limit of this test's own, so the flow tests' ``mcl-registry`` is never touched."""
    return f"test-registry-{uuid.uuid4().hex[:8]}"


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def active_slots(name: str) -> int:
    with client() as c:
        return c.read_global_concurrency_limit_by_name(name).active_slots


def hold_and_vanish(name: str, holder_id: uuid.UUID | None = None) -> uuid.UUID:
    """Take the lock's slot as a run would, then never renew or release it: what a killed run leaves behind."""
    from prefect.types._concurrency import ConcurrencyLeaseHolder

    holder = ConcurrencyLeaseHolder(type="flow_run", id=holder_id) if holder_id else None
    with client() as c:
        c.upsert_global_concurrency_limit_by_name(name, 1)
        response = c.increment_concurrency_slots_with_lease([name], 1, "concurrency",
                                                           lease_duration=lock.REGISTRY_LOCK_LEASE_SECONDS,
                                                           holder=holder)
    assert active_slots(name) == 1
    return uuid.UUID(response.json()["lease_id"])


def let_lease_lapse(lease_id: uuid.UUID) -> None:
    """As if the lease's 60 s had passed since the dead holder's last renewal (Prefect's own storage API)."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
    from prefect.utilities.asyncutils import run_coro_as_sync

    assert run_coro_as_sync(ConcurrencyLeaseStorage().renew_lease(lease_id, timedelta(seconds=-5)))


def test_the_test_server_keeps_leases_on_disk_as_local_commands_do(prefect_server):
    from prefect.settings import get_current_settings

    assert get_current_settings().server.concurrency.lease_storage == lock.LEASES_ON_DISK


def test_a_killed_holders_slot_is_freed_by_the_next_run(limit_name, caplog):
    lease_id = hold_and_vanish(limit_name)
    let_lease_lapse(lease_id)
    caplog.set_level(logging.WARNING, logger="tasks.registry_lock")
    with lock.registry_lock(limit_name, timeout_seconds=20):
        assert active_slots(limit_name) == 1
    assert active_slots(limit_name) == 0
    released = [r.getMessage() for r in caplog.records if "released the registry lock" in r.getMessage()]
    assert len(released) == 1 and str(lease_id) in released[0], caplog.text


def test_a_live_holder_is_waited_for_and_named_with_the_way_to_free_it(limit_name, monkeypatch, caplog):
    holder = uuid.uuid4()
    hold_and_vanish(limit_name, holder)
    monkeypatch.setattr(lock, "WAIT_REPORT_SECONDS", 1.0)
    caplog.set_level(logging.WARNING, logger="tasks.registry_lock")
    with pytest.raises(TimeoutError) as raised, lock.registry_lock(limit_name, timeout_seconds=2.5):
        pytest.fail("acquired a lock another run holds")
    message = str(raised.value)
    assert f"flow_run {holder}" in message and f"prefect gcl update {limit_name} --active-slots 0" in message
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting")]
    assert waits and f"flow_run {holder}" in waits[0], caplog.text
    # Prefect's own "failed to process item" ERROR for each bounded attempt stays out of the operator's log.
    assert not [r for r in caplog.records if r.name.startswith("prefect") and r.levelno >= logging.ERROR], caplog.text
    assert active_slots(limit_name) == 1  # a live lease is never taken away


def test_a_waiting_run_proceeds_once_the_holders_lease_lapses(limit_name, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="tasks.registry_lock")
    lease_id = hold_and_vanish(limit_name)
    monkeypatch.setattr(lock, "WAIT_REPORT_SECONDS", 1.0)
    threading.Timer(2.0, let_lease_lapse, args=(lease_id,)).start()
    started = time.monotonic()
    with lock.registry_lock(limit_name, timeout_seconds=30):
        waited = time.monotonic() - started
        assert active_slots(limit_name) == 1
    assert 2.0 <= waited < 30, waited
    held = [re.fullmatch(rf"holding the registry lock '{limit_name}' \(waited (\d+) s\)", r.getMessage())
            for r in caplog.records if r.getMessage().startswith("holding")]
    assert len(held) == 1 and held[0] and abs(int(held[0][1]) - waited) <= 1, caplog.text
    assert active_slots(limit_name) == 0
