"""Content fingerprints: the identity of data and configuration that task caches and registry tags key on.

A cache key must change when (and only when) what a step computes from changes: the rows of a
table, a hyper-parameter, the teacher model. File names and modification times are not part of
a table's identity, so tables are hashed by content (pandas' stable row hashing), not by path.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

CONTRACT_COLUMNS = ("query", "product_title", "label")
#: The project's root: ``models/`` and ``tasks/`` hold everything a cached step computes with.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPUTING_PACKAGES = ("models", "tasks")
COMPUTING_LIBRARIES = ("torch", "transformers", "adapters", "scikit-learn")


def table_hash(table: pd.DataFrame, columns: Sequence[str] = CONTRACT_COLUMNS) -> str:
    """sha256 over the contract columns' values in row order (what training actually reads)."""
    present = [c for c in columns if c in table.columns]
    rows = pd.util.hash_pandas_object(table[present].reset_index(drop=True), index=False).to_numpy()
    digest = hashlib.sha256(",".join(present).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return {"table": table_hash(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"dataclass": type(value).__name__, **_canonical(dataclasses.asdict(value))}
    if isinstance(value, BaseModel):
        return {"model": type(value).__name__, **_canonical(value.model_dump())}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot fingerprint a {type(value).__name__}; pass plain data, tables, dataclasses or pydantic models")


def fingerprint(*parts: Any) -> str:
    """A stable sha256 of plain values, dataclasses, pydantic models and tables (tables by content)."""
    blob = json.dumps([_canonical(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def folder_hash(folder: str | Path) -> str:
    """sha256 over every file (relative path + bytes) of a folder, for model folders passed between steps."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def code_fingerprint(root: Path = PROJECT_ROOT) -> str:
    """sha256 over the source of the computing packages under ``root`` and the versions of the libraries they run on.

    A step's key holds its data and configuration; this holds the code. Without it a fixed loss or a changed
    training loop would be answered from results an older version cached (the cache outlives checkouts: it lives
    under the cache dir and Prefect's result storage), and nothing would say so.
    """
    digest = hashlib.sha256()
    for package in COMPUTING_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    for library in COMPUTING_LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
    return digest.hexdigest()
