"""The landing zone: ``<root>/<marketplace>/`` folders that uploaders fill, local or ``s3://``.

An uploader writes the split tables first and the ready marker (``_READY``) last, so a folder
without the marker is still being written and is left alone. The marker may hold JSON
(``{"language": "es"}``); otherwise ``marketplace.json`` in the folder names the language.
Each ready folder is announced once per marker: re-uploading (a new marker) announces it again.

Which marker was announced is recorded beside it, in the folder itself (``_ANNOUNCED``), one small
object per landing key: the state grows with the folders, never in one shared value that can
overflow, and an operator sees in the bucket what the watcher did with each upload.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

log = logging.getLogger(__name__)

READY_MARKER = "_READY"
ANNOUNCED_MARKER = "_ANNOUNCED"
# Event ids are uuid5(EVENT_NAMESPACE, landing key): the same upload always gets the same id, on any worker.
EVENT_NAMESPACE = uuid.UUID("6f1c2f0e-5d0a-5b7e-9a51-6d63c1a0e4b2")
AnnouncementState = Literal["pending", "emitted"]
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
    # What ``_ANNOUNCED`` in the folder says (None: never announced); not part of the landing's identity.
    announcement: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def folder(self) -> str:
        """The folder's path or URI (the split tables sit directly in it)."""
        return self.train.rsplit("/", 1)[0]

    @property
    def key(self) -> str:
        """One upload of one folder: the folder's location and its ready marker's identity."""
        return f"{self.folder}@{self.marker}"

    @property
    def event_id(self) -> uuid.UUID:
        """Deterministic: a re-emission of the same upload carries the same id, so Prefect drops it as seen."""
        return uuid.uuid5(EVENT_NAMESPACE, self.key)

    @property
    def announced(self) -> bool:
        """The event for this upload (this marker) was emitted."""
        a = self.announcement or {}
        return a.get("key") == self.key and a.get("state") == "emitted"

    def as_payload(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k not in ("marker", "announcement")}


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
    from tasks.data.readers import s3_client

    parsed = urlparse(root)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = s3_client(endpoint_url)

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


def _announcement(entry: _Entry) -> dict[str, Any] | None:
    if ANNOUNCED_MARKER not in entry.files:
        return None
    try:
        record = json.loads(entry.read_text(entry.files[ANNOUNCED_MARKER]))
    except json.JSONDecodeError:
        log.warning("landing %s: unreadable %s, treated as not announced", entry.marketplace, ANNOUNCED_MARKER)
        return None
    return record if isinstance(record, dict) else None


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
                             entry.marker_token, _announcement(entry)))
    return ready


def record_announcement(landing: Landing, state: AnnouncementState, *, s3_endpoint_url: str | None = None) -> dict:
    """Write ``_ANNOUNCED`` beside the landing's ``_READY``: which upload (key), which event id, which state."""
    record = {"key": landing.key, "event_id": str(landing.event_id), "state": state,
              "at": datetime.now(UTC).isoformat(timespec="seconds")}
    text = json.dumps(record, sort_keys=True)
    target = f"{landing.folder}/{ANNOUNCED_MARKER}"
    if target.startswith("s3://"):
        from tasks.data.readers import s3_client

        parsed = urlparse(target)
        s3_client(s3_endpoint_url).put_object(
            Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=text.encode(), ContentType="application/json")
    else:
        tmp = Path(target).with_name(f".{ANNOUNCED_MARKER}.tmp")
        tmp.write_text(text)
        tmp.replace(target)  # atomic: a crash leaves the old record or the new one, never half of one
    return record


def announce_arrivals(
    root: str | Path,
    emit: Callable[[Landing], None],
    *,
    s3_endpoint_url: str | None = None,
) -> list[Landing]:
    """Call ``emit`` for each ready upload whose event was not emitted yet; returns those announced.

    Order per landing key, chosen for at-least-once delivery that never loops:

    1. ``_ANNOUNCED`` := pending (key, event id) -- *before* the event. A store the watcher cannot write
       stops it here, with nothing emitted: no event is ever sent without state that stops it being sent
       again (the old single Variable failed *after* emitting and so re-announced everything every run).
    2. emit the event, id = uuid5(landing key).
    3. ``_ANNOUNCED`` := emitted. Later runs skip the key until a new ``_READY`` makes a new key.

    A crash between 1 and 3 leaves ``pending``; the next run emits again with the *same* id. Prefect's
    event pipeline drops an id it has already seen (and stores events by id), and the arrival flow is
    idempotent for a repeated upload, so the worst case is one duplicate delivery per crash, never an
    endless re-announcement and never a lost upload. Each key is independent: one folder that fails
    (its exception propagates after earlier folders are recorded) leaves the others' state intact.
    """
    announced = []
    for landing in scan_landing_zone(root, s3_endpoint_url=s3_endpoint_url):
        if landing.announced:
            continue
        if (landing.announcement or {}).get("key") == landing.key:
            log.warning("landing %s: the previous announcement of this upload did not finish; emitting it again "
                        "with the same event id %s", landing.marketplace, landing.event_id)
        record_announcement(landing, "pending", s3_endpoint_url=s3_endpoint_url)
        emit(landing)
        record = record_announcement(landing, "emitted", s3_endpoint_url=s3_endpoint_url)
        announced.append(Landing(**{**asdict(landing), "announcement": record}))
    return announced
