"""Frozen-encoder measurements for comparing base encoders: probe ROC-AUC over seeds, and latency per pair.

The paper's protocol: the encoder stays frozen and a classifier per task is fitted on its features, several times
with different seeds. The classifier is the project's linear probe (:mod:`models.methods.probe`: E5-style
mean-pooled embeddings of ``query: q`` and ``passage: p`` combined as [q, p, q·p, |q − p|], a logistic regression
fitted to convergence); since that fit is deterministic, a seed draws the training pairs it sees (a share of the
training split), which is what varies from one probe to the next. Latency is what serving pays for the base: one
forward pass over tokenised (query, title) pairs on one CPU thread, at batch 1 and batch 32.

The probe reads each text alone; this project's models read the (query, title) pair as one sequence, through a
language adapter and a head on the frozen encoder. :func:`adapter_aucs` measures that use too: an encoder that
makes better probe features can still give the adapters less to work with (measured on e5-small's distilled
student: probes +0.03 over the undistilled copy, adapters 0.05 below it on average and 0.17 on tax/en).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from models.config import E5_QUERY_PREFIX, E5_TITLE_PREFIX
from models.device import resolve_device
from models.encoder_distill import has_pooler
from models.encoders import sentence_embeddings
from models.methods.probe import fit_logistic, pair_features
from models.methods.protocol import MarketplaceSplits
from models.metrics import roc_auc
from models.pairs import Pairs, TextFormat
from models.relevance import RelevanceModel
from models.stages import train_language_adapter

if TYPE_CHECKING:
    from models.config import LearnerConfig
    from models.encoder_ref import EncoderRef

WARMUP_PASSES = 2


def load_frozen_encoder(folder: Path, device: torch.device | str = "cpu"):
    """(model in eval mode with no gradients, tokenizer); a folder without a pooler is loaded without one."""
    model = AutoModel.from_pretrained(str(folder), add_pooling_layer=has_pooler(Path(folder))).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(folder))


def _embed(model, tokenizer, texts: Sequence[str], prefix: str, batch_size: int, max_length: int) -> torch.Tensor:
    """Sentence embeddings of ``texts``, each distinct text encoded once (queries repeat across pairs)."""
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    vectors = sentence_embeddings(model, tokenizer, [str(t) for t in unique], prefix, batch_size=batch_size,
                                  max_length=max_length)
    return vectors[torch.as_tensor(inverse, device=vectors.device)]


def probe_features(model, tokenizer, pairs: Pairs, *, batch_size: int, max_length: int) -> torch.Tensor:
    """[q, p, q·p, |q − p|] of every pair, from the frozen encoder."""
    return pair_features(_embed(model, tokenizer, pairs.queries, E5_QUERY_PREFIX, batch_size, max_length),
                         _embed(model, tokenizer, pairs.titles, E5_TITLE_PREFIX, batch_size, max_length))


def probe_aucs(
    folder: Path,
    splits: Mapping[str, tuple[Pairs, Pairs]],
    *,
    seeds: int,
    fraction: float,
    seed: int,
    batch_size: int,
    max_length: int,
    device: str = "auto",
) -> dict[str, list[float]]:
    """Per marketplace, the test ROC-AUC of ``seeds`` probes on the frozen encoder in ``folder``.

    ``splits`` maps a marketplace to its (train, test) pairs; probe s is fitted on the share ``fraction`` of the
    training pairs drawn by ``(seed, s)`` -- the same draw for every encoder, so encoders are compared on the same
    samples."""
    model, tokenizer = load_frozen_encoder(folder, resolve_device(device))
    out: dict[str, list[float]] = {}
    for key, (train, test) in splits.items():
        x = probe_features(model, tokenizer, train, batch_size=batch_size, max_length=max_length)
        x_test = probe_features(model, tokenizer, test, batch_size=batch_size, max_length=max_length)
        y = torch.as_tensor(np.asarray(train.labels), device=x.device)
        size = max(2, round(fraction * len(train)))
        aucs = []
        for s in range(seeds):
            rows = np.sort(np.random.default_rng([seed, s]).choice(len(train), size=size, replace=False))
            index = torch.as_tensor(rows, device=x.device)
            head = fit_logistic(x[index], y[index])
            with torch.no_grad():
                scores = torch.sigmoid(head(x_test).squeeze(-1)).cpu().numpy()
            aucs.append(roc_auc(test.labels, scores))
        out[key] = aucs
    return out


def adapter_aucs(encoder: EncoderRef, splits: Mapping[str, MarketplaceSplits], learner: LearnerConfig, *,
                 rows: int) -> dict[str, float]:
    """Per marketplace, the test ROC-AUC of one language adapter and head trained on the frozen ``encoder`` exactly
    as an arrival's first stage trains them (``learner``'s adapter settings, seed and text format), on the first
    ``rows`` training and validation pairs; the whole test split scores it. One fit per marketplace: the adapter's
    seed is the learner's, so two encoders are compared on the same initialisation and batches."""
    out: dict[str, float] = {}
    for key, data in splits.items():
        model = RelevanceModel.create(encoder, text=TextFormat.of(learner), device=learner.device)
        train_language_adapter(model, data.spec, data.train.head(rows), data.valid.head(rows), learner)
        scores = model.predict_proba(data.test, setup=data.spec.id, batch_size=learner.adapter.eval_batch_size,
                                     precision=learner.adapter.precision)
        out[key] = roc_auc(data.test.labels, scores)
    return out


def pair_latency_ms(
    folder: Path,
    pairs: Pairs,
    *,
    batch_sizes: Sequence[int],
    max_length: int,
    repeats: int,
) -> dict[int, float]:
    """Milliseconds per (query, title) pair of the encoder's forward pass on one CPU thread, per batch size: the
    median over ``repeats`` timed passes over ``pairs`` (tokenised beforehand, padded per batch), after a warm-up.
    torch's thread count is restored afterwards, whatever happens."""
    model, tokenizer = load_frozen_encoder(folder, "cpu")
    batches = {
        size: [tokenizer(list(pairs.queries[i:i + size]), list(pairs.titles[i:i + size]), padding=True,
                         truncation="longest_first", max_length=max_length, return_tensors="pt")
               for i in range(0, len(pairs), size)]
        for size in batch_sizes
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for batch in batches[batch_sizes[0]][:WARMUP_PASSES]:
                model(**batch)
            out = {}
            for size, encoded in batches.items():
                passes = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    for batch in encoded:
                        model(**batch)
                    passes.append((time.perf_counter() - start) * 1000 / len(pairs))
                out[size] = statistics.median(passes)
    finally:
        torch.set_num_threads(threads)
    return out


def encoder_parameters(folder: Path) -> int:
    """Parameters of the encoder itself (an MLM teacher's head, which serving never runs, not counted)."""
    model, _ = load_frozen_encoder(folder)
    return sum(p.numel() for p in model.parameters())
