"""Errors of the translation step, each raised before any text is translated."""

from __future__ import annotations


class TranslationError(RuntimeError):
    """Base class: something about the requested translation cannot be done."""


class ModelUnavailableError(TranslationError):
    """A named model (hub id, folder, package) cannot be loaded on this machine."""


class NoRouteError(TranslationError):
    """No backend, directly or through intermediate languages, serves a requested language pair."""
