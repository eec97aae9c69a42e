"""Translation backends behind one interface: Opus-MT (transformers), CTranslate2 / Argos, Apertium."""

from tasks.translation.backends.apertium import ApertiumBackend
from tasks.translation.backends.base import BatchTranslation, ModelInfo, Pair, TranslationBackend
from tasks.translation.backends.ctranslate2 import CTranslate2Backend, convert_opus_mt
from tasks.translation.backends.opus_mt import OpusMTBackend
from tasks.translation.backends.registry import BACKEND_NAMES, build_backends, parse_model_specs

__all__ = [
    "BACKEND_NAMES", "ApertiumBackend", "BatchTranslation", "CTranslate2Backend", "ModelInfo", "OpusMTBackend", "Pair",
    "TranslationBackend", "build_backends", "convert_opus_mt", "parse_model_specs",
]
