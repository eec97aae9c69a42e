"""``mcl translate`` through typer's runner: files written atomically, one clear error and exit code 1."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from flows.commands.translate import translate
from tasks.translation.tiny_marian import build_tiny_marian

QUERIES = ["zapatillas de correr", "botella de agua", "lámpara led", "mochila azul", "funda negra", "tinta negra"]


@pytest.fixture()
def app(tmp_path, monkeypatch) -> typer.Typer:
    monkeypatch.setenv("MCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # no stray cached Opus-MT model changes the route
    from tasks.settings import get_settings

    get_settings.cache_clear()
    cli = typer.Typer()
    cli.command()(translate)
    cli.command("noop")(lambda: None)  # two commands, so `translate` is addressed by name as under `mcl`
    yield cli
    get_settings.cache_clear()


@pytest.fixture()
def train_csv(tmp_path):
    rows = [{"query_id": f"q{i % 6}", "product_id": f"p{i}", "query": QUERIES[i % 6],
             "product_title": f"{QUERIES[(i + 1) % 6]} modelo {i}", "label": int(i % 3 == 0)} for i in range(60)]
    path = tmp_path / "es-train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_translates_with_a_local_marian_model(app, train_csv, tmp_path):
    model = build_tiny_marian(tmp_path / "opus-mt-es-de", QUERIES)
    out = tmp_path / "translated" / "es"
    args = ["translate", "--data", str(train_csv), "--from", "es", "--to", "de", "--out", str(out), "--fraction", "0.5",
            "--backend", "opus-mt", "--model", f"es-de={model}", "--threads", "1", "--seed", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "de.parquet")
    assert abs(len(table) - 30) <= 6 and table["label"].mean() == pytest.approx(1 / 3, abs=0.05)
    assert set(table["translation_route"]) == {"es>de"} and set(table["translation_backend"]) == {"opus-mt"}
    report = json.loads((out / "translation-report.json").read_text())
    assert report["reports"]["de"]["rows"] == len(table) and report["fraction"] == 0.5
    assert sorted(p.name for p in out.iterdir()) == ["de.parquet", "translation-report.json"]  # no temp files left
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert json.loads((out / "translation-report.json").read_text())["reports"]["de"]["translated"] == 0


@pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium is not installed")
def test_translates_with_apertium_into_two_languages(app, train_csv, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["translate", "--data", str(train_csv), "--from", "es", "--to", "en,fr",
                                      "--out", str(out), "--fraction", "1"])
    assert result.exit_code == 0, result.output
    en = pd.read_parquet(out / "en.parquet")
    assert "bottle of water" in set(en["query"])
    assert set(pd.read_parquet(out / "fr.parquet")["translation_route"]) == {"es>fr"}


@pytest.mark.parametrize("args, message", [
    (["--to", "ja", "--backend", "apertium"], "no translation route from 'es' to 'ja'"),
    (["--to", "en", "--fraction", "1.5"], "fraction must be in (0, 1]"),
    (["--to", "en", "--backend", "babelfish"], "unknown translation backend 'babelfish'"),
])
def test_errors_exit_1_with_one_message_and_no_output(app, train_csv, tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["translate", "--data", str(train_csv), "--from", "es", "--out", str(out), *args])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()


def test_bad_file_names_the_row_and_column(app, train_csv, tmp_path):
    table = pd.read_csv(train_csv)
    table.loc[4, "label"] = 7
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    result = CliRunner().invoke(app, ["translate", "--data", str(bad), "--from", "es", "--to", "en", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "bad.csv" in text and "row 5, column 'label'" in text and "'7' is not a relevance label" in text
