"""Language codes: every backend names languages its own way (``spa``, ``es``, ``eng_US``); we use BCP-47."""

from __future__ import annotations

import langcodes


def normalize_language(code: str) -> str:
    """The BCP-47 primary subtag of ``code``: ``spa`` -> ``es``, ``eng_US`` -> ``en``, ``pt-BR`` -> ``pt``.

    Pairs are matched on primary subtags because the marketplaces are identified by language, and
    backends disagree on 2- vs 3-letter codes for the same language.
    """
    cleaned = code.strip().replace("_", "-")
    if not cleaned:
        raise ValueError("empty language code")
    try:
        tag = langcodes.Language.get(cleaned, normalize=True)
    except (ValueError, langcodes.tag_parser.LanguageTagError) as err:
        raise ValueError(f"{code!r} is not a language code") from err
    if not tag.language or not tag.is_valid():
        raise ValueError(f"{code!r} is not a registered BCP-47 language code")
    return tag.language


def parse_pair(text: str) -> tuple[str, str]:
    """``'es-en'`` or ``'spa-eng'`` -> ``('es', 'en')``; the form operators type for one direction."""
    parts = [p for p in text.replace(">", "-").split("-") if p]
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a language pair (expected SRC-TGT, e.g. es-en)")
    return normalize_language(parts[0]), normalize_language(parts[1])
