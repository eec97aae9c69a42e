"""The marketplace-arrival flow under a real (ephemeral) Prefect server with tiny models and a temporary
SQLite MLflow: registry states after gate pass and fail, a refused repeat, resuming after a crash in the
fusion step without retraining the adapter, and the champion pyfunc scoring rows in a fresh process."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import make_pairs

LEARNER = {"adapter": {"epochs": 2, "batch_size": 16}, "fusion": {"epochs": 1, "batch_size": 16}, "max_length": 16,
           "translation": {"fraction": 0.0}, "device": "cpu"}
FAST = {"learner": LEARNER}
LENIENT = {"gate": {"max_regression": 1.0, "adapter_margin": -1.0}}  # the gate passes whatever tiny models score


def write_marketplace(root: Path, lang: str, n: int = 64) -> dict[str, str]:
    folder = root / "data" / lang
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, split in enumerate(("train", "valid", "test"), start=1):
        pairs = make_pairs(lang, n if split == "train" else n // 2, seed)
        path = folder / f"{split}.parquet"
        titles = [f"{t} {i}" for i, t in enumerate(pairs.titles)]  # the data contract refuses duplicate pairs
        pd.DataFrame({"query": pairs.queries, "product_title": titles, "label": pairs.labels}).to_parquet(path)
        paths[split] = str(path)
    return paths


def arrive(root: Path, encoder, lang: str, **options):
    from flows.arrival import marketplace_arrival

    return marketplace_arrival(marketplace=lang, language=lang, **write_marketplace(root, lang), encoder=str(encoder.path),
                               **{**FAST, **options})


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def flow_run_artifacts(flow_run_id) -> dict:
    """The Prefect artifacts a flow run created, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key: a for a in found}


def test_arrivals_register_versions_with_tags_aliases_and_refuse_a_repeat(mcl, tiny_encoder):
    from tasks import registry

    first = arrive(mcl, tiny_encoder, "en")
    assert first["version"] == "1" and first["alias"] == "champion" and first["adapter_auc"] is None
    second = arrive(mcl, tiny_encoder, "es", **LENIENT)
    assert second["version"] == "2" and second["alias"] == "champion"
    assert set(second["aucs"]) == {"en", "es"} and 0.0 <= second["adapter_auc"] <= 1.0

    c = client()
    champion = registry.alias_version(c, registry.CHAMPION)
    assert champion.version == "2"
    assert champion.marketplaces == ["en", "es"] and champion.languages == ["en", "es"]
    assert champion.parent == "1"
    assert champion.tags["gate"] == "passed"
    assert set(champion.data_hashes) == {"en", "es"} and set(champion.data_hashes["es"]) == {"train", "valid", "test"}
    assert champion.aucs["es"] == pytest.approx(second["aucs"]["es"], abs=1e-6)
    # old test sets are referenced from the artifact store and can be read back for re-evaluation
    tests = registry.read_test_sets(champion, mcl / "readback")
    assert list(tests) == ["en", "es"] and len(tests["en"]) == 32
    assert champion.test_sets["en"] == registry.version_info(c, "1").test_sets["en"]
    # validation sets are kept the same way, and the gate decided on them (test is reported only)
    valids = registry.read_valid_sets(champion, mcl / "readback-valid")
    assert list(valids) == ["en", "es"] and len(valids["en"]) == 32
    assert champion.valid_sets["en"] == registry.version_info(c, "1").valid_sets["en"]
    assert set(champion.valid_aucs) == {"en", "es"}
    assert champion.tags["gate_checks"].startswith(f"en: validation ROC-AUC {champion.valid_aucs['en']:.4f}")
    for mid in ("en", "es"):
        (adapter,) = c.search_model_versions(f"name = 'adapter-{mid}'")
        assert adapter.tags["marketplace_order"] == mid
    # the arrival run has one nested run per step and the reviewer artifacts
    runs = c.search_runs([c.get_experiment_by_name(registry.EXPERIMENT).experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{second['run_id']}'")
    assert {r.info.run_name for r in runs} == {"translate-subset", "train-new-language-adapter",
                                               "attention-distill-fusion", "evaluate", "register"}
    artifacts = {a.path for a in c.list_artifacts(second["run_id"])}
    assert {"roc_auc_matrix.png", "model_card.md", "roc_auc_matrix.json", "roc_curves.png",
            "fusion_attention_by_language.png"} <= artifacts
    evaluate_run = next(r for r in runs if r.info.run_name == "evaluate")
    assert {"roc_curves.png", "fusion_attention.json"} <= {a.path for a in c.list_artifacts(evaluate_run.info.run_id)}
    assert evaluate_run.data.metrics["test_auc.es"] == pytest.approx(second["aucs"]["es"])
    datasets = c.get_run(second["run_id"]).inputs.dataset_inputs
    assert {d.dataset.name for d in datasets} == {"es-train", "es-valid", "es-test"}
    card = Path(c.download_artifacts(second["run_id"], "model_card.md", str(mcl))).read_text()
    assert "relevance v2 (@champion)" in card and "`es` (es)" in card
    assert c.get_model_version(registry.MODEL_NAME, "2").description == card  # the version page shows the card
    # ... and the scores, linked to the logged model
    source = c.get_model_version(registry.MODEL_NAME, "2").source  # models:/<logged model id>
    linked = {m.key: m.value for m in c.get_logged_model(source.removeprefix("models:/")).metrics}
    assert linked["test_auc.es"] == pytest.approx(second["aucs"]["es"]) and {"valid_auc.en", "valid_auc.es"} <= set(linked)

    # the same upload again (a repeated event): nothing trained or registered, the run completes
    again = arrive(mcl, tiny_encoder, "es", **LENIENT)
    assert again["already_registered"] and again["version"] == "2" and again["alias"] == "champion"
    # other tables for a marketplace the champion has: refused, unless replace=True
    from flows.arrival import marketplace_arrival

    with pytest.raises(registry.ArrivalRefused, match="already in relevance@champion"):
        marketplace_arrival(marketplace="es", language="es", **write_marketplace(mcl / "other", "es", n=48),
                            encoder=str(tiny_encoder.path), **FAST, **LENIENT)
    assert len(registry.registry_state(c)) == 2
    assert registry.alias_version(c, registry.CHAMPION).version == "2"

    # pyfunc from the registry, in a fresh interpreter, scores rows like the in-process model
    rows = pd.DataFrame({"marketplace": ["en", "es", "es"], "query": ["red shoe", "rojo zapato", "azul taza"],
                         "product_title": ["shoe blue deluxe", "zapato verde deluxe", "reloj rojo deluxe"]})
    script = (
        "import sys, json, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({os.environ['MCL_TRACKING_URI']!r})\n"
        "model = mlflow.pyfunc.load_model('models:/relevance@champion')\n"
        "rows = pd.read_json(sys.stdin)\n"
        "import models, tasks.pyfunc\n"
        "print(json.dumps([models.__file__, tasks.pyfunc.__file__]))\n"
        "print(json.dumps(model.predict(rows)['score'].tolist()))\n"
    )
    elsewhere = mcl / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", script], input=rows.to_json(), capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-2000:]
    *_, modules, scores = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    # the version runs the code shipped inside it (MLflow's code_paths), not the checkout's
    repo = Path(__file__).resolve().parents[1]
    assert all("/code/" in m and not m.startswith(str(repo)) for m in modules), modules
    import mlflow

    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/relevance@champion")).read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert all("==" in r for r in requirements if not r.startswith("#")), requirements
    from models.pairs import Pairs
    from models.relevance import RelevanceModel

    local = RelevanceModel.load(registry.model_folder(champion, mcl / "dl"), _ref(c, champion, tiny_encoder))
    expected = local.predict_proba(Pairs(rows["query"].tolist(), rows["product_title"].tolist(), [0, 0, 0]))
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)


def _ref(c, info, tiny_encoder):
    from models.encoders import EncoderRef

    return EncoderRef(info.tags["encoder"], tiny_encoder.path, info.tags["encoder_checksum"])


def test_a_new_registry_never_reads_another_registrys_cached_teacher(mcl, tiny_encoder, monkeypatch):
    """Two registries sharing one cache both have a version 1 (a rerun demo does exactly this): the
    second registry's arrivals must train on top of its own version 1, not a folder cached for the first."""
    from flows.arrival import marketplace_arrival
    from tasks import registry
    from tasks.hashing import folder_hash
    from tasks.settings import get_settings

    def champion_in(store: str, n: int):
        monkeypatch.setenv("MCL_TRACKING_URI", f"sqlite:///{mcl}/{store}.db")
        monkeypatch.setenv("MCL_ARTIFACT_LOCATION", str(mcl / f"{store}-artifacts"))
        get_settings.cache_clear()
        marketplace_arrival(marketplace="en", language="en", **write_marketplace(mcl / store, "en", n),
                            encoder=str(tiny_encoder.path), **FAST)
        return registry.alias_version(client(), registry.CHAMPION)

    first = champion_in("first", 64)
    first_dir = registry.model_folder(first, mcl / "cache" / "registry" / "models")
    second = champion_in("second", 48)
    assert first.version == second.version == "1"
    second_dir = registry.model_folder(second, mcl / "cache" / "registry" / "models")
    assert second_dir != first_dir
    assert folder_hash(second_dir) != folder_hash(first_dir)


def test_a_cached_step_is_keyed_on_the_code_that_computes_it(tmp_path, monkeypatch):
    """The step caches outlive checkouts (cache dir, Prefect's result storage): a learner whose code changed must
    train again rather than be answered from what an older version cached."""
    from types import SimpleNamespace

    from tasks import hashing
    from tasks.prefect_tasks import keyed_cache

    for package in hashing.COMPUTING_PACKAGES:
        (tmp_path / package / "sub").mkdir(parents=True)
        (tmp_path / package / "sub" / "loss.py").write_text("WEIGHT = 1.0\n")
    (tmp_path / "README.md").write_text("docs are not code\n")
    before = hashing.code_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("edited docs\n")
    hashing.code_fingerprint.cache_clear()
    assert hashing.code_fingerprint(tmp_path) == before
    (tmp_path / "models" / "sub" / "loss.py").write_text("WEIGHT = 2.0\n")
    hashing.code_fingerprint.cache_clear()
    assert hashing.code_fingerprint(tmp_path) != before
    real = importlib.metadata.version
    monkeypatch.setattr(hashing.importlib.metadata, "version", lambda lib: "0.0" if lib == "adapters" else real(lib))
    changed = hashing.code_fingerprint.__wrapped__(tmp_path)
    monkeypatch.undo()
    assert changed != hashing.code_fingerprint(tmp_path)

    step = SimpleNamespace(task=SimpleNamespace(name="train-new-language-adapter"))
    key = keyed_cache(step, {"key": "data-and-config"})
    assert key.startswith("train-new-language-adapter-data-and-config-")
    monkeypatch.setattr(hashing, "code_fingerprint", lambda: "f" * 64)
    assert keyed_cache(step, {"key": "data-and-config"}) != key


def test_gate_failure_registers_a_challenger_and_keeps_the_champion(mcl, tiny_encoder):
    from tasks import registry

    arrive(mcl, tiny_encoder, "en")
    state = arrive(mcl, tiny_encoder, "es", gate={"max_regression": 1.0, "adapter_margin": 1.0}, return_state=True)
    # a refusal is a named FAILED state with the gate's reason, not a crash; calling the flow still raises it
    assert state.is_failed() and state.name == "Refused"
    assert "version 2 of 'relevance' was not promoted" in state.message and "must exceed it by more than 1.0" in \
        state.message
    refusal = state.result(raise_on_failure=False)
    assert isinstance(refusal, registry.PromotionRefused) and refusal.version == "2"
    with pytest.raises(registry.PromotionRefused, match="must exceed it by more than 1.0"):
        state.result()
    # the operator's review in Prefect: the model card and the registry after the run
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    assert set(artifacts) == {"relevance-model-card", "relevance-registry"}
    assert artifacts["relevance-model-card"].type == "markdown"
    assert artifacts["relevance-model-card"].data.startswith("# relevance v2 (@challenger)")
    rows = json.loads(artifacts["relevance-registry"].data)
    assert [(r["version"], r["aliases"], r["gate"]) for r in rows] == [(2, "@challenger", "failed"),
                                                                       (1, "@champion", "passed")]
    assert "adapter-only" in rows[0]["gate_reasons"] and rows[1]["auc.es"] is None
    c = client()
    assert registry.alias_version(c, registry.CHAMPION).version == "1"
    challenger = registry.alias_version(c, registry.CHALLENGER)
    assert challenger.version == "2" and challenger.tags["gate"] == "failed"
    assert "adapter-only" in challenger.tags["gate_reasons"]
    # the same upload delivered again (a duplicate event): the same verdict on the same version, no second challenger
    with pytest.raises(registry.PromotionRefused, match="version 2 of 'relevance' was not promoted"):
        arrive(mcl, tiny_encoder, "es", gate={"max_regression": 1.0, "adapter_margin": 1.0})
    assert [v.version for v in registry_versions()] == ["1", "2"]
    assert len(c.search_model_versions("name = 'adapter-es'")) == 1
    # the next arrival still builds on the champion (en only), not on the refused challenger
    third = arrive(mcl, tiny_encoder, "fr", **LENIENT)
    assert third["version"] == "3" and set(third["aucs"]) == {"en", "fr"}
    assert registry.alias_version(c, registry.CHAMPION).marketplaces == ["en", "fr"]


def test_rerun_after_a_fusion_crash_resumes_without_retraining_the_adapter(mcl, tiny_encoder, monkeypatch):
    import models.stages as stages
    from tasks import registry

    arrive(mcl, tiny_encoder, "en")
    calls = {"adapter": 0, "fusion": 0}
    real_adapter, real_fusion = stages.train_language_adapter, stages.distill_fusion

    def counting_adapter(*args, **kwargs):
        calls["adapter"] += 1
        return real_adapter(*args, **kwargs)

    def crashing_fusion(*args, **kwargs):
        calls["fusion"] += 1
        raise RuntimeError("injected crash in the fusion step")

    monkeypatch.setattr(stages, "train_language_adapter", counting_adapter)
    monkeypatch.setattr(stages, "distill_fusion", crashing_fusion)
    with pytest.raises(RuntimeError, match="injected crash"):
        arrive(mcl, tiny_encoder, "es", **LENIENT)
    assert calls == {"adapter": 1, "fusion": 1}
    assert registry.alias_version(client(), registry.CHAMPION).version == "1"

    monkeypatch.setattr(stages, "distill_fusion", real_fusion)
    result = arrive(mcl, tiny_encoder, "es", **LENIENT)
    assert calls["adapter"] == 1  # served from the task cache
    assert result["version"] == "2" and result["alias"] == "champion"


def test_watcher_flow_emits_one_event_per_ready_folder_across_runs(mcl, monkeypatch):
    import logging
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS, temporary_settings

    import flows.watcher as watcher
    from tasks import landing

    zone = mcl / "landing"
    write_marketplace(zone.parent, "es")
    (zone).mkdir()
    (mcl / "data" / "es").rename(zone / "es")
    (zone / "es" / "_READY").write_text('{"language": "es"}')
    (zone / "fr").mkdir()
    (zone / "fr" / "train.parquet").write_bytes(b"half")  # half-written: no marker yet
    (zone / "de").mkdir()
    (zone / "de" / "train.parquet").write_bytes(b"x")
    (zone / "de" / "_READY").write_text('{"language": "de"}')  # marked ready, but no valid/test table
    events = []
    monkeypatch.setattr(watcher, "emit_event", lambda **event: events.append(event))
    # the deployments' setting (flows/prefect.yaml, the compose worker): project loggers go to the run's log
    project_loggers = [logging.getLogger(name) for name in ("models", "tasks", "flows")]
    before = {lg.name: list(lg.handlers) for lg in project_loggers}
    try:
        with temporary_settings({PREFECT_LOGGING_EXTRA_LOGGERS: "models,tasks,flows"}):
            setup_logging(incremental=False)
            state = watcher.landing_watcher(str(zone), return_state=True)
        forwarding = [h for lg in project_loggers for h in lg.handlers if isinstance(h, APILogHandler)]
        assert len(forwarding) == 3
        forwarding[0].flush()  # send the queued log lines to the API now
    finally:
        for lg in project_loggers:
            lg.handlers[:] = before[lg.name]
    assert state.result() == ["es"]
    assert watcher.landing_watcher(str(zone)) == []
    assert len(events) == 1 and events[0]["event"] == "marketplace.arrived"
    assert events[0]["resource"]["prefect.resource.id"] == "mcl.marketplace.es"
    assert events[0]["payload"] == {"marketplace": "es", "language": "es", "train": str(zone / "es" / "train.parquet"),
                                    "valid": str(zone / "es" / "valid.parquet"), "test": str(zone / "es" / "test.parquet")}
    (announced,) = [f for f in landing.scan_landing_zone(zone) if f.marketplace == "es"]
    assert events[0]["id"] == announced.event_id == uuid.uuid5(landing.EVENT_NAMESPACE, announced.key)
    assert announced.announced
    # the malformed upload is reported where an operator looks: the flow run's log in the Prefect UI
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])))
    messages = {(entry.name, entry.message) for entry in logs}
    assert ("tasks.landing", "landing de is marked ready but has no valid/test table; skipped") in messages
    assert any(name == "flows.watcher" and message.startswith("announced es (es)") for name, message in messages)


def test_s3_data_and_artifacts_on_a_real_s3_api(mcl, tiny_encoder, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from tasks import registry
    from tasks.settings import get_settings

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint,
                           "MCL_S3_ENDPOINT_URL": endpoint, "MCL_ARTIFACT_LOCATION": "s3://mlflow/artifacts"}.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="mlflow")
        s3.create_bucket(Bucket="data")
        local = write_marketplace(mcl, "en")
        remote = {}
        for split, path in local.items():
            s3.upload_file(path, "data", f"en/{split}.parquet")
            remote[split] = f"s3://data/en/{split}.parquet"
        from flows.arrival import marketplace_arrival

        result = marketplace_arrival(marketplace="en", language="en", **remote, encoder=str(tiny_encoder.path), **FAST)
        champion = registry.alias_version(client(), registry.CHAMPION)
        assert result["version"] == champion.version == "1"
        assert champion.test_sets["en"].startswith("s3://mlflow/artifacts/")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow")["Contents"]]
        assert any(k.endswith("test_sets/en.parquet") for k in keys)
        assert any(k.endswith("manifest.json") for k in keys)  # the model folder inside the pyfunc
        assert len(registry.read_test_sets(champion, mcl / "back")["en"]) == 32
        assert registry.model_folder(champion, mcl / "dl").joinpath("manifest.json").is_file()
    finally:
        server.stop()


def test_mcl_arrive_reports_bad_input_and_exits_1(mcl, tiny_encoder):
    import typer
    from typer.testing import CliRunner

    from flows.commands.arrive import arrive as arrive_command

    paths = write_marketplace(mcl, "en")
    broken = Path(paths["train"]).with_name("broken.csv")
    broken.write_text("query,product_title,label\nred shoe,shoe red,maybe\nblue cup,cup blue,0\n")
    app = typer.Typer()
    app.command()(arrive_command)
    result = CliRunner().invoke(app, ["--marketplace", "en", "--language", "en", "--train", str(broken),
                                      "--valid", paths["valid"], "--test", paths["test"],
                                      "--encoder", str(tiny_encoder.path)])
    assert result.exit_code == 1
    assert "broken.csv" in result.output and "label" in result.output and "maybe" in result.output
    # one message, checked before any Prefect server or registry is touched: no traceback, no registry table
    assert "Traceback" not in result.output and "registry: relevance" not in result.output
    assert len(result.output.strip().splitlines()) <= 3
    assert registry_versions() == []


@contextmanager
def log_lines(name: str) -> Iterator[list[str]]:
    """The messages logged to ``name`` meanwhile, from a handler on that logger itself: Prefect reconfigures the root
    logger on the session's first flow run, which drops pytest's caplog handler mid-test."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def registry_versions():
    from tasks import registry

    assert os.environ["MCL_TRACKING_URI"].startswith("sqlite:///")
    registry.setup_tracking(os.environ["MCL_TRACKING_URI"], os.environ["MCL_ARTIFACT_LOCATION"])
    return registry.registry_state(client())


def test_scheduled_retraining_replaces_the_latest_marketplace_from_fresh_data(mcl, tiny_encoder, monkeypatch):
    from flows.retrain import scheduled_retraining
    from tasks import registry

    fresh = mcl / "fresh"
    assert scheduled_retraining(str(fresh)) is None  # no champion yet
    arrive(mcl, tiny_encoder, "en")
    fresh.mkdir()
    assert scheduled_retraining(str(fresh)) is None  # no fresh data for en
    monkeypatch.setenv("MCL_ENCODER", str(tiny_encoder.path))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    learner = {**LEARNER, "adapter": {"epochs": 1, "batch_size": 16}}
    # the very tables version 1 was trained on, uploaded again as "fresh": nothing new, nothing trained
    (mcl / "data" / "en").rename(fresh / "en")
    (fresh / "en" / "_READY").write_text('{"language": "en"}')
    with log_lines("tasks.registry") as lines:
        assert scheduled_retraining(str(fresh), learner=learner) is None
    assert any(line.startswith(f"fresh data for en in {fresh / 'en'} was already trained on by relevance version 1 ")
               for line in lines), lines
    for split, path in write_marketplace(mcl / "second-batch", "en", n=48).items():
        Path(path).replace(fresh / "en" / f"{split}.parquet")
    result = scheduled_retraining(str(fresh), learner=learner)
    assert result["version"] == "2" and result["alias"] == "champion"
    champion = registry.alias_version(client(), registry.CHAMPION)
    assert champion.marketplaces == ["en"] and champion.parent is None
    # next week, the same folder: already used by version 2, so nothing is trained or registered
    with log_lines("tasks.registry") as lines:
        assert scheduled_retraining(str(fresh), learner=learner) is None
    assert any("was already trained on by relevance version 2 " in line for line in lines), lines
    assert [v.version for v in registry_versions()] == ["1", "2"]


def test_scheduled_retraining_redistils_the_fusion_then_retrains_it_by_async_kd(mcl, tiny_encoder, monkeypatch):
    from flows.retrain import scheduled_retraining
    from models.relevance import RelevanceModel
    from tasks import registry
    from tasks.landing import scan_landing_zone
    from tasks.settings import get_settings

    arrive(mcl, tiny_encoder, "en")
    arrive(mcl, tiny_encoder, "es", **LENIENT)
    c = client()
    before = registry.alias_version(c, registry.CHAMPION)
    fresh = mcl / "fresh" / "es"
    fresh.mkdir(parents=True)
    for split, path in write_marketplace(mcl / "second-batch", "es", n=48).items():
        Path(path).rename(fresh / f"{split}.parquet")
    (fresh / "_READY").write_text('{"language": "es"}')
    monkeypatch.setenv("MCL_ENCODER", str(tiny_encoder.path))
    get_settings.cache_clear()

    result = scheduled_retraining(str(mcl / "fresh"), learner={**LEARNER, "distill": {"warm_start": True}},
                                  gate={"max_regression": 1.0})
    after = registry.alias_version(c, registry.CHAMPION)
    assert result["version"] == after.version == "3" and result["retrained_on"] == ["es"]
    assert after.tags["kind"] == "retrain" and after.parent == before.version
    assert after.marketplaces == ["en", "es"] and after.test_sets == before.test_sets
    assert set(after.data_hashes["es"]) == {"train", "valid", "test", "retrain_train", "retrain_valid"}
    runs = c.search_runs([c.get_experiment_by_name(registry.EXPERIMENT).experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert {r.info.run_name for r in runs} == {"re-distill-fusion", "evaluate", "register"}
    # what it trained on is recorded: the landing folder (its upload key) and the tables' hashes
    (landing,) = scan_landing_zone(mcl / "fresh")
    assert json.loads(after.tags["fresh_data"]) == {"es": {"landing": landing.key,
                                                           "train": after.data_hashes["es"]["retrain_train"],
                                                           "valid": after.data_hashes["es"]["retrain_valid"]}}
    assert c.get_run(result["run_id"]).data.params["fresh_data.es"] == landing.key
    # the next scheduled run over the same folder does nothing, and says why
    with log_lines("tasks.registry") as lines:
        assert scheduled_retraining(str(mcl / "fresh"), learner={**LEARNER, "distill": {"warm_start": True}},
                                    gate={"max_regression": 1.0}) is None
    assert any(line.startswith(f"fresh data for es in {fresh} was already trained on by relevance version 3 ")
               for line in lines), lines
    assert registry.alias_version(c, registry.CHAMPION).version == "3" and len(registry_versions()) == 3

    ref = _ref(c, after, tiny_encoder)
    old = RelevanceModel.load(registry.model_folder(before, mcl / "dl"), ref).net.state_dict()
    new = RelevanceModel.load(registry.model_folder(after, mcl / "dl"), ref).net.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if ".adapters." in k)  # adapters untouched
    assert any(not torch.equal(old[k], new[k]) for k in old if "adapter_fusion_layer.en,es." in k)

    # the next week's refresh lands for both marketplaces; async-kd trains the champion's fusion on both at once
    for lang in ("en", "es"):
        (mcl / "fresh" / lang).mkdir(exist_ok=True)
        for split, path in write_marketplace(mcl / "third-batch", lang, n=40).items():
            Path(path).replace(mcl / "fresh" / lang / f"{split}.parquet")
        (mcl / "fresh" / lang / "_READY").write_text(json.dumps({"language": lang}))
    joint = {**LEARNER, "retrain": {"method": "async-kd", "eval_every": 2, "patience": 1, "max_steps": 12}}
    result = scheduled_retraining(str(mcl / "fresh"), learner=joint, gate={"max_regression": 1.0})
    latest = registry.alias_version(c, registry.CHAMPION)
    assert result["version"] == latest.version == "4" and sorted(result["retrained_on"]) == ["en", "es"]
    assert latest.tags["kind"] == "retrain" and latest.parent == "3"
    assert all(line.split(": ")[1].startswith("validation ROC-AUC") for line in result["checks"]), result["checks"]
    assert c.get_run(result["run_id"]).data.params["retrain_method"] == "async-kd"
    (step,) = c.search_runs([c.get_experiment_by_name(registry.EXPERIMENT).experiment_id],
                            filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}' "
                                          "and tags.mlflow.runName = 'joint-retrain'")
    assert {"best_valid_auc.en", "best_valid_auc.es", "final_valid_auc.en", "best_step.es"} <= set(step.data.metrics)
    assert step.data.params["retrain_method"] == "async-kd"
    artifacts = {a.path for a in c.list_artifacts(step.info.run_id)}
    assert {"joint_validation_curves.png", "joint_retrain.json", "stage_report.json"} <= artifacts
    report = json.loads(Path(c.download_artifacts(step.info.run_id, "stage_report.json", str(mcl / "dl4"))).read_text())
    joint_report = report["details"]["joint"]
    for rewind in joint_report["rewinds"]:  # patience 1: a switch one evaluation without improvement after the best
        assert rewind["evaluations_without_improvement"] == 1 and (rewind["step"] - rewind["to_step"]) % 2 == 0
    assert joint_report["stopped"] == "converged" or joint_report["steps"] == 12
    newest = RelevanceModel.load(registry.model_folder(latest, mcl / "dl"), ref).net.state_dict()
    assert all(torch.equal(new[k], newest[k]) for k in new if ".adapters." in k)  # adapters untouched again


def test_two_arrivals_at_once_are_serialised_and_the_registry_never_forks(mcl, tiny_encoder):
    """es and fr arrive at the same moment: one waits for the other's registration, so the second builds on
    the first's version (a linear lineage 1 -> 2 -> 3), never both on version 1."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks import registry

    arrive(mcl, tiny_encoder, "en")
    for lang in ("es", "fr"):
        write_marketplace(mcl, lang)  # written before the race, so the threads only train and register
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda lang: arrive(mcl, tiny_encoder, lang, **LENIENT), ("es", "fr")))
    assert sorted(r["version"] for r in results) == ["2", "3"]
    c = client()
    second, third = registry.version_info(c, "2"), registry.version_info(c, "3")
    assert second.parent == "1" and third.parent == "2"
    assert len(third.marketplaces) == 3 and set(third.marketplaces) == {"en", "es", "fr"}
    assert third.marketplaces[:2] == second.marketplaces
    assert registry.alias_version(c, registry.CHAMPION).version == "3"


def test_mcl_retrain_runs_the_flow_here_and_says_why_nothing_ran(mcl, tiny_encoder, monkeypatch):
    """``mcl retrain ROOT``: the scheduled retraining run now; a folder holding what the champion was trained on is
    skipped with the reason in the log, the command says there was nothing to retrain and exits 0; a bad setting
    is a usage error before any flow runs."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.console import console
    from tasks.settings import get_settings

    arrive(mcl, tiny_encoder, "en")
    fresh = mcl / "fresh"
    fresh.mkdir()
    (mcl / "data" / "en").rename(fresh / "en")
    (fresh / "en" / "_READY").write_text('{"language": "en"}')
    monkeypatch.setenv("MCL_ENCODER", str(tiny_encoder.path))
    get_settings.cache_clear()
    monkeypatch.setattr(console, "width", 400)
    result = CliRunner().invoke(app, ["retrain", str(fresh), "--set", "device=cpu"])
    assert result.exit_code == 0, result.output
    assert f"fresh data for en in {fresh / 'en'} was already trained on by relevance version 1" in result.output
    assert f"nothing to retrain under {fresh}" in result.output
    assert [v.version for v in registry_versions()] == ["1"]
    bad = CliRunner().invoke(app, ["retrain", str(fresh), "--set", "fusion.nonsense=1"])
    assert bad.exit_code == 2 and "nonsense" in bad.output and "Traceback" not in bad.output


def test_input_tables_log_their_source_without_mlflows_ambiguity_warning(tmp_path):
    import warnings

    import mlflow
    import pandas as pd

    from flows.candidate import dataset_source

    table = pd.DataFrame({"query": ["q"], "product_title": ["p"], "label": [1]})
    path = str(tmp_path / "en" / "train.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        local = mlflow.data.from_pandas(table, source=dataset_source(path), name="en-train")
        remote = mlflow.data.from_pandas(table, source=dataset_source("s3://bucket/en/train.parquet"), name="en-train")
    assert [str(w.message) for w in caught if "multiple ways" in str(w.message)] == []
    assert json.loads(local.source.to_json()) == {"uri": path}
    assert json.loads(remote.source.to_json()) == {"uri": "s3://bucket/en/train.parquet"}
