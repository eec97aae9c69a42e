"""Language adapters shared by the benchmark's adapter-based runs.

A_k depends only on the encoder, D_k, the seed and the adapter configuration: stage 2 trains nothing
but A_k and its head, from a seeded initialisation, and never reads earlier adapters. So ``ad``, its
ablations, ``adapter-only``, ``joint-fusion`` and every point of the translation-fraction sweep would
train the very same A_k. The bank trains it once and gives later runs a copy of the weights with the
original stage report. The report carries ``reused_seconds`` (its training time), which
:func:`models.methods.protocol.run_protocol` adds to the arrival's wall time, so reuse never flatters a
method's cost.

In memory the bank lives as long as its process. Given a folder (``persist_to``), it also keeps every adapter
there, so the benchmark's worker processes share them and a resumed benchmark does not train them again: a
file lock per adapter makes a second process wait for the first to finish the adapter instead of training it
twice, and a file appears whole (written aside, then renamed) or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from models.config import LearnerConfig
from models.pairs import Pairs
from models.relevance import MarketplaceSpec, RelevanceModel
from models.stages import StageReport, train_language_adapter
from models.training import FitResult

Banked = tuple[list[dict[str, torch.Tensor]], StageReport]


def _fingerprint(model: RelevanceModel, spec: MarketplaceSpec, train: Pairs, valid: Pairs, cfg: LearnerConfig) -> str:
    digest = hashlib.sha256(repr((model.encoder.checksum, model.text, spec, cfg.adapter, cfg.seed,
                                  cfg.seed_per_marketplace, cfg.reduction_factor)).encode())
    for pairs in (train, valid):
        digest.update(repr((list(pairs.queries), list(pairs.titles), [int(x) for x in pairs.labels])).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (released when the holder exits, even by a crash)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _save(path: Path, banked: Banked) -> None:
    state, report = banked
    scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"state": state, "report": dataclasses.asdict(report)}, scratch)
    os.replace(scratch, path)


def _load(path: Path) -> Banked:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    report = dict(saved["report"])
    return saved["state"], StageReport(**{**report, "fit": FitResult(**report["fit"])})


class AdapterBank:
    """Trained adapter + head weights by fingerprint (about 1.5 MB per adapter on e5-small)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._store: dict[str, Banked] = {}
        self.directory: Path | None = None
        self.persist_to(directory)

    def __len__(self) -> int:
        return len(self._store)

    def persist_to(self, directory: Path | None) -> None:
        """Keep adapters in ``directory`` too (None: in memory only)."""
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def train(self, model: RelevanceModel, spec: MarketplaceSpec, train: Pairs, valid: Pairs, cfg: LearnerConfig,
              *, checkpoint: Path | None = None) -> StageReport:
        """``train_language_adapter``, or the same adapter copied in when it was trained before."""
        key = _fingerprint(model, spec, train, valid, cfg)
        if key not in self._store:
            path = None if self.directory is None else self.directory / f"{key}.pt"
            with contextlib.nullcontext() if path is None else _locked(path.with_suffix(".lock")):
                if path is not None and path.exists():
                    self._store[key] = _load(path)
                else:
                    report = train_language_adapter(model, spec, train, valid, cfg, checkpoint=checkpoint)
                    self._store[key] = (model.marketplace_state(spec.id), report)
                    if path is not None:
                        _save(path, self._store[key])
                    return report
        state, report = self._store[key]
        model.add_marketplace(spec, cfg.reduction_factor)
        model.load_marketplace_state(spec.id, state)
        return dataclasses.replace(report, details={**report.details, "reused_seconds": report.fit.train_seconds})


SHARED = AdapterBank()  # one per process; the benchmark points every worker's at one folder (``persist_to``)
