"""The registry's rules without training: the promotion gate's arithmetic, tag carry-forward, and which
version an arrival continues from (refused repeats, replacing the most recent marketplace)."""

from __future__ import annotations

import pytest

from models.config import GateConfig
from tasks import registry
from tasks.gate import promotion_decision
from tasks.registry import ArrivalRefused

DEFAULT = GateConfig()


def test_gate_passes_within_max_regression_and_when_fusion_beats_the_adapter():
    d = promotion_decision({"en": 0.90, "es": 0.85}, {"en": 0.891, "es": 0.86, "fr": 0.80},
                           new_marketplace="fr", adapter_auc=0.79, gate=DEFAULT)
    assert d.passed and d.reasons == [] and len(d.checks) == 3


@pytest.mark.parametrize(("candidate", "adapter_auc", "failing"), [
    ({"en": 0.8889, "es": 0.86, "fr": 0.80}, 0.79, "en"),   # en drops 0.0111 > 0.01
    ({"en": 0.90, "es": 0.86, "fr": 0.80}, 0.80, "fr"),     # fused equals adapter-only: does not beat it
    ({"es": 0.86, "fr": 0.80}, 0.70, "en: not evaluated"),
])
def test_gate_refuses_with_the_reason(candidate, adapter_auc, failing):
    d = promotion_decision({"en": 0.90, "es": 0.85}, candidate, new_marketplace="fr", adapter_auc=adapter_auc, gate=DEFAULT)
    assert not d.passed and len(d.reasons) == 1 and d.reasons[0].startswith(failing)


def test_gate_margins_and_first_version():
    assert promotion_decision({}, {"en": 0.6}, new_marketplace="en", adapter_auc=None, gate=DEFAULT).passed
    assert not promotion_decision({"en": 0.9}, {"en": 0.85, "es": 0.9}, new_marketplace="es", adapter_auc=0.8,
                                  gate=GateConfig(max_regression=0.04)).passed
    assert promotion_decision({"en": 0.9}, {"en": 0.85, "es": 0.9}, new_marketplace="es", adapter_auc=0.8,
                              gate=GateConfig(max_regression=0.05)).passed
    assert not promotion_decision({"en": 0.9}, {"en": 0.9, "es": 0.9}, new_marketplace="es", adapter_auc=0.85,
                                  gate=GateConfig(adapter_margin=0.05)).passed
    # a replaced marketplace is judged against its adapter, not against the champion's old score for it
    assert promotion_decision({"en": 0.9, "es": 0.95}, {"en": 0.9, "es": 0.7}, new_marketplace="es",
                              adapter_auc=0.6, gate=DEFAULT).passed


def _info(version, marketplaces, parent=None, test_sets=None, hashes=None):
    return registry.VersionInfo(version=version, run_id="r", source="s", marketplaces=marketplaces,
                                languages=marketplaces, aucs={}, test_sets=test_sets or {}, data_hashes=hashes or {},
                                parent=parent)


def test_version_tags_carry_test_sets_and_hashes_forward():
    parent = _info("1", ["en"], test_sets={"en": "s3://b/en.parquet"}, hashes={"en": {"train": "a"}})
    tags = registry.version_tags(parent=parent, marketplaces=["en", "es"], languages=["en", "es"],
                                 aucs={"en": 0.9, "es": 0.8}, test_sets={"es": "s3://b/es.parquet"},
                                 data_hashes={"es": {"train": "b"}})
    assert tags["test_set.en"] == "s3://b/en.parquet" and tags["test_set.es"] == "s3://b/es.parquet"
    assert tags["marketplace_order"] == "en,es" and tags["parent_version"] == "1"
    assert tags["auc.es"] == "0.800000"
    assert '"en": {"train": "a"}' in tags["data_hashes"] and '"es": {"train": "b"}' in tags["data_hashes"]


@pytest.fixture()
def mlflow_store(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    registry.setup_tracking(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    client = MlflowClient()
    client.create_registered_model(registry.MODEL_NAME)
    for version, order, parent in (("1", "en", ""), ("2", "en,es", "1")):
        client.create_model_version(registry.MODEL_NAME, str(tmp_path), tags={
            "marketplace_order": order, "languages": order, "parent_version": parent})
    client.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, "2")
    yield client
    mlflow.set_tracking_uri(None)


def test_teacher_for_arrival(mlflow_store):
    client = mlflow_store
    assert registry.teacher_for_arrival(client, "fr", replace=False).version == "2"
    with pytest.raises(ArrivalRefused, match="'es' is already in relevance@champion .*--replace"):
        registry.teacher_for_arrival(client, "es", replace=False)
    assert registry.teacher_for_arrival(client, "es", replace=True).version == "1"
    with pytest.raises(ArrivalRefused, match="only the most recent marketplace"):
        registry.teacher_for_arrival(client, "en", replace=True)
    assert [v.version for v in registry.lineage(client, registry.alias_version(client, registry.CHAMPION))] == ["1", "2"]
    assert [v.aliases for v in registry.registry_state(client)] == [[], ["champion"]]


def test_empty_registry_has_no_champion(tmp_path):
    from mlflow.tracking import MlflowClient

    registry.setup_tracking(f"sqlite:///{tmp_path}/empty.db", str(tmp_path / "a"))
    client = MlflowClient()
    assert registry.alias_version(client, registry.CHAMPION) is None
    assert registry.teacher_for_arrival(client, "en", replace=False) is None
    assert registry.registry_state(client) == []


def test_pyfunc_scores_rows_and_refuses_what_it_cannot_score(tiny_encoder):
    import pandas as pd

    from models.pairs import TextFormat
    from models.relevance import MarketplaceSpec, RelevanceModel
    from tasks.pyfunc import PyfuncInputError, RelevancePyfunc

    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(16), device="cpu")
    model.add_marketplace(MarketplaceSpec("en", "en"))
    pyfunc = RelevancePyfunc()
    pyfunc.model = model
    rows = pd.DataFrame({"marketplace": ["en", "en"], "query": ["red shoe", "blue cup"],
                         "product_title": ["shoe red deluxe", "lamp green deluxe"]}, index=[7, 3])
    fused = pyfunc.predict(None, rows)
    assert list(fused.columns) == ["score"] and len(fused) == 2
    assert ((fused["score"] > 0) & (fused["score"] < 1)).all()
    by_adapter = pyfunc.predict(None, rows, params={"mode": "adapter"})
    assert by_adapter["score"].tolist() == pytest.approx(fused["score"].tolist(), abs=1e-6)
    with pytest.raises(PyfuncInputError, match=r"marketplace\(s\) \['jp'\] are not in this model"):
        pyfunc.predict(None, rows.assign(marketplace=["en", "jp"]))
    with pytest.raises(PyfuncInputError, match=r"missing column\(s\) \['product_title'\]"):
        pyfunc.predict(None, rows.drop(columns="product_title"))
    with pytest.raises(PyfuncInputError, match="mode 'x'"):
        pyfunc.predict(None, rows, params={"mode": "x"})


def test_gate_decides_on_validation_and_says_when_it_had_to_use_test():
    from tasks.records import Evaluation
    from tasks.registry import _gate_scores

    champion = _info("1", ["en", "es"])
    champion = registry.VersionInfo(**{**champion.__dict__, "aucs": {"en": 0.95, "es": 0.90},
                                       "valid_aucs": {"en": 0.80}})
    ev = Evaluation(aucs={"en": 0.50, "es": 0.89, "fr": 0.7}, adapter_auc=0.6, attention={},
                    valid_aucs={"en": 0.795, "fr": 0.75}, adapter_valid_auc=0.7)
    before, after, on = _gate_scores(champion, ev)
    assert before == {"en": 0.80, "es": 0.90} and after["en"] == 0.795 and after["es"] == 0.89
    assert on == {"es": "test (no kept validation set)"}
    d = promotion_decision(before, after, new_marketplace="fr", adapter_auc=ev.adapter_valid_auc, gate=DEFAULT,
                           measured_on=on)
    # en's test score collapsed (0.95 -> 0.50), but the gate never looks at test where validation exists
    assert d.passed, d.reasons
    assert d.checks[0].startswith("en: validation ROC-AUC 0.7950 vs champion 0.8000")
    assert d.checks[1].startswith("es: test (no kept validation set) ROC-AUC 0.8900")
    assert d.checks[2].startswith("fr: validation ROC-AUC fused 0.7500 vs adapter-only 0.7000")


def test_register_writes_one_complete_version_on_the_parent_run(tiny_encoder, tmp_path, monkeypatch):
    """Registration against a local SQLite store: the version's source run is the flow's parent run, every tag
    (gate verdict included) comes with the version, the input example is stored, and the served pyfunc honours
    ``params={"mode": "adapter"}``."""
    import mlflow
    import pandas as pd
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from models.pairs import Pairs, TextFormat
    from models.relevance import MarketplaceSpec, RelevanceModel
    from tasks.prefect_tasks import register_task
    from tasks.records import Evaluation
    from tests.conftest import make_pairs

    registry.setup_tracking(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(16), device="cpu")
    for mid in ("en", "es"):
        model.add_marketplace(MarketplaceSpec(mid, mid))
    model.fusion = model.add_fusion(["en", "es"])
    model_dir = model.save(tmp_path / "model")
    tables = {mid: pd.DataFrame({"query": p.queries, "product_title": p.titles, "label": p.labels})
              for mid, p in (("en", make_pairs("en", 8, 1)), ("es", make_pairs("es", 8, 1)))}
    request = registry.RegistrationRequest(
        model_dir=str(model_dir), encoder=tiny_encoder, marketplaces=["en", "es"], languages=["en", "es"],
        new_marketplace="es", parent=None, champion=None,
        evaluation=Evaluation(aucs={"en": 0.7, "es": 0.8}, adapter_auc=0.75, attention={},
                              valid_aucs={"en": 0.71, "es": 0.81}, adapter_valid_auc=0.76),
        new_tests=tables, new_valids=tables,
        data_hashes={"es": {"train": "a", "valid": "b", "test": "c"}}, gate=DEFAULT, work_dir=tmp_path / "work",
        examples=tables)

    real_set_tag = MlflowClient.set_model_version_tag

    def one_tag_at_a_time(self, name, version, key, value):
        # every tag that describes the version comes with its creation; only the completion marker follows,
        # once its alias and adapter model exist (a retry after a cut completes a "pending" version)
        if (key, value) != (registry.REGISTRATION_TAG, "complete"):
            raise AssertionError(f"version tag {key!r} was set after the version existed")
        return real_set_tag(self, name, version, key, value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", one_tag_at_a_time)
    try:
        with mlflow.start_run(run_name="arrival-es") as parent:
            result = register_task.fn(request, parent_run_id=parent.info.run_id)
        client = MlflowClient()
        assert (result.version, result.alias, result.adapter_version) == ("1", "champion", "1")
        mv = client.get_model_version(registry.MODEL_NAME, "1")
        assert mv.run_id == parent.info.run_id  # not the nested register run
        assert client.get_model_version(registry.adapter_model_name("es"), "1").run_id == parent.info.run_id
        assert mv.tags["gate"] == "passed" and mv.tags["gate_checks"].startswith("es: validation ROC-AUC fused 0.8100")
        assert mv.tags["marketplace_order"] == "en,es" and mv.tags["kind"] == "arrival"
        assert mv.tags["valid_auc.es"] == "0.810000" and mv.tags["test_set.es"].endswith("test_sets/es.parquet")
        assert mv.aliases == ["champion"]
        nested = client.search_runs([parent.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert [r.info.run_name for r in nested] == ["register"]
        assert {a.path for a in client.list_artifacts(nested[0].info.run_id)} == {"gate.txt"}

        local = tmp_path / "dl"
        mlflow.artifacts.download_artifacts(artifact_uri="models:/relevance/1", dst_path=str(local))
        meta = Model.load(str(local / "MLmodel"))
        assert meta.signature.params.to_dict() == [{"name": "mode", "type": "string", "default": "fusion",
                                                    "shape": None}]
        example = meta.load_input_example(str(local))
        assert list(example.columns) == ["marketplace", "query", "product_title"]
        assert example["marketplace"].tolist() == ["en", "en", "es", "es"]
        assert example["query"].tolist()[:2] == tables["en"]["query"].tolist()[:2]

        served = mlflow.pyfunc.load_model("models:/relevance@champion")
        rows = pd.DataFrame({"marketplace": ["en", "es", "es"], "query": ["red shoe", "rojo zapato", "azul taza"],
                             "product_title": ["shoe blue deluxe", "zapato verde deluxe", "reloj rojo deluxe"]})
        pairs = {mid: Pairs(g["query"].tolist(), g["product_title"].tolist(), [0] * len(g))
                 for mid, g in rows.groupby("marketplace")}
        own = [*model.predict_proba(pairs["en"], setup="en"), *model.predict_proba(pairs["es"], setup="es")]
        fused = model.predict_proba(Pairs(rows["query"].tolist(), rows["product_title"].tolist(), [0, 0, 0]))
        by_adapter = served.predict(rows, params={"mode": "adapter"})["score"].tolist()
        assert by_adapter == pytest.approx(own, abs=1e-5)
        assert served.predict(rows)["score"].tolist() == pytest.approx(fused.tolist(), abs=1e-5)
        assert by_adapter != pytest.approx(fused.tolist(), abs=1e-4)  # the param changed the scores
    finally:
        mlflow.set_tracking_uri(None)


def test_registering_the_same_fingerprint_twice_keeps_one_version_and_a_promotion_keeps_the_previous_champion(
        tiny_encoder, tmp_path, monkeypatch):
    """A duplicate request (same fingerprint: a re-delivered event, a rerun) returns the version registered first and
    creates nothing, neither a relevance nor an adapter version; a new fingerprint that passes the gate becomes
    champion and leaves ``previous-champion`` on the version it replaced, where a rollback goes."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from models.pairs import TextFormat
    from models.relevance import MarketplaceSpec, RelevanceModel
    from tasks.records import Evaluation
    from tests.conftest import make_pairs

    registry.setup_tracking(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(16), device="cpu")
    model.add_marketplace(MarketplaceSpec("en", "en"))
    model_dir = model.save(tmp_path / "model")
    pairs = make_pairs("en", 8, 1)
    table = pd.DataFrame({"query": pairs.queries, "product_title": pairs.titles, "label": pairs.labels})
    evaluation = Evaluation(aucs={"en": 0.7}, adapter_auc=None, attention={}, valid_aucs={"en": 0.71})

    def request(fingerprint, **changes):
        return registry.RegistrationRequest(**{
            "model_dir": str(model_dir), "encoder": tiny_encoder, "marketplaces": ["en"], "languages": ["en"],
            "new_marketplace": "en", "parent": None, "champion": None, "evaluation": evaluation,
            "new_tests": {"en": table}, "new_valids": {"en": table},
            "data_hashes": {"en": {"train": "a", "valid": "b", "test": "c"}}, "gate": DEFAULT,
            "work_dir": tmp_path / "work" / fingerprint, "fingerprint": fingerprint, "examples": {"en": table},
            **changes})

    def versions(name=registry.MODEL_NAME):
        return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))

    client = MlflowClient()
    try:
        with mlflow.start_run():
            first = registry.register(request("fp-1"))
        with mlflow.start_run():
            again = registry.register(request("fp-1"))
        assert (first.version, first.alias, first.adapter_version) == ("1", "champion", "1")
        assert again == first
        assert versions() == ["1"] and versions(registry.adapter_model_name("en")) == ["1"]
        assert client.get_model_version(registry.MODEL_NAME, "1").tags[registry.FINGERPRINT_TAG] == "fp-1"

        champion = registry.version_info(client, "1")
        with mlflow.start_run():
            retrained = registry.register(request("fp-2", new_marketplace=None, parent=champion, champion=champion,
                                                  new_tests={}, new_valids={}, kind="retrain",
                                                  extra_tags={"fresh_data": '{"en": {"landing": "x@1"}}'}))
        assert (retrained.version, retrained.alias, retrained.adapter_version) == ("2", "champion", None)
        assert versions() == ["1", "2"]
        second = registry.version_info(client, "2")
        assert second.aliases == ["champion"] and registry.version_info(client, "1").aliases == ["previous-champion"]
        assert second.tags["previous_champion"] == "1" and second.tags["fresh_data"] == '{"en": {"landing": "x@1"}}'
        assert registry.version_with_fingerprint(client, "fp-2").version == "2"
        assert registry.version_with_fingerprint(client, "fp-3") is None
        move = registry.rollback(client)
        assert (move.champion, move.replaced, move.previous_champion) == ("1", "2", None)
        assert registry.alias_version(client, registry.CHAMPION).version == "1"
        assert registry.alias_version(client, registry.PREVIOUS_CHAMPION) is None

        # The tracking server goes away right after the version is created: the version says "pending" and holds
        # no alias; the retried task finds it by fingerprint and completes it, once (no second version or adapter).
        def outage(*args, **kwargs):
            raise ConnectionError("MLflow server unreachable")

        real = registry.apply_decision
        monkeypatch.setattr(registry, "apply_decision", outage)
        champion = registry.version_info(client, "1")
        with mlflow.start_run(), pytest.raises(ConnectionError):
            registry.register(request("fp-3", champion=champion, parent=champion))
        cut = registry.version_info(client, "3")
        assert cut.tags[registry.REGISTRATION_TAG] == "pending" and cut.aliases == []
        monkeypatch.setattr(registry, "apply_decision", real)
        with mlflow.start_run():
            done = registry.register(request("fp-3", champion=champion, parent=champion))
        assert (done.version, done.alias, done.adapter_version) == ("3", "champion", "2")
        assert versions() == ["1", "2", "3"] and versions(registry.adapter_model_name("en")) == ["1", "2"]
        assert registry.version_info(client, "3").tags[registry.REGISTRATION_TAG] == "complete"
        with mlflow.start_run():
            assert registry.register(request("fp-3", champion=champion, parent=champion)) == done
        assert versions() == ["1", "2", "3"] and versions(registry.adapter_model_name("en")) == ["1", "2"]
    finally:
        mlflow.set_tracking_uri(None)


def test_fresh_data_some_version_trained_on_is_not_used_again(tmp_path, caplog):
    """An arrival's train/valid tables and a retraining's fresh ones count as used, per marketplace; only the pair
    (train and valid) identifies a use, and each skip names the version that used the data."""
    import json
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    registry.setup_tracking(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    client = MlflowClient()
    client.create_registered_model(registry.MODEL_NAME)
    for hashes in ({"en": {"train": "t1", "valid": "v1", "test": "x"}},
                   {"en": {"train": "t1", "valid": "v1", "test": "x"}, "es": {"train": "t2", "valid": "v2"}},
                   {"en": {"train": "t1", "valid": "v1", "test": "x", "retrain_train": "t3", "retrain_valid": "v3"},
                    "es": {"train": "t2", "valid": "v2"}}):
        client.create_model_version(registry.MODEL_NAME, str(tmp_path), tags={"data_hashes": json.dumps(hashes)})
    try:
        assert registry.used_training_data(client) == {"en": {("t1", "v1"): "1", ("t3", "v3"): "3"},
                                                        "es": {("t2", "v2"): "2"}}
        folders = {"en": "/zone/en", "es": "/zone/es", "fr": "/zone/fr"}
        with caplog.at_level(logging.INFO, logger="tasks.registry"):
            unused = registry.unused_fresh_data(client, folders, {"en": {"train": "t3", "valid": "v3"},
                                                                  "es": {"train": "t2", "valid": "new"},
                                                                  "fr": {"train": "t2", "valid": "v2"}})
        assert unused == ["es", "fr"]
        assert [r.getMessage() for r in caplog.records if r.name == "tasks.registry"] == [
            "fresh data for en in /zone/en was already trained on by relevance version 3 (train sha256 t3): skipped"]
    finally:
        mlflow.set_tracking_uri(None)


def test_local_commands_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Two processes creating one new SQLite store both ran MLflow's migrations, and all but one failed."""
    import subprocess
    import sys
    from pathlib import Path

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = (f"from tasks.registry import setup_tracking; print(setup_tracking({uri!r}, {str(tmp_path / 'art')!r}))")
    commands = [subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(c.wait(timeout=300), c.stdout.read().strip(), c.stderr.read()) for c in commands]
    assert [rc for rc, _, _ in results] == [0, 0, 0], [err[-600:] for _, _, err in results]
    assert len({out for _, out, _ in results}) == 1, "one experiment, found by every command"
