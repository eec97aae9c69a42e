"""The compact serving student (AMTSS) on tiny models: the top-K rule and the stop rule on scripted margins, a new
marketplace forced into A, cached soft targets against live teachers, the loss by hand, save -> load -> predict, the
student's gate and registry states, and the one-line errors of `mcl student`."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from models import student_distill as SD
from models.config import StudentConfig
from models.pairs import TextFormat
from models.relevance import MarketplaceSpec, ModelFormatError, RelevanceModel
from models.student import StudentModel
from models.student_teachers import choose_teachers, relevance_candidates, soft_targets
from tests.conftest import make_pairs

TEXT = TextFormat.raw(16)
IDS = ("en", "es", "fr")


def tiny_config(**changes) -> StudentConfig:
    base = {"layers": 1, "top_k": 1, "epsilon": 0.01, "device": "cpu",
            "train": {"epochs": 6, "batch_size": 8, "patience": 10, "eval_batch_size": 16}}
    return StudentConfig.model_validate({**base, **changes})


def new_student(tiny_encoder, ids=IDS) -> StudentModel:
    student = StudentModel.create(tiny_encoder.path, name=tiny_encoder.name, checksum=tiny_encoder.checksum, layers=1,
                                  text=TEXT, layer_choice="bottom")
    for mid in ids:
        student.add_marketplace(MarketplaceSpec(mid, mid))
    return student


def student_data(ids=IDS, teacher_auc: float = 0.9) -> list[SD.StudentData]:
    rng = np.random.default_rng(0)
    return [SD.StudentData(MarketplaceSpec(m, m), make_pairs(m, 16, 1), make_pairs(m, 8, 2),
                           rng.random(16).astype(np.float32), teacher_auc) for m in ids]


def scripted(monkeypatch, student: StudentModel, rows: list[dict[str, float]]) -> list[str]:
    """Replace the student's validation ROC-AUC by ``rows`` (epoch 0 first); returns the source of every batch the
    loop trains on, in order (a batch sent to another marketplace's head shows as ``source -> head id``)."""
    queue = list(rows)
    monkeypatch.setattr(SD, "student_valid_aucs", lambda *args: queue.pop(0))
    sources: list[str] = []
    real = student.logits

    def recording(batch, marketplace_id):
        sources.append(batch.source if batch.source == marketplace_id else f"{batch.source} -> head {marketplace_id}")
        return real(batch, marketplace_id)

    monkeypatch.setattr(student, "logits", recording)
    return sources


# --------------------------------------------------------------------------------------------- the rules
def test_top_k_ranks_and_the_stop_rule():
    margin = {"en": 0.02, "es": 0.10, "fr": 0.05, "de": 0.05}
    assert SD.ranks(margin) == {"es": 1, "fr": 2, "de": 3, "en": 4}  # a tie keeps the marketplaces' order
    assert SD.select_active(margin, 2) == ["es", "fr"]
    assert SD.select_active(margin, 10) == ["es", "fr", "de", "en"]
    assert SD.select_active(margin, 2, forced=["en"]) == ["en", "es"]
    assert SD.select_active(margin, 1, forced=["en", "de"]) == ["en", "de"]
    assert SD.margins({"en": 0.9, "es": 0.8}, {"en": 0.85, "es": 0.81}) == pytest.approx({"en": 0.05, "es": -0.01})
    assert not SD.converged(margin, 0.1) and SD.converged(margin, 0.1001)


def test_each_epoch_trains_on_the_top_k_and_stops_below_epsilon(tiny_encoder, monkeypatch):
    student = new_student(tiny_encoder)
    sources = scripted(monkeypatch, student, [
        {"en": 0.50, "es": 0.60, "fr": 0.70},  # epoch 0: a fresh student trains on everything first
        {"en": 0.85, "es": 0.80, "fr": 0.88},  # margins .05 .10 .02 -> es
        {"en": 0.85, "es": 0.89, "fr": 0.88},  # margins .05 .01 .02 -> en
        {"en": 0.895, "es": 0.895, "fr": 0.899},  # every margin < 0.01: converged
    ])
    report = SD.distill_student(student, student_data(), tiny_config())
    assert [e["trained_on"] for e in report.epochs] == [[], ["en", "es", "fr"], ["es"], ["en"]]
    assert [e["next_active"] for e in report.epochs[:3]] == [["en", "es", "fr"], ["es"], ["en"]]
    assert report.epochs[1]["rank"] == {"es": 1, "en": 2, "fr": 3}
    assert report.epochs[2]["margin"] == pytest.approx({"en": 0.05, "es": 0.01, "fr": 0.02})
    assert sorted(sources[:6]) == ["en", "en", "es", "es", "fr", "fr"] and sources[6:] == ["es", "es", "en", "en"]
    assert report.fit.epochs_run == 3 and report.best_epoch == 3
    assert report.stop_reason == "converged after epoch 3: largest margin 0.0050 < epsilon 0.01"
    assert report.final["max_margin"] == pytest.approx(0.005)


def test_without_convergence_it_stops_at_m_epochs_and_keeps_the_smallest_largest_margin(tiny_encoder, monkeypatch):
    student = new_student(tiny_encoder, ("en", "es"))
    scripted(monkeypatch, student, [{"en": 0.5, "es": 0.5}, {"en": 0.80, "es": 0.85}, {"en": 0.86, "es": 0.84},
                                    {"en": 0.70, "es": 0.87}])
    report = SD.distill_student(student, student_data(("en", "es")), tiny_config(train={"epochs": 3}))
    assert report.best_epoch == 2 and report.fit.epochs_run == 3
    assert report.stop_reason == "max epochs: 3 epochs run, largest margin 0.0600 >= epsilon 0.01"


def test_a_new_marketplace_is_forced_into_the_active_set(tiny_encoder, monkeypatch):
    student = new_student(tiny_encoder, ("en", "es"))
    student.add_marketplace(MarketplaceSpec("fr", "fr"))
    sources = scripted(monkeypatch, student, [
        {"en": 0.60, "es": 0.80, "fr": 0.95},  # the newcomer scores well by chance: still forced, as a max margin
        {"en": 0.895, "es": 0.895, "fr": 0.895},
    ])
    report = SD.distill_student(student, student_data(), tiny_config(top_k=2), forced=["fr"])
    assert report.epochs[0]["next_active"] == ["fr", "en"] and report.epochs[1]["trained_on"] == ["fr", "en"]
    assert sorted(sources) == ["en", "en", "fr", "fr"]
    with pytest.raises(ValueError, match=r"the student has no head for \['de'\]"):
        SD.distill_student(student, student_data(), tiny_config(), forced=["de"])


# --------------------------------------------------------------------------------------------- teachers and loss
@pytest.fixture()
def champion(tiny_encoder) -> RelevanceModel:
    torch.manual_seed(3)
    model = RelevanceModel.create(tiny_encoder, text=TEXT, device="cpu")
    for mid in ("en", "es"):
        model.add_marketplace(MarketplaceSpec(mid, mid), reduction_factor=4)
    model.fusion = model.add_fusion(["en", "es"])
    model.net.eval()
    return model


def test_cached_soft_targets_equal_the_live_teachers(champion, tiny_encoder, tmp_path):
    from tasks.student_steps import teachers_step

    candidates = relevance_candidates(champion, "relevance v1")
    assert [c.name for c in candidates] == ["relevance v1 fusion", "relevance v1 adapter"]
    valid = {m: make_pairs(m, 16, 2) for m in ("en", "es")}
    train = {m: make_pairs(m, 24, 1) for m in ("en", "es")}
    choice = choose_teachers(candidates, valid)
    live = {"relevance v1 fusion": lambda m: champion.predict_proba(train[m]),
            "relevance v1 adapter": lambda m: champion.predict_proba(train[m], setup=m)}
    for m in ("en", "es"):
        own = choice.weights(m, "own")
        assert sorted(own.values()) == [0.0, 1.0] and own[choice.teacher(m)] == 1.0
        np.testing.assert_array_equal(soft_targets(candidates, own, m, train[m]), live[choice.teacher(m)](m))
        aucs = choice.aucs[m]
        w = {k: math.exp(v / 0.5) for k, v in aucs.items()}
        mixed = sum(w[k] / sum(w.values()) * live[k](m) for k in aucs)
        np.testing.assert_allclose(soft_targets(candidates, choice.weights(m, "softmax", 0.5), m, train[m]), mixed,
                                   rtol=1e-6)

    folder = champion.save(tmp_path / "champion")
    tables = {split: {m: pd.DataFrame({"query": p.queries, "product_title": p.titles, "label": p.labels})
                      for m, p in pairs.items()} for split, pairs in (("train", train), ("valid", valid))}
    cached = teachers_step({"relevance v1": str(folder)}, tiny_encoder, tables["train"], tables["valid"],
                           tables["valid"], tiny_config(train={"eval_batch_size": 64}))
    for m in ("en", "es"):
        assert cached.teachers[m] == choice.teacher(m) and cached.teacher_aucs[m] == choice.teacher_auc(m)
        np.testing.assert_allclose(cached.targets[m], live[choice.teacher(m)](m), atol=1e-6)
    with pytest.raises(ValueError, match="no teacher candidate knows marketplace 'fr'"):
        choose_teachers(candidates, {"fr": make_pairs("fr", 8, 2)})


def test_the_loss_by_hand():
    logits = torch.tensor([[0.2, 1.0], [1.5, -0.5]])
    labels = torch.tensor([1, 0])
    teacher_p = torch.tensor([0.9, 0.3])
    loss, parts = SD.student_loss(logits, labels, teacher_p, weight=0.5)
    s = [[math.exp(a) / (math.exp(a) + math.exp(b)) for a, b in ((r[0], r[1]),)][0] for r in logits.tolist()]
    s = [[p0, 1 - p0] for p0 in s]  # student distribution [P(0), P(1)]
    ce = -(math.log(s[0][1]) + math.log(s[1][0])) / 2
    t = [[0.1, 0.9], [0.7, 0.3]]
    kl = sum(t[i][c] * math.log(t[i][c] / s[i][c]) for i in range(2) for c in range(2)) / 2
    assert parts["ce"] == pytest.approx(ce, rel=1e-5) and parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(ce + 0.5 * kl, rel=1e-5)


# --------------------------------------------------------------------------------------------- the model and gate
def test_save_load_predict_identical_and_unknown_marketplace(tiny_encoder, tmp_path):
    student = new_student(tiny_encoder, ("en", "es"))
    assert student.base["copied"] == [0] and student.encoder.config.num_hidden_layers == 1
    pairs = make_pairs("es", 12, 3)
    before = student.predict_proba("es", pairs)
    loaded = StudentModel.load(student.save(tmp_path / "student"))
    np.testing.assert_array_equal(loaded.predict_proba("es", pairs), before)
    assert loaded.marketplace_ids == ["en", "es"] and loaded.text == TEXT and loaded.base == student.base
    with pytest.raises(ModelFormatError, match="unknown marketplace 'de': this student knows en, es"):
        loaded.predict_proba("de", pairs)
    with pytest.raises(ModelFormatError, match="already has a head for marketplace 'en'"):
        loaded.add_marketplace(MarketplaceSpec("en", "en"))


def test_the_gate_refuses_when_one_marketplace_is_farther_than_the_margin():
    from tasks.gate import student_decision

    teachers = {"en": 0.90, "es": 0.85}
    assert student_decision(teachers, {"en": 0.895, "es": 0.84}, 0.01).passed
    refused = student_decision(teachers, {"en": 0.895, "es": 0.8389}, 0.01)
    assert not refused.passed and len(refused.reasons) == 1 and refused.reasons[0].startswith("es: validation")
    assert not student_decision(teachers, {"en": 0.9}, 0.01).passed


@pytest.fixture()
def tracking(tmp_path):
    from tasks.registry import setup_tracking

    setup_tracking(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_registration_gate_aliases_and_the_served_pyfunc(tiny_encoder, tracking, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tasks.pyfunc import PyfuncInputError
    from tasks.student_registry import StudentRegistrationRequest, register_student
    from tasks.student_steps import StudentTeachers

    student = new_student(tiny_encoder, ("en", "es"))
    scripted(monkeypatch, student, [{"en": 0.5, "es": 0.5}, {"en": 0.895, "es": 0.895}])
    report = SD.distill_student(student, student_data(("en", "es")), tiny_config()).as_dict()
    folder = student.save(tracking / "student")
    teachers = StudentTeachers({m: {"relevance v1 fusion": 0.9} for m in ("en", "es")},
                               {m: "relevance v1 fusion" for m in ("en", "es")}, {"en": 0.9, "es": 0.9},
                               {m: {"relevance v1 fusion": 1.0} for m in ("en", "es")}, {}, {"en": 0.88, "es": 0.87})
    tables = {m: pd.DataFrame({"query": ["red shoe", "blue cup"], "product_title": ["shoe red", "lamp"],
                               "label": [1, 0]}) for m in ("en", "es")}

    def register(valid: dict[str, float], key: str):
        request = StudentRegistrationRequest(
            model_dir=str(folder), marketplaces=["en", "es"], languages=["en", "es"], teachers=teachers,
            teacher_versions={"relevance v1": "run-1"}, report=report,
            evaluation={"valid": valid, "test": {"en": 0.86, "es": 0.85}}, gate_margin=0.01, epsilon=0.01,
            parent=None, new_marketplace=None, data_hashes={"en": {"train": "h"}}, fingerprint=key, examples=tables)
        with mlflow.start_run():
            return register_student(request)

    refused = register({"en": 0.895, "es": 0.85}, "a")
    assert (refused.version, refused.alias, refused.passed) == ("1", "challenger", False)
    assert refused.reasons[0].startswith("es: validation ROC-AUC student 0.8500 vs teacher 0.9000")
    passed = register({"en": 0.895, "es": 0.892}, "b")
    assert (passed.version, passed.alias, passed.passed) == ("2", "champion", True)
    assert register({"en": 0.0, "es": 0.0}, "b").version == "2", "a repeated fingerprint registers nothing"
    client = MlflowClient()
    tags = client.get_model_version("relevance-student", "2").tags
    assert tags["teacher.es"] == "relevance v1 fusion" and tags["teacher_versions"] == "relevance v1"
    assert tags["stop_reason"].startswith("converged after epoch 1") and tags["margin.es"] == "0.008000"
    assert tags["gate"] == "passed" and tags["keeps_old_data"] == "true"
    run_id = client.get_model_version("relevance-student", "2").run_id
    assert {"student_margins.png", "student_margins.json"} <= {a.path for a in client.list_artifacts(run_id)}

    served = mlflow.pyfunc.load_model("models:/relevance-student@champion")
    rows = pd.DataFrame({"marketplace": ["es", "en", "es"], "query": ["red shoe", "blue cup", "green lamp"],
                         "product_title": ["shoe red", "lamp", "lamp green"]})
    scores = served.predict(rows)["score"].to_numpy()
    expected = [student.predict_proba(m, make_pairs_from(rows[rows.marketplace == m]))
                for m in ("es", "en")]
    np.testing.assert_allclose(scores[[0, 2]], expected[0], atol=1e-6)
    np.testing.assert_allclose(scores[[1]], expected[1], atol=1e-6)
    with pytest.raises(PyfuncInputError, match=r"marketplace\(s\) \['de'\] are not in this model"):
        served.unwrap_python_model().predict(None, rows.assign(marketplace="de"))


def make_pairs_from(rows: pd.DataFrame):
    from models.pairs import Pairs

    return Pairs(rows["query"].tolist(), rows["product_title"].tolist(), [0] * len(rows))


# --------------------------------------------------------------------------------------------- the CLI's refusals
def test_mcl_student_refuses_bad_requests_with_one_line(isolated_cache, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.cli import app

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MCL_TRACKING_URI", uri)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["student", *args])
        assert result.exit_code == 1, result.output
        return " ".join(result.output.split())

    assert "no relevance@champion yet" in run("distill", "--data", str(tmp_path))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name, order in (("relevance", "en,es"), ("relevance-student", "en")):
        client.create_registered_model(name)
        client.create_model_version(name, str(tmp_path), tags={"marketplace_order": order, "languages": order})
        client.set_registered_model_alias(name, "champion", "1")
    assert ("unknown marketplace 'xx': relevance@champion (version 1) knows en,es, and it teaches the student"
            in run("add-marketplace", "--marketplace", "xx", "--data", str(tmp_path)))
    assert "marketplace 'en' is already in relevance-student@champion" in run(
        "add-marketplace", "--marketplace", "en", "--data", str(tmp_path))
    assert "write it as NAME/VERSION or NAME@ALIAS" in run("distill", "--data", str(tmp_path), "--candidate", "v4")
    assert "'relevance' has no alias 'gone'" in run("distill", "--data", str(tmp_path), "--candidate",
                                                    "relevance@gone")
    assert "no marketplace 'en' in" in run("add-marketplace", "--marketplace", "es", "--data", str(tmp_path))
    bad = runner.invoke(app, ["student", "distill", "--data", str(tmp_path), "--set", "top_k=0"])
    assert bad.exit_code == 2 and "top_k" in bad.output
