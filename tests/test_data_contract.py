"""The data contract: readers round-trip, labels normalise, folders and data roots assemble marketplaces."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.data import (
    DataValidationError,
    Marketplace,
    load_data_root,
    load_marketplace,
    load_marketplace_dir,
    read_table,
    validate_table,
)

# Text that breaks naive readers: commas, quotes, a newline, non-Latin scripts, a leading space.
TABLE = pd.DataFrame({
    "query": ["zapatillas rojas", "ワイヤレスイヤホン", "sac à dos, cuir", ' "quoted" query', "rot"],
    "product_title": ["Zapatillas deportivas, color rojo", "【Kumo】ワイヤレスイヤホン（ブラック）",
                      'Sac à dos "Voyage"\nen cuir', "Plain title", "Rucksack aus Leder, Rot"],
    "label": [1, 1, 0, 1, 0],
    "query_id": ["q1", "q2", "q3", "q4", "q5"],
    "product_id": ["P1", "P2", "P3", "P4", "P5"],
    "product_brand": ["Brisa", "Kumo", None, "Norvik", "Hjem"],
})


def _write(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_readers_round_trip(tmp_path: Path, suffix: str) -> None:
    path = _write(TABLE, tmp_path / f"train{suffix}")
    table = validate_table(read_table(path), file=str(path), split="train")
    assert table["query"].tolist() == [q.strip() for q in TABLE["query"]]
    assert table["product_title"].tolist() == TABLE["product_title"].tolist()
    assert table["label"].tolist() == [1, 1, 0, 1, 0]
    assert table["label"].dtype == "int64"
    assert table["product_id"].tolist() == TABLE["product_id"].tolist()
    assert table["product_brand"].isna().tolist() == [False, False, True, False, False]
    assert list(table.columns[:3]) == ["query", "product_title", "label"]


def test_json_array_files_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "test.json"
    path.write_text(json.dumps(TABLE.to_dict("records"), ensure_ascii=False))
    assert read_table(path)["query"].tolist() == TABLE["query"].tolist()


@pytest.mark.parametrize("values", [
    [True, False, True, False],
    [1, 0, 1, 0],
    [1.0, 0.0, 1.0, 0.0],
    ["1", "0", " 1 ", "0"],
])
def test_accepted_label_forms(values: list) -> None:
    df = pd.DataFrame({"query": list("abcd"), "product_title": list("wxyz"), "label": values})
    assert validate_table(df, file="t", split="train")["label"].tolist() == [1, 0, 1, 0]


def test_esci_labels_map_exact_and_substitute_to_relevant() -> None:
    df = pd.DataFrame({"query": list("abcdef"), "product_title": list("uvwxyz"),
                       "esci_label": ["E", "S", "C", "I", " exact ", "irrelevant"]})
    table = validate_table(df, file="t", split="train")
    assert table["label"].tolist() == [1, 1, 0, 0, 1, 0]
    assert table["esci_label"].tolist() == ["E", "S", "C", "I", "E", "I"]


def test_label_column_wins_over_esci_label() -> None:
    """The Spanish ESCI sample labels E only as 1; an explicit label must not be overridden by E,S -> 1."""
    df = pd.DataFrame({"query": list("abc"), "product_title": list("xyz"), "esci_label": ["E", "S", "I"],
                       "label": [1, 0, 0]})
    assert validate_table(df, file="t", split="train")["label"].tolist() == [1, 0, 0]


def test_duplicates_use_product_ids_when_every_row_has_one() -> None:
    """Variants with identical titles are distinct products; without ids the title is the identity."""
    df = pd.DataFrame({"query": ["a", "a", "b"], "product_title": ["Same title", "Same title", "Other"],
                       "product_id": ["P1", "P2", "P3"], "label": [1, 0, 1]})
    assert len(validate_table(df, file="t", split="train")) == 3
    with pytest.raises(DataValidationError, match="conflicting duplicate of row 1"):
        validate_table(df.drop(columns="product_id"), file="t", split="train")


def _marketplace_folder(root: Path, marketplace_id: str, language: str | None, suffix: str = ".parquet") -> Path:
    folder = root / marketplace_id
    for i, split in enumerate(("train", "valid", "test")):
        part = TABLE.assign(query=TABLE["query"] + f" {split}", query_id=TABLE["query_id"] + f"-{i}")
        _write(part, folder / f"{split}{suffix}")
    if language is not None:
        (folder / "marketplace.json").write_text(json.dumps({"id": marketplace_id, "language": language}))
    return folder


def test_load_marketplace_dir(tmp_path: Path) -> None:
    folder = _marketplace_folder(tmp_path, "es", "es")
    marketplace = load_marketplace_dir(folder)
    assert isinstance(marketplace, Marketplace)
    assert (marketplace.id, marketplace.language) == ("es", "es")
    assert marketplace.sources == {s: str(folder / f"{s}.parquet") for s in ("train", "valid", "test")}
    assert marketplace.warnings == ()
    assert [len(marketplace.split(s)) for s in ("train", "valid", "test")] == [5, 5, 5]
    summary = marketplace.summary()
    assert summary["train"]["positives"] == 3 and summary["train"]["queries"] == 5


def test_arguments_override_marketplace_json_and_csv_folders_work(tmp_path: Path) -> None:
    folder = _marketplace_folder(tmp_path, "br", "pt", suffix=".csv")
    marketplace = load_marketplace_dir(folder, id="brazil", language="pt-br")
    assert (marketplace.id, marketplace.language) == ("brazil", "pt-BR")


def test_folder_without_language_says_how_to_fix_it(tmp_path: Path) -> None:
    folder = _marketplace_folder(tmp_path, "us", None, suffix=".jsonl")
    with pytest.raises(DataValidationError, match="no language given") as caught:
        load_marketplace_dir(folder)
    assert caught.value.file == str(folder / "marketplace.json") and caught.value.column == "language"
    assert load_marketplace_dir(folder, language="en").id == "us"


def test_bad_marketplace_json(tmp_path: Path) -> None:
    folder = _marketplace_folder(tmp_path, "es", "es")
    (folder / "marketplace.json").write_text('{"id": "es", "language": "es",}')
    with pytest.raises(DataValidationError, match="not valid JSON at line 1"):
        load_marketplace_dir(folder)
    (folder / "marketplace.json").write_text('{"id": "es", "language": "spanish"}')
    with pytest.raises(DataValidationError, match="column 'language': language 'spanish'"):
        load_marketplace_dir(folder)


def test_missing_and_ambiguous_split_files(tmp_path: Path) -> None:
    folder = _marketplace_folder(tmp_path, "es", "es")
    _write(TABLE, folder / "test.csv")
    with pytest.raises(DataValidationError, match="ambiguous test table: test.parquet and test.csv"):
        load_marketplace_dir(folder)
    (folder / "test.csv").unlink()
    (folder / "valid.parquet").unlink()
    with pytest.raises(DataValidationError, match="missing valid table") as caught:
        load_marketplace_dir(folder)
    assert caught.value.file == str(folder / "valid.parquet")


def test_load_data_root_keeps_the_order(tmp_path: Path) -> None:
    for marketplace_id, language in (("en", "en"), ("es", "es"), ("jp", "ja")):
        _marketplace_folder(tmp_path, marketplace_id, language)
    marketplaces = load_data_root(tmp_path, ["jp", "en"])
    assert [(m.id, m.language) for m in marketplaces] == [("jp", "ja"), ("en", "en")]


def test_load_data_root_lists_available_ids(tmp_path: Path) -> None:
    for marketplace_id in ("en", "es"):
        _marketplace_folder(tmp_path, marketplace_id, marketplace_id)
    with pytest.raises(DataValidationError) as caught:
        load_data_root(tmp_path, ["en", "fr"])
    assert str(caught.value) == f"{tmp_path / 'fr'}: no marketplace 'fr' in {tmp_path} (available: en, es)"
    with pytest.raises(DataValidationError, match="appears more than once"):
        load_data_root(tmp_path, ["en", "es", "en"])
    with pytest.raises(DataValidationError, match="no such folder"):
        load_data_root(tmp_path / "missing", ["en"])


def test_load_data_root_rejects_a_folder_whose_json_names_another_id(tmp_path: Path) -> None:
    folder = _marketplace_folder(tmp_path, "es", "es")
    (folder / "marketplace.json").write_text(json.dumps({"id": "mx", "language": "es"}))
    with pytest.raises(DataValidationError, match="says id 'mx' but the folder is 'es'"):
        load_data_root(tmp_path, ["es"])


def test_load_marketplace_accepts_dataframes_and_rejects_bad_ids() -> None:
    marketplace = load_marketplace("de", "de", TABLE, TABLE.iloc[1:3], TABLE.iloc[2:])
    assert marketplace.sources["valid"] == "<valid DataFrame>"
    assert len(marketplace.warnings) == 2  # valid and test are both drawn from train's rows
    with pytest.raises(DataValidationError, match="marketplace id '../es'"):
        load_marketplace("../es", "es", TABLE, TABLE, TABLE)
