"""Every method the benchmark knows, by name, and how to run one under the protocol.

An ablation is not a class: it is the learner's class under another configuration. ``METHOD_PRESETS``
names the learner preset (``tasks/presets/<name>.toml``) each such method runs with; the caller loads it
(file I/O stays out of ``models``) and hands :func:`run_method` the resulting configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from models.methods.adapter_fusion import AdapterOnly, AttentionDistillation, JointFusion
from models.methods.fine_tuning import (
    ElasticWeightConsolidation,
    LearningWithoutForgetting,
    Replay,
    SequentialFineTuning,
    SingleMarketplace,
)
from models.methods.hat import HardAttentionToTask
from models.methods.probe import LinearProbe
from models.methods.protocol import ContinualMethod, MarketplaceSplits, MethodResult, TranslatedFor, run_protocol

if TYPE_CHECKING:
    from models.config import BaselinesConfig, LearnerConfig
    from models.encoders import EncoderRef

METHODS: dict[str, type[ContinualMethod]] = {
    "ad": AttentionDistillation,
    "ad-paper": AttentionDistillation,
    "ad-no-translation": AttentionDistillation,
    "fusion-no-distill": AttentionDistillation,
    "adapter-only": AdapterOnly,
    "probe": LinearProbe,
    "joint-fusion": JointFusion,
    "sm": SingleMarketplace,
    "seq-ft": SequentialFineTuning,
    "ewc": ElasticWeightConsolidation,
    "lwf": LearningWithoutForgetting,
    "hat": HardAttentionToTask,
    "replay": Replay,
}

#: The learner preset a method runs with on top of the benchmark's learner (none: the learner as given).
METHOD_PRESETS: dict[str, str] = {
    "ad-paper": "paper",  # the paper's recipe as written (eq. 9, 5 + 5 epochs, random head), beside the defaults
    "ad-no-translation": "ad-no-translation",  # paper §4.2: nothing translated, D_t batches get CE + L_AD
    "fusion-no-distill": "fusion-no-distill",  # λ = 0: plain fusion with cross-entropy
    "joint-fusion": "joint-fusion",  # the non-sequential AdapterFusion: fresh fusion and head, CE only
}

DESCRIPTIONS: dict[str, str] = {
    "ad-paper": "the paper's recipe as written: eq. 9 summed over layers, 5 + 5 epochs, random fusion head, λ = 1",
    "ad-no-translation": "the paper's method without translations: every D_t batch gets CE + L_AD (paper §4.2)",
    "fusion-no-distill": "language adapter + a fresh AdapterFusion per arrival trained on D_t with CE only (λ = 0)",
}


def method_class(name: str) -> type[ContinualMethod]:
    """The registered class for ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def describe_method(name: str) -> str:
    return DESCRIPTIONS.get(name, method_class(name).description)


def run_method(
    name: str,
    encoder: EncoderRef,
    marketplaces: Sequence[MarketplaceSplits],
    learner: LearnerConfig,
    baselines: BaselinesConfig | None = None,
    translated_for: TranslatedFor | None = None,
    on_arrival: Callable[[int, dict[str, float]], None] | None = None,
) -> MethodResult:
    """Learn ``marketplaces`` in order with method ``name`` (its preset already applied to ``learner``)."""
    method = method_class(name)(encoder, learner, baselines)
    return run_protocol(method, marketplaces, translated_for, name=name, on_arrival=on_arrival)
