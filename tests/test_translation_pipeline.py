"""translate_subset end to end on tiny Marian models: provenance, bad input, routing and the cache."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from tasks.data import DataValidationError
from tasks.translation import NoRouteError, OpusMTBackend, Pair, TranslationCache, find_route, translate_subset
from tasks.translation.backends.base import ModelInfo
from tasks.translation.tiny_marian import build_tiny_marian

ES = ["zapatillas de correr", "botella de agua", "lámpara led", "mochila azul", "funda negra", "cartuchos de tinta"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("marian")
    return {pair: build_tiny_marian(root / pair, ES, max_positions=24, seed=i)
            for i, pair in enumerate(["es-en", "fr-es", "es-de"])}


def _table() -> pd.DataFrame:
    rows = []
    for q, query in enumerate(ES):
        for p, title in enumerate(ES[q:] + ES[:q]):
            rows.append({"query_id": f"q{q}", "product_id": f"p{q}{p}", "query": query,
                         "product_title": title if p != 1 else f"{title} extra", "label": int(p < 2)})
    rows.append({"query_id": "q9", "product_id": "p90", "query": "", "product_title": " ".join(["lámpara"] * 40),
                 "label": 1})
    return pd.DataFrame(rows)


class CountingOpusMT(OpusMTBackend):
    """The real backend, counting the texts it is asked to translate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def translate(self, texts, pair):
        self.sent.extend(texts)
        return super().translate(texts, pair)


def _backend(models, *pairs: str) -> CountingOpusMT:
    return CountingOpusMT({Pair(*p.split("-")): models[p] for p in pairs}, device="cpu", use_hub_cache=False, threads=1)


def test_translated_tables_keep_labels_ids_and_record_provenance(models, tmp_path):
    data = _table()
    backend = _backend(models, "es-en")
    result = translate_subset(data, "es", ["en"], fraction=1.0, seed=13, backend=[backend], cache_dir=tmp_path)
    en, report = result["en"], result.reports["en"]
    assert list(result) == ["en"]
    assert en[["query_id", "product_id", "label"]].equals(data[["query_id", "product_id", "label"]])
    assert en["original_query"].tolist() == data["query"].tolist()
    # every cell is the backend's translation of that very text (the source where the model returned nothing)
    by_hand = dict(zip(ES, backend.translate(ES, Pair("es", "en")).texts))
    assert en["query"].iloc[:-1].tolist() == [by_hand[q] or q for q in data["query"].iloc[:-1]]
    assert report.empty_output == sum(1 for q in ES if not by_hand[q]) + sum(
        1 for t in set(data["product_title"]) - set(ES) if not backend.translate([t], Pair("es", "en")).texts[0])
    assert set(en["translation_backend"]) == {"opus-mt"} and set(en["translation_route"]) == {"es>en"}
    assert en["translation_model"].iloc[0].startswith(f"es-en: {models['es-en']} (")
    assert set(en["source_language"]) == {"es"}
    # same source text -> same translation, wherever it appears
    pairs = dict(zip(en["original_product_title"], en["product_title"]))
    assert all(pairs[o] == t for o, t in zip(en["original_product_title"], en["product_title"]))
    # the empty query passes through untranslated and is counted; the 40-word title is truncated and counted
    assert en["query"].iloc[-1] == "" and report.empty == {"query": 1, "product_title": 0}
    assert report.truncated == 1
    assert report.unique_texts == len(set(data["query"]) - {""} | set(data["product_title"]))


def test_rerun_and_retry_translate_nothing_twice(models, tmp_path):
    data = _table()
    first_backend = _backend(models, "es-en")
    first = translate_subset(data, "es", "en", fraction=1.0, seed=13, backend=[first_backend], cache_dir=tmp_path)
    assert len(first_backend.sent) == first.reports["en"].unique_texts
    rerun_backend = _backend(models, "es-en")
    again = translate_subset(data, "es", "en", fraction=1.0, seed=13, backend=[rerun_backend], cache_dir=tmp_path)
    assert rerun_backend.sent == [] and again.reports["en"].translated == 0
    assert again.reports["en"].cache_hits == first.reports["en"].unique_texts
    assert again["en"].equals(first["en"])
    assert again.reports["en"].truncated == 1  # remembered by the cache


def test_cache_is_keyed_by_model_version(models, tmp_path):
    data = _table().head(6)
    translate_subset(data, "es", "en", fraction=1.0, seed=13, backend=[_backend(models, "es-en")], cache_dir=tmp_path)
    (models["es-en"] / "generation_config.json").touch()  # a new model version
    backend = _backend(models, "es-en")
    translate_subset(data, "es", "en", fraction=1.0, seed=13, backend=[backend], cache_dir=tmp_path)
    assert backend.sent, "a different model version must not reuse old translations"


def test_routes_through_an_intermediate_language_and_reuses_hops(models, tmp_path):
    backend = _backend(models, "es-en", "fr-es", "es-de")
    route = find_route("fr", "en", [backend])
    assert str(route) == "fr>es>en"
    data = _table().head(12)
    result = translate_subset(data, "fr", ["es", "en", "de"], fraction=1.0, seed=13, backend=[backend], cache_dir=tmp_path)
    assert [result[t]["translation_route"].iloc[0] for t in ("es", "en", "de")] == ["fr>es", "fr>es>en", "fr>es>de"]
    n = result.reports["es"].unique_texts
    assert result.reports["en"].cache_hits == n and result.reports["de"].cache_hits == n  # fr>es done once
    # the en table is exactly es->en applied to the es table
    direct = translate_subset(result["es"].assign(query_id=data["query_id"]), "es", "en", fraction=1.0, seed=13,
                              backend=[backend], cache_dir=tmp_path)
    assert direct["en"]["query"].tolist() == result["en"]["query"].tolist()


def test_same_language_is_copied_and_unknown_pairs_fail_first(models, tmp_path):
    data = _table().head(6)
    backend = _backend(models, "es-en")
    result = translate_subset(data, "es", ["es"], fraction=1.0, seed=13, backend=[backend])
    assert result["es"]["query"].tolist() == data["query"].tolist() and backend.sent == []
    assert set(result["es"]["translation_backend"]) == {"identity"}
    with pytest.raises(NoRouteError, match=r"from 'es' to 'ja'.*Available pairs: es-en \(opus-mt\).*opus-mt-es-ja"):
        translate_subset(data, "es", ["en", "ja"], fraction=0.3, seed=13, backend=[backend], cache_dir=tmp_path)
    assert backend.sent == [] and not (tmp_path / "translations.sqlite3").exists()


@pytest.mark.parametrize("change, row, column, fragment", [
    (lambda d: d.drop(columns=["product_title"]), None, "product_title", "missing column"),
    (lambda d: d.assign(query=[*d["query"][:3], 42, *d["query"][4:]]), 4, "query", "42 is not text"),
    (lambda d: d.assign(label=[*d["label"][:6], "maybe", *d["label"][7:]]), 7, "label", "'maybe' is not a relevance label"),
    (lambda d: d.assign(label=[*d["label"][:1], 2, *d["label"][2:]]), 2, "label", "2 is not a relevance label"),
])
def test_bad_input_is_one_error_naming_file_row_and_column(models, tmp_path, change, row, column, fragment):
    backend = _backend(models, "es-en")
    with pytest.raises(DataValidationError) as err:
        translate_subset(change(_table()), "es", ["en"], fraction=0.3, seed=13, backend=[backend], cache_dir=tmp_path,
                         source_name="es/train.csv")
    assert (err.value.file, err.value.row, err.value.column) == ("es/train.csv", row, column)
    assert fragment in str(err.value) and str(err.value).startswith("es/train.csv: ")
    assert backend.sent == []


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, "fraction must be in"), ({"target_langs": ["zz"]}, "not a registered BCP-47"),
    ({"target_langs": []}, "no target language"), ({"backend": "babelfish"}, "unknown translation backend"),
])
def test_bad_arguments_are_refused(kwargs, message):
    args = {"data": _table(), "source_lang": "es", "target_langs": ["en"], "fraction": 0.3, "seed": 13,
            "backend": "auto", **kwargs}
    with pytest.raises(ValueError, match=message):
        translate_subset(**args)


def test_cache_survives_concurrent_writers(tmp_path):
    info = ModelInfo("opus-mt", "m", "v1")
    pair = Pair("es", "en")

    def write(worker: int) -> None:
        with TranslationCache(tmp_path) as cache:
            for chunk in range(20):
                texts = [f"w{worker}-{chunk}-{i}" for i in range(25)]
                cache.store(texts, [t.upper() for t in texts], [False] * len(texts), pair, info)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with TranslationCache(tmp_path) as cache:
        assert len(cache) == 4 * 20 * 25
        found = cache.lookup(["w3-19-24", "w0-0-0", "never"], pair, info)
        assert {k: v.translation for k, v in found.items()} == {"w3-19-24": "W3-19-24", "w0-0-0": "W0-0-0"}
        assert cache.lookup(["w0-0-0"], pair, ModelInfo("opus-mt", "m", "v2")) == {}
        assert cache._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
