"""The compact serving student (AMTSS): one shared small encoder and one classification head per marketplace.

The encoder is the base encoder (or a domain-distilled one) cut to a few of its layers, copied bit for bit
(:func:`models.encoder_distill.student_encoder`), and trained end to end, so unlike the relevance model the folder
holds its own encoder weights: a served student needs nothing but its folder. A marketplace is routed to its own
head (the marketplace id travels with every query, as in the relevance pyfunc); a marketplace joins by getting a
new head on the shared encoder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.config import LayerChoice
from models.device import autocast, resolve_device
from models.encoder_distill import copied_layers, has_pooler, student_encoder
from models.folders import write_folder
from models.pairs import Batch, EncodedPairs, Pairs, TextFormat, batches, pool
from models.relevance import NUM_LABELS, MarketplaceSpec, ModelFormatError

MANIFEST = "student.json"
FORMAT_VERSION = 1
ENCODER_DIR = "encoder"
HEADS_FILE = "heads.safetensors"


class MarketplaceHead(nn.Module):
    """Projection (dense + tanh, as BERT's pooler and the adapters' classification heads have it) and a linear
    classifier over the pooled vector."""

    def __init__(self, hidden_size: int, dropout: float, init_range: float) -> None:
        super().__init__()
        self.projection = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, NUM_LABELS)
        for layer in (self.projection, self.classifier):
            nn.init.normal_(layer.weight, std=init_range)
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.tanh(self.projection(self.dropout(pooled)))))


class StudentModel(nn.Module):
    """Scores (query, product title) pairs of the marketplaces it has a head for."""

    def __init__(self, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: TextFormat,
                 base: dict[str, object]) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.text = text
        self.base = base  # which encoder the layers came from: name, checksum, its depth and the layers copied
        self.heads = nn.ModuleDict()
        self.marketplaces: list[MarketplaceSpec] = []

    # ----------------------------------------------------------------- building
    @classmethod
    def create(cls, base_encoder: Path, *, name: str, checksum: str, layers: int, text: TextFormat,
               layer_choice: LayerChoice, device: str | torch.device = "cpu") -> StudentModel:
        """A student of ``layers`` layers of ``base_encoder`` (its first ones, or evenly spaced from its first to
        its last: ``layer_choice``), with no marketplace yet, reading pairs as ``text`` says (the teachers' text
        format, so both see the same tokens)."""
        depth = int(AutoConfig.from_pretrained(str(base_encoder)).num_hidden_layers)
        chosen = copied_layers(depth, layers, layer_choice)
        encoder = student_encoder(Path(base_encoder), chosen)
        tokenizer = AutoTokenizer.from_pretrained(str(base_encoder))
        base = {"name": name, "checksum": checksum, "layers": depth, "copied": chosen}
        student = cls(encoder, tokenizer, text, base)
        return student.to(resolve_device(device))

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def marketplace_ids(self) -> list[str]:
        return [m.id for m in self.marketplaces]

    def add_marketplace(self, spec: MarketplaceSpec) -> None:
        """A new, untrained head for ``spec`` on the shared encoder."""
        if spec.id in self.heads:
            raise ModelFormatError(f"the student already has a head for marketplace {spec.id!r}")
        config = self.encoder.config
        head = MarketplaceHead(config.hidden_size, getattr(config, "hidden_dropout_prob", 0.1),
                               getattr(config, "initializer_range", 0.02))
        self.heads[spec.id] = head.to(self.device)
        self.marketplaces.append(spec)

    def require(self, marketplace_id: str) -> None:
        if marketplace_id not in self.heads:
            known = ", ".join(self.marketplace_ids) or "none"
            raise ModelFormatError(f"unknown marketplace {marketplace_id!r}: this student knows {known}")

    def encode(self, pairs: Pairs) -> EncodedPairs:
        return self.text.encode(pairs, self.tokenizer)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- forward
    def logits(self, batch: Batch, marketplace_id: str) -> torch.Tensor:
        hidden = self.encoder(**batch.model_inputs()).last_hidden_state
        return self.heads[marketplace_id](pool(hidden, batch.attention_mask, self.text.pooling))

    @torch.no_grad()
    def predict_proba(self, marketplace_id: str, pairs: Pairs, *, batch_size: int = 64,
                      precision: str = "auto") -> np.ndarray:
        """P(relevant) for each pair of ``marketplace_id``, in input order."""
        self.require(marketplace_id)
        was_training = self.training
        self.eval()
        encoded = self.encode(pairs)
        out = np.empty(len(encoded), dtype=np.float32)
        try:
            for batch in batches(encoded, batch_size, self.tokenizer.pad_token_id, shuffle=False):
                with autocast(self.device, precision):
                    logits = self.logits(batch.to(self.device), marketplace_id)
                out[batch.index.numpy()] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # -------------------------------------------------------------- save/load
    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "marketplaces": [asdict(m) for m in self.marketplaces],
            "text_format": asdict(self.text),
            "base_encoder": self.base,
            "libraries": {"torch": torch.__version__, "transformers": transformers.__version__},
        }

    def save(self, folder: str | Path) -> Path:
        """The encoder as a Hugging Face folder, the heads as one safetensors file and the manifest, atomically."""

        def write(tmp: Path) -> None:
            self.encoder.save_pretrained(tmp / ENCODER_DIR)
            self.tokenizer.save_pretrained(tmp / ENCODER_DIR)
            state = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
            save_file(state, str(tmp / HEADS_FILE))
            (tmp / MANIFEST).write_text(json.dumps(self.manifest(), indent=2))

        return write_folder(folder, write)

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> StudentModel:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise ModelFormatError(f"{folder} is not a student model folder: {MANIFEST} is missing")
        manifest = json.loads(path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(f"{path}: format_version {manifest.get('format_version')!r} is not supported "
                                   f"(expected {FORMAT_VERSION})")
        encoder_dir = folder / ENCODER_DIR
        encoder = AutoModel.from_pretrained(str(encoder_dir), add_pooling_layer=has_pooler(encoder_dir))
        student = cls(encoder, AutoTokenizer.from_pretrained(str(encoder_dir)),
                      TextFormat(**manifest["text_format"]), manifest["base_encoder"])
        for entry in manifest["marketplaces"]:
            student.add_marketplace(MarketplaceSpec(**entry))
        student.heads.load_state_dict(load_file(str(folder / HEADS_FILE)), strict=True)
        student.to(resolve_device(device))
        return student.eval()


def size_megabytes(model: nn.Module) -> float:
    """Memory of the weights as held (parameters and buffers), in MB (10^6 bytes)."""
    tensors: Sequence[torch.Tensor] = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6
