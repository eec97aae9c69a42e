"""Backends by name, and the ``--model`` options that hand them local models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from tasks.translation.backends.apertium import ApertiumBackend
from tasks.translation.backends.base import Pair, TranslationBackend
from tasks.translation.backends.ctranslate2 import ARGOS_SUFFIX, CTranslate2Backend, argos_pair
from tasks.translation.backends.hub import opus_mt_pair
from tasks.translation.backends.opus_mt import OpusMTBackend
from tasks.translation.languages import normalize_language, parse_pair

BACKEND_NAMES = ("auto", "opus-mt", "ctranslate2", "apertium")


def model_kind(ref: str | Path) -> str:
    """``marian`` (a transformers folder or hub id), ``ct2`` (a CTranslate2 folder) or ``argos`` (a package)."""
    path = Path(ref).expanduser()
    if path.is_file() or str(ref).endswith(ARGOS_SUFFIX) or (path / "metadata.json").is_file():
        return "argos"
    if (path / "model.bin").is_file():
        return "ct2"
    return "marian"


def parse_model_specs(specs: Mapping[str | tuple[str, str], str | Path] | Iterable[str | Path]) -> dict[Pair, str | Path]:
    """``{"es-en": path}``, ``{("es", "en"): path}`` or ``["es-en=PATH", "PATH.argosmodel", ".../opus-mt-fr-en"]`` -> models by pair.

    A bare path must name its pair itself: Argos metadata, or an ``opus-mt-SRC-TGT`` folder name.
    """
    items = list(specs.items()) if isinstance(specs, Mapping) else [_split_spec(s) for s in specs]
    models: dict[Pair, str | Path] = {}
    for pair_text, ref in items:
        if pair_text is None:
            pair = argos_pair(Path(ref)) if model_kind(ref) == "argos" else opus_mt_pair(Path(ref).name)
            if pair is None:
                raise ValueError(f"cannot tell the language pair of model {str(ref)!r}: write it as SRC-TGT=PATH")
        elif isinstance(pair_text, tuple):
            pair = Pair(*(normalize_language(code) for code in pair_text))
        else:
            pair = Pair(*parse_pair(pair_text))
        models[pair] = ref
    return models


def _split_spec(spec: str | Path) -> tuple[str | None, str | Path]:
    text = str(spec)
    head, sep, tail = text.partition("=")
    return (head, tail) if sep and "/" not in head else (None, spec)


def build_backends(
    name: str = "auto",
    *,
    models: Mapping[Pair, str | Path] | None = None,
    device: str = "auto",
    batch_size: int = 32,
    num_beams: int = 1,
    work_dir: Path | None = None,
    threads: int | None = None,
) -> list[TranslationBackend]:
    """The backends to consult, in preference order. ``auto`` never downloads: it uses what is on this
    machine (given models, the hub cache, Argos packages, Apertium); naming ``opus-mt`` allows a download."""
    models = dict(models or {})
    marian = {p: r for p, r in models.items() if model_kind(r) == "marian"}
    compiled = {p: r for p, r in models.items() if model_kind(r) != "marian"}
    opus = dict(device=device, batch_size=batch_size, num_beams=num_beams, threads=threads)
    ct2 = dict(device=device, batch_size=batch_size, beam_size=num_beams, work_dir=work_dir, intra_threads=threads or 0)
    if name == "auto":
        return [OpusMTBackend(marian, **opus), CTranslate2Backend(compiled, **ct2), ApertiumBackend()]
    if name == "opus-mt":
        if compiled:
            raise ValueError(f"opus-mt takes Marian folders or hub ids; {sorted(map(str, compiled))} need --backend ctranslate2")
        return [OpusMTBackend(marian, allow_download=True, **opus)]
    if name == "ctranslate2":
        return [CTranslate2Backend(models, **ct2)]
    if name == "apertium":
        return [ApertiumBackend()]
    raise ValueError(f"unknown translation backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
