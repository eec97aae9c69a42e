"""Unlabelled in-domain text for encoder distillation: the queries, product titles and descriptions of every
marketplace under one or more data roots, deduplicated.

Every table goes through the data contract's readers and validation first (:mod:`tasks.data`), so a bad file fails
here -- naming the file, row and column -- before a teacher is loaded or a step is trained. The labels are read (the
contract requires them) but never used: distillation learns from the text alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from models.config import E5_QUERY_PREFIX, E5_TITLE_PREFIX
from tasks.data import DataValidationError, Marketplace, list_folder, load_data_root
from tasks.data.readers import is_s3, location
from tasks.hashing import table_hash

if TYPE_CHECKING:
    from models.encoder_distill import DomainText

TEXT_KINDS = {"query": "query", "product_title": "title", "product_description": "description"}
PAIR = "pair"  # the kind of a (query, product title) row: ``text`` is the query, ``text_pair`` the title
TEXT_COLUMNS = ("text", "text_pair", "kind", "marketplace", "language")


def _root_name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] if is_s3(root) else Path(root).resolve().name


def load_marketplaces(roots: Sequence[str], *, s3_endpoint_url: str | None = None) -> dict[str, Marketplace]:
    """Every marketplace folder (``<root>/<id>/``) of every root, validated. Keys are the ids, or ``<root>/<id>``
    (the root folder's name) when several roots are given, since two roots may both hold an ``en``."""
    roots = [location(r) for r in roots]
    if not roots:
        raise DataValidationError("--data", "no data root given")
    names = [_root_name(r) for r in roots]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DataValidationError(roots[names.index(twice)], f"two data roots are both named {twice!r}; marketplaces "
                                                             "are told apart by their root's folder name")
    found: dict[str, Marketplace] = {}
    for root, name in zip(roots, names, strict=True):
        _, folders = list_folder(root, s3_endpoint_url=s3_endpoint_url)
        ids = sorted(f for f in folders if not f.startswith((".", "_")))
        if not ids:
            raise DataValidationError(root, "no marketplace folders (<root>/<id>/ with train, valid and test tables)")
        for marketplace in load_data_root(root, ids, s3_endpoint_url=s3_endpoint_url):
            found[marketplace.id if len(roots) == 1 else f"{name}/{marketplace.id}"] = marketplace
    return found


def domain_texts(marketplaces: Mapping[str, Marketplace], splits: Sequence[str], *,
                 descriptions: bool = True, pairs: bool = False) -> pd.DataFrame:
    """One row per distinct text: ``text``, ``text_pair`` (the title of a ``pair`` row, empty otherwise), ``kind``
    (query, title, description, pair), and the ``marketplace`` and ``language`` it was first seen in, in a stable
    order (marketplaces, then splits, then columns as given, pairs last).

    A query shared by many pairs, or a title shared by marketplaces of one language, is distilled on once: repeats
    would weight the loss towards whatever the tables happen to repeat. With ``pairs``, every distinct (query, product
    title) row is one more text: the relevance model cross-encodes them as one sequence, which single texts never
    show a student."""
    columns = [c for c in TEXT_KINDS if descriptions or c != "product_description"]
    parts = []
    for key, marketplace in marketplaces.items():
        for split in splits:
            table = marketplace.split(split)
            for column in columns:
                if column not in table.columns:
                    continue
                values = table[column].dropna()
                parts.append(pd.DataFrame({"text": values.to_numpy(), "text_pair": "", "kind": TEXT_KINDS[column],
                                           "marketplace": key, "language": marketplace.language}))
            if pairs:
                rows = table[["query", "product_title"]].dropna()
                parts.append(pd.DataFrame({"text": rows["query"].to_numpy(),
                                           "text_pair": rows["product_title"].to_numpy(), "kind": PAIR,
                                           "marketplace": key, "language": marketplace.language}))
    if not parts:
        return pd.DataFrame(columns=list(TEXT_COLUMNS))
    texts = pd.concat(parts, ignore_index=True)
    texts = texts[texts["text"].str.len() > 0]
    texts = texts.iloc[texts["kind"].eq(PAIR).to_numpy().argsort(kind="stable")]  # pairs after the single texts
    return texts.drop_duplicates(["text", "text_pair"], keep="first").reset_index(drop=True)[list(TEXT_COLUMNS)]


def distill_inputs(texts: pd.DataFrame, *, prefixes: bool) -> list[DomainText]:
    """The rows of :func:`domain_texts` as the distillation takes them: a string, or a (query, title) tuple.

    With ``prefixes``, every single text comes a second time as multilingual-e5 embeds it -- a query after
    ``query: ``, a title or description after ``passage: ``: the teacher represents the two forms differently, and a
    student shown only the bare one has never seen the form the frozen probes (and an e5-style learner) read."""
    rows = list(texts[["text", "text_pair", "kind"]].itertuples(index=False))
    inputs: list[DomainText] = [(text, pair) if kind == PAIR else text for text, pair, kind in rows]
    if prefixes:
        inputs += [(E5_QUERY_PREFIX if kind == "query" else E5_TITLE_PREFIX) + text
                   for text, _, kind in rows if kind != PAIR]
    return inputs


def texts_hash(texts: pd.DataFrame) -> str:
    """Content hash of the text columns in order: the identity of what a student was distilled on."""
    return table_hash(texts, ("text", "text_pair"))
