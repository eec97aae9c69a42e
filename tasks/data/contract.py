"""The marketplace data contract: what a marketplace is, which columns its tables carry, and the one error type.

Everything downstream (adapters, fusion, evaluation) trusts these tables, so every reader ends in
``validate_table`` and every problem surfaces as a ``DataValidationError`` that names the file, the data row
and the column before any training starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import pandas as pd

SPLITS = ("train", "valid", "test")
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
MARKETPLACE_FILE = "marketplace.json"

TEXT_COLUMNS = ("query", "product_title")
OPTIONAL_TEXT_COLUMNS = ("product_description", "product_brand")
ID_COLUMNS = ("query_id", "product_id")
LABEL_COLUMN = "label"
ESCI_LABEL_COLUMN = "esci_label"
CONTRACT_COLUMNS = (*TEXT_COLUMNS, LABEL_COLUMN, *ID_COLUMNS, ESCI_LABEL_COLUMN, *OPTIONAL_TEXT_COLUMNS)

# The paper's mapping: Exact and Substitute products are relevant, Complements and Irrelevant ones are not.
ESCI_RELEVANCE = {"E": 1, "S": 1, "C": 0, "I": 0}
ESCI_NAMES = {"exact": "E", "substitute": "S", "complement": "C", "irrelevant": "I"}

# ESCI ships three locales; the marketplace language follows from the locale.
ESCI_LOCALE_LANGUAGE = {"us": "en", "es": "es", "jp": "ja"}


class DataValidationError(ValueError):
    """Bad input, reported once, before any work starts, with enough context to fix it by hand.

    ``row`` counts data rows from 1 as a person reading the file would (the header is not a row); ``line``
    is the physical line of a text file when it differs from what ``row`` suggests (csv, jsonl).
    """

    def __init__(self, file: str, message: str, *, row: int | None = None, column: str | None = None,
                 line: int | None = None, file_kind: str | None = None) -> None:
        self.file = str(file)
        self.row = row
        self.column = column
        self.line = line
        self.message = message
        where = [self.file]
        if row is not None:
            row_text = f"row {row}"
            if line is not None:
                row_text += f" (line {line} of the {file_kind or 'file'})"
            where.append(row_text)
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{where[0]}: " + ", ".join(where[1:]) + (": " if len(where) > 1 else "") + message)


@dataclass(frozen=True, eq=False)
class Marketplace:
    """One marketplace, validated: tables hold the contract columns normalised (label int 0/1, stripped text)."""

    id: str
    language: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    sources: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        """Rows, label balance and distinct queries per split: what an operator checks before training."""
        out: dict[str, Any] = {"id": self.id, "language": self.language, "warnings": list(self.warnings)}
        for name in SPLITS:
            table = self.split(name)
            out[name] = {
                "rows": len(table),
                "positives": int(table[LABEL_COLUMN].sum()),
                "queries": int(table["query"].nunique()),
                "source": self.sources.get(name, ""),
            }
        return out


@lru_cache(maxsize=None)
def load_vocab(name: str) -> dict[str, Any]:
    """A JSON file shipped in ``tasks/data/vocab/`` (package data, so it works from an installed wheel too)."""
    text = resources.files("tasks.data").joinpath("vocab", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)
