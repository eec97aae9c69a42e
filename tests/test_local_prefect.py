"""What a command that runs its own temporary Prefect server leaves behind when it is terminated (nothing), and
what Prefect prints as it exits."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMAND = textwrap.dedent("""
    import time
    from flows.commands.local_prefect import exit_on_sigterm, patient_local_prefect
    patient_local_prefect()
    exit_on_sigterm()
    from prefect.client.orchestration import get_client
    from prefect.server.api.server import SubprocessASGIServer
    with get_client(sync_client=True) as client:
        client.hello()
    print(SubprocessASGIServer().server_process.pid, flush=True)
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_terminated_command_stops_its_temporary_prefect_server(local_command_env):
    command = subprocess.Popen([sys.executable, "-c", COMMAND], env=local_command_env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = command.stdout.readline()
        assert line.strip().isdigit(), command.stderr.read() if command.poll() is not None else line
        server = int(line)
        assert alive(server)
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(server), "the temporary Prefect server outlived the command"
    finally:
        command.kill()


def test_the_event_workers_drain_progress_is_dropped_and_its_other_warnings_kept(caplog):
    from flows.commands.local_prefect import _DrainProgress, quiet_event_drain

    quiet_event_drain()
    quiet_event_drain()  # every command calls it; one filter
    events = logging.getLogger("EventsWorker")
    assert sum(isinstance(f, _DrainProgress) for f in events.filters) == 1
    with caplog.at_level(logging.WARNING):
        events.warning("Still processing items: 1 items remaining...")
        events.warning("Service %r queue is full (%d items), dropping item", "EventsWorker", 10)
    kept = [r.getMessage() for r in caplog.records]
    assert kept == ["Service 'EventsWorker' queue is full (10 items), dropping item"]
