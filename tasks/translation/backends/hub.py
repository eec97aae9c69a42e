"""Finding Opus-MT models on the Hugging Face hub or in its local cache without waiting on a dead network.

``from_pretrained`` on a machine without network retries for minutes before failing; we check the
cache first, honour ``HF_HUB_OFFLINE``, and probe the endpoint with one short connection instead.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from tasks.translation.backends.base import Pair
from tasks.translation.errors import ModelUnavailableError

OPUS_MT_ORG = "Helsinki-NLP"
_OPUS_MT_NAME = re.compile(r"^opus-mt-(?:tc-big-)?([a-z]{2,3})-([a-z]{2,3})$")


def opus_mt_id(pair: Pair) -> str:
    return f"{OPUS_MT_ORG}/opus-mt-{pair.source}-{pair.target}"


def opus_mt_pair(name: str) -> Pair | None:
    """``opus-mt-es-en`` (or ``Helsinki-NLP/opus-mt-es-en``, or a folder so named) -> es-en; multi-target models -> None."""
    match = _OPUS_MT_NAME.match(name.rsplit("/", 1)[-1])
    return None if match is None else Pair.from_codes(match.group(1), match.group(2))


def is_hub_id(ref: str | Path) -> bool:
    """``Helsinki-NLP/opus-mt-es-en`` is a hub id; an existing path or one written as a path is not."""
    text = str(ref)
    return (not Path(text).expanduser().exists() and not text.startswith(("/", ".", "~"))
            and re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None)


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str) -> Path | None:
    """The newest complete local snapshot of ``repo_id`` (one with a config.json), or None."""
    repo_dir = _hub_cache() / f"models--{repo_id.replace('/', '--')}"
    snapshots = [s for s in (repo_dir / "snapshots").glob("*") if (s / "config.json").is_file()]
    if not snapshots:
        return None
    return max(snapshots, key=lambda s: s.stat().st_mtime)


def cached_opus_mt_models() -> dict[Pair, Path]:
    """Opus-MT models already in the local hub cache: usable offline, so ``auto`` may pick them."""
    found: dict[Pair, Path] = {}
    for repo_dir in sorted(_hub_cache().glob(f"models--{OPUS_MT_ORG}--opus-mt-*")):
        repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
        pair = opus_mt_pair(repo_id)
        snapshot = cached_snapshot(repo_id) if pair else None
        if pair and snapshot:
            found.setdefault(pair, snapshot)
    return found


def hub_reachable(timeout_s: float = 3.0) -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def fetch_opus_mt(repo_id: str, pair: Pair) -> Path:
    """A local folder for a hub model: the cache if it has it, else a download when the hub answers."""
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        return snapshot
    advice = (f"download it where there is network (`huggingface-cli download {repo_id}`) and pass the folder, "
              f"e.g. `--model {pair}=/path/to/{repo_id.rsplit('/', 1)[-1]}`")
    if hub_offline():
        raise ModelUnavailableError(f"Opus-MT model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE is set: {advice}")
    if not hub_reachable():
        raise ModelUnavailableError(f"Opus-MT model {repo_id!r} is not in the local cache and the hub cannot be reached: {advice}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.spm", "*.safetensors", "*.bin", "*.txt"]))
    except (HfHubHTTPError, OSError) as err:
        raise ModelUnavailableError(f"Opus-MT model {repo_id!r} could not be downloaded ({err}): {advice}") from err
