"""Bad input: each case is ONE DataValidationError naming the file, the data row and the column."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tasks.data import DataValidationError, load_marketplace, read_table, validate_language, validate_table

HEADER = "query,product_title,label\n"
GOOD_ROWS = ["red shoe,Red running shoe,1", "blue cup,Blue ceramic cup,1", "red shoe,Blue ceramic cup,0",
             "green lamp,Green desk lamp,1", "green lamp,Red running shoe,0", "blue cup,Green desk lamp,0"]


def _csv(rows: list[str], header: str = HEADER) -> str:
    return header + "\n".join(rows) + "\n"


def _with_row(index: int, row: str) -> list[str]:
    """GOOD_ROWS with data row ``index`` (1-based) replaced."""
    rows = list(GOOD_ROWS)
    rows[index - 1] = row
    return rows


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    return sink.getvalue()


def _good_frame() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_csv(GOOD_ROWS)))


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _good_records() -> list[dict]:
    return _good_frame().to_dict("records")


def _null_title() -> bytes:
    df = _good_frame().astype({"product_title": object})
    df.loc[2, "product_title"] = None
    return _parquet_bytes(df)


def _numeric_query_parquet() -> bytes:
    df = _good_frame()
    df["query"] = range(100, 100 + len(df))
    return _parquet_bytes(df)


def _numeric_query_jsonl() -> str:
    records = _good_records()
    records[3]["query"] = 12345
    return _jsonl(records)


def _whitespace_title() -> str:
    records = _good_records()
    records[1]["product_title"] = "   \t "
    return _jsonl(records)


def _truncated_jsonl() -> str:
    text = _jsonl(_good_records())
    return text[: text.rstrip("\n").rfind('"label"') + 4]  # the last line cut mid-key


def _non_object_jsonl() -> str:
    lines = _jsonl(_good_records()).splitlines()
    lines.insert(2, "[1, 2, 3]")
    return "\n".join(lines) + "\n"


def _label_two() -> bytes:
    df = _good_frame()
    df.loc[1, "label"] = 2
    return _parquet_bytes(df)


def _truncated_parquet() -> bytes:
    data = _parquet_bytes(_good_frame())
    return data[: len(data) // 2]


def _esci_letters(bad: str) -> str:
    rows = ["red shoe,Red running shoe,E", "blue cup,Blue ceramic cup,S", f"red shoe,Blue ceramic cup,{bad}",
            "green lamp,Red running shoe,C"]
    return _csv(rows, header="query,product_title,esci_label\n")


# name -> (file name, content, expected row, expected column, text the message must contain)
CASES = {
    "missing required column": ("train.csv", "query,label\nred shoe,1\n", None, "product_title",
                                "found columns: query, label"),
    "missing label and esci_label": ("train.csv", "query,product_title\nred shoe,Red shoe\n", None, "label",
                                     "found columns: query, product_title"),
    "empty text": ("train.csv", _csv(_with_row(3, ",Blue ceramic cup,0")), 3, "query", "text is empty"),
    "whitespace-only text": ("train.jsonl", _whitespace_title(), 2, "product_title", "whitespace only"),
    "null text": ("train.parquet", _null_title(), 3, "product_title", "missing (null)"),
    "number as text (jsonl)": ("train.jsonl", _numeric_query_jsonl(), 4, "query", "12345 is a number, not text"),
    "number column (parquet)": ("train.parquet", _numeric_query_parquet(), 1, "query", "100 is a number, not text"),
    "label not a label": ("train.csv", _csv(GOOD_ROWS + ["red shoe,Green desk lamp,maybe"]), 7, "label",
                          "value 'maybe' is not a relevance label (expected 0/1, or E/S/C/I in esci_label)"),
    "label outside 0/1": ("train.parquet", _label_two(), 2, "label", "value 2 is not a relevance label"),
    "missing label": ("train.csv", _csv(_with_row(5, "green lamp,Red running shoe,")), 5, "label",
                      "empty label is not a relevance label"),
    "esci letter unknown": ("train.csv", _esci_letters("X"), 3, "esci_label", "'X' is not an ESCI label"),
    "single class": ("train.csv", _csv([r for r in GOOD_ROWS if r.endswith(",1")]), None, "label",
                     "has only label 1 (3 rows)"),
    "duplicate pair": ("train.csv", _csv(GOOD_ROWS + ["blue cup,Blue ceramic cup,1"]), 7, "product_title",
                       "duplicate of row 2"),
    "conflicting duplicate": ("train.csv", _csv(GOOD_ROWS + ["red shoe,Red running shoe,0"]), 7, "product_title",
                              "conflicting duplicate of row 1"),
    "extra csv field": ("train.csv", _csv(_with_row(4, "green lamp,Green, desk lamp,1")), 4, None,
                        "4 fields where the header has 3"),
    "truncated jsonl line": ("train.jsonl", _truncated_jsonl(), 6, None, "the line looks truncated"),
    "jsonl line not an object": ("train.jsonl", _non_object_jsonl(), 3, None, "JSON list, not an object"),
    "not parquet (garbage)": ("train.parquet", b"this is not parquet at all" * 10, None, None,
                              "not a parquet file"),
    "truncated parquet": ("train.parquet", _truncated_parquet(), None, None, "truncated parquet file"),
    "binary garbage as csv": ("train.csv", bytes(range(256)) * 4, None, None, "binary data"),
    "not utf-8": ("train.csv", _csv(GOOD_ROWS).encode() + "café,Café crème,1\n".encode("latin-1"), None, None,
                  "line 8 is not UTF-8"),
    "empty file": ("train.csv", b"", None, None, "empty file"),
    "header only": ("train.csv", HEADER, None, None, "has no data rows"),
    "unsupported extension": ("train.xlsx", b"PK\x03\x04", None, None, "unsupported file type '.xlsx'"),
}


def _check(path: Path, split: str = "train") -> pd.DataFrame:
    return validate_table(read_table(path), file=str(path), split=split)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_row_and_column(tmp_path: Path, case: str) -> None:
    name, content, row, column, text = CASES[case]
    path = tmp_path / "es" / name
    path.parent.mkdir()
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    with pytest.raises(DataValidationError) as caught:
        _check(path)
    err = caught.value
    message = str(err)
    assert message.startswith(str(path) + ":"), message
    assert err.file == str(path)
    assert err.row == row, message
    assert err.column == column, message
    if row is not None:
        assert f"row {row}" in message
    if column is not None:
        assert f"column {column!r}" in message
    assert text in message
    assert "\n" not in message  # one line, fit for a terminal


def test_at_least_fifteen_distinct_cases() -> None:
    assert len(CASES) >= 15


def test_missing_file_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "train.parquet"
    with pytest.raises(DataValidationError, match="no such file") as caught:
        read_table(missing)
    assert caught.value.file == str(missing)


def test_csv_rows_are_named_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(_csv(GOOD_ROWS + ["red shoe,Green desk lamp,maybe"]))
    with pytest.raises(DataValidationError) as caught:
        _check(path)
    assert str(caught.value) == (f"{path}: row 7 (line 8 of the csv), column 'label': value 'maybe' is not a "
                                 "relevance label (expected 0/1, or E/S/C/I in esci_label)")


def test_multiline_csv_fields_shift_lines_not_rows(tmp_path: Path) -> None:
    rows = ['red shoe,"Red running shoe\nwith laces",1', "blue cup,Blue ceramic cup,1", "", "red shoe,,0"]
    path = tmp_path / "train.csv"
    path.write_text(_csv(rows))
    with pytest.raises(DataValidationError) as caught:
        _check(path)
    assert (caught.value.row, caught.value.line) == (3, 6)
    assert "row 3 (line 6 of the csv), column 'product_title'" in str(caught.value)


def test_jsonl_blank_lines_keep_row_numbers_human(tmp_path: Path) -> None:
    records = _good_records()
    records[4]["product_title"] = ""
    text = _jsonl(records[:2]) + "\n\n" + _jsonl(records[2:])
    path = tmp_path / "valid.jsonl"
    path.write_text(text)
    with pytest.raises(DataValidationError) as caught:
        _check(path, split="valid")
    assert (caught.value.row, caught.value.line) == (5, 7)


@pytest.mark.parametrize("code, message", [
    ("xx", "'xx' is not an ISO 639-1 code"),
    ("english", "is not a BCP-47 tag"),
    ("pt_BR", "did you mean 'pt-BR'"),
    ("eng", "'eng' is not an ISO 639-1 code"),
    ("", "is not a language code"),
    ("es-Spain-", "is not a BCP-47 tag"),
])
def test_invalid_language_codes(code: str, message: str) -> None:
    with pytest.raises(DataValidationError, match=message) as caught:
        validate_language(code, file="data/es/marketplace.json")
    assert caught.value.column == "language"
    assert str(caught.value).startswith("data/es/marketplace.json: column 'language': ")


@pytest.mark.parametrize("code, canonical", [("es", "es"), ("JA", "ja"), ("pt-br", "pt-BR"),
                                             ("zh-hant-tw", "zh-Hant-TW"), ("es-419", "es-419")])
def test_valid_language_codes_are_canonicalised(code: str, canonical: str) -> None:
    assert validate_language(code, file="x") == canonical


def test_unknown_language_fails_the_marketplace_before_reading(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="'xx' is not an ISO 639-1 code"):
        load_marketplace("es", "xx", tmp_path / "missing.csv", tmp_path / "missing.csv", tmp_path / "missing.csv")


def test_train_test_leakage_is_a_counted_warning(tmp_path: Path) -> None:
    train = _good_frame()
    test = pd.concat([train.iloc[[0, 2]], pd.DataFrame(
        {"query": ["white mug"], "product_title": ["White mug"], "label": [1]})], ignore_index=True)
    test.loc[2, "label"] = 1
    marketplace = load_marketplace("es", "es", train, train.iloc[[3, 4]], test)
    assert len(marketplace.warnings) == 2  # train/test and train/valid
    assert marketplace.warnings[0].startswith("leakage: 2 query-product pairs of test")
    assert "test row 1 = train row 1" in marketplace.warnings[0]
    assert marketplace.warnings[1].startswith("leakage: 2 query-product pairs of valid")


def test_bad_split_anywhere_fails_before_a_marketplace_is_returned(tmp_path: Path) -> None:
    good = tmp_path / "train.csv"
    good.write_text(_csv(GOOD_ROWS))
    bad = tmp_path / "test.csv"
    bad.write_text(_csv(_with_row(2, "blue cup,Blue ceramic cup,yes")))
    with pytest.raises(DataValidationError) as caught:
        load_marketplace("es", "es", good, good, bad)
    assert (caught.value.file, caught.value.row, caught.value.column) == (str(bad), 2, "label")


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    from flows.commands.data import app

    good = tmp_path / "train.csv"
    good.write_text(_csv(GOOD_ROWS))
    bad = tmp_path / "bad.csv"
    bad.write_text(_csv(GOOD_ROWS + ["red shoe,Green desk lamp,maybe"]))
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(good), "--language", "es"])
    assert ok.exit_code == 0, ok.output
    assert "valid" in ok.output and "6" in ok.output and "50.0%" in ok.output
    failed = runner.invoke(app, ["validate", str(bad)])
    assert failed.exit_code == 1
    assert "row 7 (line 8 of the csv), column 'label'" in " ".join(failed.output.split())
    assert "Traceback" not in failed.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such folder" in missing.output
