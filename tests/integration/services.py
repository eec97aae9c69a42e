"""The team stack on 127.0.0.1, without Docker: Postgres, an S3 server (moto standing in for MinIO), an MLflow
tracking server on Postgres with proxied artifacts in S3, a Prefect server on Postgres and a process worker.

Each service is a child process with its log in the stack's folder; :class:`Stack` starts them in dependency
order, waits for each one's health endpoint (as the compose file's healthchecks do) and stops them in reverse.
Used by ``tests/integration``; an operator can read it as the compose file spelled out in processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tasks.registry_lock import LEASES_ON_DISK

BIN = Path(sys.executable).parent
ACCESS_KEY, SECRET_KEY = "mcl-integration", "mcl-integration-secret"
ARTIFACT_BUCKET, LANDING_BUCKET = "mcl-artifacts", "mcl-landing"
POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class StackError(RuntimeError):
    """A service did not start; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_tool(name: str) -> str | None:
    """Debian keeps initdb and pg_ctl out of PATH, under /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return found
    return next((str(d / name) for d in POSTGRES_BIN_DIRS if (d / name).exists()), None)


def missing_tools() -> list[str]:
    """What this machine lacks to run the stack (the integration tests skip, naming it)."""
    missing = [t for t in ("initdb", "pg_ctl") if postgres_tool(t) is None]
    missing += [t for t in ("mlflow", "prefect", "moto_server") if not (BIN / t).exists()]
    try:
        import psycopg2  # noqa: F401  (MLflow's Postgres driver)
    except ImportError:
        missing.append("psycopg2")
    return missing


def http_ok(url: str, timeout: float = 5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass
class Service:
    """One child process of the stack, in its own process group so a stop reaches its children (workers,
    gunicorn, flow-run subprocesses)."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    health: str | None = None  # URL answering 200 once the service is ready
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 120, wait: bool = True) -> Service:
        """Start the process; with ``wait``, return once its health URL answers (without: services that do not
        depend on each other start together, and the caller waits for each)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        handle.close()
        if self.health and wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not http_ok(self.health):
            if self.process.poll() is not None:
                raise StackError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} not healthy at {self.health} after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.5)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the whole process group (a SIGKILL here is a crashed host, children included)."""
        if self.running:
            os.killpg(self.process.pid, sig)

    def kill_host(self) -> None:
        """SIGKILL the service and every process it started, at once, whatever their process group (Prefect
        starts each flow run in its own session): what losing the machine looks like to the servers."""
        if not self.running:
            return
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(parents.get(child, []))
    return found


def run(command: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, timeout: float = 300) -> str:
    """A one-shot command of the runbook (createdb, prefect deploy...); its output, or an error holding it."""
    done = subprocess.run(list(command), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise StackError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class Stack:
    """The services, their URLs and the environment a client of the stack (a worker, the CLI, a test) uses."""

    root: Path
    services: dict[str, Service] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    postgres_dir: Path | None = None

    def __post_init__(self) -> None:
        self.ports = {name: free_port() for name in ("postgres", "s3", "mlflow", "prefect")}

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    def postgres_url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.ports['postgres']}/{database}"

    def base_env(self) -> dict[str, str]:
        """What every process of the stack shares: offline, its own Prefect home, no analytics."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MCL_", "AWS_"))}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   PREFECT_HOME=str(self.root / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_API_URL=self.prefect_api, AWS_DEFAULT_REGION="us-east-1", NO_PROXY="127.0.0.1,localhost",
                   no_proxy="127.0.0.1,localhost")
        return env

    def client_env(self, **extra: str) -> dict[str, str]:
        """A client as a worker host sees the stack: service URLs, no credentials (those come from the Secret
        block at run time, see ``tasks.prefect_tasks.load_storage_credentials``)."""
        return {**self.base_env(), "MCL_TRACKING_URI": self.mlflow_url, "MCL_S3_ENDPOINT_URL": self.s3_url,
                "MLFLOW_S3_ENDPOINT_URL": self.s3_url, **extra}

    def s3_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def add(self, name: str, command: list[str], env: Mapping[str, str], health: str | None = None,
            timeout: float = 120, wait: bool = True) -> Service:
        service = Service(name, command, dict(env), self.root / "logs" / f"{name}.log", health)
        self.services[name] = service
        return service.start(timeout, wait)

    # -- the services, in the order the compose file's depends_on gives ------------------------------------

    def start_postgres(self) -> None:
        # Outside the test's tmp folder: pytest's is private to root, and Postgres runs as its own user.
        data = Path(tempfile.mkdtemp(prefix="mcl-postgres-"))
        self.postgres_dir = data
        as_postgres = _as_user("postgres", data) if os.geteuid() == 0 else []
        env = self.base_env()
        run([*as_postgres, postgres_tool("initdb"), "-D", str(data / "data"), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8"], env)
        options = f"-h 127.0.0.1 -p {self.ports['postgres']} -k {data} -c fsync=off"
        self.add("postgres", [*as_postgres, postgres_tool("pg_ctl"), "-D", str(data / "data"), "-o", options,
                              "-w", "-l", str(data / "server.log"), "start"], env)
        self.services["postgres"].process.wait(timeout=60)
        self.services["postgres"].command = [*as_postgres, postgres_tool("pg_ctl"), "-D", str(data / "data")]
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.ports["postgres"], user="postgres",
                                      dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            for database in ("prefect", "mlflow"):
                cursor.execute(f"CREATE DATABASE {database}")
        connection.close()

    def stop_postgres(self) -> None:
        service = self.services.get("postgres")
        if service is not None:
            subprocess.run([*service.command, "-m", "fast", "stop"], env=self.base_env(), capture_output=True,
                           timeout=60)
            shutil.rmtree(self.postgres_dir, ignore_errors=True)

    def start_s3(self) -> None:
        self.add("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.ports["s3"])],
                 {**self.base_env(), **self.s3_env()}, health=f"{self.s3_url}/moto-api/")
        s3 = self.s3_client()
        for bucket in (ARTIFACT_BUCKET, LANDING_BUCKET):
            s3.create_bucket(Bucket=bucket)

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def start_mlflow(self) -> None:
        command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.ports["mlflow"]),
                   "--backend-store-uri", self.postgres_url("mlflow", "postgresql+psycopg2"),
                   "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/mlflow", "--serve-artifacts",
                   "--workers", "1"]
        env = {**self.base_env(), **self.s3_env(), "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
               "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{self.ports['mlflow']},localhost:{self.ports['mlflow']}"}
        self.add("mlflow", command, env, health=f"{self.mlflow_url}/health", wait=False)

    def start_prefect(self) -> None:
        env = {**self.base_env(), "PREFECT_API_DATABASE_CONNECTION_URL": self.postgres_url("prefect",
                                                                                            "postgresql+asyncpg"),
               "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(self.ports["prefect"]),
               "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASES_ON_DISK}  # as infra/docker-compose.yml
        self.add("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                             str(self.ports["prefect"])], env, health=f"{self.prefect_api}/health", wait=False)

    def start_worker(self, pool: str, env: Mapping[str, str], name: str = "worker") -> Service:
        return self.add(name, [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                               "--limit", "1", "--name", name], env)

    def up(self) -> Stack:
        try:
            self.start_postgres()
            self.start_s3()
            self.start_mlflow()  # the two servers need only Postgres and S3: they start side by side
            self.start_prefect()
            for name in ("mlflow", "prefect"):
                self.services[name].wait_healthy(timeout=240)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for name in reversed(list(self.services)):
            if name == "postgres":
                self.stop_postgres()
            else:
                self.services[name].stop()

    def wait(self, condition: Callable[[], object], timeout: float, what: str, poll: float = 1.0):
        """Poll until ``condition()`` is truthy; the error names what was awaited and the logs' ends."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n} ---\n{s.tail(2500)}" for n, s in self.services.items()
                                 if n not in ("postgres", "s3"))
                raise StackError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
            time.sleep(poll)


def _as_user(user: str, folder: Path) -> list[str]:
    """Postgres refuses to run as root: the folder goes to ``user`` and commands run through runuser."""
    subprocess.run(["chown", "-R", f"{user}:{user}", str(folder)], check=True)
    return ["runuser", "-u", user, "--"]
