"""The team stack as files: the compose file's start order and MLflow's allowed hosts, the images' torch and
Apertium, the deployments' secrets and parameter help, and a real `mlflow server` answering the Host header
the worker sends."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.services import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "infra" / "docker-compose.yml"
PREFECT_YAML = ROOT / "flows" / "prefect.yaml"
# Host headers that reach the MLflow server: the compose worker's service name, the published port.
WORKER_HOST = "mlflow:5000"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolation_default(value: str) -> str:
    """What compose makes of ``${VAR:-default}`` when VAR is unset (the only form a default may take here)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def one_shot(compose: dict, name: str) -> bool:
    """A job that runs to completion (the bucket creator): every dependent waits for it to exit 0."""
    dependents = [s["depends_on"][name] for s in compose["services"].values() if name in s.get("depends_on", {})]
    return bool(dependents) and all(d["condition"] == "service_completed_successfully" for d in dependents)


# The Compose Specification's JSON schema as dclint (npm) bundles it; `.ci/run` installs it. `docker compose config`
# needs Docker's compose plugin, which CI machines do not have.
COMPOSE_SCHEMA = Path(os.environ.get("MCL_COMPOSE_SCHEMA",
                                     ROOT / ".ci" / "node" / "node_modules" / "dclint" / "schemas" / "compose.schema.json"))


@pytest.mark.skipif(not COMPOSE_SCHEMA.is_file(), reason=f"no compose-spec schema at {COMPOSE_SCHEMA} (.ci/run installs "
                                                          "it: npm install --prefix .ci/node dclint)")
def test_the_compose_file_is_valid_under_the_compose_spec_schema(compose):
    import json

    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    text = COMPOSE.read_text()
    for typo in (("condition: service_healthy", "condition: service_healty"), ("healthcheck:", "healthchek:")):
        assert list(validator.iter_errors(yaml.safe_load(text.replace(*typo, 1)))), f"schema accepts {typo[1]!r}"


def test_every_service_has_a_healthcheck_and_dependents_wait_for_it(compose):
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service or one_shot(compose, name), f"{name} has no healthcheck"
        for dependency, spec in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if one_shot(compose, dependency) else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {dependency}: {spec}"
    assert set(services["worker"]["depends_on"]) >= {"prefect-server", "mlflow"}
    assert set(services["mlflow"]["depends_on"]) >= {"postgres", "minio", "minio-buckets"}
    health = " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "http://localhost:5000/health" in health
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])
    assert "--with-healthcheck" in services["worker"]["command"]


def test_the_prefect_server_keeps_the_registry_locks_leases_across_restarts(compose):
    """In memory, a restarted server forgets who held the registry lock and its slot stays taken for good."""
    from tasks.registry_lock import LEASES_ON_DISK

    server = compose["services"]["prefect-server"]
    assert server["environment"]["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == LEASES_ON_DISK
    home = server["environment"]["PREFECT_HOME"]
    assert any(v.split(":")[0] in compose["volumes"] and v.split(":")[1] == home for v in server["volumes"])


def test_mlflow_accepts_the_worker_host_header(compose):
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    mlflow = compose["services"]["mlflow"]
    allowed = interpolation_default(mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]).split(",")
    worker_uri = compose["services"]["worker"]["environment"]["MCL_TRACKING_URI"]
    assert worker_uri == f"http://{WORKER_HOST}"
    assert is_allowed_host_header(allowed, WORKER_HOST)
    assert is_allowed_host_header(allowed, "localhost:5000")  # the published port, from the stack host
    assert not is_allowed_host_header(allowed, "evil.example:5000")
    # the blocker: MLflow's defaults (what the stack had) refuse the worker
    assert not is_allowed_host_header(get_default_allowed_hosts(), WORKER_HOST)
    assert "--allowed-hosts" not in mlflow["command"] or WORKER_HOST in mlflow["command"]


def test_no_secret_literal_in_the_compose_file(compose):
    text = COMPOSE.read_text()
    secret_names = ("PASSWORD", "SECRET", "ACCESS_KEY")
    for ref in re.findall(r"(?<!\$)\$\{([A-Z_]+)(:?[-?])?([^}]*)\}", text):  # $${...}: the container's shell
        name, op, arg = ref
        if any(s in name for s in secret_names) or name.endswith("_USER"):
            assert op == ":?", f"${{{name}}} must be required (':?'), not defaulted: {op}{arg}"

    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str):
            key = path.rsplit(".", 1)[-1]
            if any(s in key for s in secret_names):
                assert node.startswith("${") and ":?" in node, f"{path} = {node!r} is a literal"
            stripped = re.sub(r"\$\{[^}]*\}", "", node)
            for userinfo in re.findall(r"://([^@/\s]*)@", stripped):  # credentials inside a URL: references only
                assert set(userinfo) <= {":"}, f"{path}: credentials in a URL: {node!r}"

    walk(compose)
    env_example = (ROOT / "infra" / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", env_example, re.MULTILINE) and re.search(r"^MINIO_ROOT_PASSWORD=$",
                                                                             env_example, re.MULTILINE)


def test_images_install_every_apertium_pair_and_one_torch():
    makefile = (ROOT / "Makefile").read_text()  # `make setup` installs them (.ci/run through `make test`)
    pairs = set(re.search(r"^APERTIUM := (.+)$", makefile, re.MULTILINE).group(1).split())
    assert {"apertium-spa-ita", "apertium-es-pt"} <= pairs
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (ROOT / "docker" / name).read_text()
        installed = set(re.search(r"apt-get install[^&]*", text, re.DOTALL).group(0).replace("\\", " ").split())
        assert pairs <= installed, f"{name} misses {sorted(pairs - installed)}"
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    # one CUDA scheme: PyPI's torch wheel, which brings its own CUDA runtime, on a base without another one
    assert not re.search(r"^FROM nvidia/cuda", gpu, re.MULTILINE) and "--index-url" not in gpu
    assert "torch.version.cuda" in gpu


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "mlruns", "*.db", "data", "benchmarks", "infra/.env"} <= patterns
    copied = {line.split()[1] for line in (ROOT / "docker" / "Dockerfile.cpu").read_text().splitlines()
              if line.startswith("COPY")}
    assert not copied & patterns  # nothing the images copy is ignored


# --- deployments -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def test_no_secret_or_secret_template_in_the_deployments(deployments):
    text = PREFECT_YAML.read_text()
    assert not re.search(r"\{\{\s*\$AWS", text)
    # `prefect deploy` resolves block templates into the stored deployment: a secret must not be templated at all
    assert "prefect.blocks.secret" not in text
    for deployment in deployments:
        env = deployment["work_pool"].get("job_variables", {}).get("env", {})
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), deployment["name"]
        assert env.get("PREFECT_LOGGING_EXTRA_LOGGERS") == "models,tasks,flows", deployment["name"]
        if deployment["work_pool"]["name"] == "gpu":
            # the block's name travels; the flow loads its value at run time
            assert env["MCL_S3_CREDENTIALS_BLOCK"] == "mcl-s3-credentials"
            assert "networks" not in deployment["work_pool"]["job_variables"]
            for key in ("MCL_TRACKING_URI", "MCL_S3_ENDPOINT_URL"):
                assert env[key].startswith("{{ prefect.variables."), key  # not a compose service name
            assert env["PREFECT_LOCAL_STORAGE_PATH"].startswith("/cache/")  # results outlive the container


def test_the_watcher_deployment_cancels_overlapping_runs(deployments):
    watcher = next(d for d in deployments if d["name"] == "landing-watcher")
    assert watcher["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_every_deployment_parameter_has_a_description(deployments):
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    seen = set()
    for deployment in deployments:
        entrypoint = deployment["entrypoint"]
        if entrypoint in seen:
            continue
        seen.add(entrypoint)
        flow = load_flow_from_entrypoint(str(ROOT / entrypoint))
        properties = parameter_schema(flow).model_dump()["properties"]
        assert properties, entrypoint
        for name, prop in properties.items():
            assert prop.get("description", "").strip(), f"{entrypoint}: parameter {name!r} has no description"
        assert set(deployment.get("parameters", {})) <= set(properties), entrypoint
    assert seen == {"flows/arrival.py:marketplace_arrival", "flows/watcher.py:landing_watcher",
                    "flows/retrain.py:scheduled_retraining", "flows/adapt_encoder.py:adapt_encoder",
                    "flows/student.py:distill_student"}


@pytest.fixture()
def prefect_api(prefect_server):
    """The session's temporary Prefect server (conftest): starting a second one costs half a minute."""
    yield


def test_storage_credentials_come_from_a_secret_block(prefect_api, monkeypatch):
    from prefect.blocks.system import Secret

    from tasks.prefect_tasks import load_storage_credentials

    monkeypatch.delenv("MCL_S3_CREDENTIALS_BLOCK", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    assert load_storage_credentials() is False  # no block named: the environment is kept
    assert os.environ["AWS_ACCESS_KEY_ID"] == "from-env"
    Secret(value={"aws_access_key_id": "AKIAOLD", "aws_secret_access_key": "old"}).save("mcl-s3-credentials")
    Secret(value={"aws_access_key_id": "AKIAROTATED", "aws_secret_access_key": "s3cr3t"}).save(
        "mcl-s3-credentials", overwrite=True)  # a rotation: the next run reads the new value
    monkeypatch.setenv("MCL_S3_CREDENTIALS_BLOCK", "mcl-s3-credentials")
    assert load_storage_credentials() is True
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("AKIAROTATED", "s3cr3t")
    Secret(value={"aws_access_key_id": "only-the-id"}).save("broken", overwrite=True)
    with pytest.raises(ValueError, match=r"'broken' must hold .*missing \['aws_secret_access_key'\]"):
        load_storage_credentials("broken")


def test_the_automations_alert_on_failed_and_refused_runs_and_install_once(prefect_api):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.commands.alerts import AUTOMATIONS_FILE

    assert AUTOMATIONS_FILE == ROOT / "infra" / "automations.yaml"
    CustomWebhookNotificationBlock(name="oncall", url="http://127.0.0.1:9/hook").save("mcl-oncall", overwrite=True)
    for _ in range(2):  # installing again replaces, never duplicates
        result = CliRunner().invoke(app, ["alerts", "install", "--block", "custom-webhook/mcl-oncall"])
        assert result.exit_code == 0, result.output
    assert "'mcl-flow-run-refused' installed" in result.output
    with get_client(sync_client=True) as prefect:
        block_id = prefect.read_block_document_by_name("mcl-oncall", "custom-webhook", include_secrets=False).id
        installed = {a.name: a for a in prefect.read_automations()}
    assert set(installed) == {"mcl-flow-run-failed", "mcl-flow-run-refused", "mcl-flow-run-lost"}
    failed, refused = installed["mcl-flow-run-failed"], installed["mcl-flow-run-refused"]
    lost = installed["mcl-flow-run-lost"]  # no heartbeat (default every 180 s) for 10 minutes: marked Crashed
    assert lost.trigger.posture == "Proactive" and lost.trigger.after == {"prefect.flow-run.heartbeat"}
    assert lost.trigger.within.total_seconds() >= 3 * 180 and lost.trigger.for_each == {"prefect.resource.id"}
    assert lost.actions[0].type == "change-flow-run-state" and lost.actions[0].state == "CRASHED"
    assert {"prefect.flow-run.Completed", "prefect.flow-run.Refused"} <= lost.trigger.expect
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                                     "prefect.flow-run.TimedOut"}
    assert refused.trigger.expect == {"prefect.flow-run.Refused"}  # the state name of a gate refusal
    for automation in (failed, refused):
        assert automation.trigger.match_related.model_dump()["prefect.resource.id"] == "prefect.tag.mcl"
        assert automation.enabled and automation.actions[0].block_document_id == block_id
    bad = CliRunner().invoke(app, ["alerts", "install", "--block", "mcl-oncall"])
    assert bad.exit_code == 2 and "expected <block type>/<name>" in bad.output


def test_deployment_runs_carry_the_tag_the_automations_match(deployments):
    assert all("mcl" in d["tags"] for d in deployments)


# --- a real server -----------------------------------------------------------------------------------------


def get(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_a_real_mlflow_server_with_the_compose_setting_answers_the_worker(compose, tmp_path):
    """`mlflow server` with the compose file's allowed hosts: the worker's Host header gets answers, a stranger's
    gets MLflow's 403 (the middleware is on), and /health (the compose healthcheck) answers both."""
    env_setting = compose["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    port = free_port()
    allowed = interpolation_default(env_setting).replace(":5000", f":{port}")
    worker_host, stranger = f"mlflow:{port}", f"evil.example:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--default-artifact-root",
               str(tmp_path / "artifacts"), "--workers", "1"]
    server = subprocess.Popen(command, env={**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": allowed},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a busy 2-core machine: several seconds per import
        while True:
            try:
                if get(f"{base}/health", "localhost") == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"mlflow server did not start: {shlex.join(command)}"
            time.sleep(0.5)
        api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(api, worker_host) == 200
        assert get(api, stranger) == 403
        assert get(f"{base}/health", worker_host) == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
