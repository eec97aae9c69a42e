"""ESCI: the published examples + products layout, and the real ESCI rows beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.data import DataValidationError, load_esci, load_marketplace, read_table, validate_table

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "esci-sample"
needs_sample = pytest.mark.skipif(not SHARED_SAMPLE.is_dir(), reason="../shared/data/esci-sample is not present")

LETTERS = "ESCI"


def _examples() -> pd.DataFrame:
    """24 train queries and 4 test queries in 'es', four judgements each, plus 'us' rows that must be ignored."""
    rows = []
    for q in range(28):
        split = "train" if q < 24 else "test"
        for j in range(4):
            rows.append({"example_id": len(rows), "query": f"consulta {q}", "query_id": 1000 + q,
                         "product_id": f"B{q:03d}{j}", "product_locale": "es", "esci_label": LETTERS[j],
                         "small_version": 1, "large_version": 1, "split": split})
    for j in range(4):
        rows.append({"example_id": len(rows), "query": "us query", "query_id": 1, "product_id": f"U{j}",
                     "product_locale": "us", "esci_label": "E", "small_version": 0, "large_version": 1,
                     "split": "train"})
    return pd.DataFrame(rows)


def _products(examples: pd.DataFrame) -> pd.DataFrame:
    es = examples[examples["product_locale"] == "es"]
    products = pd.DataFrame({"product_id": es["product_id"], "product_locale": "es",
                             "product_title": [f"Producto {p}" for p in es["product_id"]],
                             "product_description": None, "product_bullet_point": "x",
                             "product_brand": "Marca", "product_color": "rojo"})
    # The same id in another locale is another product (ESCI keys products by id and locale).
    other = products.head(3).assign(product_locale="us", product_title="A US product")
    return pd.concat([products, other], ignore_index=True)


@pytest.fixture()
def esci_files(tmp_path: Path) -> tuple[Path, Path]:
    examples = _examples()
    examples_path = tmp_path / "shopping_queries_dataset_examples.parquet"
    products_path = tmp_path / "shopping_queries_dataset_products.parquet"
    examples.to_parquet(examples_path, index=False)
    _products(examples).to_parquet(products_path, index=False)
    return examples_path, products_path


def test_esci_layout_becomes_a_marketplace(esci_files) -> None:
    examples, products = esci_files
    marketplace = load_esci(examples, products, "es")
    assert (marketplace.id, marketplace.language) == ("es", "es")
    assert len(marketplace.test) == 16 and len(marketplace.train) + len(marketplace.valid) == 96
    for table in (marketplace.train, marketplace.valid, marketplace.test):
        assert (table["label"] == table["esci_label"].map({"E": 1, "S": 1, "C": 0, "I": 0})).all()
        assert table["product_title"].str.startswith("Producto ").all()  # never the US product of the same id
        assert "small_version" not in table.columns
    valid_queries = set(marketplace.valid["query_id"])
    assert len(valid_queries) == 2  # 10% of 24 training queries, whole queries
    assert not valid_queries & set(marketplace.train["query_id"])
    assert marketplace.warnings == ()


def test_valid_split_is_deterministic_by_seed(esci_files) -> None:
    examples, products = esci_files
    first = set(load_esci(examples, products, "es", seed=3).valid["query_id"])
    assert set(load_esci(examples, products, "es", seed=3).valid["query_id"]) == first
    others = {frozenset(load_esci(examples, products, "es", seed=s).valid["query_id"]) for s in range(4, 9)}
    assert len(others | {frozenset(first)}) > 1
    larger = load_esci(examples, products, "es", valid_fraction=0.25, id="es-big")
    assert larger.id == "es-big" and larger.valid["query_id"].nunique() == 6


def test_locale_maps_to_language(tmp_path: Path) -> None:
    examples = _examples().assign(product_locale="jp", product_title=lambda d: "商品 " + d["product_id"])
    examples = examples.drop_duplicates(["query", "product_id"])
    path = tmp_path / "examples.parquet"
    examples.to_parquet(path, index=False)
    marketplace = load_esci(path, None, "JP")
    assert (marketplace.id, marketplace.language) == ("jp", "ja")


def test_example_without_product_names_its_row(esci_files) -> None:
    examples, products = esci_files
    catalogue = pd.read_parquet(products)
    catalogue = catalogue[catalogue["product_id"] != "B0052"]
    catalogue.to_parquet(products, index=False)
    with pytest.raises(DataValidationError) as caught:
        load_esci(examples, products, "es")
    err = caught.value
    assert (err.file, err.row, err.column) == (str(examples), 23, "product_id")
    assert "product 'B0052' (locale es) is not in" in str(err)


def test_bad_esci_values_name_rows_of_the_examples_file(esci_files) -> None:
    examples, products = esci_files
    table = pd.read_parquet(examples)
    table.loc[9, "esci_label"] = "X"
    table.to_parquet(examples, index=False)
    with pytest.raises(DataValidationError) as caught:
        load_esci(examples, products, "es", seed=1)
    assert (caught.value.row, caught.value.column) == (10, "esci_label")
    table.loc[9, "esci_label"] = "E"
    table.loc[40, "split"] = "dev"
    table.to_parquet(examples, index=False)
    with pytest.raises(DataValidationError, match="'dev' is not an ESCI split") as caught:
        load_esci(examples, products, "es")
    assert caught.value.row == 41


def test_esci_layout_errors(esci_files, tmp_path: Path) -> None:
    examples, products = esci_files
    with pytest.raises(DataValidationError, match="unknown ESCI locale 'fr'"):
        load_esci(examples, products, "fr")
    pd.read_parquet(examples).drop(columns="split").to_parquet(tmp_path / "nosplit.parquet", index=False)
    with pytest.raises(DataValidationError, match="column 'split': missing ESCI column"):
        load_esci(tmp_path / "nosplit.parquet", products, "es")
    with pytest.raises(DataValidationError, match="column 'product_title': missing ESCI column"):
        load_esci(examples, None, "es")
    doubled = pd.concat([pd.read_parquet(products), pd.read_parquet(products).iloc[[5]]])
    doubled.to_parquet(tmp_path / "doubled.parquet", index=False)
    with pytest.raises(DataValidationError, match="listed again; first at row 6") as caught:
        load_esci(examples, tmp_path / "doubled.parquet", "es")
    assert caught.value.row == 116
    with pytest.raises(ValueError, match="valid_fraction"):
        load_esci(examples, products, "es", valid_fraction=0)


@needs_sample
def test_real_spanish_esci_rows_load_through_the_readers() -> None:
    train = SHARED_SAMPLE / "esci_es_muestra_train.csv"
    valid = SHARED_SAMPLE / "esci_es_muestra_val.csv"
    raw = read_table(train)
    assert list(raw.columns) == ["query_id", "product_id", "query", "product_title", "text_a", "text_b", "label"]
    marketplace = load_marketplace("es", "es", train, valid, valid)
    assert len(marketplace.train) == 200 and len(marketplace.valid) == 200
    assert marketplace.train["label"].value_counts().to_dict() == {0: 100, 1: 100}
    assert marketplace.train["query"].str.len().min() > 0
    assert marketplace.warnings == ()  # the two real samples share no query-product pair


@needs_sample
def test_real_us_rows_in_the_full_esci_column_layout() -> None:
    path = SHARED_SAMPLE / "us_sample_exact_only.csv"
    assert {"product_locale", "esci_label", "split", "product_brand"} <= set(read_table(path).columns)
    with pytest.raises(DataValidationError) as caught:  # the sample holds training rows only
        load_esci(path, None, "us")
    assert (caught.value.file, caught.value.column) == (str(path), "split")
    assert "no 'test' rows for locale 'us'" in str(caught.value)
    with pytest.raises(DataValidationError) as caught:  # every row is E: nothing to train or score against
        validate_table(read_table(path), file=str(path), split="train")
    assert caught.value.column == "label" and "has only label 1 (485 rows)" in str(caught.value)


@needs_sample
def test_real_rows_without_titles_are_refused_by_name() -> None:
    path = SHARED_SAMPLE / "us_iphone_charger.csv"
    with pytest.raises(DataValidationError) as caught:
        validate_table(read_table(path), file=str(path), split="test")
    assert str(caught.value) == (f"{path}: column 'product_title': missing required column (found columns: query, "
                                 "product_id, product_text, esci_label)")
