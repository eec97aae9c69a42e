"""Checks that turn a raw table into a contract table, or into one precise error.

Each check finds the FIRST offending data row so the message can name it; a training run that dies an hour
in on row 180,000 is the failure this module exists to prevent.

Length: one check per rule of the data contract, each with its message; they share the row-finding helpers,
so splitting them would scatter the contract across files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tasks.data.contract import (
    CONTRACT_COLUMNS,
    ESCI_LABEL_COLUMN,
    ESCI_NAMES,
    ESCI_RELEVANCE,
    ID_COLUMNS,
    LABEL_COLUMN,
    OPTIONAL_TEXT_COLUMNS,
    TEXT_COLUMNS,
    DataValidationError,
    load_vocab,
)

log = logging.getLogger(__name__)

_LABEL_VALUES = {0: 0, 1: 1, "0": 0, "1": 1}  # True/False hash like 1/0, and 1.0 like 1: all accepted
_BCP47 = re.compile(
    r"^(?P<language>[A-Za-z]{2,3})"
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|\d{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|\d[A-Za-z0-9]{3}))*)$"
)
_MARKETPLACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def iso639_1_codes() -> dict[str, str]:
    return load_vocab("iso639_1")["codes"]


def validate_language(code: object, *, file: str, column: str | None = "language") -> str:
    """A BCP-47 tag whose primary subtag is ISO 639-1, returned in canonical case (``pt-br`` -> ``pt-BR``).

    Only the two-letter primary subtag is accepted because adapters, translation pairs and reports are keyed
    by it; a typo such as ``sp`` would otherwise create a marketplace no translator can reach.
    """
    if not isinstance(code, str) or not code.strip():
        raise DataValidationError(file, f"language {code!r} is not a language code (expected BCP-47, e.g. es, ja, pt-BR)",
                                  column=column)
    tag = code.strip()
    match = _BCP47.match(tag)
    if match is None:
        hint = f"; did you mean {tag.replace('_', '-')!r}?" if "_" in tag else ""
        raise DataValidationError(file, f"language {code!r} is not a BCP-47 tag (e.g. es, ja, pt-BR){hint}",
                                  column=column)
    primary = match["language"].lower()
    codes = iso639_1_codes()
    if len(primary) != 2 or primary not in codes:
        raise DataValidationError(
            file, f"language {code!r}: primary subtag {primary!r} is not an ISO 639-1 code (two letters, e.g. en, es, "
                  f"fr, de, ja; {len(codes)} known)", column=column)
    parts = [primary]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    if match["variants"]:
        parts.extend(v.lower() for v in match["variants"].strip("-").split("-"))
    return "-".join(parts)


def validate_marketplace_id(value: object, *, file: str) -> str:
    """Ids name folders, adapters and MLflow runs, so they must be short, path-safe strings."""
    if not isinstance(value, str) or not _MARKETPLACE_ID.match(value):
        raise DataValidationError(
            file, f"marketplace id {value!r} must be 1-64 letters, digits, '_', '-' or '.', starting with a letter "
                  "or digit", column="id")
    return value


def _row_numbers(df: pd.DataFrame, rows: Sequence[int] | None) -> np.ndarray:
    if rows is None:
        return np.arange(1, len(df) + 1)
    numbers = np.asarray(rows)
    if len(numbers) != len(df):
        raise ValueError(f"rows has {len(numbers)} entries for a table of {len(df)} rows")
    return numbers


class _Reporter:
    """Builds errors that point at the source file's own row (and csv/jsonl line) numbers."""

    def __init__(self, df: pd.DataFrame, file: str, split: str, rows: Sequence[int] | None) -> None:
        self.file = file
        self.split = split
        self.rows = _row_numbers(df, rows)
        self.lines = df.attrs.get("lines")
        self.kind = df.attrs.get("format")

    def row(self, position: int) -> int:
        return int(self.rows[position])

    def error(self, message: str, *, position: int | None = None, column: str | None = None) -> DataValidationError:
        if position is None:
            return DataValidationError(self.file, message, column=column)
        row = self.row(position)
        line = None
        if self.kind in ("csv", "jsonl"):
            line = int(self.lines[row - 1]) if self.lines is not None else row + (1 if self.kind == "csv" else 0)
        return DataValidationError(self.file, message, row=row, column=column, line=line, file_kind=self.kind)


def _first(mask: pd.Series | np.ndarray) -> int | None:
    hits = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(hits[0]) if len(hits) else None


def _describe(value: object) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "a number"
    return f"a {type(value).__name__}"


def _check_columns(df: pd.DataFrame, report: _Reporter) -> None:
    found = ", ".join(map(str, df.columns)) or "none"
    for column in TEXT_COLUMNS:
        if column not in df.columns:
            raise report.error(f"missing required column (found columns: {found})", column=column)
    if LABEL_COLUMN not in df.columns and ESCI_LABEL_COLUMN not in df.columns:
        raise report.error(f"missing required column, and no {ESCI_LABEL_COLUMN!r} to derive it from "
                           f"(found columns: {found})", column=LABEL_COLUMN)
    duplicated = df.columns[df.columns.duplicated()]
    if len(duplicated):
        raise report.error(f"column appears {int((df.columns == duplicated[0]).sum())} times", column=str(duplicated[0]))


def _normalise_text(df: pd.DataFrame, column: str, report: _Reporter, *, required: bool) -> pd.Series:
    values = df[column]
    is_null = values.isna().to_numpy()
    is_text = _is_text(values) | is_null
    position = _first(~is_text)
    if position is not None:
        value = values.iloc[position]
        raise report.error(f"value {_describe(value)} is {_kind(value)}, not text", position=position, column=column)
    text = values.astype("str").str.strip().where(~is_null)
    if not required:
        return text.where(text != "").astype("str")
    position = _first(is_null)
    if position is not None:
        raise report.error("text is missing (null)", position=position, column=column)
    position = _first(text == "")
    if position is not None:
        kind = "empty" if values.iloc[position] == "" else f"whitespace only ({_describe(values.iloc[position])})"
        raise report.error(f"text is {kind}", position=position, column=column)
    return text


def _is_text(values: pd.Series) -> np.ndarray:
    if isinstance(values.dtype, pd.StringDtype):
        return values.notna().to_numpy()
    return values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)


def _esci_letters(df: pd.DataFrame, report: _Reporter) -> pd.Series:
    raw = df[ESCI_LABEL_COLUMN]
    is_text = _is_text(raw)
    cleaned = raw.where(is_text).astype("str").str.strip()
    letters = cleaned.str.lower().map(ESCI_NAMES).fillna(cleaned.str.upper())
    position = _first(~(letters.isin(list(ESCI_RELEVANCE)).to_numpy() & is_text))
    if position is not None:
        raise report.error(f"value {_describe(raw.iloc[position])} is not an ESCI label (expected E, S, C or I)",
                           position=position, column=ESCI_LABEL_COLUMN)
    return letters.astype("str")


def _labels(df: pd.DataFrame, report: _Reporter, esci: pd.Series | None) -> pd.Series:
    if LABEL_COLUMN not in df.columns:
        return esci.map(ESCI_RELEVANCE).astype("int64")
    raw = df[LABEL_COLUMN]
    if pd.api.types.is_bool_dtype(raw.dtype) or pd.api.types.is_numeric_dtype(raw.dtype):
        mapped = raw.where(raw.isin([0, 1]))
    elif isinstance(raw.dtype, pd.StringDtype):
        mapped = raw.str.strip().map(_LABEL_VALUES)
    else:  # mixed Python objects (jsonl): True, 1, "1" and 1.0 all hash alike
        mapped = raw.map(lambda v: v.strip() if isinstance(v, str) else v).map(_LABEL_VALUES)
    position = _first(mapped.isna())
    if position is not None:
        value = raw.iloc[position]
        if pd.isna(value) or (isinstance(value, str) and not value.strip()):
            shown = "empty label" if isinstance(value, str) else "missing label (null)"
        else:
            shown = f"value {_describe(value)}"
        raise report.error(f"{shown} is not a relevance label (expected 0/1, or E/S/C/I in {ESCI_LABEL_COLUMN})",
                           position=position, column=LABEL_COLUMN)
    return mapped.astype("int64")


def pair_keys(df: pd.DataFrame) -> tuple[pd.Series, str]:
    """(query, product) identities; products by id when every row has one, else by title.

    Ids are preferred because real catalogues list distinct products (variants) under identical titles.
    """
    if "product_id" in df.columns and df["product_id"].notna().all():
        product_column = "product_id"
    else:
        product_column = "product_title"
    keys = df["query"].astype("str") + "\x1f" + df[product_column].astype("str")
    return keys, product_column


def _check_duplicates(table: pd.DataFrame, report: _Reporter) -> None:
    keys, product_column = pair_keys(table)
    repeated = keys.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return
    position = _first(keys.duplicated(keep="first"))
    first = int(np.flatnonzero((keys == keys.iloc[position]).to_numpy())[0])
    labels = table[LABEL_COLUMN]
    pair = f"query {_describe(table['query'].iloc[position])}, {product_column} {_describe(table[product_column].iloc[position])}"
    if labels.iloc[first] != labels.iloc[position]:
        problem = (f"conflicting duplicate of row {report.row(first)}: same {pair} but label "
                   f"{labels.iloc[position]} here and {labels.iloc[first]} there")
    else:
        problem = f"duplicate of row {report.row(first)}: same {pair}"
    n_extra = int(keys.duplicated(keep="first").sum())
    more = f" ({n_extra} repeated pairs in split {report.split!r})" if n_extra > 1 else ""
    raise report.error(problem + more, position=position, column=product_column)


def _check_classes(labels: pd.Series, report: _Reporter) -> None:
    present = sorted(set(labels.unique().tolist()))
    if len(present) < 2:
        raise report.error(f"split {report.split!r} has only label {present[0]} ({len(labels)} rows); training and "
                           "ROC-AUC need both relevant (1) and irrelevant (0) pairs", column=LABEL_COLUMN)


def validate_table(df: pd.DataFrame, *, file: str, split: str, rows: Sequence[int] | None = None) -> pd.DataFrame:
    """Return the contract table (label int 0/1, stripped text, contract columns first, extras kept) or raise.

    ``rows`` gives each row's 1-based number in the source file when ``df`` is a subset of it (the ESCI loader
    filters by locale and split); without it row numbers count ``df``'s own rows.
    """
    file = str(file)
    report = _Reporter(df, file, split, rows)
    _check_columns(df, report)
    if len(df) == 0:
        raise report.error(f"split {split!r} has no data rows")
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for column in TEXT_COLUMNS:
        out[column] = _normalise_text(df, column, report, required=True).to_numpy()
    esci = _esci_letters(df, report) if ESCI_LABEL_COLUMN in df.columns else None
    out[LABEL_COLUMN] = _labels(df, report, esci).to_numpy()
    for column in ID_COLUMNS:
        if column in df.columns:
            ids = df[column]
            out[column] = ids.astype("str").where(ids.notna()).astype("str").to_numpy()
    if esci is not None:
        out[ESCI_LABEL_COLUMN] = esci.to_numpy()
    for column in OPTIONAL_TEXT_COLUMNS:
        if column in df.columns:
            out[column] = _normalise_text(df, column, report, required=False).to_numpy()
    for column in df.columns:
        if column not in CONTRACT_COLUMNS:
            out[column] = df[column].to_numpy()
    for column in (*TEXT_COLUMNS, *ID_COLUMNS, *OPTIONAL_TEXT_COLUMNS, ESCI_LABEL_COLUMN):
        if column in out.columns:
            out[column] = out[column].astype("str")
    _check_duplicates(out, report)
    _check_classes(out[LABEL_COLUMN], report)
    return out


def leakage_warnings(tables: dict[str, pd.DataFrame], sources: dict[str, str], *,
                     rows: dict[str, Sequence[int]] | None = None,
                     pairs: Sequence[tuple[str, str]] = (("train", "test"), ("train", "valid"))) -> tuple[str, ...]:
    """Counted warnings for query-product pairs shared between splits.

    Leakage inflates the very ROC-AUC the continual-learning matrix is built from, but a few shared pairs are
    common in scraped data, so it is reported with a count and an example rather than refused. ``rows`` maps a
    split to its tables' source row numbers when those differ from positions (see ``validate_table``).
    """
    rows = rows or {}
    warnings = []
    for a, b in pairs:
        left, right = tables[a], tables[b]
        by_id = all("product_id" in t.columns and t["product_id"].notna().all() for t in (left, right))
        column = "product_id" if by_id else "product_title"
        keys_left = left["query"].astype("str") + "\x1f" + left[column].astype("str")
        keys_right = right["query"].astype("str") + "\x1f" + right[column].astype("str")
        shared = keys_right.isin(set(keys_left)).to_numpy()
        count = int(shared.sum())
        if not count:
            continue
        position = int(np.flatnonzero(shared)[0])
        example_left = int(np.flatnonzero((keys_left == keys_right.iloc[position]).to_numpy())[0])
        message = (f"leakage: {count} query-product pair{'s' if count != 1 else ''} of {b} ({sources.get(b, b)}) "
                   f"also appear{'s' if count == 1 else ''} in {a} ({sources.get(a, a)}), e.g. {b} row "
                   f"{_source_row(rows.get(b), position)} = {a} row {_source_row(rows.get(a), example_left)} "
                   f"(query {_describe(right['query'].iloc[position])}); {b} scores will be optimistic")
        log.warning(message)
        warnings.append(message)
    return tuple(warnings)


def _source_row(rows: Sequence[int] | None, position: int) -> int:
    return int(rows[position]) if rows is not None else position + 1
