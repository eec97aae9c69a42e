"""Building configuration models from what people write: named presets, TOML files and ``--set`` overrides.

``models.config`` declares every setting and its default once; this module only layers values on top of
them, highest priority last: the model's defaults, a named preset shipped in ``tasks/presets/``, a TOML file
(``--config FILE``), then ``--set fusion.epochs=2`` overrides, the way Hugging Face's ``HfArgumentParser``
layers a JSON file and command-line arguments over one dataclass. Every entry point (flows, CLI, demo,
benchmark) goes through :func:`build`, so a bad value fails the same way everywhere: one
:class:`ConfigError` naming the field, before any work starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from models.config import GateConfig, LearnerConfig

M = TypeVar("M", bound=BaseModel)

DEFAULT_PRESET = "default"
#: What each entry point starts from when no preset is named (the demo's and the retraining's are sized or
#: tuned for their job; the rest use the model's own defaults).
ENTRY_PRESETS = {"arrival": DEFAULT_PRESET, "train-sequence": DEFAULT_PRESET, "retrain": "retrain",
                 "demo": "demo", "demo-quick": "demo-quick"}
BENCHMARK_PRESET = "cpu"
ENCODER_PRESETS = "encoder"  # the folder of the encoder distillation's presets (tasks/presets/encoder/)


class ConfigError(ValueError):
    """A setting that cannot be used: unknown name, wrong type or out of range. The message names the field."""


def _presets_dir(kind: str) -> Any:
    root = resources.files("tasks") / "presets"
    return root / kind if kind else root


def preset_names(kind: str = "") -> list[str]:
    """The presets shipped with the package (``kind="benchmark"`` for the benchmark's)."""
    return sorted(p.name[: -len(".toml")] for p in _presets_dir(kind).iterdir() if p.name.endswith(".toml"))


def read_preset_text(name: str, kind: str = "") -> str:
    path = _presets_dir(kind) / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names(kind))}")
    return path.read_text(encoding="utf-8")


def read_preset(name: str, kind: str = "") -> dict[str, Any]:
    """A shipped preset's values (a partial overlay, not a full configuration)."""
    return tomllib.loads(read_preset_text(name, kind))


def read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def _value(text: str) -> Any:
    """``--set`` values are TOML scalars (``2``, ``1e-4``, ``true``, ``"x"``); bare words stay strings, and
    ``none``/``null`` clear an optional setting."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["fusion.epochs=2", "distill.omega=renorm"]`` -> ``{"fusion": {"epochs": 2}, "distill": {...}}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not sep or not all(path):
            raise ConfigError(f"--set {item!r}: write it as section.name=value, e.g. fusion.epochs=2")
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = _value(text)
    return out


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``, section by section."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), BaseModel):
            out[key] = merge(out[key].model_dump(), value)
        else:
            out[key] = value
    return out


def describe(err: ValidationError, prefix: str = "") -> str:
    """Pydantic's errors as one line that names each field, e.g. ``fusion.epochs = 0: ...``."""
    parts = []
    for e in err.errors():
        field = ".".join(str(x) for x in (*(prefix.split(".") if prefix else ()), *e["loc"]))
        shown = "" if e["type"] == "missing" else f" = {e['input']!r}"
        msg = "unknown setting" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{field}{shown}: {msg}")
    return "invalid setting " + "; ".join(parts)


def validate(model: type[M], values: Mapping[str, Any] | M, prefix: str = "") -> M:
    """``model`` from plain values; a bad value raises one :class:`ConfigError` naming the field."""
    if isinstance(values, model):
        return values
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        raise ConfigError(describe(err, prefix)) from None


def build(model: type[M], *, preset: str | None = None, kind: str = "", file: str | Path | None = None,
          overrides: Sequence[str] | Mapping[str, Any] = (), base: Mapping[str, Any] | None = None) -> M:
    """Defaults < ``base`` < preset < file < overrides, validated once."""
    values: dict[str, Any] = dict(base or {})
    if preset:
        values = merge(values, read_preset(preset, kind))
    if file is not None:
        values = merge(values, read_file(file))
    values = merge(values, overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))
    return validate(model, values)


def learner_config(preset: str | None = DEFAULT_PRESET, file: str | Path | None = None,
                   overrides: Sequence[str] | Mapping[str, Any] = ()) -> LearnerConfig:
    return build(LearnerConfig, preset=preset, file=file, overrides=overrides)


def run_configs(entry: str, *, preset: str | None = None, file: str | Path | None = None,
                overrides: Sequence[str] = ()) -> tuple[LearnerConfig, GateConfig]:
    """The learner and the gate of a registering entry point (arrival, retraining, demo) from the CLI's
    ``--preset``/``--config``/``--set``: settings under ``gate.`` go to the gate, all others to the learner."""
    file_values = read_file(file) if file is not None else {}
    given = parse_overrides(overrides)
    gate_values = merge(file_values.pop("gate", {}), given.pop("gate", {}))
    learner = build(LearnerConfig, preset=preset or ENTRY_PRESETS[entry], overrides=merge(file_values, given))
    return learner, validate(GateConfig, gate_values, "gate")


def entry_learner(entry: str) -> LearnerConfig:
    """The learner an entry point uses when the user names nothing."""
    return learner_config(ENTRY_PRESETS[entry])


def flat(model: BaseModel) -> dict[str, Any]:
    """``fusion.epochs``-style keys (MLflow params, tables)."""
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(model.model_dump(), "")
    return out


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(model: BaseModel) -> str:
    """The whole configuration as TOML, each setting preceded by its description (``mcl config show``);
    reading the text back gives the same model (unset optional settings are written as comments)."""
    lines: list[str] = []

    def section(node: BaseModel, name: str) -> None:
        nested = []
        if name:
            lines.extend(["", f"[{name}]"])
        for key, info in type(node).model_fields.items():
            value = getattr(node, key)
            if isinstance(value, BaseModel):
                nested.append((key, value))
                continue
            if info.description:
                lines.append(f"# {info.description}")
            lines.append(f"# {key} = none" if value is None else f"{key} = {_toml_scalar(value)}")
        for key, value in nested:
            section(value, f"{name}.{key}" if name else key)

    section(model, "")
    return "\n".join(lines).lstrip("\n") + "\n"
