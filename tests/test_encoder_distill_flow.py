"""The adapt-encoder pipeline on a tiny teacher: text extraction and its bad-input error, the frozen evaluation, the
registry (never half-registered), the Prefect flow end to end into a temporary MLflow store, `mcl encoder distill`,
and an arrival on a distilled student against a champion of its teacher (refused with one clear message)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import ks_2samp
from typer.testing import CliRunner

from models.config import EncoderDistillConfig, LearnerConfig
from models.encoder_ref import EncoderRef
from models.tiny import build_tiny_encoder
from tests.conftest import WORDS, make_pairs

SMALL = {"batch_size": 8, "gradient_accumulation_steps": 1, "max_length": 16, "max_steps": 3, "device": "cpu",
         "eval_seeds": 3, "latency_pairs": 8, "latency_batch_sizes": [1, 4], "latency_repeats": 1,
         "checkpoint_steps": 2}
LEARNER = LearnerConfig(adapter={"epochs": 2, "batch_size": 16}, max_length=16, device="cpu")


def write_root(root: Path, langs=("en", "es"), n: int = 48, described: tuple[str, ...] = ("en",)) -> Path:
    """<root>/<lang>/{train,valid,test}.parquet + marketplace.json; ``described`` marketplaces carry descriptions."""
    for lang in langs:
        folder = root / lang
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "marketplace.json").write_text(json.dumps({"id": lang, "language": lang}))
        for seed, split in enumerate(("train", "valid", "test"), start=1):
            pairs = make_pairs(lang, n if split == "train" else n // 2, seed)
            titles = [f"{t} {split} {i}" for i, t in enumerate(pairs.titles)]  # test titles: only in test
            table = pd.DataFrame({"query": pairs.queries, "product_title": titles, "label": pairs.labels})
            if lang in described:
                table["product_description"] = [f"{t} made of steel" if i % 3 else None
                                                for i, t in enumerate(table["product_title"])]
            table.to_parquet(folder / f"{split}.parquet")
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> EncoderRef:
    texts = [w for colours, types in WORDS.values() for w in colours + types] + ["deluxe", "made of steel"]
    path = build_tiny_encoder(tmp_path_factory.mktemp("teacher"), texts, hidden_size=32, num_layers=4, seed=5)
    return EncoderRef(name=str(path), path=path, checksum=hashlib.sha256((path / "model.safetensors").read_bytes())
                      .hexdigest())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_root(tmp_path_factory.mktemp("data") / "shop")


@pytest.fixture(scope="module")
def student(teacher, root, tmp_path_factory) -> Path:
    from models.encoder_distill import distill_encoder
    from tasks.domain_text import domain_texts, load_marketplaces

    texts = domain_texts(load_marketplaces([str(root)]), ["train", "valid"])["text"].tolist()
    out = tmp_path_factory.mktemp("student") / "student"
    distill_encoder(texts, teacher, out, EncoderDistillConfig(**SMALL), work_dir=out.parent / "work")
    return out


# ------------------------------------------------------------------------------------------- extract
def test_extract_keeps_each_query_title_and_description_once(root, tmp_path):
    from tasks.domain_text import domain_texts, load_marketplaces

    marketplaces = load_marketplaces([str(root)])
    assert list(marketplaces) == ["en", "es"]
    texts = domain_texts(marketplaces, ["train", "valid"])
    expected = set()
    for m in marketplaces.values():
        for table in (m.train, m.valid):
            expected |= set(table["query"]) | set(table["product_title"])
            expected |= set(table["product_description"].dropna()) if "product_description" in table else set()
    assert set(texts["text"]) == expected and len(texts) == len(expected), "every text exactly once"
    assert len(texts) < sum(len(t) * 2 for m in marketplaces.values() for t in (m.train, m.valid)), "queries repeat"
    assert set(texts["kind"]) == {"query", "title", "description"}
    assert set(texts.loc[texts["kind"] == "description", "marketplace"]) == {"en"}
    test_only = set(marketplaces["en"].test["product_title"])
    assert test_only and not test_only & set(texts["text"]), "test text is left out by default"
    plain = domain_texts(marketplaces, ["train", "valid"], descriptions=False)
    assert "description" not in set(plain["kind"])
    assert len(domain_texts(marketplaces, ["train", "valid", "test"])) > len(texts)

    from tasks.domain_text import distill_inputs, texts_hash

    with_pairs = domain_texts(marketplaces, ["train", "valid"], pairs=True)
    pairs = {(q, t) for m in marketplaces.values() for table in (m.train, m.valid)
             for q, t in zip(table["query"], table["product_title"], strict=True)}
    singles = with_pairs[with_pairs["kind"] != "pair"].reset_index(drop=True)
    assert singles.equals(texts.reset_index(drop=True)), "the single texts come first, unchanged"
    inputs = distill_inputs(with_pairs, prefixes=False)
    assert inputs[:len(texts)] == texts["text"].tolist()
    assert set(inputs[len(texts):]) == pairs and len(inputs) == len(texts) + len(pairs), "every pair exactly once"
    assert texts_hash(with_pairs) != texts_hash(texts)
    prefixed = distill_inputs(with_pairs, prefixes=True)
    assert prefixed[:len(inputs)] == inputs, "the bare texts and pairs first, unchanged"
    kinds = dict(zip(texts["text"], texts["kind"], strict=True))
    assert prefixed[len(inputs):] == [("query: " if kinds[t] == "query" else "passage: ") + t for t in texts["text"]]
    assert {"query", "title", "description"} == set(kinds.values()), "every kind was checked"

    other = write_root(tmp_path / "tax", langs=("en",), described=())
    both = load_marketplaces([str(root), str(other)])
    assert list(both) == ["shop/en", "shop/es", "tax/en"], "two roots: marketplaces are told apart by root name"


def test_bad_input_names_the_file_row_and_column(root, tmp_path):
    from tasks.data import DataValidationError
    from tasks.domain_text import load_marketplaces

    bad = write_root(tmp_path / "bad", langs=("en", "fr"))
    table = pd.read_parquet(bad / "fr" / "valid.parquet")
    table.loc[2, "query"] = None
    table.to_parquet(bad / "fr" / "valid.parquet")
    with pytest.raises(DataValidationError) as err:
        load_marketplaces([str(bad)])
    assert str(err.value) == f"{bad / 'fr' / 'valid.parquet'}: row 3, column 'query': text is missing (null)"
    with pytest.raises(DataValidationError, match="no marketplace folders"):
        load_marketplaces([str(_empty(tmp_path))])
    with pytest.raises(DataValidationError, match="two data roots are both named 'shop'"):
        load_marketplaces([str(root), str(write_root(tmp_path / "x" / "shop", langs=("en",)))])


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------------------------- evaluation
def test_frozen_evaluation_compares_three_encoders_over_seeds(student, teacher, root, tmp_path):
    from models.encoder_distill import read_result
    from tasks.domain_text import load_marketplaces
    from tasks.encoder_evaluation import evaluate_encoders

    cfg = EncoderDistillConfig(**SMALL)
    torch.set_num_threads(2)
    ev = evaluate_encoders(student, teacher, read_result(student).layers, load_marketplaces([str(root)]), cfg,
                           LEARNER, work_dir=tmp_path)
    assert torch.get_num_threads() == 2, "the single-thread latency measurement restores torch's threads"
    assert set(ev.aucs) == {"student", "teacher", "undistilled"} and ev.marketplaces == ["en", "es"]
    for kind in ev.aucs:
        for m in ev.marketplaces:
            assert len(ev.aucs[kind][m]) == 3 and all(0.0 <= a <= 1.0 for a in ev.aucs[kind][m])
    assert len(set(ev.aucs["teacher"]["en"])) > 1, "each seed fits its probe on its own sample"
    for other in ("teacher", "undistilled"):
        for m in ev.marketplaces:
            assert ev.ks_pvalues[other][m] == ks_2samp(ev.aucs["student"][m], ev.aucs[other][m]).pvalue
    assert set(ev.latency_ms["student"]) == {1, 4} and all(v > 0 for v in ev.latency_ms["teacher"].values())
    assert ev.latency_ratio(1) == ev.latency_ms["student"][1] / ev.latency_ms["teacher"][1]
    assert ev.parameters["student"] < ev.parameters["teacher"]
    table = ev.table()
    assert list(table["marketplace"]) == ["en", "es", "mean"]
    assert table["student_mean"].iloc[-1] == pytest.approx(np.mean([np.mean(v) for v in ev.aucs["student"].values()]))
    assert table["vs_undistilled"].iloc[0] == pytest.approx(ev.mean("student", "en") - ev.mean("undistilled", "en"))
    metrics = ev.metrics()
    assert metrics["probe_auc.teacher.es"] == ev.mean("teacher", "es") and "latency_ratio.b4" in metrics
    assert set(ev.adapter_aucs) == {"student", "teacher", "undistilled"}
    assert table["adapter_vs_undistilled"].iloc[1] == pytest.approx(
        ev.adapter_aucs["student"]["es"] - ev.adapter_aucs["undistilled"]["es"])
    assert table["teacher_adapter"].iloc[-1] == pytest.approx(ev.adapter_mean("teacher"))
    assert metrics["adapter_auc.student.en"] == ev.adapter_aucs["student"]["en"]


def test_a_student_that_is_the_copy_is_scored_once_for_both(student, teacher, root, tmp_path, monkeypatch):
    from models.encoder_distill import read_result
    from tasks import encoder_evaluation
    from tasks.domain_text import load_marketplaces

    probed, trained_on = [], []
    probe, adapters = encoder_evaluation.probe_aucs, encoder_evaluation.adapter_aucs
    monkeypatch.setattr(encoder_evaluation, "probe_aucs", lambda folder, *a, **k: probed.append(folder)
                        or probe(folder, *a, **k))
    monkeypatch.setattr(encoder_evaluation, "adapter_aucs", lambda ref, *a, **k: trained_on.append(ref.path)
                        or adapters(ref, *a, **k))
    ev = encoder_evaluation.evaluate_encoders(student, teacher, read_result(student).layers,
                                              load_marketplaces([str(root)]), EncoderDistillConfig(**SMALL), LEARNER,
                                              work_dir=tmp_path, student_is_copy=True)
    assert [Path(f) for f in probed] == [Path(student), Path(teacher.path)], "no third encoding of the same weights"
    assert [Path(f) for f in trained_on] == [Path(student), Path(teacher.path)]
    assert not (tmp_path / "undistilled").exists()
    assert ev.aucs["undistilled"] == ev.aucs["student"] and ev.adapter_aucs["undistilled"] == ev.adapter_aucs["student"]
    assert all(p == 1.0 for p in ev.ks_pvalues["undistilled"].values())
    assert (ev.table()["vs_undistilled"] == 0).all()


def test_the_adapter_view_is_an_arrivals_first_stage_on_each_frozen_encoder(student, teacher, root, tmp_path):
    """The teacher's adapter ROC-AUC is R[0][0] of a sequence that starts with that marketplace (same settings,
    every pair); adapter_rows caps the pairs trained on, and 0 leaves the view out of table, metrics and card."""
    from models.encoder_distill import read_result
    from models.encoder_probe import adapter_aucs
    from tasks.domain_text import load_marketplaces
    from tasks.encoder_evaluation import evaluate_encoders
    from tasks.encoder_reporting import encoder_card
    from tasks.learner import marketplace_splits, run_sequence

    marketplaces = load_marketplaces([str(root)])
    splits = {m: marketplace_splits(mk) for m, mk in marketplaces.items()}
    view = adapter_aucs(teacher, splits, LEARNER, rows=1000)
    for m in ("en", "es"):
        sequence = run_sequence(root, [m], LEARNER, encoder=teacher)
        assert view[m] == pytest.approx(sequence.metrics.as_dict()["matrix"][0][0], abs=1e-6)
    assert adapter_aucs(teacher, splits, LEARNER, rows=8)["en"] != pytest.approx(view["en"], abs=1e-6)

    cfg = EncoderDistillConfig(**{**SMALL, "adapter_rows": 0})
    result = read_result(student)
    ev = evaluate_encoders(student, teacher, result.layers, marketplaces, cfg, LEARNER, work_dir=tmp_path)
    assert ev.adapter_aucs == {} and "teacher_adapter" not in ev.table().columns
    assert not any(k.startswith("adapter_auc") for k in ev.metrics())
    card = encoder_card(name="x", checksum="c", result=result, evaluation=ev, data={})
    assert "Frozen-encoder probes" in card and "Adapter view" not in card


def test_latency_measurement_restores_the_thread_count_when_it_fails(monkeypatch, teacher):
    from models import encoder_probe
    from models.pairs import Pairs

    def broken(*args, **kwargs):
        raise RuntimeError("forward failed")

    model, tok = encoder_probe.load_frozen_encoder(teacher.path)
    monkeypatch.setattr(model, "forward", broken)
    monkeypatch.setattr(encoder_probe, "load_frozen_encoder", lambda *a, **k: (model, tok))
    torch.set_num_threads(2)
    with pytest.raises(RuntimeError, match="forward failed"):
        encoder_probe.pair_latency_ms(teacher.path, Pairs(["red shoe"], ["shoe red"], [1]), batch_sizes=[1],
                                      max_length=16, repeats=1)
    assert torch.get_num_threads() == 2


# ------------------------------------------------------------------------------------------- registry
@pytest.fixture()
def tracking(tmp_path):
    from tasks.registry import setup_tracking

    setup_tracking(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    yield tmp_path
    mlflow.set_tracking_uri(None)


def _request(student: Path, teacher: EncoderRef, root: Path, tmp_path: Path):
    from models.encoder_distill import read_result
    from models.encoders import resolve_encoder
    from tasks.domain_text import load_marketplaces
    from tasks.encoder_evaluation import evaluate_encoders
    from tasks.encoder_registry import EncoderRegistrationRequest

    result = read_result(student)
    ev = evaluate_encoders(student, teacher, result.layers, load_marketplaces([str(root)]),
                           EncoderDistillConfig(**SMALL), LEARNER, work_dir=tmp_path / "eval")
    return EncoderRegistrationRequest(name="tiny shop", student=resolve_encoder(str(student), tmp_path / "cache"),
                                      teacher=teacher, result=result, evaluation=ev, data={"data": str(root)})


def test_registration_is_all_or_nothing_and_never_twice(tracking, student, teacher, root, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tasks import encoder_registry

    request = _request(student, teacher, root, tracking)
    assert encoder_registry.encoder_model_name("tiny shop") == "encoder-tiny-shop"
    client = MlflowClient()

    def names() -> list[str]:
        return [m.name for m in client.search_registered_models()]

    real_figure = mlflow.log_figure
    calls = {"n": 0}

    def failing_figure(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("artifact store unreachable")
        return real_figure(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_figure", failing_figure)
    with mlflow.start_run(), pytest.raises(OSError, match="unreachable"):
        encoder_registry.register_encoder(request)
    assert names() == [], "a failure while logging registers nothing"
    monkeypatch.setattr(mlflow, "log_figure", real_figure)

    def failing_version(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "create_model_version", failing_version)
    with mlflow.start_run(), pytest.raises(ConnectionError):
        encoder_registry.register_encoder(request)
    assert names() == [], "no empty registered model is left behind"
    monkeypatch.undo()

    with mlflow.start_run() as run:
        first = encoder_registry.register_encoder(request)
    assert (first.name, first.version, first.run_id, first.already_registered) == (
        "encoder-tiny-shop", "1", run.info.run_id, False)
    mv = client.get_model_version("encoder-tiny-shop", "1")
    assert mv.tags["checksum"] == request.student.checksum == hashlib.sha256(
        (student / "model.safetensors").read_bytes()).hexdigest()
    assert mv.tags["layers"] == "0,3" and mv.tags["teacher"] == teacher.name and "ms_per_pair.b1" in mv.tags
    assert mv.tags["trained_layers"] == ",".join(map(str, request.result.trained_layers)) == "1"
    assert "Frozen-encoder probes" in mv.description and "## Adapter view" in mv.description
    with mlflow.start_run():
        again = encoder_registry.register_encoder(request)
    assert again.already_registered and again.version == "1"
    assert len(client.search_model_versions("name = 'encoder-tiny-shop'")) == 1


# ------------------------------------------------------------------------------------------- the flow and the CLI
def test_the_flow_distils_evaluates_and_registers_the_encoder(mcl, teacher, root):
    from mlflow.tracking import MlflowClient
    from transformers import AutoModel

    from flows.adapt_encoder import adapt_encoder

    out = mcl / "encoders" / "shop-small"
    result = adapt_encoder(data=[str(root)], out=str(out), teacher=str(teacher.path), distill=SMALL, learner=LEARNER)
    assert (result["name"], result["version"], result["already_registered"]) == ("encoder-shop-small", "1", False)
    checksum = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert result["checksum"] == checksum and result["steps"] == 3 and result["layers"] == [0, 3]
    assert result["trained_layers"] == [1], "by default distillation trains the student's top layer only"
    client = MlflowClient()
    mv = client.get_model_version("encoder-shop-small", "1")
    assert mv.tags["checksum"] == checksum and mv.run_id == result["run_id"]
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"encoder", "loss_curves.png", "frozen_evaluation.png", "frozen_evaluation.json", "distill_report.json",
            "encoder_card.md"} <= artifacts
    assert {a.path for a in client.list_artifacts(mv.run_id, "encoder")} >= {"encoder/config.json",
                                                                             "encoder/model.safetensors"}
    curve = client.get_metric_history(mv.run_id, "distill.loss")
    assert [m.step for m in curve] == [1, 2, 3]
    run = client.get_run(mv.run_id)
    assert run.data.metrics["parameters.student"] < run.data.metrics["parameters.teacher"]
    assert {"probe_auc.student.en", "ks_p.undistilled.es", "ms_per_pair.teacher.b1",
            "adapter_auc.undistilled.es"} <= set(run.data.metrics)
    assert run.data.params["learner.adapter.epochs"] == "2" and run.data.params["adapter_rows"] == "800"
    assert [r["marketplace"] for r in result["evaluation"]] == ["en", "es", "mean"]

    downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/encoder-shop-small/1",
                                                          dst_path=str(mcl / "dl")))
    a = AutoModel.from_pretrained(downloaded, add_pooling_layer=False)
    b = AutoModel.from_pretrained(out, add_pooling_layer=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    again = adapt_encoder(data=[str(root)], out=str(out), teacher=str(teacher.path), distill=SMALL, learner=LEARNER)
    assert again["already_registered"] and again["reused"] and again["version"] == "1"
    assert len(client.search_model_versions("name = 'encoder-shop-small'")) == 1


def test_max_steps_zero_registers_the_undistilled_copy_through_the_same_flow(mcl, teacher, root):
    from mlflow.tracking import MlflowClient

    from flows.adapt_encoder import adapt_encoder

    copy_only = {**SMALL, "max_steps": 0, "adapter_rows": 0}
    result = adapt_encoder(data=[str(root)], out=str(mcl / "encoders" / "shop-copy"), teacher=str(teacher.path),
                           distill=copy_only, learner=LEARNER)
    assert (result["steps"], result["trained_layers"], result["layers"]) == (0, [], [0, 3])
    assert all(row["vs_undistilled"] == 0 for row in result["evaluation"]), "the student is the copy"
    mv = MlflowClient().get_model_version(result["name"], result["version"])
    assert mv.tags["trained_layers"] == "none"
    assert "no distillation (max_steps = 0)" in mlflow.artifacts.load_text(f"runs:/{mv.run_id}/encoder_card.md")


def test_mcl_encoder_distill_runs_the_flow_and_refuses_bad_settings_and_data(mcl, teacher, root, tmp_path):
    from flows.cli import app

    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    out = mcl / "cli-student"
    result = CliRunner().invoke(app, ["encoder", "distill", "--data", str(root), "--teacher", str(teacher.path),
                                      "--out", str(out), "--name", "cli", "--learner-preset", "demo-quick", *sets])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "registered as encoder-cli version 1" in text and f"--encoder {out}" in text
    assert "frozen-encoder probes" in text and "latency per pair, 1 CPU thread, batch 1" in text
    assert "adapter view: test ROC-AUC of one adapter and head per marketplace" in text
    client = mlflow.tracking.MlflowClient()
    params = client.get_run(client.get_model_version("encoder-cli", "1").run_id).data.params
    assert params["learner.adapter.epochs"] == "2", "the adapter view trains with --learner-preset's (demo-quick)"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2

    bad = CliRunner().invoke(app, ["encoder", "distill", "--data", str(root), "--out", str(tmp_path / "x"),
                                   "--set", "epochs=0"])
    assert bad.exit_code == 2 and "epochs" in bad.output and "invalid setting" in bad.output
    broken = write_root(tmp_path / "broken", langs=("en",))
    table = pd.read_parquet(broken / "en" / "train.parquet")
    table.loc[4, "product_title"] = "   "
    table.to_parquet(broken / "en" / "train.parquet")
    refused = CliRunner().invoke(app, ["encoder", "distill", "--data", str(broken), "--out", str(tmp_path / "y")])
    assert refused.exit_code == 1
    assert "row 5, column 'product_title': text is whitespace only" in " ".join(refused.output.split())
    assert not (tmp_path / "y").exists()
    too_deep = CliRunner().invoke(app, ["encoder", "distill", "--data", str(root), "--teacher", str(teacher.path),
                                        "--out", str(tmp_path / "z"), "--set", "train_layers=3"])
    assert too_deep.exit_code == 1 and not (tmp_path / "z").exists()
    assert "train_layers 3 does not fit a student of 2 layers" in " ".join(too_deep.output.split())


def test_every_distill_setting_is_reachable_with_set_and_printed(tmp_path):
    from flows.cli import app
    from flows.commands.encoder import distill_settings

    changed = {"layers": [1, 2], "layer_choice": "evenly", "layer_match": "uniform", "train_layers": "all",
               "teacher_head": "mlm", "temperature": 3.0, "alpha_ce": 1.0, "alpha_mlm": 1.0,
               "alpha_cos": 2.0, "alpha_mse": 0.5, "alpha_hidden": 0.5, "alpha_attention": 0.0,
               "alpha_pooled": 4.0, "alpha_similarity": 4.0, "mlm_probability": 0.2, "mask_replace_prob": 0.7,
               "random_replace_prob": 0.2, "learning_rate": 1e-4,
               "weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0, "batch_size": 16,
               "gradient_accumulation_steps": 4, "epochs": 3, "group_by_length": False, "max_steps": 10,
               "max_length": 32,
               "train_word_embeddings": False, "checkpoint_steps": 5, "splits": ["train"], "descriptions": False,
               "pairs": True, "prefixes": True,
               "max_texts": 100, "eval_seeds": 7, "probe_fraction": 0.5, "eval_batch_size": 8, "adapter_rows": 50,
               "latency_pairs": 16,
               "latency_batch_sizes": [1, 8], "latency_repeats": 5, "precision": "fp32", "device": "cpu",
               "seed": 7}
    assert set(changed) == set(EncoderDistillConfig.model_fields), "a new setting needs a value here"
    assert all(getattr(EncoderDistillConfig(), k) != v for k, v in changed.items())
    cfg = distill_settings(None, None, [f"{k}={json.dumps(v)}" for k, v in changed.items()])
    assert cfg == EncoderDistillConfig(**changed)
    shown = CliRunner().invoke(app, ["encoder", "distill-config", "--set", "alpha_ce=1.5"])
    assert shown.exit_code == 0 and "alpha_ce = 1.5" in shown.output
    assert "# Weight of the soft-target KL" in shown.output
    for field, info in EncoderDistillConfig.model_fields.items():
        assert info.description, f"{field} has no description"


def test_the_cpu_preset_freezes_the_embeddings_and_caps_one_pass_under_the_command_line():
    from typer import BadParameter

    from flows.cli import app
    from flows.commands.encoder import distill_settings

    cpu = distill_settings("cpu", None, None)
    assert (cpu.train_word_embeddings, cpu.max_steps) == (False, 520)
    assert cpu.model_copy(update={"train_word_embeddings": True, "max_steps": None}) == EncoderDistillConfig()
    assert distill_settings("cpu", None, ["max_steps=20"]).max_steps == 20  # --set wins over the preset
    with pytest.raises(BadParameter, match="unknown preset 'gpu'.*cpu"):
        distill_settings("gpu", None, None)
    shown = CliRunner().invoke(app, ["encoder", "distill-config", "--preset", "cpu"])
    assert shown.exit_code == 0
    assert "train_word_embeddings = false" in shown.output and "max_steps = 520" in shown.output


def test_the_paper_preset_is_distilberts_student_and_changes_nothing_else():
    from flows.commands.encoder import distill_settings

    paper = distill_settings("paper", None, None)
    assert (paper.layer_choice, paper.layer_match, paper.train_layers) == ("evenly", "uniform", "all")
    assert paper.model_copy(update={"layer_choice": "bottom-and-last", "layer_match": "copied",
                                    "train_layers": 1}) == EncoderDistillConfig()


def test_the_probes_preset_distils_every_layer_of_the_defaults_student_for_two_full_passes():
    from flows.commands.encoder import distill_settings

    probes = distill_settings("probes", None, None)
    assert (probes.train_layers, probes.train_word_embeddings, probes.max_steps) == ("all", False, None)
    assert probes.model_copy(update={"train_layers": 1, "train_word_embeddings": True}) == EncoderDistillConfig()


def test_the_flow_and_its_deployment_describe_every_parameter():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[1]
    deployment = next(d for d in yaml.safe_load((root / "flows" / "prefect.yaml").read_text())["deployments"]
                      if d["entrypoint"] == "flows/adapt_encoder.py:adapt_encoder")
    flow = load_flow_from_entrypoint(str(root / deployment["entrypoint"]))
    properties = flow.parameters.model_dump()["properties"]
    assert set(properties) == {"data", "out", "teacher", "name", "distill", "learner"}
    assert all(p.get("description", "").strip() for p in properties.values())
    assert set(deployment.get("parameters", {})) <= set(properties) and "mcl" in deployment["tags"]


def test_an_arrival_on_the_student_against_a_champion_of_its_teacher_is_refused(mcl, teacher, student):
    from flows.arrival import marketplace_arrival
    from models.relevance import ModelFormatError

    learner = {"adapter": {"epochs": 1, "batch_size": 16}, "fusion": {"epochs": 1, "batch_size": 16}, "max_length": 16,
               "translation": {"fraction": 0.0}, "device": "cpu"}
    data = write_root(mcl / "arrivals", langs=("en", "es"))
    tables = {s: str(data / "en" / f"{s}.parquet") for s in ("train", "valid", "test")}
    first = marketplace_arrival(marketplace="en", language="en", **tables, encoder=str(teacher.path), learner=learner)
    assert first["alias"] == "champion"
    tables = {s: str(data / "es" / f"{s}.parquet") for s in ("train", "valid", "test")}
    with pytest.raises(ModelFormatError) as err:
        marketplace_arrival(marketplace="es", language="es", **tables, encoder=str(student), learner=learner)
    message = str(err.value)
    assert f"was trained on encoder {str(teacher.path)!r}" in message
    assert f"but encoder {str(student.resolve())!r}" in message
    assert "load it with the encoder it was trained on" in message
