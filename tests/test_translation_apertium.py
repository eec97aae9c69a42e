"""Apertium from the Debian packages (CI installs apertium, apertium-eng-spa, apertium-fr-es)."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from tasks.translation import ApertiumBackend, NoRouteError, Pair, find_route, translate_subset
from tasks.translation.backends.apertium import mode_pair

needs_apertium = pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium is not installed")


def test_mode_names_normalise_to_bcp47():
    assert mode_pair("spa-eng") == Pair("es", "en")
    assert mode_pair("eng-spa") == Pair("en", "es")
    assert mode_pair("fr-es") == Pair("fr", "es")
    assert mode_pair("spa-eng_US") == Pair("es", "en")
    assert mode_pair("eco-fr-es") is None
    assert mode_pair("spa-eng-tagger") is None


@pytest.fixture(scope="module")
def apertium() -> ApertiumBackend:
    backend = ApertiumBackend()
    if not {Pair("es", "en"), Pair("fr", "es")} <= backend.pairs():
        pytest.skip("apertium-eng-spa and apertium-fr-es are not installed")
    return backend


@needs_apertium
def test_discovers_installed_pairs(apertium):
    assert {Pair("es", "en"), Pair("en", "es"), Pair("fr", "es"), Pair("es", "fr")} <= apertium.pairs()
    assert apertium.modes[Pair("es", "en")] == "spa-eng"  # the plain mode, not the spa-eng_US variant
    info = apertium.prepare(Pair("es", "en"))
    assert info.name == "apertium spa-eng" and len(info.version) == 16


@needs_apertium
def test_translates_spanish_to_english(apertium):
    out = apertium.translate(["zapatillas de correr para hombre", "botella de agua", "Funda negra para iPhone"],
                             Pair("es", "en")).texts
    assert out[0] == "zapatillas to run for man"  # lowercase in, lowercase out
    assert out[1] == "bottle of water"
    assert out[2] == "It founds black for iPhone"  # mixed case in: Apertium's own casing kept


@needs_apertium
def test_one_process_per_chunk_keeps_sentences_aligned(apertium, monkeypatch):
    """Words must not cross sentence boundaries and every sentence must come back in its place, whatever it holds."""
    tricky = ["la casa", "roja", "el coche", "azul y verde", "...", "Mr. Smith", "de", "la", "¿dónde está?",
              "¡", "[corchetes] ^carets$ @arroba *asterisco", "<b>roja</b> & \"azul\"", "\\barra\\", "fin.",
              "línea uno\nlínea dos", "tab\tseparado", "😀 emoji", "テスト", "a" * 3000, "-", "'", "#1 ventas"]
    calls = []
    run = apertium._run
    monkeypatch.setattr(apertium, "_run", lambda texts, mode: calls.append(len(texts)) or run(texts, mode))
    batched = apertium.translate(tricky, Pair("es", "en")).texts
    assert calls == [len(tricky)], "the whole chunk goes through one apertium process"
    alone = [apertium.translate([t], Pair("es", "en")).texts[0] for t in tricky]
    assert batched == alone
    assert batched[:4] == ["the house", "red", "the car", "blue and green"]
    assert batched[14] == "line one line two"
    assert batched[18] == "a" * 3000


@needs_apertium
def test_a_misaligned_chunk_is_bisected_not_guessed(apertium, monkeypatch):
    run = apertium._run

    def merges_first_two(texts, mode):
        out = run(texts, mode)
        return [out[0] + " " + out[1], *out[2:]] if len(texts) > 2 else out

    monkeypatch.setattr(apertium, "_run", merges_first_two)
    texts = ["la casa", "roja", "el coche", "azul"]
    assert apertium.translate(texts, Pair("es", "en")).texts == ["the house", "red", "the car", "blue"]


@needs_apertium
def test_routes_french_to_english_through_spanish(apertium, tmp_path):
    route = find_route("fr", "en", [apertium])
    assert str(route) == "fr>es>en" and [h.backend for h in route.hops] == ["apertium", "apertium"]
    data = pd.DataFrame({
        "query_id": ["q1", "q1", "q2", "q2"], "product_id": ["p1", "p2", "p3", "p4"],
        "query": ["chaussures de course", "chaussures de course", "bouteille d'eau", "bouteille d'eau"],
        "product_title": ["chaussures de course pour homme", "sac à dos bleu", "bouteille d'eau en acier", "lampe"],
        "label": [1, 0, 1, 0],
    })
    result = translate_subset(data, "fr", ["en", "es"], fraction=1.0, seed=13, backend="apertium", cache_dir=tmp_path)
    en = result["en"]
    assert en["translation_route"].unique().tolist() == ["fr>es>en"]
    assert en["translation_backend"].unique().tolist() == ["apertium"]
    assert "fr-es: apertium fr-es" in en["translation_model"].iloc[0] and "es-en: apertium spa-eng" in en["translation_model"].iloc[0]
    assert en["query"].tolist()[2] == "bottle of water"
    assert en["original_query"].tolist() == data["query"].tolist()
    assert en[["query_id", "product_id", "label"]].equals(data[["query_id", "product_id", "label"]])
    assert result["es"]["query"].tolist()[2] == "botella de agua"
    # fr>es was the first hop of fr>es>en: the es table came from the cache.
    assert result.reports["es"].cache_hits == result.reports["es"].unique_texts
    assert result.reports["es"].translated == 0


@needs_apertium
def test_missing_pair_fails_before_any_work_listing_pairs_and_packages(apertium, tmp_path):
    data = pd.DataFrame({"query": ["hola"], "product_title": ["mundo"], "label": [1]})
    with pytest.raises(NoRouteError) as err:
        translate_subset(data, "es", ["en", "ja"], fraction=0.3, seed=13, backend="apertium", cache_dir=tmp_path)
    message = str(err.value)
    assert "from 'es' to 'ja'" in message
    assert "es-en (apertium)" in message and "fr-es (apertium)" in message
    assert "covers es-ja" in message  # no Debian package exists for it
    assert not (tmp_path / "translations.sqlite3").exists(), "nothing was translated, not even es->en"
    # A pair Debian packages but this machine lacks: the message names the package to install.
    lacking = [(lang, package) for lang, package in (("pt", "apertium-es-pt"), ("it", "apertium-spa-ita"))
               if subprocess.run(["dpkg", "-s", package], capture_output=True, check=False).returncode != 0]
    if lacking:
        lang, package = lacking[0]
        with pytest.raises(NoRouteError, match=f"apt-get install {package}"):
            translate_subset(data, "es", [lang], fraction=0.3, seed=13, backend="apertium")


@needs_apertium
def test_an_arrival_translates_into_every_routable_language_and_records_the_rest(apertium, tmp_path):
    """One older language without a route (ja) must not cost the routable ones (en, and fr through es) their
    translations: only ja falls back to the §4.2 variant, and the routes say so."""
    from tasks.steps import NO_ROUTE, translate_step, translation_routes

    data = pd.DataFrame({"query": ["botella de agua", "zapato rojo", "lampara azul", "taza verde"],
                         "product_title": ["botella", "zapato", "lampara", "taza"], "label": [1, 0, 1, 0]})
    tables = translate_step(data, "es", ["en", "fr", "ja"], fraction=1.0, seed=1, backend="auto", cache_dir=tmp_path)
    assert sorted(tables) == ["en", "fr"] and len(tables["en"]) == 4
    assert tables["en"]["query"].iloc[0] == "bottle of water"
    routes = translation_routes(tables, ["en", "fr", "ja"])
    assert routes["en"] == "es>en" and routes["fr"].startswith("es>") and routes["fr"].endswith(">fr")
    assert routes["ja"] == NO_ROUTE == "none (§4.2)"
    with pytest.raises(NoRouteError, match="'ja'"):  # a backend named explicitly must serve every language
        translate_step(data, "es", ["en", "ja"], fraction=1.0, seed=1, backend="apertium", cache_dir=tmp_path)
