"""Opus-MT (transformers) and CTranslate2 / Argos backends on a tiny random Marian model built here."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tasks.translation import CTranslate2Backend, ModelUnavailableError, OpusMTBackend, Pair, convert_opus_mt
from tasks.translation.backends.base import decode_limit
from tasks.translation.backends.registry import build_backends, model_kind, parse_model_specs
from tasks.translation.tiny_marian import build_tiny_marian

ES_EN = Pair("es", "en")
TEXTS = ["zapatillas de correr para hombre", "botella de agua", "lámpara led", "mochila azul para portátil",
         "funda negra", "juego de 4 cartuchos de tinta"]


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    return build_tiny_marian(tmp_path_factory.mktemp("opus-mt-es-en") / "opus-mt-es-en", TEXTS, max_positions=32)


@pytest.fixture(scope="module")
def converted(marian, tmp_path_factory) -> Path:
    return convert_opus_mt(marian, tmp_path_factory.mktemp("ct2") / "opus-mt-es-en-ct2")


@pytest.fixture(scope="module")
def opus(marian) -> OpusMTBackend:
    backend = OpusMTBackend({ES_EN: marian}, device="cpu", batch_size=4, use_hub_cache=False, threads=1)
    backend.prepare(ES_EN)
    return backend


def test_opus_mt_batches_align_with_single_sentences(opus):
    batched = opus.translate(TEXTS, ES_EN).texts
    one_by_one = [opus.translate([t], ES_EN).texts[0] for t in TEXTS]
    assert batched == one_by_one
    assert len(set(batched)) > 1, "the tiny model should not map every input to the same output"
    assert all(batched)


def test_opus_mt_truncates_and_counts_long_titles(opus):
    info = opus.prepare(ES_EN)
    assert info.max_tokens == 32
    result = opus.translate(["botella de agua", " ".join(["zapatillas"] * 40)], ES_EN)
    assert result.truncated == [False, True]
    assert all(result.texts)


def test_ctranslate2_float32_reproduces_transformers(opus, converted):
    assert (converted / "model.bin").is_file() and (converted / "source.spm").is_file()
    ct2 = CTranslate2Backend({ES_EN: converted}, device="cpu", compute_type="float32", batch_size=4, scan_installed=False, intra_threads=1)
    info = ct2.prepare(ES_EN)
    assert info.max_tokens == 32 and info.version.endswith("float32")
    assert ct2.translate(TEXTS, ES_EN).texts == opus.translate(TEXTS, ES_EN).texts


def test_ctranslate2_int8_default_on_cpu_and_truncation(converted):
    ct2 = CTranslate2Backend({ES_EN: converted}, device="cpu", scan_installed=False, intra_threads=1)
    assert ct2.prepare(ES_EN).version.endswith("int8")
    result = ct2.translate(["botella", " ".join(["zapatillas"] * 40)], ES_EN)
    assert result.truncated == [False, True] and len(result.texts) == 2


def test_ctranslate2_converts_a_marian_folder_once(marian, tmp_path):
    ct2 = CTranslate2Backend({ES_EN: marian}, device="cpu", work_dir=tmp_path, scan_installed=False, intra_threads=1)
    ct2.prepare(ES_EN)
    converted = list((tmp_path / "converted").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.bin").is_file()
    again = CTranslate2Backend({ES_EN: marian}, device="cpu", work_dir=tmp_path, scan_installed=False, intra_threads=1)
    assert again.prepare(ES_EN).version == ct2.prepare(ES_EN).version


def _argos_package(converted: Path, out: Path, from_code: str = "es", to_code: str = "en") -> Path:
    """An Argos Translate package as argospm ships them: a zip of one folder with metadata, model/ and the spm."""
    root = f"translate-{from_code}_{to_code}-1_0"
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(f"{root}/metadata.json", json.dumps({
            "package_version": "1.0", "argos_version": "1.9.0", "from_code": from_code, "to_code": to_code,
            "type": "translate"}))
        archive.write(converted / "source.spm", f"{root}/sentencepiece.model")
        for f in converted.iterdir():
            if f.name in ("model.bin", "config.json", "shared_vocabulary.json"):
                archive.write(f, f"{root}/model/{f.name}")
    return out


def test_argos_package_is_read_from_its_metadata(converted, tmp_path):
    import ctranslate2
    import sentencepiece as spm

    package = _argos_package(converted, tmp_path / "translate-es_en-1_0.argosmodel")
    assert model_kind(package) == "argos"
    assert parse_model_specs([str(package)]) == {ES_EN: str(package)}
    backend = CTranslate2Backend(packages=[package], device="cpu", compute_type="float32",
                                 work_dir=tmp_path / "work", scan_installed=False, intra_threads=1)
    assert backend.pairs() == {ES_EN}
    info = backend.prepare(ES_EN)
    assert info.name == "argos es-en 1.0"
    short = ["botella", "funda negra", "lámpara led"]  # the package declares no length limit; stay within 32 positions
    texts = backend.translate(short, ES_EN).texts
    # Argos (OpenNMT) models take no </s> after the source; check against CTranslate2 called by hand.
    sp = spm.SentencePieceProcessor(model_file=str(converted / "source.spm"))
    translator = ctranslate2.Translator(str(converted), compute_type="float32")
    by_hand = [translator.translate_batch([tokens], beam_size=1, max_decoding_length=decode_limit(len(tokens)))[0]
               for tokens in sp.encode(short, out_type=str)]
    assert texts == [sp.decode(r.hypotheses[0]) for r in by_hand]


def test_argos_package_escaping_its_folder_is_refused(converted, tmp_path):
    package = _argos_package(converted, tmp_path / "evil.argosmodel")
    with zipfile.ZipFile(package, "a") as archive:
        archive.writestr("../outside.txt", "x")
    backend = CTranslate2Backend(packages=[package], device="cpu", work_dir=tmp_path / "work", scan_installed=False, intra_threads=1)
    with pytest.raises(ModelUnavailableError, match="escapes the package folder"):
        backend.prepare(ES_EN)
    assert not (tmp_path / "outside.txt").exists()


def test_hub_model_offline_fails_fast_naming_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    backend = OpusMTBackend(allow_download=True)
    assert backend.pairs() == frozenset() and backend.may_serve(Pair("de", "en"))
    with pytest.raises(ModelUnavailableError) as err:
        backend.prepare(Pair("de", "en"))
    assert "Helsinki-NLP/opus-mt-de-en" in str(err.value) and "--model de-en=" in str(err.value)


def test_hub_cache_models_are_found_offline(monkeypatch, tmp_path, marian):
    snapshot = tmp_path / "models--Helsinki-NLP--opus-mt-es-en" / "snapshots" / "0123abcd"
    shutil.copytree(marian, snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    backend = OpusMTBackend(device="cpu", threads=1)
    assert backend.pairs() == {ES_EN}
    assert backend.prepare(ES_EN).name == "Helsinki-NLP/opus-mt-es-en"


def test_model_specs_and_backend_selection(marian, converted, tmp_path):
    assert parse_model_specs([f"es-en={converted}"]) == {ES_EN: str(converted)}
    assert parse_model_specs([str(marian)]) == {ES_EN: str(marian)}  # the folder is named opus-mt-es-en
    with pytest.raises(ValueError, match="SRC-TGT=PATH"):
        parse_model_specs([str(converted)])  # opus-mt-es-en-ct2 does not name a pair
    specs = parse_model_specs({"spa-eng": marian, "fr-es": converted})
    assert set(specs) == {ES_EN, Pair("fr", "es")}
    auto = build_backends("auto", models=specs, work_dir=tmp_path)
    assert [b.name for b in auto] == ["opus-mt", "ctranslate2", "apertium"]
    assert ES_EN in auto[0].pairs() and Pair("fr", "es") in auto[1].pairs()
    with pytest.raises(ValueError, match="unknown translation backend 'google'"):
        build_backends("google")
