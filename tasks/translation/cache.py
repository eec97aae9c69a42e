"""On-disk translation cache: a rerun or a retried task translates nothing twice.

SQLite in WAL mode: several processes (parallel Prefect tasks, a retry beside a straggler) read
and write one file safely, and every chunk of results is committed as it is produced, so a crash
loses at most the chunk in flight and never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.translation.backends.base import ModelInfo, Pair

CACHE_FILE = "translations.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS translations (
    text_hash TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    backend TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model TEXT NOT NULL,
    translation TEXT NOT NULL,
    truncated INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (text_hash, source, target, backend, model_version)
) WITHOUT ROWID
"""
_LOOKUP_CHUNK = 500  # stays under SQLite's bound-parameter limit


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedTranslation:
    translation: str
    truncated: bool


class TranslationCache:
    """Translations keyed by (text hash, pair, backend, model version); ``cache_dir=None`` keeps them in memory."""

    def __init__(self, cache_dir: Path | None = None, *, timeout_s: float = 60.0) -> None:
        if cache_dir is None:
            self.path: Path | None = None
            self._conn = sqlite3.connect(":memory:")
        else:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self.path = Path(cache_dir) / CACHE_FILE
            self._conn = sqlite3.connect(self.path, timeout=timeout_s)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._set_wal(timeout_s)
            self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._conn:
            self._conn.execute(_SCHEMA)

    def _set_wal(self, timeout_s: float) -> None:
        """Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once,
        without the busy handler, when another process opens the same new cache at that moment: retry until
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def lookup(self, texts: Iterable[str], pair: Pair, model: ModelInfo) -> dict[str, CachedTranslation]:
        by_hash = {text_hash(t): t for t in texts}
        hashes = list(by_hash)
        found: dict[str, CachedTranslation] = {}
        for start in range(0, len(hashes), _LOOKUP_CHUNK):
            chunk = hashes[start : start + _LOOKUP_CHUNK]
            rows = self._conn.execute(
                f"SELECT text_hash, translation, truncated FROM translations WHERE source = ? AND target = ? "
                f"AND backend = ? AND model_version = ? AND text_hash IN ({','.join('?' * len(chunk))})",
                (pair.source, pair.target, model.backend, model.version, *chunk),
            ).fetchall()
            for h, translation, truncated in rows:
                found[by_hash[h]] = CachedTranslation(translation, bool(truncated))
        return found

    def store(self, texts: Sequence[str], translations: Sequence[str], truncated: Sequence[bool], pair: Pair,
              model: ModelInfo) -> None:
        """One transaction per call: all of a chunk's translations land, or none do."""
        now = time.time()
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(text_hash(t), pair.source, pair.target, model.backend, model.version, model.name, out, int(cut), now)
                 for t, out, cut in zip(texts, translations, truncated, strict=True)],
            )

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> TranslationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
