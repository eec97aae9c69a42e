"""Stage 1's sample: which of the new marketplace's pairs get translated.

The paper translates a fraction of D_t (30% is its best cost/benefit point). We keep a query's
pairs together, because distillation on a query with only some of its products would teach the
fusion a skewed picture of that query, and we keep the label balance of D_t, because the
distillation batches should look like the task batches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def validate_fraction(fraction: float) -> float:
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def group_keys(data: pd.DataFrame) -> pd.Series:
    """A query's identity: ``query_id`` where the table has one, else the query text."""
    if "query_id" in data.columns and data["query_id"].notna().all():
        return data["query_id"].astype(str)
    return data["query"].astype(str).str.strip().str.lower()


def select_subset(data: pd.DataFrame, fraction: float, seed: int, *, label: str = "label") -> pd.DataFrame:
    """Rows of about ``fraction`` of the pairs, whole queries only, with the label ratio of ``data``.

    Greedy over queries in a seeded random order (a query is taken when it brings the positive and
    negative counts closer to their targets, fraction × positives and fraction × negatives), then a
    local search adds, drops or swaps whole queries while that brings the counts closer still.
    Queries with the same (positives, negatives) are interchangeable for the counts, so the search
    runs over those few classes and picks members in the seeded order. With queries of a few pairs
    each this lands within one example of both targets. The result keeps the input's row order.
    """
    fraction = validate_fraction(fraction)
    if fraction == 1.0 or data.empty:
        return data.copy()
    keys = group_keys(data)
    labels = data[label].map(lambda v: int(float(v)))
    counts = pd.DataFrame({"key": keys.values, "pos": labels.values == 1}).groupby("key", sort=True)["pos"].agg(["sum", "count"])
    pos = counts["sum"].to_numpy(dtype=int)
    neg = (counts["count"] - counts["sum"]).to_numpy(dtype=int)
    target = np.array([fraction * pos.sum(), fraction * neg.sum()])
    order = np.random.default_rng(seed).permutation(len(counts))
    chosen = _greedy(pos, neg, target, order)
    _improve(chosen, pos, neg, target, order)
    if not chosen.any():  # a fraction below one query's worth still means "translate something"
        chosen[order[0]] = True
    keep = set(counts.index[chosen])
    return data[keys.isin(keep).values].copy()


def _distance(counts: np.ndarray, target: np.ndarray) -> float:
    return float(np.abs(counts - target).sum())


def _greedy(pos: np.ndarray, neg: np.ndarray, target: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Counts only grow, so a query not worth taking now is not worth taking later: one pass decides."""
    chosen = np.zeros(len(pos), dtype=bool)
    have = np.zeros(2)
    for g in order:
        step = np.array([pos[g], neg[g]])
        if _distance(have + step, target) < _distance(have, target):
            chosen[g], have = True, have + step
    return chosen


def _improve(chosen: np.ndarray, pos: np.ndarray, neg: np.ndarray, target: np.ndarray, order: np.ndarray) -> None:
    """Best single add, drop or swap of one query per round, until none brings the counts closer."""
    rank = np.empty(len(order), dtype=int)
    rank[order] = np.arange(len(order))
    comp = np.stack([pos, neg], axis=1)
    zero = np.zeros(2, dtype=int)
    for _ in range(4 * len(pos) + 1):
        have = comp[chosen].sum(axis=0)
        inside = {tuple(c) for c in comp[chosen]}
        outside = {tuple(c) for c in comp[~chosen]}
        moves = [(zero, np.array(b)) for b in outside] + [(np.array(a), zero) for a in inside]
        moves += [(np.array(a), np.array(b)) for a in inside for b in outside if a != b]
        best, best_move = _distance(have, target), None
        for drop, add in sorted(moves, key=lambda m: (tuple(m[0]), tuple(m[1]))):
            d = _distance(have - drop + add, target)
            if d < best - 1e-9:
                best, best_move = d, (drop, add)
        if best_move is None:
            return
        drop, add = best_move
        if drop.any():
            members = np.flatnonzero(chosen & (comp == drop).all(axis=1))
            chosen[members[np.argmin(rank[members])]] = False
        if add.any():
            members = np.flatnonzero(~chosen & (comp == add).all(axis=1))
            chosen[members[np.argmin(rank[members])]] = True
