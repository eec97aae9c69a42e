"""Stage 1 of the method: translate a stratified subset of the new marketplace into the older languages."""

from tasks.translation.backends import (
    BACKEND_NAMES,
    ApertiumBackend,
    CTranslate2Backend,
    OpusMTBackend,
    Pair,
    TranslationBackend,
    build_backends,
    convert_opus_mt,
    parse_model_specs,
)
from tasks.translation.cache import TranslationCache
from tasks.translation.errors import ModelUnavailableError, NoRouteError, TranslationError
from tasks.translation.languages import normalize_language
from tasks.translation.routing import Route, arrival_routes, find_route
from tasks.translation.subset import select_subset
from tasks.translation.translate import TranslatedSubsets, TranslationReport, translate_subset

__all__ = [
    "BACKEND_NAMES", "ApertiumBackend", "CTranslate2Backend", "ModelUnavailableError", "NoRouteError", "OpusMTBackend",
    "Pair", "Route", "TranslatedSubsets", "TranslationBackend", "TranslationCache", "TranslationError",
    "TranslationReport", "arrival_routes", "build_backends", "convert_opus_mt", "find_route",
    "normalize_language", "parse_model_specs", "select_subset", "translate_subset",
]
