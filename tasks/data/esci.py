"""Amazon Shopping Queries (ESCI) in its published layout, turned into one marketplace per locale.

The release is an examples table (one row per query-product judgement, with ``split`` train/test) and a
products table keyed by (product_id, product_locale). ESCI has no validation split, so one is carved from the
training queries; whole queries move, because a query split across train and valid would leak its products.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.data.contract import ESCI_LOCALE_LANGUAGE, SPLITS, DataValidationError, Marketplace
from tasks.data.readers import PathLike, location, read_table
from tasks.data.validation import leakage_warnings, validate_language, validate_marketplace_id, validate_table

EXAMPLE_COLUMNS = ("query_id", "query", "product_id", "product_locale", "esci_label", "split")
PRODUCT_COLUMNS = ("product_id", "product_locale", "product_title")
PRODUCT_EXTRAS = ("product_description", "product_brand")
KEPT_COLUMNS = ("query_id", "query", "product_id", "product_title", "esci_label", *PRODUCT_EXTRAS)


def _require(df: pd.DataFrame, columns: tuple[str, ...], file: str) -> None:
    for column in columns:
        if column not in df.columns:
            found = ", ".join(map(str, df.columns)) or "none"
            raise DataValidationError(file, f"missing ESCI column (found columns: {found})", column=column)


def _clean(values: pd.Series) -> pd.Series:
    return values.astype("str").str.strip().str.lower()


def _locale_rows(df: pd.DataFrame, locale: str, file: str) -> np.ndarray:
    locales = _clean(df["product_locale"])
    mask = (locales == locale).to_numpy()
    if not mask.any():
        found = ", ".join(sorted(locales.dropna().unique().tolist())[:10]) or "none"
        raise DataValidationError(file, f"no rows with product_locale {locale!r} (found: {found})",
                                  column="product_locale")
    return mask


def _attach_products(examples: pd.DataFrame, rows: np.ndarray, products_path: str, examples_path: str,
                     locale: str, s3_endpoint_url: str | None) -> pd.DataFrame:
    products = read_table(products_path, s3_endpoint_url=s3_endpoint_url)
    _require(products, PRODUCT_COLUMNS, products_path)
    product_rows = np.arange(1, len(products) + 1)
    mask = _locale_rows(products, locale, products_path)
    products, product_rows = products[mask], product_rows[mask]
    ids = products["product_id"].astype("str").str.strip()
    repeated = ids.duplicated(keep="first").to_numpy()
    if repeated.any():
        position = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero((ids == ids.iloc[position]).to_numpy())[0])
        raise DataValidationError(products_path, f"product {ids.iloc[position]!r} (locale {locale}) is listed again; "
                                                 f"first at row {product_rows[first]}", row=int(product_rows[position]),
                                  column="product_id")
    extras = [c for c in PRODUCT_EXTRAS if c in products.columns]
    catalogue = pd.DataFrame({"product_id": ids.to_numpy(), "product_title": products["product_title"].to_numpy(),
                              **{c: products[c].to_numpy() for c in extras}})
    left = examples.drop(columns=[c for c in ("product_title", *extras) if c in examples.columns])
    left = left.assign(product_id=left["product_id"].astype("str").str.strip())
    joined = left.merge(catalogue, on="product_id", how="left", indicator=True, sort=False)
    missing = (joined["_merge"] == "left_only").to_numpy()
    if missing.any():
        position = int(np.flatnonzero(missing)[0])
        raise DataValidationError(examples_path, f"product {joined['product_id'].iloc[position]!r} (locale {locale}) "
                                                 f"is not in {products_path} ({int(missing.sum())} examples lack a "
                                                 "product)", row=int(rows[position]), column="product_id")
    return joined.drop(columns="_merge")


def _valid_queries(train: pd.DataFrame, fraction: float, seed: int, file: str) -> set[str]:
    queries = np.array(sorted(train["query_id"].astype("str").unique()))
    if len(queries) < 2:
        raise DataValidationError(file, f"only {len(queries)} training query; a validation split needs at least 2",
                                  column="query_id")
    n_valid = min(len(queries) - 1, max(1, round(len(queries) * fraction)))
    chosen = np.random.default_rng(seed).permutation(len(queries))[:n_valid]
    return set(queries[chosen].tolist())


def load_esci(examples: PathLike, products: PathLike | None, locale: str, *, id: str | None = None,
              valid_fraction: float = 0.1, seed: int = 13, s3_endpoint_url: str | None = None) -> Marketplace:
    """One ESCI locale (``us``, ``es``, ``jp``) as a validated marketplace; labels E,S -> 1 and C,I -> 0.

    ``products`` may be None when the examples table already carries the product columns (the merged
    ``shopping_queries_dataset`` export). Errors name rows of the examples file, as a person would count them.
    """
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    examples_path = location(examples)
    key = locale.strip().lower() if isinstance(locale, str) else locale
    if key not in ESCI_LOCALE_LANGUAGE:
        raise DataValidationError(examples_path, f"unknown ESCI locale {locale!r} (expected one of "
                                                 f"{', '.join(ESCI_LOCALE_LANGUAGE)})", column="product_locale")
    language = validate_language(ESCI_LOCALE_LANGUAGE[key], file=examples_path)
    marketplace_id = validate_marketplace_id(id or key, file=examples_path)

    table = read_table(examples_path, s3_endpoint_url=s3_endpoint_url)
    _require(table, EXAMPLE_COLUMNS if products is not None else EXAMPLE_COLUMNS + ("product_title",), examples_path)
    rows = np.arange(1, len(table) + 1)
    mask = _locale_rows(table, key, examples_path)
    table, rows = table[mask].reset_index(drop=True), rows[mask]
    if products is not None:
        table = _attach_products(table, rows, location(products), examples_path, key, s3_endpoint_url)

    splits = _clean(table["split"]).to_numpy()
    bad = ~np.isin(splits, ["train", "test"])
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataValidationError(examples_path, f"value {table['split'].iloc[position]!r} is not an ESCI split "
                                                 "(expected train or test)", row=int(rows[position]), column="split")
    kept = table[[c for c in KEPT_COLUMNS if c in table.columns]]
    is_train = splits == "train"
    if not is_train.any() or is_train.all():
        missing = "train" if not is_train.any() else "test"
        raise DataValidationError(examples_path, f"no {missing!r} rows for locale {key!r}", column="split")
    held_out = _valid_queries(kept[is_train], valid_fraction, seed, examples_path)
    in_valid = is_train & kept["query_id"].astype("str").isin(held_out).to_numpy()
    masks = {"train": is_train & ~in_valid, "valid": in_valid, "test": ~is_train}

    sources = {split: examples_path for split in SPLITS}
    tables, split_rows = {}, {}
    for split in SPLITS:
        split_rows[split] = rows[masks[split]]
        tables[split] = validate_table(kept[masks[split]].reset_index(drop=True), file=examples_path, split=split,
                                       rows=split_rows[split])
    warnings = leakage_warnings(tables, sources, rows=split_rows)
    return Marketplace(marketplace_id, language, tables["train"], tables["valid"], tables["test"], sources, warnings)
