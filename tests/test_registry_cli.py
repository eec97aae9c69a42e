"""``mcl registry list | show | promote | rollback`` against a local SQLite registry: the aliases they move, what
they record on the versions, what they print, and one clear line (exit code 1, no traceback) for bad input."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.console import console
from tasks import registry

# version -> (marketplaces, gate verdict, test ROC-AUC, validation ROC-AUC, extra tags)
VERSIONS = {
    "1": ("en", "passed", {"en": 0.81}, {"en": 0.80}, {}),
    "2": ("en,es", "passed", {"en": 0.82, "es": 0.77}, {"en": 0.81, "es": 0.76}, {"previous_champion": "1"}),
    "3": ("en,es", "failed", {"en": 0.70, "es": 0.79}, {"en": 0.69, "es": 0.78}, {"gate_reasons": "en: regressed"}),
}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """Three versions registered like an arrival, an arrival and a refused one: v2 @champion (it replaced v1,
    @previous-champion), v3 @challenger. Settings point the CLI at the store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tasks.settings import get_settings

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MCL_TRACKING_URI", uri)
    get_settings.cache_clear()
    registry.setup_tracking(uri, str(tmp_path / "artifacts"))
    client = MlflowClient()
    client.create_registered_model(registry.MODEL_NAME)
    for version, (order, gate, aucs, valid, extra) in VERSIONS.items():
        client.create_model_version(
            registry.MODEL_NAME, str(tmp_path), description=f"# relevance v{version}\n\nthe model card of v{version}",
            tags={"marketplace_order": order, "languages": order, "parent_version": str(int(version) - 1 or ""),
                  "kind": "arrival", "gate": gate, **{f"auc.{m}": f"{v:.6f}" for m, v in aucs.items()},
                  **{f"valid_auc.{m}": f"{v:.6f}" for m, v in valid.items()}, **extra})
    client.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, "2")
    client.set_registered_model_alias(registry.MODEL_NAME, registry.PREVIOUS_CHAMPION, "1")
    client.set_registered_model_alias(registry.MODEL_NAME, registry.CHALLENGER, "3")
    monkeypatch.setattr(console, "width", 200)  # one table row per line in the captured output
    yield client
    get_settings.cache_clear()
    mlflow.set_tracking_uri(None)


def mcl(*args: str):
    return CliRunner().invoke(app, ["registry", *args])


def aliases(client) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(registry.MODEL_NAME).aliases.items()}


def refused(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3


def test_list_prints_every_version_newest_first_with_aliases_verdicts_and_scores(store):
    result = mcl("list")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.strip("│ ").split(" ")[0] in VERSIONS]
    assert [r.strip("│ ").split(" ")[0] for r in rows] == ["3", "2", "1"]
    three, two, one = (" ".join(r.replace("│", " ").split()) for r in rows)
    assert "@challenger arrival en,es failed en 0.6900 es 0.7800 en 0.7000 es 0.7900" in three
    assert "@champion arrival en,es passed en 0.8100 es 0.7600 en 0.8200 es 0.7700" in two
    assert "@previous-champion arrival en passed en 0.8000 en 0.8100" in one
    created = store.get_model_version(registry.MODEL_NAME, "1").creation_timestamp
    from datetime import UTC, datetime

    assert datetime.fromtimestamp(created / 1000, UTC).strftime("%Y-%m-%d") in one


def test_show_prints_tags_aliases_and_the_model_card(store):
    result = mcl("show", "2")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("relevance version 2  @champion  created ")
    text = " ".join(result.output.replace("│", " ").split())
    assert "marketplace_order en,es" in text and "valid_auc.es 0.760000" in text and "previous_champion 1" in text
    assert "relevance v2" in text and "the model card of v2" in text
    assert "the model card of v3" not in text


def test_unknown_version_is_one_line_naming_the_versions(store):
    refused(mcl("show", "99"), "version 99 of 'relevance' does not exist; versions: 1, 2, 3")
    refused(mcl("promote", "99"), "version 99 of 'relevance' does not exist; versions: 1, 2, 3")
    refused(mcl("promote", "2"), "version 2 of 'relevance' is already @champion")
    assert aliases(store) == {"champion": "2", "previous-champion": "1", "challenger": "3"}


def test_promote_then_roll_back_twice_walks_back_through_the_champions(store):
    result = mcl("promote", "3")
    assert result.exit_code == 0, result.output
    assert "relevance@champion -> version 3 (was version 2, now @previous-champion)" in result.output
    # the accepted challenger is no longer a challenger; the promotion is recorded on it
    assert aliases(store) == {"champion": "3", "previous-champion": "2"}
    tags = store.get_model_version(registry.MODEL_NAME, "3").tags
    assert tags["previous_champion"] == "2" and tags["promoted_by"] == "manual" and tags["promoted_at"]

    result = mcl("rollback")
    assert result.exit_code == 0, result.output
    assert "rolled back to version 2 (from version 3); @previous-champion is now version 1" in result.output
    assert aliases(store) == {"champion": "2", "previous-champion": "1"}
    tags = store.get_model_version(registry.MODEL_NAME, "3").tags
    assert tags["rolled_back_to"] == "2" and tags["rolled_back_at"]

    result = mcl("rollback")
    assert result.exit_code == 0, result.output
    assert "rolled back to version 1 (from version 2); no older champion recorded" in result.output
    assert aliases(store) == {"champion": "1"}
    refused(mcl("rollback"), "'relevance' has no @previous-champion to roll back to (@champion is version 1); "
                             "promote a version by number instead")
    assert aliases(store) == {"champion": "1"}


def test_promoting_a_version_that_drops_a_marketplace_needs_force(store):
    refused(mcl("promote", "1"), "version 1 of 'relevance' has marketplaces en, not all of @champion's (version 2: "
                                 "en,es); promoting it would stop serving es. Pass --force")
    assert aliases(store)["champion"] == "2"
    assert "promoted_by" not in store.get_model_version(registry.MODEL_NAME, "1").tags
    result = mcl("promote", "1", "--force")
    assert result.exit_code == 0, result.output
    assert "relevance@champion -> version 1 (was version 2, now @previous-champion); no longer serves es" in \
        result.output
    assert aliases(store) == {"champion": "1", "previous-champion": "2", "challenger": "3"}
    assert store.get_model_version(registry.MODEL_NAME, "1").tags["promoted_by"] == "manual --force (dropped es)"


def test_a_missing_local_store_is_an_error_not_an_empty_registry(tmp_path, monkeypatch):
    from tasks.settings import get_settings

    monkeypatch.setenv("MCL_TRACKING_URI", f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    get_settings.cache_clear()
    try:
        refused(mcl("list"), f"no MLflow store at {tmp_path}/nowhere/mlflow.db: nothing is registered yet")
        assert not (tmp_path / "nowhere").exists()
    finally:
        get_settings.cache_clear()


def test_an_empty_registry_lists_nothing(tmp_path, monkeypatch):
    import mlflow

    from tasks.settings import get_settings

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry.setup_tracking(uri, str(tmp_path / "artifacts"))
    monkeypatch.setenv("MCL_TRACKING_URI", uri)
    get_settings.cache_clear()
    try:
        result = mcl("list")
        assert result.exit_code == 0 and result.output.strip() == "no versions of 'relevance' registered yet"
        refused(mcl("rollback"), "'relevance' has no @previous-champion to roll back to; promote a version")
    finally:
        get_settings.cache_clear()
        mlflow.set_tracking_uri(None)


HOLDER = """
import sys
from flows.commands.local_prefect import exit_on_sigterm, patient_local_prefect
patient_local_prefect()
exit_on_sigterm()
from tasks.registry_lock import registry_lock
with registry_lock():
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_local_promote_waits_for_a_local_run_holding_the_registry_lock(store, local_command_env):
    """No Prefect server configured: a local arrival (here, a process holding the lock through its own temporary
    server) and `mcl registry promote` share the lock through this machine's Prefect home, so the promotion waits
    and lands after the arrival, never under it."""
    root, env = Path(__file__).resolve().parents[1], local_command_env
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    promote = None
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read() if holder.poll() is not None else ""
        promote = subprocess.Popen([sys.executable, "-m", "flows.cli", "registry", "promote", "3"], env=env,
                                   cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(25)  # without the lock it is done in well under this (imports, one MLflow call)
        assert promote.poll() is None, f"promoted while an arrival held the registry lock: {promote.stdout.read()}"
        assert aliases(store)[registry.CHAMPION] == "2"
        holder.communicate("\n", timeout=60)
        output = promote.communicate(timeout=120)[0]
        assert promote.returncode == 0, output
        assert "holding the registry lock 'mcl-registry'" in output
        assert aliases(store)[registry.CHAMPION] == "3"
    finally:  # SIGTERM, so each process stops the temporary Prefect server it started (a kill would orphan it)
        for process in (holder, promote):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
