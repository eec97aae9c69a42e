"""The relevance model: frozen base encoder + one language adapter per marketplace + AdapterFusion + head.

One ``adapters`` model holds everything, including, during distillation, both the previous
fusion Ψ_{t-1} (teacher) and the new one Ψ_t (student): they share the frozen encoder and the
adapters, so the teacher costs no second copy of the encoder. The model saves as a
self-describing folder (``manifest.json`` + AdapterHub-format adapter and fusion folders);
the base encoder is referenced by name and checksum, not copied.

Length: building, routing, scoring and the atomic save/load of one model type; parameter groups are
delegated to :mod:`models.adapter_parts`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import adapters
import numpy as np
import torch
import transformers
from adapters import AutoAdapterModel, Fuse, SeqBnConfig, Stack
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from models.adapter_parts import bottleneck_parameters, head_module, load_state, parameters_in, parts, state_of
from models.contiguous_fusion import use_contiguous_fusion
from models.device import resolve_device
from models.folders import write_folder
from models.fusion_attention import fusion_modules
from models.pairs import Batch, EncodedPairs, Pairs, TextFormat, mean_pool
from models.training import predict_proba

if TYPE_CHECKING:
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)


class _DropMessages(logging.Filter):
    """Silences known-spurious library warnings that would send an operator chasing nothing."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


# adapters warns on every set_active_adapters() (its reset pass runs before the new setup is stored);
# transformers 4.57.6 flags every locally saved sentencepiece tokenizer as a Mistral regex case; the encoder
# folders carry no pooler (the relevance heads read the [CLS] token and never use it).
logging.getLogger("adapters.model_mixin").addFilter(_DropMessages("none are activated for the forward pass"))
logging.getLogger("transformers.tokenization_utils_base").addFilter(_DropMessages("incorrect regex pattern"))
logging.getLogger("transformers.modeling_utils").addFilter(_DropMessages("pooler", "TRAIN this model"))

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ADAPTER_CONFIG = "seq_bn"  # Pfeiffer bottleneck after the feed-forward block, as in the paper
FUSION_CONFIG = "dynamic"  # key, query and value matrices plus the value regulariser (Pfeiffer et al. 2021)
NUM_LABELS = 2


class ModelFormatError(ValueError):
    """A model folder that cannot be used as asked (unknown marketplace, wrong encoder, bad manifest)."""


@dataclass(frozen=True)
class MarketplaceSpec:
    """A marketplace as the model knows it: its id names the adapter and its head."""

    id: str
    language: str

    def __post_init__(self) -> None:
        if not self.id or any(c in self.id for c in ",/\\ ") or self.id != self.id.strip():
            raise ValueError(f"marketplace id {self.id!r} must be non-empty without commas, slashes or spaces")


def fusion_name(adapter_names: Sequence[str]) -> str:
    return Fuse(*adapter_names).name


class RelevanceModel:
    """Scores (query, product title) pairs; grows one marketplace at a time."""

    def __init__(
        self,
        net: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        encoder: EncoderRef,
        marketplaces: list[MarketplaceSpec],
        fusion: str | None,
        text: TextFormat,
    ) -> None:
        self.net = net
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.marketplaces = marketplaces
        self.fusion = fusion
        self.text = text

    # ----------------------------------------------------------------- building
    @classmethod
    def create(cls, encoder: EncoderRef, *, text: TextFormat, device: torch.device | str) -> RelevanceModel:
        """A model with no marketplace yet, on top of ``encoder`` (frozen), on ``device`` ("auto" resolves), reading
        pairs as ``text`` says for its whole life."""
        net = AutoAdapterModel.from_pretrained(str(encoder.path))
        tokenizer = AutoTokenizer.from_pretrained(str(encoder.path))
        for p in net.parameters():
            p.requires_grad_(False)
        net.to(resolve_device(device))
        return cls(net, tokenizer, encoder, [], None, text)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def max_length(self) -> int:
        return self.text.max_length

    def encode(self, pairs: Pairs) -> EncodedPairs:
        """Pairs as this model reads them (its prefixes and length): every stage and scorer goes through here."""
        return self.text.encode(pairs, self.tokenizer)

    @property
    def adapter_names(self) -> list[str]:
        return [m.id for m in self.marketplaces]

    def marketplace(self, marketplace_id: str) -> MarketplaceSpec:
        for spec in self.marketplaces:
            if spec.id == marketplace_id:
                return spec
        known = ", ".join(self.adapter_names) or "none"
        raise ModelFormatError(f"unknown marketplace {marketplace_id!r}: this model knows {known}")

    def add_marketplace(self, spec: MarketplaceSpec, reduction_factor: int | None = None) -> None:
        """A new Pfeiffer adapter (hidden size / ``reduction_factor`` bottleneck units; None: the library's own
        Pfeiffer default) and its head, both untrained."""
        if spec.id in self.adapter_names:
            raise ModelFormatError(f"marketplace {spec.id!r} already has an adapter in this model")
        size = {} if reduction_factor is None else {"reduction_factor": reduction_factor}
        self.net.add_adapter(spec.id, config=SeqBnConfig(**size))
        self.net.add_classification_head(spec.id, num_labels=NUM_LABELS)
        self.net.to(self.device)
        self.marketplaces.append(spec)

    def add_fusion(self, adapter_names: Sequence[str], warm_start_from: str | None = None,
                   head_from: str | None = None) -> str:
        """A fusion over ``adapter_names`` (old first) with its own head.

        ``warm_start_from`` copies Ψ_{t-1} into Ψ_t: fusion parameters do not depend on the number
        of adapters, so its query, key and value matrices fit exactly (the paper starts from random).
        ``head_from`` copies an existing head (the previous model's) into the new fusion's head.
        """
        name = fusion_name(adapter_names)
        self.net.add_adapter_fusion(Fuse(*adapter_names), config=FUSION_CONFIG)
        use_contiguous_fusion(self.net, name)
        self.net.add_classification_head(name, num_labels=NUM_LABELS)
        if warm_start_from is not None:
            load_state(fusion_modules(self.net, name), state_of(fusion_modules(self.net, warm_start_from)))
        if head_from is not None:
            head_module(self.net, name).load_state_dict(head_module(self.net, head_from).state_dict())
        self.net.to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        return name

    def fusion_block(self, name: str) -> Fuse:
        """The composition block of fusion ``name``, as the library recorded it when the fusion was added."""
        _, adapter_names = self.net.adapters_config.get_fusion(name)
        if adapter_names is None:
            raise ModelFormatError(f"the model has no fusion named {name!r}")
        return Fuse(*adapter_names)

    def remove_fusion(self, name: str) -> None:
        self.net.delete_adapter_fusion(self.fusion_block(name))
        self.net.delete_head(name)

    # ------------------------------------------------------------- parameters
    def parameters_of(self, *, adapters_: Iterable[str] = (), fusion: str | None = None,
                      heads: Iterable[str] = ()) -> list[torch.nn.Parameter]:
        """Parameters of the named adapters, fusion and heads (nothing of the base encoder)."""
        return parameters_in(self.net, parts(self.net, adapters_=adapters_, fusion=fusion, heads=heads))

    def marketplace_state(self, marketplace_id: str) -> list[dict[str, torch.Tensor]]:
        """Copies of A_k's and its head's weights (to put the same adapter into another model)."""
        return state_of(parts(self.net, adapters_=[marketplace_id], heads=[marketplace_id]))

    def load_marketplace_state(self, marketplace_id: str, state: list[dict[str, torch.Tensor]]) -> None:
        load_state(parts(self.net, adapters_=[marketplace_id], heads=[marketplace_id]), state)

    def set_trainable(self, params: list[torch.nn.Parameter]) -> int:
        """Freeze everything except ``params``; returns how many scalars will train."""
        wanted = {id(p) for p in params}
        for p in self.net.parameters():
            p.requires_grad_(id(p) in wanted)
        return sum(p.numel() for p in params)

    def total_parameters(self) -> int:
        """Size of the base encoder alone: what full fine-tuning would train (plus one head)."""
        added = {id(p) for p in bottleneck_parameters(self.net)} | {id(p) for p in self.net.heads.parameters()}
        return sum(p.numel() for p in self.net.parameters() if id(p) not in added)

    # ---------------------------------------------------------------- forward
    def activate(self, setup: str | None = None) -> str:
        """Route forward passes through one adapter (``setup`` = marketplace id) or the fusion (None).

        Returns the head name to use. With one marketplace and no fusion, that adapter is the model.
        """
        if setup is None:
            if self.fusion is not None:
                self.net.set_active_adapters(self.fusion_block(self.fusion))
                return self.fusion
            if len(self.marketplaces) != 1:
                raise ModelFormatError("the model has no fusion yet; name the adapter to use")
            setup = self.marketplaces[0].id
        if setup not in self.adapter_names:
            if self.net.adapters_config.get_fusion(setup)[1] is None:
                self.marketplace(setup)  # raises: names what the model knows
            self.net.set_active_adapters(self.fusion_block(setup))
            return setup
        self.net.set_active_adapters(Stack(setup))
        return setup

    def logits(self, batch: Batch, head: str) -> torch.Tensor:
        inputs = batch.model_inputs()
        if self.text.pooling == "cls":  # the heads' own read-out: the first token
            out = self.net(**inputs, head=head)
        else:  # the same head over the masked mean; the adapters' forward context is the base model's own
            base = self.net.base_model(**inputs, return_dict=True)
            out = self.net.forward_head(base, head_name=head, attention_mask=batch.attention_mask, return_dict=True,
                                        cls_output=mean_pool(base.last_hidden_state, batch.attention_mask))
        return out.logits if hasattr(out, "logits") else out[0]

    def predict_proba(
        self,
        pairs: Pairs,
        *,
        setup: str | None = None,
        batch_size: int = 64,
        precision: str = "auto",
    ) -> np.ndarray:
        """P(relevant) for each pair, in input order; ``setup`` as in :meth:`activate`."""
        head = self.activate(setup)
        return predict_proba(self.net, lambda batch: self.logits(batch, head), self.encode(pairs),
                             self.tokenizer.pad_token_id, batch_size, precision)

    # -------------------------------------------------------------- save/load
    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "marketplaces": [asdict(m) for m in self.marketplaces],
            "fusion": self.fusion,
            "encoder": {"name": self.encoder.name, "checksum": self.encoder.checksum},
            "adapter_config": ADAPTER_CONFIG,
            "fusion_config": FUSION_CONFIG,
            "max_length": self.max_length,
            "text_format": asdict(self.text),
            "libraries": {"torch": torch.__version__, "transformers": transformers.__version__,
                          "adapters": adapters.__version__},
        }

    def save(self, folder: str | Path) -> Path:
        """Write atomically: a crash mid-save leaves the previous folder (or nothing), never half a model."""

        def write(tmp: Path) -> None:
            (tmp / "adapters").mkdir()
            for spec in self.marketplaces:
                self.net.save_adapter(str(tmp / "adapters" / spec.id), spec.id, with_head=True, use_safetensors=True)
            if self.fusion is not None:
                self.net.save_adapter_fusion(str(tmp / "fusion"), self.fusion, with_head=True, use_safetensors=True)
            (tmp / MANIFEST).write_text(json.dumps(self.manifest(), indent=2))

        return write_folder(folder, write)

    @staticmethod
    def read_manifest(folder: str | Path) -> dict:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ModelFormatError(f"{folder} is not a relevance model folder: {MANIFEST} is missing")
        manifest = json.loads(path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(
                f"{path}: format_version {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
            )
        return manifest

    @classmethod
    def load(cls, folder: str | Path, encoder: EncoderRef, *, device: torch.device | str = "cpu") -> RelevanceModel:
        """Rebuild a saved model on ``encoder``, refusing an encoder other than the one it was trained on; ``device``
        as in :meth:`create` ("auto" resolves, as a learner's or student's configuration spells it)."""
        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        expected = manifest["encoder"]
        if expected["checksum"] != encoder.checksum:
            raise ModelFormatError(
                f"{folder} was trained on encoder {expected['name']!r} (checksum {expected['checksum'][:12]}…), "
                f"but encoder {encoder.name!r} at {encoder.path} has checksum {encoder.checksum[:12]}…; "
                "load it with the encoder it was trained on"
            )
        text = (TextFormat(**manifest["text_format"]) if "text_format" in manifest
                else TextFormat.raw(int(manifest["max_length"])))
        model = cls.create(encoder, text=text, device="cpu")
        for entry in manifest["marketplaces"]:
            spec = MarketplaceSpec(**entry)
            model.net.load_adapter(str(folder / "adapters" / spec.id), load_as=spec.id, with_head=True,
                                   use_safetensors=True)
            model.marketplaces.append(spec)
        if manifest["fusion"] is not None:
            model.net.load_adapter_fusion(str(folder / "fusion"), with_head=True, use_safetensors=True)
            model.fusion = manifest["fusion"]
            use_contiguous_fusion(model.net, model.fusion)
        model.net.to(resolve_device(device))
        for p in model.net.parameters():
            p.requires_grad_(False)
        model.net.eval()
        return model
