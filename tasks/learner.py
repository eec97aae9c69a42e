"""Bridges the data contract (pandas tables) to the learner in ``models/`` (plain Python lists)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from models.config import LearnerConfig
from models.encoders import EncoderRef, resolve_encoder
from models.methods.protocol import MarketplaceSplits
from models.pairs import TASK_SOURCE, Pairs
from models.relevance import MarketplaceSpec
from models.sequence import SequenceResult, learn_sequence
from tasks.data import Marketplace, load_data_root, read_table, validate_table
from tasks.settings import Settings

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")


def to_pairs(table: pd.DataFrame, source: str = TASK_SOURCE) -> Pairs:
    return Pairs(table["query"].astype(str).tolist(), table["product_title"].astype(str).tolist(),
                 table["label"].astype(int).tolist(), source=source)


def marketplace_splits(marketplace: Marketplace) -> MarketplaceSplits:
    return MarketplaceSplits(
        MarketplaceSpec(marketplace.id, marketplace.language),
        to_pairs(marketplace.train), to_pairs(marketplace.valid), to_pairs(marketplace.test),
    )


def translated_source(language: str) -> str:
    """The batch source name of D_t translated into ``language``."""
    return f"translated:{language}"


def _table_file(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in TABLE_SUFFIXES if (folder / f"{stem}{s}").is_file()), None)


def read_translated(root: Path, new: MarketplaceSpec, old: Sequence[MarketplaceSpec]) -> list[Pairs]:
    """T_1..T_{t-1} for arrival ``new``: ``<root>/<new id>/<old language>.{parquet,csv,jsonl}``.

    A missing language is an error naming the file expected: distilling on some old languages
    and silently not others would look like forgetting later.
    """
    folder = Path(root) / new.id
    sets = []
    for spec in old:
        path = _table_file(folder, spec.language)
        if path is None:
            raise FileNotFoundError(
                f"no translation of {new.id!r} into {spec.language!r}: expected {folder / spec.language}.parquet "
                f"(or .csv/.jsonl); create it with `mcl translate --data <{new.id} train> --from {new.language} "
                f"--to {spec.language} --out {folder}`"
            )
        table = validate_table(read_table(path), file=str(path), split="translated")
        sets.append(to_pairs(table, translated_source(spec.language)))
    return sets


def resolve_settings_encoder(settings: Settings, name: str | None = None) -> EncoderRef:
    return resolve_encoder(name or settings.encoder, settings.cache_dir)


def run_sequence(
    data_root: Path,
    order: Sequence[str],
    cfg: LearnerConfig,
    *,
    encoder: EncoderRef,
    translated_root: Path | None = None,
    limit: int | None = None,
) -> SequenceResult:
    """Validate every marketplace first (bad input fails before any training), then learn them in order."""
    marketplaces = [marketplace_splits(m) for m in load_data_root(data_root, list(order))]
    if limit:
        marketplaces = [m.head(limit) for m in marketplaces]
    translated: dict[str, list[Pairs]] = {}
    if translated_root is not None:  # read and validate every file before training starts
        for t, m in enumerate(marketplaces[1:], start=1):
            sets = read_translated(translated_root, m.spec, [x.spec for x in marketplaces[:t]])
            translated[m.spec.id] = [s.head(limit) for s in sets] if limit else sets

    def translated_for(data: MarketplaceSplits, old: list[MarketplaceSpec]) -> list[Pairs]:
        return translated.get(data.spec.id, [])

    return learn_sequence(encoder, marketplaces, cfg, translated_for)
