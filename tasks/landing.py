"""The landing zone: ``<root>/<marketplace>/`` folders that uploaders fill, local or ``s3://``.

An uploader writes the split tables first and the ready marker (``_READY``) last, so a folder
without the marker is still being written and is left alone. The marker may hold JSON
(``{"language": "es"}``); otherwise ``marketplace.json`` in the folder names the language.
Each ready folder is announced once per marker: re-uploading (a new marker) announces it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

READY_MARKER = "_READY"
SPLITS = ("train", "valid", "test")
SUFFIXES = (".parquet", ".csv", ".jsonl")


@dataclass(frozen=True)
class Landing:
    """A ready marketplace folder and the files an arrival needs."""

    marketplace: str
    language: str
    train: str
    valid: str
    test: str
    marker: str  # identity of the ready marker (mtime/size or ETag): a new upload is a new arrival

    @property
    def key(self) -> str:
        return f"{self.marketplace}@{self.marker}"

    def as_payload(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k != "marker"}


@dataclass(frozen=True)
class _Entry:
    """One candidate folder, storage-independent: its files and how to read small ones."""

    marketplace: str
    files: dict[str, str]  # file name -> full path/URI
    marker_token: str | None
    read_text: Callable[[str], str]


def _local_entries(root: Path) -> Iterable[_Entry]:
    if not root.is_dir():
        raise FileNotFoundError(f"landing zone {root} does not exist")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {p.name: str(p) for p in folder.iterdir() if p.is_file()}
        marker = folder / READY_MARKER
        token = None
        if marker.is_file():
            stat = marker.stat()
            token = f"{stat.st_mtime_ns}-{stat.st_size}"
        yield _Entry(folder.name, files, token, lambda path: Path(path).read_text())


def _s3_entries(root: str, endpoint_url: str | None) -> Iterable[_Entry]:
    import boto3

    parsed = urlparse(root)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = boto3.client("s3", endpoint_url=endpoint_url)

    def read_text(uri: str) -> str:
        key = urlparse(uri).path.lstrip("/")
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    folders: dict[str, dict[str, dict]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rest = obj["Key"][len(prefix):]
            if rest.count("/") != 1:
                continue
            name, file = rest.split("/")
            folders.setdefault(name, {})[file] = obj
    for name in sorted(folders):
        objects = folders[name]
        marker = objects.get(READY_MARKER)
        token = f"{marker['ETag'].strip(chr(34))}-{marker['LastModified'].timestamp()}" if marker else None
        files = {file: f"s3://{bucket}/{prefix}{name}/{file}" for file in objects}
        yield _Entry(name, files, token, read_text)


def _split_file(files: dict[str, str], split: str) -> str | None:
    return next((files[f"{split}{s}"] for s in SUFFIXES if f"{split}{s}" in files), None)


def _language(entry: _Entry) -> str | None:
    for name in (READY_MARKER, "marketplace.json"):
        if name in entry.files:
            text = entry.read_text(entry.files[name]).strip()
            if text:
                try:
                    meta = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(meta, dict) and meta.get("language"):
                    return str(meta["language"])
    return None


def scan_landing_zone(root: str | Path, *, s3_endpoint_url: str | None = None) -> list[Landing]:
    """Ready marketplace folders under ``root``; folders without the marker (still uploading) are skipped.

    A marked folder that lacks a split or a language is reported and skipped: announcing it would
    only start an arrival that fails on validation.
    """
    root_text = str(root)
    entries = _s3_entries(root_text, s3_endpoint_url) if root_text.startswith("s3://") else _local_entries(Path(root))
    ready = []
    for entry in entries:
        if entry.marker_token is None:
            log.info("landing %s: no %s marker yet, skipped", entry.marketplace, READY_MARKER)
            continue
        paths = {split: _split_file(entry.files, split) for split in SPLITS}
        missing = [s for s, p in paths.items() if p is None]
        language = _language(entry)
        if missing or language is None:
            log.warning("landing %s is marked ready but %s; skipped", entry.marketplace,
                        f"has no {'/'.join(missing)} table" if missing else "names no language "
                        f"(put {{\"language\": ...}} in {READY_MARKER} or marketplace.json)")
            continue
        ready.append(Landing(entry.marketplace, language, paths["train"], paths["valid"], paths["test"],
                             entry.marker_token))
    return ready


def announce_arrivals(
    root: str | Path,
    emitted: set[str],
    emit: Callable[[Landing], None],
    *,
    s3_endpoint_url: str | None = None,
) -> list[Landing]:
    """Call ``emit`` once for each ready folder not in ``emitted`` (updated in place); returns those announced."""
    announced = []
    for landing in scan_landing_zone(root, s3_endpoint_url=s3_endpoint_url):
        if landing.key in emitted:
            continue
        emit(landing)
        emitted.add(landing.key)
        announced.append(landing)
    return announced
