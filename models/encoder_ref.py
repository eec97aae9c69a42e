"""A resolved encoder and its checksum: the identity every saved model and cache key refers to.

Kept apart from :mod:`models.encoders` (which resolves names) so the embedded encoder's converter
(:mod:`models.e5_q4`) can build references without importing the resolver that calls it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "multilingual-e5-small"

CHECKSUM_SIDECAR = "checksums.json"
WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")
_HASH_CHUNK = 1 << 22


class EncoderNotFoundError(FileNotFoundError):
    """An encoder name that resolves to nothing usable; the message says what to use instead."""


@dataclass(frozen=True)
class EncoderRef:
    """A resolved encoder: a folder ``from_pretrained`` can load, and the checksum of its weights."""

    name: str
    path: Path
    checksum: str


def sha256_file(path: Path) -> str:
    """Streamed, so hashing a 470 MB weights file does not hold it in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """Safetensors when present (possibly sharded), else PyTorch pickles; never both twice."""
    for pattern in WEIGHT_PATTERNS:
        found = sorted(p for p in Path(folder).glob(pattern) if p.is_file())
        if found:
            return found
    return []


def _combine(digests: Sequence[tuple[str, str]]) -> str:
    """One file: its own sha256 (comparable with ``sha256sum``); shards: a hash over name:digest lines."""
    if len(digests) == 1:
        return digests[0][1]
    lines = "".join(f"{name}:{digest}\n" for name, digest in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def _read_sidecar(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def folder_checksum(folder: Path, cache_dir: Path) -> str:
    """Checksum of a folder's weights, re-hashed only when a file's size or mtime changed.

    Hashing mBERT's 700 MB on every resolve would dominate short commands, so digests are cached
    in ``<cache_dir>/encoders/checksums.json`` keyed by the resolved file path, size and mtime.
    The cache lives in our cache dir: the user's encoder folder is never written to.
    """
    files = weight_files(folder)
    if not files:
        raise EncoderNotFoundError(
            f"{folder} holds no weights (expected model.safetensors, model-*.safetensors or pytorch_model*.bin)"
        )
    sidecar = Path(cache_dir) / "encoders" / CHECKSUM_SIDECAR
    cache = _read_sidecar(sidecar)
    digests, changed = [], False
    for file in files:
        real = file.resolve()  # hub snapshots are symlinks into a blob store
        stat = real.stat()
        entry = cache.get(str(real))
        if not (isinstance(entry, dict) and entry.get("size") == stat.st_size
                and entry.get("mtime_ns") == stat.st_mtime_ns and isinstance(entry.get("sha256"), str)):
            log.info("hashing %s (%d MB)", real, stat.st_size >> 20)
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(real)}
            cache[str(real)] = entry
            changed = True
        digests.append((file.name, entry["sha256"]))
    if changed:
        _write_json_atomic(sidecar, cache)
    return _combine(digests)


