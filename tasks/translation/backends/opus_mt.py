"""Opus-MT (Helsinki-NLP Marian models) through transformers, the paper's translation system."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.translation.backends.base import (
    BatchTranslation,
    ModelInfo,
    Pair,
    TranslationBackend,
    decode_limit,
    folder_fingerprint,
    length_sorted_batches,
)
from tasks.translation.backends.hub import cached_opus_mt_models, cached_snapshot, fetch_opus_mt, is_hub_id, opus_mt_id
from tasks.translation.errors import ModelUnavailableError

log = logging.getLogger(__name__)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Loaded:
    info: ModelInfo
    tokenizer: Any
    model: Any
    device: Any


def marian_max_tokens(config: Any, tokenizer: Any) -> int:
    """Longest source the model takes: its position table, or the tokenizer's limit if that is shorter."""
    limits = [v for v in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None))
              if isinstance(v, int) and 0 < v < 1_000_000]
    return min(limits) if limits else 512


class OpusMTBackend(TranslationBackend):
    """MarianMTModel + MarianTokenizer per pair: a local folder given per pair, or ``Helsinki-NLP/opus-mt-{src}-{tgt}``.

    Inputs are sorted by length and batched; decoding is greedy (``num_beams=1``) or beam search;
    on a GPU the weights run in fp16. ``threads`` caps torch's CPU threads while translating: on a
    busy machine one thread per process is often several times faster than contended threads.
    """

    name = "opus-mt"

    def __init__(
        self,
        models: Mapping[Pair, Path | str] | None = None,
        *,
        device: str = "auto",
        batch_size: int = 32,
        num_beams: int = 1,
        use_hub_cache: bool = True,
        allow_download: bool = False,
        threads: int | None = None,
    ) -> None:
        self._configured = {Pair(*k): v for k, v in (models or {}).items()}
        self._device_name = device
        self.batch_size = batch_size
        self.num_beams = num_beams
        self.use_hub_cache = use_hub_cache
        self.allow_download = allow_download
        self.threads = threads
        self._loaded: dict[Pair, _Loaded] = {}

    def pairs(self) -> frozenset[Pair]:
        cached = cached_opus_mt_models() if self.use_hub_cache else {}
        return frozenset(self._configured) | frozenset(cached)

    def may_serve(self, pair: Pair) -> bool:
        return self.allow_download

    def _locate(self, pair: Pair) -> tuple[str, Path]:
        """(name for provenance, local folder); configured hub ids and ``allow_download`` may fetch."""
        ref = self._configured.get(pair)
        if ref is not None and not is_hub_id(ref):
            folder = Path(ref).expanduser()
            if not folder.is_dir():
                raise ModelUnavailableError(f"Opus-MT model folder {str(ref)!r} for {pair} does not exist")
            return str(ref), folder
        repo_id = str(ref) if ref is not None else opus_mt_id(pair)
        snapshot = cached_snapshot(repo_id) if self.use_hub_cache else None
        if snapshot is not None:
            return repo_id, snapshot
        if ref is None and not self.allow_download:
            raise ModelUnavailableError(f"Opus-MT model {repo_id!r} is not in the local Hugging Face cache")
        return repo_id, fetch_opus_mt(repo_id, pair)

    def prepare(self, pair: Pair) -> ModelInfo:
        if pair in self._loaded:
            return self._loaded[pair].info
        from transformers import MarianMTModel, MarianTokenizer

        from models.device import resolve_device

        name, folder = self._locate(pair)
        try:
            tokenizer = MarianTokenizer.from_pretrained(folder)
            model = MarianMTModel.from_pretrained(folder)
        except (OSError, ValueError, KeyError, AssertionError) as err:
            raise ModelUnavailableError(f"{folder} is not a Marian (Opus-MT) model folder for {pair}: {err}") from err
        # Opus-MT forces </s> at the length cap; without that a sentence decodes the same alone or in a
        # batch (the batch runs to its longest budget and each sentence is cut to its own).
        model.generation_config.forced_eos_token_id = None
        device = resolve_device(self._device_name)
        if device.type == "cuda":
            model = model.half()
        model.to(device).eval()
        info = ModelInfo(self.name, name, folder_fingerprint(folder), marian_max_tokens(model.config, tokenizer))
        self._loaded[pair] = _Loaded(info, tokenizer, model, device)
        log.info("opus-mt %s: %s on %s%s", pair, name, device, " (fp16)" if device.type == "cuda" else "")
        return info

    def translate(self, texts: Sequence[str], pair: Pair) -> BatchTranslation:
        import torch

        self.prepare(pair)
        loaded = self._loaded[pair]
        tok, model, max_tokens = loaded.tokenizer, loaded.model, loaded.info.max_tokens
        ids = tok(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        truncated = [len(x) > max_tokens for x in ids]
        ids = [x if len(x) <= max_tokens else x[: max_tokens - 1] + [tok.eos_token_id] for x in ids]
        out: list[str] = [""] * len(texts)
        limits = [decode_limit(len(x), max_tokens) for x in ids]
        with _torch_threads(self.threads):
            for batch in length_sorted_batches([len(x) for x in ids], self.batch_size):
                enc = tok.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt").to(loaded.device)
                with torch.inference_mode():
                    generated = model.generate(**enc, num_beams=self.num_beams, do_sample=False,
                                               max_new_tokens=max(limits[i] for i in batch))
                # Each sentence keeps only its own budget, so its translation never depends on its batch-mates.
                new_tokens = [generated[row, 1 : 1 + limits[i]] for row, i in enumerate(batch)]
                for i, text in zip(batch, tok.batch_decode(new_tokens, skip_special_tokens=True)):
                    out[i] = text.strip()
        return BatchTranslation(out, truncated)

    def install_hints(self, pair: Pair) -> list[str]:
        return [f"the Opus-MT model {opus_mt_id(pair)} in the Hugging Face cache, or a local folder "
                f"(--model {pair}=/path/to/opus-mt-{pair.source}-{pair.target})"]
