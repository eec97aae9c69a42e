"""Which pairs stage 1 translates: whole queries, the label ratio kept, the same rows for the same seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.translation import select_subset


def _queries(n_queries: int, seed: int, positive_rate: float = 0.35, with_ids: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        for p in range(int(rng.integers(1, 6))):
            rows.append({"query": f"query {q}", "product_title": f"title {q}-{p}", "product_id": f"p{q}-{p}",
                         "label": int(rng.random() < positive_rate), **({"query_id": f"q{q}"} if with_ids else {})})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_label_counts_within_one_example_of_the_fraction(fraction, seed):
    data = _queries(300, seed)
    subset = select_subset(data, fraction, seed)
    positives, negatives = int(data["label"].sum()), int((data["label"] == 0).sum())
    assert abs(int(subset["label"].sum()) - fraction * positives) <= 1
    assert abs(int((subset["label"] == 0).sum()) - fraction * negatives) <= 1


@pytest.mark.parametrize("with_ids", [True, False])
def test_a_query_keeps_all_its_pairs(with_ids):
    data = _queries(200, 7, with_ids=with_ids)
    subset = select_subset(data, 0.3, 13)
    chosen = data[data["query"].isin(subset["query"])]
    assert len(subset) == len(chosen) and subset.index.equals(chosen.index)


def test_deterministic_by_seed_and_different_across_seeds():
    data = _queries(200, 3)
    first = select_subset(data, 0.3, 13)
    assert first.equals(select_subset(data, 0.3, 13))
    assert not first.index.equals(select_subset(data, 0.3, 14).index)
    assert first.index.is_monotonic_increasing  # input order kept


def test_whole_table_at_fraction_one_and_something_at_a_tiny_fraction():
    data = _queries(50, 5)
    assert select_subset(data, 1.0, 0).equals(data)
    assert len(select_subset(data, 0.001, 0)) >= 1


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), "0.3", True])
def test_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        select_subset(_queries(5, 0), fraction, 0)
