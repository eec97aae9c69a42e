"""Multilingual demo marketplaces built from the vocabulary the project ships (``vocab/products.json``).

The point of the demo is to let continual learning show what it does, so the data has the structure real
marketplaces have: the same product types and brands in every language (cross-lingual transfer is possible),
a different category mix in each marketplace (forgetting is possible), and labels that follow meaning rather
than shared strings. A query names a product type and one or two attributes; a title is relevant when it is
the same type (possibly under another name) with compatible attributes. Irrelevant titles are hard: another
type of the same category sharing the query's brand/colour/material, or the same type with one conflicting
attribute. Everything is drawn from seeded ``random.Random`` streams, so a seed gives byte-identical files.

Length: one generator whose query, title and negative samplers share the vocabulary and the seeded streams;
cut apart, the byte-identical guarantee would depend on call order across modules.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data.contract import MARKETPLACE_FILE, SPLITS, load_vocab

SPLIT_FRACTIONS = {"valid": 0.1, "test": 0.1}  # the rest is train; fractions of queries, not of rows
PAIRS_PER_QUERY = 4  # two relevant titles, one other-type or complement title, one conflicting-attribute title
MIN_PAIRS = 40

# How often a query names an attribute kind (relative), and how often a title shows one the query left open.
_QUERY_WEIGHT = {"brand": 1.0, "colour": 1.2, "material": 1.0, "audience": 0.8, "size": 0.4, "flavour": 1.5,
                 "scent": 1.2}
_TITLE_SHOWS = {"colour": 0.7, "material": 0.5, "audience": 0.4, "size": 0.3, "flavour": 0.8, "scent": 0.6}
_TITLE_ALTERNATIVE_NAME = 0.6  # relevant titles often name the type differently from the query
_SIBLING_SHARES_WORDS = 0.6  # how often an other-type title is a sibling whose name shares a word
_COMPLEMENT_RATE = 0.5  # how often the first irrelevant title is an accessory for the query's product
_OPTION_LISTS = {"material": "materials", "flavour": "flavours", "scent": "scents"}


@dataclass(frozen=True)
class ProductType:
    id: str
    category: str
    attributes: tuple[str, ...]
    names: dict[str, list[str]]
    gender: dict[str, str]
    options: dict[str, list[str]]


class Vocabulary:
    """The shipped vocabulary and per-language templates, with the rendering rules they imply."""

    def __init__(self, products: dict, templates: dict) -> None:
        self.products = products
        self.templates = templates
        self.languages: list[str] = list(products["languages"])
        self.types = [ProductType(t["id"], t["category"], tuple(t["attributes"]), t["names"], t["gender"],
                                  {k: t[key] for k, key in _OPTION_LISTS.items() if key in t})
                      for t in products["types"]]

    @classmethod
    def shipped(cls) -> Vocabulary:
        return cls(load_vocab("products"), load_vocab("templates"))

    @cached_property
    def by_category(self) -> dict[str, list[ProductType]]:
        out: dict[str, list[ProductType]] = {}
        for t in self.types:
            out.setdefault(t.category, []).append(t)
        return out

    def accessories_for(self, category: str) -> list[str]:
        return [k for k, v in self.products["accessories"].items() if category in v["categories"]]

    def complement_type(self, accessory_id: str, target: ProductType, language: str, target_name: int) -> ProductType:
        """A one-off product type "<accessory> for <target>" in ``language``; accessories come in any colour."""
        accessory = self.products["accessories"][accessory_id]
        name = self.templates[language]["complement"].format(accessory=accessory["names"][language],
                                                             type=target.names[language][target_name])
        return ProductType(f"{accessory_id}_for_{target.id}", target.category, ("colour",), {language: [name]},
                           accessory["gender"], {})

    def values(self, kind: str, ptype: ProductType) -> list[str]:
        if kind == "brand":
            return self.products["brands"][ptype.category]
        return ptype.options.get(kind) or list(self.products["attributes"][kind])

    def _slot_text(self, language: str, part: str, slot: str, item: dict, ptype: ProductType) -> str:
        spec = self.templates[language][part]["slots"].get(slot, "{}")
        text, form = (spec["text"], spec["form"]) if isinstance(spec, dict) else (spec, None)
        if slot == "type":
            value = ptype.names[language][item["name"]]
        elif slot in ("brand", "model"):
            value = item[slot]
        elif slot == "extra":
            value = self.products["fillers"][language][item["extra"]]
        else:
            value = self.products["attributes"][slot][item[slot]][language]
            if isinstance(value, dict):
                value = value[ptype.gender[language] if form == "@gender" else form]
        return text.format(value)

    def render(self, language: str, part: str, item: dict, ptype: ProductType) -> str:
        """A query (``part="query"``) or title from an item: slot ids -> vocabulary entries."""
        template = self.templates[language]
        pieces = [self._slot_text(language, part, slot, item, ptype)
                  for slot in template[part]["order"] if slot == "type" or slot in item]
        text = re.sub(r"\s+([,)\]）])", r"\1", re.sub(r"\s+", " ", template["joiner"].join(pieces))).strip()
        case = template[part]["case"]
        if case == "lower":
            return text.lower()
        if case == "title":
            return re.sub(r"(?<![\w'’])(\w)", lambda m: m.group(1).upper(), text)
        if case == "first":
            return text[:1].upper() + text[1:]
        return text


def _pick_name(rng: random.Random, ptype: ProductType, language: str, alternative_rate: float) -> int:
    names = ptype.names[language]
    return rng.randrange(1, len(names)) if len(names) > 1 and rng.random() < alternative_rate else 0


def _model_code(rng: random.Random) -> str:
    letters = "ABCDEFGHJKLMNPRSTVXZ"
    return f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randrange(100, 1000)}"


class _MarketplaceGenerator:
    """Draws one language's queries and their four titles each."""

    def __init__(self, vocab: Vocabulary, language: str, seed: int) -> None:
        self.vocab = vocab
        self.language = language
        self.rng = random.Random(f"mcl-demo:{seed}:{language}")
        mix = vocab.products["category_mix"][language]
        self.categories = [c for c, w in mix.items() if w > 0]
        self.weights = [mix[c] for c in self.categories]
        self.fillers = len(vocab.products["fillers"][language])

    def query(self) -> tuple[ProductType, dict]:
        rng = self.rng
        category = rng.choices(self.categories, self.weights)[0]
        ptype = rng.choice(self.vocab.by_category[category])
        # Always one real attribute (so a conflicting title exists), sometimes a second one or a brand.
        chosen = [rng.choices(ptype.attributes, [_QUERY_WEIGHT[k] for k in ptype.attributes])[0]]
        extra = [k for k in ("brand", *ptype.attributes) if k not in chosen]
        if rng.random() < 0.45:
            chosen.append(rng.choices(extra, [_QUERY_WEIGHT[k] for k in extra])[0])
        item = {"name": _pick_name(rng, ptype, self.language, 0.25)}
        for kind in chosen:
            item[kind] = rng.choice(self.vocab.values(kind, ptype))
        return ptype, item

    def product(self, ptype: ProductType, fixed: dict) -> dict:
        rng = self.rng
        item = {"name": _pick_name(rng, ptype, self.language, _TITLE_ALTERNATIVE_NAME), "model": _model_code(rng),
                "brand": fixed.get("brand") or rng.choice(self.vocab.values("brand", ptype))}
        for kind in ptype.attributes:
            if kind in fixed:
                item[kind] = fixed[kind]
            elif rng.random() < _TITLE_SHOWS[kind]:
                item[kind] = rng.choice(self.vocab.values(kind, ptype))
        if rng.random() < 0.5:
            item["extra"] = rng.randrange(self.fillers)
        return item

    def other_type(self, ptype: ProductType, query: dict, query_name: int) -> tuple[ProductType, dict]:
        """Another type of the same category that keeps whatever the query named and it can have."""
        siblings = [t for t in self.vocab.by_category[ptype.category] if t.id != ptype.id]
        sibling = self.rng.choice(siblings)
        if self.rng.random() < _SIBLING_SHARES_WORDS:  # e.g. "bluetooth speaker" -> "bluetooth earbuds"
            words = set(ptype.names[self.language][query_name].lower().split())
            shared = [t for t in siblings if words & set(" ".join(t.names[self.language]).lower().split())]
            sibling = self.rng.choice(shared) if shared else sibling
        fixed = {k: v for k, v in query.items() if k == "brand"
                 or (k in sibling.attributes and v in self.vocab.values(k, sibling))}
        return sibling, self.product(sibling, fixed)

    def complement(self, ptype: ProductType, query: dict, query_name: int) -> tuple[ProductType, dict]:
        """An accessory for the query's product: it names the product (and keeps brand/colour) yet is not it."""
        accessory_id = self.rng.choice(self.vocab.accessories_for(ptype.category))
        accessory = self.vocab.complement_type(accessory_id, ptype, self.language, query_name)
        fixed = {k: v for k, v in query.items() if k in ("brand", "colour")}
        return accessory, self.product(accessory, fixed)

    def conflicting(self, ptype: ProductType, query: dict) -> tuple[str, dict]:
        """The same type with one of the query's attributes changed (another brand would be a substitute, which
        ESCI counts as relevant, so brands never conflict)."""
        kinds = [k for k in query if k not in ("name", "brand") and len(self.vocab.values(k, ptype)) > 1]
        kind = self.rng.choice(kinds)
        value = self.rng.choice([v for v in self.vocab.values(kind, ptype) if v != query[kind]])
        fixed = {k: v for k, v in query.items() if k != "name"}
        fixed[kind] = value
        return kind, self.product(ptype, fixed)

    def rows_for(self, query_id: int, ptype: ProductType, query: dict) -> list[dict]:
        language, render = self.language, self.vocab.render
        fixed = {k: v for k, v in query.items() if k != "name"}
        text = render(language, "query", query, ptype)
        if self.rng.random() < _COMPLEMENT_RATE:
            sibling, other = self.complement(ptype, fixed, query["name"])
            first_kind = "complement"
        else:
            sibling, other = self.other_type(ptype, fixed, query["name"])
            first_kind = "other_type"
        kind, conflict = self.conflicting(ptype, fixed)
        titles = [(ptype, self.product(ptype, fixed), 1, "match"), (ptype, self.product(ptype, fixed), 1, "match"),
                  (sibling, other, 0, first_kind), (ptype, conflict, 0, f"conflict_{kind}")]
        rows, seen = [], set()
        for title_type, item, label, pair_kind in titles:
            title = render(language, "title", item, title_type)
            while title in seen:  # two titles of one query may not coincide: give it another model code
                item["model"] = _model_code(self.rng)
                title = render(language, "title", item, title_type)
            seen.add(title)
            rows.append({"query_id": query_id, "query": text, "product_title": title, "product_brand": item["brand"],
                         "label": label, "category": ptype.category, "query_type": ptype.id,
                         "product_type": title_type.id, "pair_kind": pair_kind})
        return rows

    def generate(self, pairs: int) -> pd.DataFrame:
        n_queries = math.ceil(pairs / PAIRS_PER_QUERY)
        rows: list[dict] = []
        seen: set[str] = set()
        attempts = 0
        while len(seen) < n_queries:
            attempts += 1
            if attempts > 200 * n_queries:
                raise ValueError(f"the vocabulary yields only {len(seen)} distinct {self.language} queries; "
                                 f"ask for fewer than {pairs} pairs")
            ptype, query = self.query()
            text = self.vocab.render(self.language, "query", query, ptype)
            if text in seen:
                continue
            seen.add(text)
            rows.extend(self.rows_for(len(seen), ptype, query))
        table = pd.DataFrame(rows[:pairs])
        table.insert(2, "product_id", [f"{self.language.upper()}{i:07d}" for i in range(1, len(table) + 1)])
        return table

    def split(self, table: pd.DataFrame, fractions: dict[str, float] = SPLIT_FRACTIONS) -> dict[str, pd.DataFrame]:
        """Split by query (no query in two splits), then shuffle rows so a head() of a split is a fair sample."""
        queries = sorted(table["query_id"].unique().tolist())
        self.rng.shuffle(queries)
        n_valid = max(1, round(len(queries) * fractions["valid"]))
        n_test = max(1, round(len(queries) * fractions["test"]))
        groups = {"valid": queries[:n_valid], "test": queries[n_valid:n_valid + n_test],
                  "train": queries[n_valid + n_test:]}
        out = {}
        for name in SPLITS:
            part = table[table["query_id"].isin(groups[name])]
            order = list(range(len(part)))
            self.rng.shuffle(order)
            out[name] = part.iloc[order].reset_index(drop=True)
        return out


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    _write_atomic(path, lambda tmp: pq.write_table(arrow, tmp))


def _write_text(text: str, path: Path) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _readme(vocab: Vocabulary, splits: dict[str, dict[str, pd.DataFrame]], seed: int, pairs: int) -> str:
    categories = list(vocab.by_category)
    lines = [
        "# Demo marketplaces (generated)",
        "",
        f"Written by `mcl data demo --seed {seed} --pairs {pairs} --languages {','.join(splits)}`; the same seed "
        "gives byte-identical files. The text comes from the vocabulary the project ships "
        "(`tasks/data/vocab/products.json`, `templates.json`): "
        f"{len(vocab.types)} product types in {len(categories)} categories, named in "
        f"{', '.join(vocab.languages)}, with translated colours, materials, sizes, audiences, flavours and scents "
        "and language-neutral brands.",
        "",
        "Each folder is one marketplace (`marketplace.json` gives its id and language) with `train`, `valid` and "
        "`test` parquet files, split about 80/10/10 by query: no query appears in two splits.",
        "",
        "## Labels follow meaning",
        "A query names a product type, one attribute and sometimes a second one or a brand. Each query has four titles:",
        "- two relevant (label 1): the same product type, sometimes under another name (`sneakers`/`trainers`), "
        "with every attribute the query names;",
        "- one irrelevant (`other_type`): another type of the same category that keeps the query's brand, colour "
        "or material where it can (`red leather backpack` -> a red leather belt);",
        "- one irrelevant (`conflict_<attribute>`): the same type with one named attribute changed "
        "(`red backpack` -> a blue backpack; `women's` -> `men's`). Another brand of the same type is a "
        "substitute in ESCI terms, so it stays relevant.",
        "",
        "## Category mix per marketplace",
        "Marketplaces weight categories differently and leave some out, so a model learnt in sequence meets "
        "categories in one language that it saw only in another (transfer) and may lose them (forgetting).",
        "",
        "| marketplace | rows (train/valid/test) | positive share | " + " | ".join(categories) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in categories) + " |",
    ]
    for language, parts in splits.items():
        whole = pd.concat(parts.values())
        counts = Counter(whole["category"])
        shares = " | ".join(f"{100 * counts.get(c, 0) / len(whole):.0f}%" if counts.get(c) else "-"
                            for c in categories)
        sizes = "/".join(str(len(parts[s])) for s in SPLITS)
        lines.append(f"| {language} | {sizes} | {whole['label'].mean():.2f} | {shares} |")
    lines += [
        "",
        "## Columns",
        "`query_id`, `query`, `product_id`, `product_title`, `product_brand`, `label` (the data contract) and, for "
        "analysis, `category`, `query_type`, `product_type` and `pair_kind` (`match`, `other_type`, "
        "`conflict_<attribute>`).",
        "",
    ]
    return "\n".join(lines)


def generate_demo(out_dir: str | os.PathLike, languages: Sequence[str] = ("en", "es", "fr", "de", "ja"),
                  pairs_per_marketplace: int = 3000, seed: int = 13, *, valid_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> dict[str, Path]:
    """Write ``<out>/<language>/{train,valid,test}.parquet`` + ``marketplace.json`` and ``<out>/README.md``.

    ``valid_fraction``/``test_fraction`` are fractions of queries; a larger test split makes small ROC-AUC
    differences (a promotion gate's 0.01) measurable. Returns the marketplace folders by id (the language code).
    """
    if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 0.9):
        raise ValueError(f"valid_fraction and test_fraction must be positive and leave at least 10% of the queries "
                         f"for training, got {valid_fraction} and {test_fraction}")
    vocab = Vocabulary.shipped()
    languages = list(languages)
    unknown = [lang for lang in languages if lang not in vocab.languages]
    if unknown or not languages:
        raise ValueError(f"no demo vocabulary for {unknown or 'an empty language list'}; available: "
                         f"{', '.join(vocab.languages)}")
    if len(set(languages)) != len(languages):
        raise ValueError(f"languages repeat: {languages}")
    if pairs_per_marketplace < MIN_PAIRS:
        raise ValueError(f"pairs_per_marketplace must be at least {MIN_PAIRS}, got {pairs_per_marketplace}")
    out = Path(out_dir)
    splits = {}
    for language in languages:
        generator = _MarketplaceGenerator(vocab, language, seed)
        splits[language] = generator.split(generator.generate(pairs_per_marketplace),
                                           {"valid": valid_fraction, "test": test_fraction})
    folders = {}
    for language, parts in splits.items():
        folder = out / language
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in parts.items():
            _write_parquet(table, folder / f"{name}.parquet")
        meta = {"id": language, "language": language, "generator": "mcl data demo", "seed": seed,
                "pairs": pairs_per_marketplace}
        _write_text(json.dumps(meta, indent=2) + "\n", folder / MARKETPLACE_FILE)
        folders[language] = folder
    _write_text(_readme(vocab, splits, seed, pairs_per_marketplace), out / "README.md")
    return folders
