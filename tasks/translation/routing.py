"""Which backend translates which hop: a direct pair when one exists, else the shortest chain of
available pairs through intermediate languages (fr -> es -> en with Apertium)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.translation.backends.base import Pair, TranslationBackend
from tasks.translation.errors import NoRouteError


@dataclass(frozen=True)
class Hop:
    pair: Pair
    backend: str


@dataclass(frozen=True)
class Route:
    source: str
    target: str
    hops: tuple[Hop, ...]

    @property
    def languages(self) -> list[str]:
        return [self.source, *(h.pair.target for h in self.hops)]

    def __str__(self) -> str:
        return ">".join(self.languages)

    @property
    def backends(self) -> str:
        return "+".join(dict.fromkeys(h.backend for h in self.hops)) or "identity"


def available_pairs(backends: Sequence[TranslationBackend]) -> dict[Pair, list[str]]:
    """Every pair some backend serves, with the backends that serve it in preference order."""
    table: dict[Pair, list[str]] = {}
    for backend in backends:
        for pair in sorted(backend.pairs()):
            table.setdefault(pair, []).append(backend.name)
    return table


def find_route(source: str, target: str, backends: Sequence[TranslationBackend]) -> Route | None:
    """Fewest hops first; among equally short routes, the one using the most preferred backends,
    then the alphabetically first intermediate languages, so that the same inputs give the same route."""
    if source == target:
        return Route(source, target, ())
    served = available_pairs(backends)
    rank = {b.name: i for i, b in enumerate(backends)}
    edges: dict[str, list[tuple[str, str]]] = {}
    for pair, names in served.items():
        edges.setdefault(pair.source, []).append((pair.target, names[0]))
    queue: list[tuple[int, int, tuple[str, ...], tuple[Hop, ...]]] = [(0, 0, (source,), ())]
    settled: set[str] = set()
    while queue:
        hops_n, cost, langs, hops = heapq.heappop(queue)
        here = langs[-1]
        if here == target:
            return Route(source, target, hops)
        if here in settled:
            continue
        settled.add(here)
        for nxt, backend in sorted(edges.get(here, [])):
            if nxt not in settled:
                heapq.heappush(queue, (hops_n + 1, cost + rank[backend], (*langs, nxt), (*hops, Hop(Pair(here, nxt), backend))))
    return None


def direct_fallback(source: str, target: str, backends: Sequence[TranslationBackend]) -> Route | None:
    """A direct hop by a backend that may fetch a model it does not have yet (an allowed hub download)."""
    pair = Pair(source, target)
    for backend in backends:
        if backend.may_serve(pair):
            return Route(source, target, (Hop(pair, backend.name),))
    return None


def no_route_error(source: str, target: str, backends: Sequence[TranslationBackend], reason: str = "") -> NoRouteError:
    """The message an operator needs: what exists, and what to install to get the missing pair."""
    served = available_pairs(backends)
    listing = ", ".join(f"{p} ({'/'.join(n)})" for p, n in sorted(served.items())) or "none"
    pair = Pair(source, target)
    hints = [h for b in backends for h in b.install_hints(pair)]
    names = ", ".join(b.name for b in backends) or "none"
    text = (f"no translation route from {source!r} to {target!r} with backends [{names}]"
            f"{': ' + reason if reason else ''}. Available pairs: {listing}.")
    if hints:
        text += " To add it, install one of: " + "; ".join(hints) + "."
    return NoRouteError(text)


def arrival_routes(languages: Sequence[str], backends: Sequence[TranslationBackend]) -> dict[tuple[str, str], str]:
    """For marketplaces arriving in the order of ``languages``: the route of each (new, older) language pair on
    this machine, or ``none (§4.2)``; what an operator reads before a sequence starts (no model is loaded)."""
    out: dict[tuple[str, str], str] = {}
    for t, new in enumerate(languages):
        for old in dict.fromkeys(languages[:t]):
            if old == new:
                continue
            route = find_route(new, old, backends) or direct_fallback(new, old, backends)
            out[(new, old)] = f"{route} ({route.backends})" if route is not None else "none (§4.2)"
    return out
