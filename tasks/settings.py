"""Configuration in one place.

Values come, highest priority first, from: keyword arguments, environment variables
prefixed ``MCL_`` (``MCL_CACHE_DIR``, ``MCL_TRACKING_URI``...), a TOML file named by
``MCL_CONFIG`` (or ``./mcl.toml`` when present), then the defaults below. The defaults
work on a fresh machine with no accounts and no network: a user cache folder, a local
SQLite MLflow store and the embedded multilingual-e5-small encoder.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from models.encoder_ref import DEFAULT_ENCODER


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "marketplace-cl"


def _config_file() -> Path | None:
    named = os.environ.get("MCL_CONFIG")
    if named:
        return Path(named)
    local = Path("mcl.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Where things live (cache, tracking server, object store) and which encoder a new lineage starts from.

    The learner's own settings (epochs, λ, seed, device...) are not here: they are one model,
    ``models.config.LearnerConfig``, passed to every flow as a parameter."""

    model_config = SettingsConfigDict(env_prefix="MCL_", extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Encoders, translation cache, task results.")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI; default: SQLite in the cache dir.")
    artifact_location: str | None = Field(default=None, description="MLflow artifact root (local path or s3://).")
    encoder: str = Field(default=DEFAULT_ENCODER, description="Hugging Face id, local folder, or the embedded default.")
    s3_endpoint_url: str | None = Field(default=None, description="For S3-compatible stores such as MinIO.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            if not config_file.is_file():
                raise FileNotFoundError(f"MCL_CONFIG names {config_file}, which does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.cache_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def resolved_artifact_location(self) -> str:
        return self.artifact_location or str((self.cache_dir / "mlflow" / "artifacts").resolve())

    @property
    def encoders_dir(self) -> Path:
        return self.cache_dir / "encoders"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests build their own ``Settings(...)`` instead."""
    return Settings()
