"""The whole team stack on this machine, as infra/README.md's runbook drives it: Postgres, moto's S3 server
standing in for MinIO, `mlflow server` on Postgres with artifacts proxied to S3, `prefect server` on Postgres, a
process work pool and worker, `prefect deploy` from flows/prefect.yaml.

A marketplace folder marked _READY in the landing bucket -> the watcher deployment -> a marketplace.arrived
event -> the arrival deployment's trigger -> the arrival flow on the worker (tiny encoder) -> a version
@champion in the MLflow server with its artifacts in the bucket -> `mlflow models serve` answering a scoring
request. Then the faults an operator meets: the same event again, the worker host lost in the middle of the
fusion step, the MLflow server down while registering.

Select with ``pytest -m integration``; the tests skip, naming what is missing, on a machine without Postgres.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_pairs
from tests.integration.services import ACCESS_KEY, BIN, LANDING_BUCKET, SECRET_KEY, Stack, free_port, missing_tools, run

REPO = Path(__file__).resolve().parents[2]
LANDING = f"s3://{LANDING_BUCKET}/marketplaces"
SECRET_BLOCK = "mcl-s3-credentials"
HEARTBEAT = 30  # seconds between flow-run heartbeats on the test's worker (Prefect's minimum)
FLOW_TIMEOUT = 420  # one tiny arrival on a busy 2-core machine takes well under a minute

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_tools()), reason=f"the stack needs {', '.join(missing_tools())}"),
]


def prefect(stack: Stack, code: str) -> object:
    """Run Prefect client code against the stack's server in a fresh process (the test process may hold an
    ephemeral Prefect server of its own); the code sets ``result``, returned through JSON."""
    script = ("import json\nfrom prefect.client.orchestration import get_client\n"
              f"{code}\nprint('RESULT=' + json.dumps(result, default=str))")
    out = run([str(BIN / "python"), "-c", script], stack.client_env(), cwd=REPO, timeout=120)
    return json.loads(out.rsplit("RESULT=", 1)[1])


def flow_runs(stack: Stack, deployment: str) -> list[dict]:
    """The deployment's flow runs, oldest first: id, state type and name, parameters."""
    return prefect(stack, f"""
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.sorting import FlowRunSort
with get_client(sync_client=True) as c:
    runs = c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[{deployment!r}])),
                            sort=FlowRunSort.EXPECTED_START_TIME_ASC)
result = [dict(id=str(r.id), state=r.state.type.value, name=r.state.name, message=r.state.message,
               parameters=r.parameters) for r in runs]
""")


TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def wait_for_runs(stack: Stack, deployment: str, count: int, timeout: float = FLOW_TIMEOUT) -> list[dict]:
    """Until the deployment has ``count`` flow runs that started, all of them in terminal states (runs its
    schedule created for later are left out)."""
    def done():
        runs = [r for r in flow_runs(stack, deployment) if r["state"] != "SCHEDULED"]
        return runs if len(runs) >= count and all(r["state"] in TERMINAL for r in runs) else None

    return stack.wait(done, timeout, f"{count} terminal run(s) of {deployment}", poll=3)


def upload_marketplace(stack: Stack, marketplace: str, n: int = 64) -> None:
    """As an uploader does: the split tables first, the _READY marker (naming the language) last."""
    s3 = stack.s3_client()
    for seed, split in enumerate(("train", "valid", "test"), start=1):
        pairs = make_pairs(marketplace, n if split == "train" else n // 2, seed)
        titles = [f"{t} {split[:2]}{i}" for i, t in enumerate(pairs.titles)]  # no pair in two splits (no leakage)
        table = pd.DataFrame({"query": pairs.queries, "product_title": titles,
                              "label": pairs.labels})
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        s3.put_object(Bucket=LANDING_BUCKET, Key=f"marketplaces/{marketplace}/{split}.parquet", Body=buffer.getvalue())
    s3.put_object(Bucket=LANDING_BUCKET, Key=f"marketplaces/{marketplace}/_READY",
                  Body=json.dumps({"language": marketplace}).encode())


def mlflow_client(stack: Stack):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def versions(stack: Stack) -> list[dict]:
    """Every version of `relevance`: number, aliases, gate verdict, fingerprint."""
    client = mlflow_client(stack)
    found = [client.get_model_version("relevance", v.version)  # search results carry no aliases
             for v in client.search_model_versions("name = 'relevance'")]
    return sorted(({"version": int(v.version), "aliases": sorted(v.aliases), "gate": v.tags.get("gate"),
                    "fingerprint": v.tags.get("fingerprint"), "marketplaces": v.tags.get("marketplace_order")}
                   for v in found), key=lambda v: v["version"])


def run_watcher(stack: Stack) -> None:
    run([str(BIN / "prefect"), "deployment", "run", "landing-watcher/landing-watcher"], stack.client_env(), cwd=REPO)


def install_alerts(stack: Stack) -> None:
    """infra/automations.yaml as `mcl alerts install` installs it, notifying a webhook block; the lost-run
    window is shortened to the test worker's heartbeat plus a margin (10 minutes in the file)."""
    prefect(stack, f"""
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from flows.commands.alerts import AUTOMATIONS_FILE, install_automations, load_automations
block = CustomWebhookNotificationBlock(name="on-call", url="http://127.0.0.1:9/alerts")
block_id = block.save("mcl-on-call")
automations = load_automations(AUTOMATIONS_FILE, block_id)
for a in automations:
    if a.name == "mcl-flow-run-lost":
        a.trigger.within = __import__("datetime").timedelta(seconds={HEARTBEAT + 15})
with get_client(sync_client=True) as c:
    result = [str(i) for i in install_automations(c, automations)]
""")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_encoder):
    """The services up, the runbook's set-up done (work pool, Secret block, deploy, trigger resumed), a worker."""
    root = tmp_path_factory.mktemp("stack")
    stack = Stack(root)
    started = time.monotonic()
    stack.up()
    try:
        env = stack.client_env(MCL_PROJECT_DIR=str(REPO), MCL_LANDING_ROOT=LANDING)
        run([str(BIN / "prefect"), "work-pool", "create", "local", "--type", "process"], env)
        prefect(stack, f"""
from prefect.blocks.system import Secret
Secret(value={{"aws_access_key_id": {ACCESS_KEY!r}, "aws_secret_access_key": {SECRET_KEY!r}}}).save({SECRET_BLOCK!r})
result = True
""")
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "flows/prefect.yaml",
             "--name", "arrival-local", "--name", "landing-watcher"], env, cwd=REPO)
        run([str(BIN / "prefect"), "automation", "resume", "arrival-local__automation_1"], env)
        install_alerts(stack)
        stack.worker_env = stack.client_env(
            MCL_S3_CREDENTIALS_BLOCK=SECRET_BLOCK, MCL_ENCODER=str(tiny_encoder.path),
            MCL_CACHE_DIR=str(root / "worker-cache"), PREFECT_LOCAL_STORAGE_PATH=str(root / "results"),
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT))
        stack.start_worker("local", stack.worker_env)
        stack.setup_seconds = time.monotonic() - started
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def first_arrival(stack):
    """en lands, the watcher announces it, the trigger runs the arrival on the worker."""
    upload_marketplace(stack, "en")
    run_watcher(stack)
    watcher = wait_for_runs(stack, "landing-watcher", 1, timeout=180)
    arrivals = wait_for_runs(stack, "arrival-local", 1)
    return watcher, arrivals


def test_a_ready_folder_becomes_the_champion_through_event_trigger_and_worker(stack, first_arrival):
    watcher, arrivals = first_arrival
    # the manual run, and any its 5-minute schedule started meanwhile (an overlapping one is cancelled)
    assert "COMPLETED" in [r["state"] for r in watcher] and {r["state"] for r in watcher} <= {"COMPLETED", "CANCELLED"}
    assert len(arrivals) == 1 and arrivals[0]["state"] == "COMPLETED", arrivals
    assert arrivals[0]["parameters"]["marketplace"] == "en"
    assert arrivals[0]["parameters"]["train"] == f"{LANDING}/en/train.parquet"
    assert versions(stack) == [{"version": 1, "aliases": ["champion"], "gate": "passed",
                                "fingerprint": versions(stack)[0]["fingerprint"], "marketplaces": "en"}]
    # The watcher recorded the announcement beside the marker, in the bucket.
    announced = stack.s3_client().get_object(Bucket=LANDING_BUCKET, Key="marketplaces/en/_ANNOUNCED")
    assert json.loads(announced["Body"].read())["state"] == "emitted"


def test_the_versions_artifacts_are_in_the_bucket_behind_the_proxy(stack, first_arrival):
    version = mlflow_client(stack).get_model_version_by_alias("relevance", "champion")
    run_info = mlflow_client(stack).get_run(version.run_id).info
    assert run_info.artifact_uri.startswith("mlflow-artifacts:"), run_info.artifact_uri
    keys = [o["Key"] for page in stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket="mcl-artifacts")
            for o in page.get("Contents", [])]
    run_keys = [k for k in keys if f"/{version.run_id}/" in k or k.startswith("mlflow/") and "models/" in k]
    assert any(k.endswith("MLmodel") for k in keys), keys[:20]
    assert any(k.endswith("test_sets/en.parquet") for k in run_keys), run_keys[:20]
    assert any(k.endswith("manifest.json") for k in keys)


def test_mlflow_models_serve_answers_a_scoring_request_for_the_champion(stack, first_arrival):
    port = free_port()
    serve = stack.add("serve", [str(BIN / "mlflow"), "models", "serve", "-m", "models:/relevance@champion",
                                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                      {**stack.client_env(), "MLFLOW_TRACKING_URI": stack.mlflow_url},
                      health=f"http://127.0.0.1:{port}/ping", timeout=240)
    try:
        rows = [{"marketplace": "en", "query": "red shoe", "product_title": "shoe red deluxe"},
                {"marketplace": "en", "query": "red shoe", "product_title": "lamp blue deluxe"}]
        for params in ({}, {"mode": "adapter"}):
            body = json.dumps({"dataframe_records": rows, **({"params": params} if params else {})}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            scores = [p["score"] for p in answer["predictions"]]
            assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores), answer
    finally:
        serve.stop()


def test_the_same_upload_announced_again_registers_nothing(stack, first_arrival):
    """The watcher's event re-emitted under a new id (an operator's manual re-emit) and the same tables submitted
    with `mcl arrive --deployment --watch`: both runs complete, finding the champion already learnt from exactly
    these tables, and register nothing; `mcl watch` finds nothing new to announce."""
    before = versions(stack)
    payload = first_arrival[1][0]["parameters"]
    prefect(stack, f"""
from prefect.events import emit_event
import uuid
emit_event(event="marketplace.arrived", resource={{"prefect.resource.id": "mcl.marketplace.en"}},
           payload={payload!r}, id=uuid.UUID({str(uuid.uuid4())!r}))
result = True
""")
    runs = wait_for_runs(stack, "arrival-local", 2)
    assert [r["state"] for r in runs] == ["COMPLETED", "COMPLETED"], runs
    assert versions(stack) == before

    operator = {**stack.client_env(), **stack.s3_env()}  # an operator's shell holds the store's credentials
    split_options = [f"--{split}={payload[split]}" for split in ("train", "valid", "test")]
    out = run([str(BIN / "mcl"), "arrive", "--marketplace", "en", "--language", "en", *split_options,
               "--deployment", "marketplace-arrival/arrival-local", "--watch"], operator, cwd=REPO, timeout=FLOW_TIMEOUT)
    assert "submitted flow run" in out and "/runs/flow-run/" in out, out[-2000:]
    assert "ended in state Completed" in out, out[-2000:]
    assert versions(stack) == before

    out = run([str(BIN / "mcl"), "watch", "--root", LANDING],
              stack.client_env(MCL_S3_CREDENTIALS_BLOCK=SECRET_BLOCK), cwd=REPO)
    assert f"nothing new under {LANDING}" in out, out[-2000:]
    time.sleep(5)
    assert len([r for r in flow_runs(stack, "arrival-local") if r["state"] != "SCHEDULED"]) == 3


def test_a_worker_lost_during_fusion_resumes_without_retraining_the_adapter(stack, first_arrival):
    """SIGKILL of the worker's process group (the host lost) while es's fusion trains. The lost-run automation
    marks the silent run Crashed; `prefect flow-run retry` and a new worker, as the runbook says: the adapter
    step is a cached result, fusion resumes from its last epoch checkpoint, and the registry gains exactly one
    version."""
    before = versions(stack)
    upload_marketplace(stack, "es", n=600)
    run_watcher(stack)
    steps = Path(stack.worker_env["MCL_CACHE_DIR"]) / "steps" / "es"
    stack.wait(lambda: list(steps.glob("*/fusion-epoch.pt")), FLOW_TIMEOUT, "es's first fusion epoch", poll=0.2)
    stack.services["worker"].kill_host()
    assert list(steps.glob("*/fusion-epoch.pt")), "fusion ended before the kill: the test data is too small"
    lost = [r for r in flow_runs(stack, "arrival-local") if r["parameters"]["marketplace"] == "es"]
    assert [r["state"] for r in lost] == ["RUNNING"], lost
    crashed = stack.wait(lambda: [r for r in flow_runs(stack, "arrival-local") if r["id"] == lost[0]["id"]
                                  and r["state"] == "CRASHED"], 4 * HEARTBEAT + 60, "the lost run marked Crashed")
    assert "no heartbeat" in crashed[0]["message"]
    run([str(BIN / "prefect"), "flow-run", "retry", lost[0]["id"]], stack.client_env())
    stack.start_worker("local", stack.worker_env, name="worker-2")
    done = stack.wait(lambda: [r for r in flow_runs(stack, "arrival-local") if r["id"] == lost[0]["id"]
                               and r["state"] in ("COMPLETED", "FAILED")], FLOW_TIMEOUT, "the retried es run")
    assert done[0]["name"] in ("Completed", "Refused"), done
    after = versions(stack)
    assert len(after) == len(before) + 1 and after[-1]["marketplaces"] == "en,es", after
    log = stack.services["worker-2"].tail(500_000)
    adapter_lines = [line for line in log.splitlines() if "train-new-language-adapter" in line and "Finished" in line]
    assert adapter_lines and all("Cached" in line for line in adapter_lines), adapter_lines
    assert "fusion: resumed from" in log or "resumed from" in log, log[-3000:]
    assert "adapter[es] epoch" not in log


def test_an_operator_rolls_back_and_promotes_with_the_cli(stack, first_arrival):
    """`mcl registry rollback` and `mcl registry promote` against the MLflow server, holding the arrivals' lock on
    the Prefect server; the aliases move as the runbook says."""
    two = {v["version"]: v for v in versions(stack)}[2]
    env = stack.client_env()
    mcl = [str(BIN / "mcl"), "registry"]
    if "champion" not in two["aliases"]:  # refused by the gate: a reviewer accepts the challenger first
        out = run([*mcl, "promote", "2"], env, cwd=REPO)
        assert "relevance@champion -> version 2 (was version 1, now @previous-champion)" in out, out
    out = run([*mcl, "rollback"], env, cwd=REPO)
    assert "holding the registry lock 'mcl-registry'" in out and "rolled back to version 1 (from version 2)" in out, out
    assert [v["aliases"] for v in versions(stack)][:2] == [["champion"], []]
    out = run([*mcl, "promote", "2"], env, cwd=REPO)
    assert "relevance@champion -> version 2" in out, out
    assert [v["aliases"] for v in versions(stack)][:2] == [["previous-champion"], ["champion"]]


SCREENSHOTS = os.environ.get("MCL_SCREENSHOTS")  # a folder: the pages reviewers and on-call look at, as PNG
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(url: str, path: Path, wait_ms: int = 20_000, height: int = 1100) -> Path:
    """Headless Chromium, offline-safe flags (no background networking), the page's scripts given time to load."""
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}", f"--window-size=1500,{height}",
                    f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=180)
    return path


@pytest.mark.skipif(not (SCREENSHOTS and CHROMIUM), reason="set MCL_SCREENSHOTS=<folder> with Debian's chromium installed")
def test_screenshots_of_the_version_page_and_the_flow_run(stack, first_arrival):
    out = Path(SCREENSHOTS)
    out.mkdir(parents=True, exist_ok=True)
    champion = mlflow_client(stack).get_model_version_by_alias("relevance", "champion")
    es_run = [r for r in flow_runs(stack, "arrival-local") if r["parameters"]["marketplace"] == "es"][-1]
    ui = stack.prefect_api.removesuffix("/api")
    artifacts = prefect(stack, """
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
with get_client(sync_client=True) as c:
    result = {key: str(c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                        sort=ArtifactSort.CREATED_DESC, limit=1)[0].id)
              for key in ("relevance-model-card", "relevance-registry")}
""")
    shots = [
        screenshot(f"{stack.mlflow_url}/#/models/relevance/versions/{champion.version}", out / "mlflow-version.png",
                   height=2600),
        screenshot(f"{ui}/runs/flow-run/{es_run['id']}", out / "prefect-flow-run-logs.png", height=1800),
        screenshot(f"{ui}/artifacts/artifact/{artifacts['relevance-model-card']}", out / "prefect-artifact-model-card.png",
                   height=1800),
        screenshot(f"{ui}/artifacts/artifact/{artifacts['relevance-registry']}", out / "prefect-artifact-registry.png"),
    ]
    for shot in shots:
        assert shot.stat().st_size > 30_000, f"{shot} looks blank ({shot.stat().st_size} bytes)"
