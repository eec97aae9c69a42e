"""CTranslate2: Opus-MT converted to a fast inference engine (int8 on CPU, float16 on GPU), and
Argos Translate packages, which are CTranslate2 models with a sentencepiece model and metadata.

Length: both formats run through the same CTranslate2 translator and tokenizer handling; an Argos package is
only a CTranslate2 model in a zip, so the two stay in one backend."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.translation.backends.base import (
    BatchTranslation,
    ModelInfo,
    Pair,
    TranslationBackend,
    decode_limit,
    folder_fingerprint,
    length_sorted_batches,
)
from tasks.translation.backends.hub import cached_opus_mt_models, fetch_opus_mt, is_hub_id
from tasks.translation.errors import ModelUnavailableError
from tasks.translation.languages import normalize_language

log = logging.getLogger(__name__)

#: Written beside a conversion we made: the source model and its input limit (CTranslate2's own
#: config.json does not keep Marian's position-table size).
SIDECAR = "mcl_conversion.json"
ARGOS_SUFFIX = ".argosmodel"
DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class CT2Model:
    """A CTranslate2 model directory and how to tokenize for it."""

    model_dir: Path
    source_spm: Path
    target_spm: Path
    append_eos: bool  # Marian models expect </s> after the source; OpenNMT (Argos) models do not
    max_tokens: int
    name: str
    version: str
    target_prefix: str | None = None


def argos_packages_dir() -> Path:
    """Where Argos Translate installs packages (``ARGOS_PACKAGES_DIR`` overrides, as in argostranslate)."""
    env = os.environ.get("ARGOS_PACKAGES_DIR")
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return Path(env) if env else data_home / "argos-translate" / "packages"


def _atomic_dir(out_dir: Path, build: Any) -> Path:
    """Build a directory in a sibling temp dir and move it into place, so a crash leaves no half model."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        build(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except OSError:
        if not out_dir.exists():  # a concurrent process that won the race is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def convert_opus_mt(source: str | Path, out_dir: Path, *, quantization: str | None = None) -> Path:
    """Convert a Marian (Opus-MT) folder or hub id with ``ctranslate2.converters.TransformersConverter``.

    ``quantization=None`` keeps float32 weights; the compute type chosen at load time (int8 on CPU,
    float16 on GPU) quantizes on the fly, so one conversion serves both devices.
    """
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoConfig

    def build(tmp: Path) -> None:
        TransformersConverter(str(source), copy_files=["source.spm", "target.spm"]).convert(
            str(tmp), quantization=quantization, force=True)
        config = AutoConfig.from_pretrained(str(source))
        (tmp / SIDECAR).write_text(json.dumps({
            "source": str(source), "max_tokens": int(config.max_position_embeddings), "append_eos": True,
        }), encoding="utf-8")

    return _atomic_dir(Path(out_dir), build)


def _argos_root(folder: Path) -> Path:
    """Argos zips hold one top-level folder; accept the metadata at the root too."""
    if (folder / "metadata.json").is_file():
        return folder
    inner = [p for p in folder.iterdir() if (p / "metadata.json").is_file()]
    if len(inner) != 1:
        raise ModelUnavailableError(f"{folder} is not an Argos Translate package (no metadata.json)")
    return inner[0]


def read_argos_metadata(path: Path) -> dict[str, Any]:
    """metadata.json of a ``.argosmodel`` file or an extracted package, without extracting anything."""
    path = Path(path)
    if path.is_dir():
        return json.loads((_argos_root(path) / "metadata.json").read_text(encoding="utf-8"))
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.rstrip("/").split("/")[-1] == "metadata.json" and n.count("/") <= 1]
            if not names:
                raise ModelUnavailableError(f"{path} is not an Argos Translate package (no metadata.json)")
            return json.loads(archive.read(min(names, key=len)).decode("utf-8"))
    except zipfile.BadZipFile as err:
        raise ModelUnavailableError(f"{path} is not an Argos Translate package (not a zip file)") from err


def argos_pair(path: Path) -> Pair:
    meta = read_argos_metadata(path)
    try:
        return Pair(normalize_language(meta["from_code"]), normalize_language(meta["to_code"]))
    except (KeyError, ValueError) as err:
        raise ModelUnavailableError(f"{path}: metadata.json lacks valid from_code/to_code ({err})") from err


def extract_argos_package(path: Path, extract_root: Path) -> Path:
    """Unzip a ``.argosmodel`` once per file version into ``extract_root``; refuse paths leaving the folder."""
    target = extract_root / f"{Path(path).stem}-{folder_fingerprint(Path(path))}"
    if target.is_dir():
        return _argos_root(target)

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                resolved = (tmp / member).resolve()
                if not resolved.is_relative_to(tmp.resolve()):
                    raise ModelUnavailableError(f"{path}: archive member {member!r} escapes the package folder")
            archive.extractall(tmp)

    return _argos_root(_atomic_dir(target, build))


def _argos_model(root: Path, source: Path) -> CT2Model:
    meta = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
    spm_path = root / "sentencepiece.model"
    if not spm_path.is_file():
        raise ModelUnavailableError(f"{source}: only sentencepiece Argos packages are supported (no sentencepiece.model)")
    if not (root / "model" / "model.bin").is_file():
        raise ModelUnavailableError(f"{source}: no CTranslate2 model in model/")
    return CT2Model(
        model_dir=root / "model", source_spm=spm_path, target_spm=spm_path, append_eos=False,
        max_tokens=int(meta.get("max_length", 1024)),
        name=f"argos {meta.get('from_code')}-{meta.get('to_code')} {meta.get('package_version', '')}".strip(),
        version=f"{meta.get('package_version', '')}-{folder_fingerprint(source)}",
        target_prefix=meta.get("target_prefix") or None,
    )


def _converted_model(folder: Path) -> CT2Model:
    sidecar = folder / SIDECAR
    meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    for name in ("source.spm", "target.spm"):
        if not (folder / name).is_file():
            raise ModelUnavailableError(f"{folder}: a CTranslate2 Opus-MT folder needs {name} beside model.bin "
                                        "(convert with copy_files=['source.spm', 'target.spm'])")
    return CT2Model(
        model_dir=folder, source_spm=folder / "source.spm", target_spm=folder / "target.spm",
        append_eos=bool(meta.get("append_eos", True)), max_tokens=int(meta.get("max_tokens", DEFAULT_MAX_TOKENS)),
        name=str(meta.get("source", folder)), version=folder_fingerprint(folder),
    )


def open_ct2_model(path: Path, work_dir: Path) -> CT2Model:
    """Whatever the operator points at: a ``.argosmodel``, an extracted Argos package, a CTranslate2
    folder, or a Hugging Face Marian folder (converted once into ``work_dir``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return _argos_model(extract_argos_package(path, work_dir / "argos"), path)
    if not path.is_dir():
        raise ModelUnavailableError(f"CTranslate2 model {str(path)!r} does not exist")
    if (path / "model.bin").is_file():
        return _converted_model(path)
    if (path / "metadata.json").is_file() or any((p / "metadata.json").is_file() for p in path.iterdir() if p.is_dir()):
        return _argos_model(_argos_root(path), path)
    if (path / "config.json").is_file() and (path / "source.spm").is_file():
        out = work_dir / "converted" / f"{path.name}-{folder_fingerprint(path)}"
        if not (out / "model.bin").is_file():
            log.info("converting %s to CTranslate2 in %s", path, out)
            convert_opus_mt(path, out)
        return _converted_model(out)
    raise ModelUnavailableError(f"{path} is neither a CTranslate2 model, an Argos package nor a Marian model folder")


@dataclass
class _Loaded:
    info: ModelInfo
    spec: CT2Model
    translator: Any
    source_sp: Any
    target_sp: Any


def resolve_compute(device: str, compute_type: str) -> tuple[str, str]:
    import ctranslate2

    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


class CTranslate2Backend(TranslationBackend):
    """Models per pair (``models``), Argos packages whose metadata names the pair (``packages`` and the
    Argos install folder), and cached Opus-MT hub models, converted on first use."""

    name = "ctranslate2"

    def __init__(
        self,
        models: Mapping[Pair, Path | str] | None = None,
        *,
        packages: Sequence[Path] = (),
        work_dir: Path | None = None,
        device: str = "auto",
        compute_type: str = "auto",
        batch_size: int = 32,
        beam_size: int = 1,
        intra_threads: int = 0,
        scan_installed: bool = True,
    ) -> None:
        self._configured = {Pair(*k): v for k, v in (models or {}).items()}
        self._packages = [Path(p) for p in packages]
        self._work_dir = work_dir
        self.device, self.compute_type = device, compute_type
        self.batch_size, self.beam_size, self.intra_threads = batch_size, beam_size, intra_threads
        self.scan_installed = scan_installed
        self._loaded: dict[Pair, _Loaded] = {}

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            from tasks.settings import get_settings

            self._work_dir = get_settings().cache_dir / "ctranslate2"
        return self._work_dir

    def _sources(self) -> dict[Pair, Path | str]:
        """Every model this backend may use, by pair: explicit models win over packages, packages over the cache."""
        found: dict[Pair, Path | str] = dict(self._configured)
        installed = []
        if self.scan_installed and argos_packages_dir().is_dir():
            installed = sorted(p for p in argos_packages_dir().iterdir() if (p / "metadata.json").is_file())
        for package in [*self._packages, *installed]:
            found.setdefault(argos_pair(package), package)
        if self.scan_installed:
            for pair, folder in cached_opus_mt_models().items():
                found.setdefault(pair, folder)
        return found

    def pairs(self) -> frozenset[Pair]:
        return frozenset(self._sources())

    def prepare(self, pair: Pair) -> ModelInfo:
        if pair in self._loaded:
            return self._loaded[pair].info
        source = self._sources().get(pair)
        if source is None:
            raise ModelUnavailableError(f"no CTranslate2 model or Argos package for {pair}")
        import ctranslate2
        import sentencepiece as spm

        if is_hub_id(source):
            source = fetch_opus_mt(str(source), pair)  # a hub id: the local cache, or a download when online
        spec = open_ct2_model(Path(source), self.work_dir)
        device, compute_type = resolve_compute(self.device, self.compute_type)
        try:
            translator = ctranslate2.Translator(str(spec.model_dir), device=device, compute_type=compute_type,
                                                intra_threads=self.intra_threads)
        except (RuntimeError, ValueError) as err:
            raise ModelUnavailableError(f"CTranslate2 cannot load {spec.model_dir}: {err}") from err
        info = ModelInfo(self.name, spec.name, f"{spec.version}-{compute_type}", spec.max_tokens)
        self._loaded[pair] = _Loaded(info, spec, translator, spm.SentencePieceProcessor(model_file=str(spec.source_spm)),
                                     spm.SentencePieceProcessor(model_file=str(spec.target_spm)))
        log.info("ctranslate2 %s: %s on %s (%s)", pair, spec.name, device, compute_type)
        return info

    def translate(self, texts: Sequence[str], pair: Pair) -> BatchTranslation:
        self.prepare(pair)
        loaded = self._loaded[pair]
        spec, limit = loaded.spec, loaded.spec.max_tokens
        tokens = [t + ["</s>"] if spec.append_eos else t for t in loaded.source_sp.encode(list(texts), out_type=str)]
        truncated = [len(t) > limit for t in tokens]
        tokens = [t if len(t) <= limit else (t[: limit - 1] + ["</s>"] if spec.append_eos else t[:limit]) for t in tokens]
        prefix = [spec.target_prefix] if spec.target_prefix else None
        out: list[str] = [""] * len(texts)
        limits = [decode_limit(len(t), limit) for t in tokens]
        skip = len(prefix) if prefix else 0
        for batch in length_sorted_batches([len(t) for t in tokens], self.batch_size):
            results = loaded.translator.translate_batch(
                [tokens[i] for i in batch], target_prefix=[prefix] * len(batch) if prefix else None,
                beam_size=self.beam_size, max_decoding_length=skip + max(limits[i] for i in batch), max_input_length=0,
            )
            # Each sentence keeps only its own budget, so its translation never depends on its batch-mates.
            for i, result in zip(batch, results):
                out[i] = loaded.target_sp.decode(result.hypotheses[0][skip : skip + limits[i]]).strip()
        return BatchTranslation(out, truncated)

    def install_hints(self, pair: Pair) -> list[str]:
        return [f"an Argos Translate package for {pair} (--model {pair}=/path/to/package{ARGOS_SUFFIX}) or an Opus-MT "
                f"model converted with ct2-transformers-converter"]
