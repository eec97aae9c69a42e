"""`mcl train-sequence` end to end on demo data with a tiny encoder."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.data import generate_demo


@pytest.fixture()
def env(isolated_cache, tiny_encoder):
    return isolated_cache


def _run(*args: str):
    return CliRunner().invoke(app, ["train-sequence", *args], catch_exceptions=False)


def test_prints_matrix_and_writes_report_and_model(env, tiny_encoder):
    data = env / "demo"
    generate_demo(data, languages=("en", "es", "fr"), pairs_per_marketplace=300, seed=3)
    translated = env / "translated"
    for new, olds in {"es": ["en"], "fr": ["en", "es"]}.items():
        (translated / new).mkdir(parents=True)
        train = pd.read_parquet(data / new / "train.parquet").head(20)
        for lang in olds:
            train.to_parquet(translated / new / f"{lang}.parquet")
    result = _run("--data", str(data), "--order", "en,es,fr", "--encoder", str(tiny_encoder.path),
                  "--translated", str(translated), "--limit", "40", "--set", "adapter.epochs=1", "--set", "fusion.epochs=1",
                  "--set", "max_length=32", "--report", str(env / "report.json"), "--out", str(env / "model"))
    assert result.exit_code == 0, result.output
    assert "ROC-AUC R[t][k]" in result.output and "BWT" in result.output and "forgetting" in result.output
    report = json.loads((env / "report.json").read_text())
    assert report["order"] == ["en", "es", "fr"]
    assert report["learner"]["max_length"] == 32 and report["learner"]["fusion"]["epochs"] == 1
    assert len(report["arrival_seconds"]) == 3 and "seconds per arrival" in result.output
    matrix = report["metrics"]["matrix"]
    assert matrix[0][1] is None and all(0 <= v <= 1 for v in matrix[2])
    assert [s["stage"] for s in report["stages"]] == ["adapter", "adapter", "fusion", "adapter", "fusion"]
    assert report["stages"][-1]["details"]["translated_sources"] == ["translated:en", "translated:es"]
    manifest = json.loads((env / "model" / "manifest.json").read_text())
    assert [m["id"] for m in manifest["marketplaces"]] == ["en", "es", "fr"]


def test_missing_translation_fails_before_training(env, tiny_encoder):
    data = env / "demo"
    generate_demo(data, languages=("en", "es"), pairs_per_marketplace=200, seed=3)
    (env / "translated" / "es").mkdir(parents=True)
    result = _run("--data", str(data), "--order", "en,es", "--encoder", str(tiny_encoder.path),
                  "--translated", str(env / "translated"))
    assert result.exit_code == 1
    assert "no translation of 'es' into 'en'" in result.output
    assert "adapter[" not in result.output, "nothing may train before the inputs are checked"


def test_bad_data_names_file_row_and_column(env, tiny_encoder):
    data = env / "demo"
    generate_demo(data, languages=("en", "es"), pairs_per_marketplace=200, seed=3)
    valid = pd.read_parquet(data / "es" / "valid.parquet")
    valid.loc[4, "label"] = 7
    valid.to_parquet(data / "es" / "valid.parquet")
    result = _run("--data", str(data), "--order", "en,es", "--encoder", str(tiny_encoder.path))
    assert result.exit_code == 1
    assert "valid.parquet" in result.output and "row 5" in result.output and "'label'" in result.output
