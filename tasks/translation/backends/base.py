"""The one interface every translation backend implements, and helpers the neural ones share."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

from tasks.translation.languages import normalize_language


class Pair(NamedTuple):
    """One translation direction, in BCP-47 primary subtags."""

    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.source}-{self.target}"

    @classmethod
    def from_codes(cls, source: str, target: str) -> Pair | None:
        """The pair named by two language codes from a model or mode name; None when either is no language."""
        try:
            return cls(normalize_language(source), normalize_language(target))
        except ValueError:
            return None


@dataclass(frozen=True)
class ModelInfo:
    """What translated a text: goes into the cache key (``version``) and the provenance columns (``name``)."""

    backend: str
    name: str
    version: str
    max_tokens: int | None = None


@dataclass(frozen=True)
class BatchTranslation:
    texts: list[str]
    truncated: list[bool]


class TranslationBackend(ABC):
    """A family of translation models that can serve some language pairs.

    ``pairs`` must be cheap and must not touch the network: routing asks every backend before any
    work starts. ``prepare`` loads or locates the model for one pair and is the place to fail
    (``ModelUnavailableError``) so that nothing is half-translated when a model is missing.
    """

    name: ClassVar[str]
    #: Texts per call to ``translate``; each call's results are cached before the next starts.
    chunk_size: ClassVar[int] = 256

    @abstractmethod
    def pairs(self) -> frozenset[Pair]:
        """Pairs this backend can serve right now, without network access."""

    def may_serve(self, pair: Pair) -> bool:
        """Whether ``prepare`` might obtain a model for a pair not in ``pairs()`` (e.g. a hub download)."""
        return False

    @abstractmethod
    def prepare(self, pair: Pair) -> ModelInfo:
        """Load or locate the model for ``pair``; raise ``ModelUnavailableError`` when impossible."""

    @abstractmethod
    def translate(self, texts: Sequence[str], pair: Pair) -> BatchTranslation:
        """Translate non-empty one-line texts; the result is aligned with the input."""

    def install_hints(self, pair: Pair) -> list[str]:
        """Packages or models that would let this backend serve ``pair``."""
        return []


def folder_fingerprint(path: Path) -> str:
    """A version string for a model folder or file that changes when any of its files is rewritten.

    Names, sizes and modification times rather than contents: hashing hundreds of megabytes of
    weights on every run would cost more than the cache saves on small subsets.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches, longest inputs first: similar lengths share a batch so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def decode_limit(input_tokens: int, cap: int | None = None) -> int:
    """Most tokens to generate for one sentence: titles translate to similar lengths, and a bound stops
    a degenerate model from looping to the model maximum on every sentence."""
    limit = int(1.5 * input_tokens) + 10
    return min(limit, cap) if cap else limit
