"""Demo marketplaces: deterministic, multilingual, split by query, balanced, meaning-labelled, mixes differ."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from tasks.data import generate_demo, load_data_root
from tasks.data.demo import Vocabulary

LANGUAGES = ("en", "es", "fr", "de", "ja")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=13)  # the default size: 3000 pairs in each of the five languages
    return root


@pytest.fixture(scope="module")
def tables(demo_root: Path) -> dict[str, dict[str, pd.DataFrame]]:
    return {lang: {s: pd.read_parquet(demo_root / lang / f"{s}.parquet") for s in ("train", "valid", "test")}
            for lang in LANGUAGES}


def _whole(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts.values(), ignore_index=True)


def test_layout_and_contract(demo_root: Path) -> None:
    marketplaces = load_data_root(demo_root, list(LANGUAGES))
    for marketplace in marketplaces:
        assert marketplace.language == marketplace.id
        assert marketplace.warnings == ()  # split by query: no leakage
        assert len(marketplace.train) + len(marketplace.valid) + len(marketplace.test) == 3000
        meta = json.loads((demo_root / marketplace.id / "marketplace.json").read_text())
        assert (meta["id"], meta["language"], meta["seed"]) == (marketplace.id, marketplace.id, 13)
    readme = (demo_root / "README.md").read_text()
    assert all(f"| {lang} |" in readme for lang in LANGUAGES)


def test_same_seed_gives_byte_identical_files(tmp_path: Path, demo_root: Path) -> None:
    generate_demo(tmp_path / "again", languages=("es", "ja"), seed=13)
    generate_demo(tmp_path / "other", languages=("es",), seed=14)
    for lang in ("es", "ja"):
        for name in ("train.parquet", "valid.parquet", "test.parquet", "marketplace.json"):
            assert (tmp_path / "again" / lang / name).read_bytes() == (demo_root / lang / name).read_bytes()
    assert (tmp_path / "other" / "es" / "train.parquet").read_bytes() != (demo_root / "es" / "train.parquet").read_bytes()


def test_each_language_is_its_own_text(tables) -> None:
    queries = {lang: set(_whole(parts)["query"]) for lang, parts in tables.items()}
    for a, b in combinations(LANGUAGES, 2):
        assert len(queries[a] & queries[b]) / len(queries[a]) < 0.05, (a, b)
    ja = _whole(tables["ja"])
    assert not ja["query"].str.contains(" ").any() and not ja["product_title"].str.contains(" ").any()
    assert ja["query"].str.contains(r"[\u3040-\u30ff\u4e00-\u9fff]").all()
    es_queries = " ".join(queries["es"])
    assert re.search(r"\b(roja|negra|blanca|amarilla|morada)s?\b", es_queries)  # feminine agreement happens
    assert re.search(r"\b(para hombre|para mujer|de cuero|de algodón)\b", es_queries)
    de_titles = " ".join(_whole(tables["de"])["product_title"])
    assert " aus " in de_titles and "für" in de_titles


def test_splits_are_disjoint_by_query_and_about_80_10_10(tables) -> None:
    for lang, parts in tables.items():
        queries = {split: set(df["query"]) for split, df in parts.items()}
        assert not queries["train"] & queries["valid"]
        assert not queries["train"] & queries["test"]
        assert not queries["valid"] & queries["test"]
        total = sum(len(q) for q in queries.values())
        assert 0.77 < len(queries["train"]) / total < 0.83, lang
        assert 0.08 < len(queries["test"]) / total < 0.12, lang


def test_labels_are_balanced_in_every_split(tables) -> None:
    for lang, parts in tables.items():
        for split, df in parts.items():
            assert abs(df["label"].mean() - 0.5) < 0.03, (lang, split)


def test_labels_follow_product_type_and_attributes(tables) -> None:
    for lang, parts in tables.items():
        df = _whole(parts)
        positives = df[df["label"] == 1]
        assert (positives["product_type"] == positives["query_type"]).all()
        assert set(positives["pair_kind"]) == {"match"}
        other = df[df["pair_kind"] == "other_type"]
        assert (other["product_type"] != other["query_type"]).all() and (other["label"] == 0).all()
        conflicts = df[df["pair_kind"].str.startswith("conflict_")]
        assert (conflicts["product_type"] == conflicts["query_type"]).all() and (conflicts["label"] == 0).all()
        assert "conflict_brand" not in set(df["pair_kind"])  # another brand is a substitute: relevant
        kinds = df["pair_kind"].value_counts(normalize=True)
        assert kinds["complement"] > 0.08 and kinds["other_type"] > 0.08 and kinds.filter(like="conflict_").sum() > 0.2


def test_shared_strings_alone_do_not_give_the_label(tables) -> None:
    """A token-overlap scorer must be clearly beaten by meaning: synonyms, complements and conflicts see to it."""
    for lang, parts in tables.items():
        df = _whole(parts)
        tokens = (lambda s: set(s.lower())) if lang == "ja" else (lambda s: set(re.findall(r"\w+", s.lower())))
        overlap = [len(tokens(q) & tokens(t)) / len(tokens(q)) for q, t in zip(df["query"], df["product_title"])]
        assert 0.6 < roc_auc_score(df["label"], overlap) < 0.88, lang
    en = _whole(tables["en"])
    complements = en[en["pair_kind"] == "complement"]
    assert complements["product_title"].str.contains(" For ").all()


def test_relevant_titles_often_name_the_type_differently(tables) -> None:
    vocab = Vocabulary.shipped()
    names = {t.id: t.names["en"] for t in vocab.types}
    en = _whole(tables["en"])
    positives = en[en["label"] == 1]
    canonical = [names[t][0].lower() in title.lower() for t, title in zip(positives["product_type"],
                                                                          positives["product_title"])]
    share_alternative = 1 - sum(canonical) / len(canonical)
    assert 0.25 < share_alternative < 0.7


def test_category_mix_differs_between_marketplaces(tables) -> None:
    shares = {lang: _whole(parts)["category"].value_counts(normalize=True) for lang, parts in tables.items()}
    categories = set().union(*(s.index for s in shares.values()))
    assert len(categories) >= 6
    for a, b in combinations(LANGUAGES, 2):
        distance = 0.5 * sum(abs(shares[a].get(c, 0) - shares[b].get(c, 0)) for c in categories)
        assert distance > 0.2, (a, b, distance)
    for lang in LANGUAGES:
        missing = categories - set(shares[lang].index)
        assert missing, f"{lang} should leave some category out"
        assert all(any(c in shares[o].index for o in LANGUAGES if o != lang) for c in missing)


def test_shipped_vocabulary_is_complete() -> None:
    vocab = Vocabulary.shipped()
    assert 40 <= len(vocab.types) <= 80
    assert len(vocab.by_category) >= 6
    for ptype in vocab.types:
        assert all(ptype.names[lang] and all(n.strip() for n in ptype.names[lang]) for lang in LANGUAGES), ptype.id
    for kind in ("colour", "material", "audience", "size"):
        for value, translations in vocab.products["attributes"][kind].items():
            assert set(translations) == set(LANGUAGES), (kind, value)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no demo vocabulary for \\['xx'\\]"):
        generate_demo(tmp_path, languages=("en", "xx"))
    with pytest.raises(ValueError, match="at least 40"):
        generate_demo(tmp_path, pairs_per_marketplace=10)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_cli_demo(tmp_path: Path) -> None:
    from flows.commands.data import app

    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--seed", "5", "--languages", "fr,de",
                                 "--pairs", "200"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["README.md", "de", "fr"]
    assert len(pd.read_parquet(tmp_path / "d" / "fr" / "train.parquet")) == 160
    assert runner.invoke(app, ["validate", str(tmp_path / "d" / "de")]).exit_code == 0
    failed = runner.invoke(app, ["demo", "--out", str(tmp_path / "e"), "--languages", "en,zz"])
    assert failed.exit_code == 1 and "no demo vocabulary" in failed.output


def test_split_fractions_size_the_test_split_by_query(tmp_path: Path) -> None:
    folders = generate_demo(tmp_path, ("en",), pairs_per_marketplace=1100, seed=3, valid_fraction=0.1,
                            test_fraction=0.35)
    parts = {s: pd.read_parquet(folders["en"] / f"{s}.parquet") for s in ("train", "valid", "test")}
    sizes = {s: len(t) for s, t in parts.items()}
    assert sum(sizes.values()) == 1100
    assert 0.30 < sizes["test"] / 1100 < 0.40 and 0.06 < sizes["valid"] / 1100 < 0.14
    queries = {s: set(t["query"]) for s, t in parts.items()}
    assert not (queries["test"] & queries["train"]) and not (queries["test"] & queries["valid"])
    with pytest.raises(ValueError, match="leave at least 10% of the queries"):
        generate_demo(tmp_path / "bad", ("en",), pairs_per_marketplace=100, valid_fraction=0.5, test_fraction=0.45)
