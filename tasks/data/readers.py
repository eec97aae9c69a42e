"""Reading marketplace tables from local folders or S3 and assembling validated marketplaces.

Files are fetched whole (local or ``s3://`` through boto3) and parsed by pyarrow/pandas; when a parser fails,
the failure is translated into a ``DataValidationError`` that says which file, row (and line) and column, so
an operator never has to read a pyarrow traceback to find a truncated line.

Length: three formats x two locations plus the ESCI layout, each reader with its own error translation; they
share the fetch and the row/line arithmetic.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data.contract import MARKETPLACE_FILE, SPLITS, TABLE_SUFFIXES, DataValidationError, Marketplace
from tasks.data.validation import leakage_warnings, validate_language, validate_marketplace_id, validate_table

PathLike = str | os.PathLike
TableSource = PathLike | pd.DataFrame

_PARQUET_MAGIC = b"PAR1"


# --- where bytes come from -------------------------------------------------------------------------------

def location(path: PathLike) -> str:
    """A path as a string; ``s3://`` kept intact even when it went through ``Path`` (which folds ``//``)."""
    text = os.fspath(path)
    if text.startswith("s3:/") and not text.startswith("s3://"):
        text = "s3://" + text[len("s3:/"):]
    return text


def is_s3(path: PathLike) -> bool:
    return location(path).startswith("s3://")


def join(base: PathLike, name: str) -> str:
    base = location(base)
    return f"{base.rstrip('/')}/{name}" if is_s3(base) else str(Path(base) / name)


def _basename(path: str) -> str:
    return PurePosixPath(path.rstrip("/")).name if is_s3(path) else Path(path).name


def resolve_s3_endpoint(explicit: str | None = None) -> str | None:
    """Argument, then ``MCL_S3_ENDPOINT_URL``, then settings (TOML): MinIO users set it once."""
    if explicit:
        return explicit
    if os.environ.get("MCL_S3_ENDPOINT_URL"):
        return os.environ["MCL_S3_ENDPOINT_URL"]
    from tasks.settings import get_settings

    return get_settings().s3_endpoint_url


def _split_s3(path: str) -> tuple[str, str]:
    bucket, _, key = path[len("s3://"):].partition("/")
    return bucket, key


#: botocore's "standard" retry mode: throttling, 5xx answers and dropped connections are retried with jittered
#: exponential back-off, up to this many attempts in all, before a read becomes one clear error.
S3_MAX_ATTEMPTS = 6


def s3_client(endpoint: str | None):
    """The one way the project talks to S3 (tables, the landing zone): retries transient errors itself."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS}))


def _s3_error(path: str, endpoint: str | None, err: Exception) -> DataValidationError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint or "AWS"
    if isinstance(err, NoCredentialsError):
        return DataValidationError(path, "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                         "or AWS_PROFILE)")
    if isinstance(err, EndpointConnectionError):
        return DataValidationError(path, f"cannot reach the S3 endpoint {where} (set MCL_S3_ENDPOINT_URL for MinIO)")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        bucket, key = _split_s3(path)
        if code in ("NoSuchKey", "404", "NotFound"):
            return DataValidationError(path, f"no such object: key {key!r} is not in bucket {bucket!r} at {where}")
        if code == "NoSuchBucket":
            return DataValidationError(path, f"no such bucket {bucket!r} at {where}")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return DataValidationError(path, f"access denied by {where} ({code})")
        return DataValidationError(path, f"S3 error {code} from {where}: {err}")
    return DataValidationError(path, f"S3 request to {where} failed: {err}")


def read_bytes(path: PathLike, *, s3_endpoint_url: str | None = None) -> bytes:
    """The whole file, local or S3; a missing file or folder is a ``DataValidationError`` naming it."""
    path = location(path)
    if is_s3(path):
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = resolve_s3_endpoint(s3_endpoint_url)
        bucket, key = _split_s3(path)
        if not bucket or not key or key.endswith("/"):
            raise DataValidationError(path, "an S3 file path needs a bucket and a key: s3://bucket/path/file.parquet")
        try:
            return s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as err:
            raise _s3_error(path, endpoint, err) from None
    local = Path(path)
    if not local.exists():
        raise DataValidationError(path, "no such file (missing file path)")
    if local.is_dir():
        raise DataValidationError(path, "is a folder, not a table file")
    try:
        return local.read_bytes()
    except OSError as err:
        raise DataValidationError(path, f"cannot read file: {err.strerror or err}") from None


def list_folder(path: PathLike, *, s3_endpoint_url: str | None = None) -> tuple[list[str], list[str]]:
    """Names of the files and of the sub-folders directly inside ``path`` (an S3 prefix works as a folder)."""
    path = location(path)
    if is_s3(path):
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = resolve_s3_endpoint(s3_endpoint_url)
        bucket, key = _split_s3(path)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        files, folders = [], []
        try:
            pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                files += [item["Key"][len(prefix):] for item in page.get("Contents", [])]
                folders += [item["Prefix"][len(prefix):].rstrip("/") for item in page.get("CommonPrefixes", [])]
        except (BotoCoreError, ClientError) as err:
            raise _s3_error(path, endpoint, err) from None
        if not files and not folders:
            raise DataValidationError(path, f"no such folder: no objects under this prefix at {endpoint or 'AWS'}")
        return sorted(f for f in files if f), sorted(folders)
    local = Path(path)
    if not local.is_dir():
        raise DataValidationError(path, "no such folder" if not local.exists() else "is a file, not a folder")
    entries = sorted(local.iterdir())
    return [e.name for e in entries if e.is_file()], [e.name for e in entries if e.is_dir()]


# --- parsing ----------------------------------------------------------------------------------------------

def _suffix(path: str) -> str:
    return PurePosixPath(path).suffix.lower() if is_s3(path) else Path(path).suffix.lower()


def _decode_text(data: bytes, file: str, kind: str) -> str:
    if b"\x00" in data[:65536]:
        raise DataValidationError(file, f"binary data (NUL bytes), not a {kind} text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataValidationError(file, f"line {line} is not UTF-8 text (byte {data[err.start]:#04x} at offset "
                                        f"{err.start}); save the {kind} as UTF-8") from None


def _csv_records(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Start line and field count of every non-blank csv record, header included (quoted fields may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    starts, widths, previous_end = [], [], 0
    for record in reader:
        if record:
            starts.append(previous_end + 1)
            widths.append(len(record))
        previous_end = reader.line_num
    return np.asarray(starts, dtype=np.int64), np.asarray(widths, dtype=np.int64)


def _read_csv(data: bytes, file: str) -> pd.DataFrame:
    text = _decode_text(data, file, "csv")
    if not text.strip():
        raise DataValidationError(file, "empty file (no header, no rows)")
    try:
        # Everything as text: a query such as "1080" is a query, and labels are parsed by the validator.
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.ParserError as err:
        starts, widths = _csv_records(text)
        wide = np.flatnonzero(widths[1:] > widths[0]) if len(widths) else []
        if len(wide):
            row = int(wide[0]) + 1
            raise DataValidationError(file, f"{widths[row]} fields where the header has {widths[0]} (an unquoted "
                                            "comma, or a broken quote?)", row=row, line=int(starts[row]),
                                      file_kind="csv") from None
        raise DataValidationError(file, f"not a readable csv file: {err}") from None
    except UnicodeError as err:
        raise DataValidationError(file, f"not a readable csv file: {err}") from None
    df.attrs["format"] = "csv"
    physical = text.count("\n") + (0 if text.endswith("\n") else 1)
    if physical != len(df) + 1:  # multi-line quoted fields or blank lines: rows and lines part ways
        df.attrs["lines"] = _csv_records(text)[0][1:]
    return df


def _read_json_records(text: str, file: str, suffix: str) -> tuple[list[dict], list[int]]:
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataValidationError(file, f"not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        for i, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DataValidationError(file, f"array element is a JSON {type(record).__name__}, not an object "
                                                "with the columns as keys", row=i)
        return records, []
    records, lines = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            truncated = err.msg.startswith("Unterminated") or err.pos >= len(line.rstrip()) - 1
            hint = "; the line looks truncated" if truncated else ""
            raise DataValidationError(file, f"not valid JSON ({err.msg}: character {err.pos + 1}){hint}",
                                      row=len(records) + 1, line=lineno, file_kind="jsonl") from None
        if not isinstance(record, dict):
            raise DataValidationError(file, f"line holds a JSON {type(record).__name__}, not an object with the "
                                            "columns as keys", row=len(records) + 1, line=lineno, file_kind="jsonl")
        records.append(record)
        lines.append(lineno)
    return records, lines


def _read_jsonl(data: bytes, file: str, suffix: str) -> pd.DataFrame:
    text = _decode_text(data, file, "jsonl")
    if not text.strip():
        raise DataValidationError(file, "empty file (no rows)")
    records, lines = _read_json_records(text, file, suffix)
    df = pd.DataFrame.from_records(records)
    df.attrs["format"] = "jsonl"
    if lines and lines != list(range(1, len(lines) + 1)):
        df.attrs["lines"] = np.asarray(lines, dtype=np.int64)
    return df


def _read_parquet(data: bytes, file: str) -> pd.DataFrame:
    if not data:
        raise DataValidationError(file, "empty file (0 bytes)")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        if not data.startswith(_PARQUET_MAGIC):
            reason = "not a parquet file (no PAR1 header)"
        elif not data.endswith(_PARQUET_MAGIC):
            reason = f"truncated parquet file (footer missing after {len(data):,} bytes)"
        else:
            reason = "corrupt parquet file"
        raise DataValidationError(file, f"{reason}: {err}") from None
    df = table.to_pandas()
    df.attrs["format"] = "parquet"
    return df


def read_table(path: PathLike, *, s3_endpoint_url: str | None = None) -> pd.DataFrame:
    """A raw table from .parquet, .csv or .jsonl (.json: JSON lines or one array), local or ``s3://``.

    Raw means unvalidated: pass it through ``validate_table``. The frame's ``attrs`` remember the format and, for
    text files whose rows and lines differ, each row's line, so later errors can name the line too.
    """
    path = location(path)
    suffix = _suffix(path)
    if not is_s3(path) and not Path(path).exists():
        raise DataValidationError(path, "no such file (missing file path)")
    if suffix not in TABLE_SUFFIXES:
        raise DataValidationError(path, f"unsupported file type {suffix or '(no extension)'!r}; expected one of "
                                        f"{', '.join(TABLE_SUFFIXES)}")
    data = read_bytes(path, s3_endpoint_url=s3_endpoint_url)
    if suffix == ".parquet":
        return _read_parquet(data, path)
    if suffix == ".csv":
        return _read_csv(data, path)
    return _read_jsonl(data, path, suffix)


# --- marketplaces -----------------------------------------------------------------------------------------

def _read_source(source: TableSource, split: str, s3_endpoint_url: str | None) -> tuple[pd.DataFrame, str]:
    if isinstance(source, pd.DataFrame):
        return source, f"<{split} DataFrame>"
    name = location(source)
    return read_table(name, s3_endpoint_url=s3_endpoint_url), name


def load_marketplace(id: str, language: str, train: TableSource, valid: TableSource, test: TableSource, *,
                     s3_endpoint_url: str | None = None) -> Marketplace:
    """Read and validate all three splits (files or DataFrames), so bad input fails before anything trains."""
    marketplace_id = validate_marketplace_id(id, file=f"marketplace {id!r}")
    canonical = validate_language(language, file=f"marketplace {marketplace_id!r}")
    raw, sources = {}, {}
    for split, source in zip(SPLITS, (train, valid, test)):
        raw[split], sources[split] = _read_source(source, split, s3_endpoint_url)
    tables = {split: validate_table(raw[split], file=sources[split], split=split) for split in SPLITS}
    return Marketplace(marketplace_id, canonical, tables["train"], tables["valid"], tables["test"], sources,
                       leakage_warnings(tables, sources))


def read_marketplace_file(path: PathLike, *, s3_endpoint_url: str | None = None) -> dict:
    """``marketplace.json``: an object with ``id`` and ``language`` (other keys are left for people)."""
    name = location(path)
    data = read_bytes(name, s3_endpoint_url=s3_endpoint_url)
    try:
        meta = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataValidationError(name, "not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise DataValidationError(name, f"not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(meta, dict):
        raise DataValidationError(name, 'expected a JSON object such as {"id": "es", "language": "es"}')
    return meta


def _split_file(folder: str, files: Sequence[str], split: str) -> str:
    candidates = [f"{split}{suffix}" for suffix in TABLE_SUFFIXES if f"{split}{suffix}" in files]
    if not candidates:
        found = ", ".join(files) or "nothing"
        raise DataValidationError(join(folder, f"{split}.parquet"),
                                  f"missing {split} table: expected {split}.parquet, {split}.csv or {split}.jsonl "
                                  f"in {folder} (found: {found})")
    if len(candidates) > 1:
        raise DataValidationError(join(folder, candidates[0]),
                                  f"ambiguous {split} table: {' and '.join(candidates)} both exist; keep one")
    return join(folder, candidates[0])


def load_marketplace_dir(path: PathLike, *, id: str | None = None, language: str | None = None,
                         s3_endpoint_url: str | None = None) -> Marketplace:
    """A folder holding ``{train,valid,test}.{parquet,csv,jsonl}`` and ``marketplace.json``.

    Arguments override ``marketplace.json``; without either, the id is the folder name, but the language must
    be stated because folder names such as ``us`` or ``jp`` are not languages.
    """
    folder = location(path)
    files, _ = list_folder(folder, s3_endpoint_url=s3_endpoint_url)
    meta_path = join(folder, MARKETPLACE_FILE)
    meta = read_marketplace_file(meta_path, s3_endpoint_url=s3_endpoint_url) if MARKETPLACE_FILE in files else {}
    marketplace_id = id if id is not None else meta.get("id", _basename(folder))
    if id is None and "id" in meta:
        validate_marketplace_id(meta["id"], file=meta_path)
    lang = language if language is not None else meta.get("language")
    if lang is None:
        raise DataValidationError(meta_path, 'no language given: write marketplace.json as {"id": "'
                                  f'{marketplace_id}", "language": "xx"}} or pass --language', column="language")
    if language is None:
        validate_language(lang, file=meta_path)
    train, valid, test = (_split_file(folder, files, split) for split in SPLITS)
    return load_marketplace(marketplace_id, lang, train, valid, test, s3_endpoint_url=s3_endpoint_url)


def load_data_root(root: PathLike, order: Sequence[str], *, s3_endpoint_url: str | None = None) -> list[Marketplace]:
    """``<root>/<id>/`` for each id in arrival order, all validated before the first is returned."""
    root = location(root)
    ids = list(order)
    if not ids:
        raise DataValidationError(root, "no marketplaces requested (the order is empty)")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DataValidationError(root, f"marketplace {repeated[0]!r} appears more than once in the order {ids}")
    _, folders = list_folder(root, s3_endpoint_url=s3_endpoint_url)
    missing = [i for i in ids if i not in folders]
    if missing:
        available = ", ".join(folders) or "none"
        raise DataValidationError(join(root, missing[0]),
                                  f"no marketplace {missing[0]!r} in {root} (available: {available})")
    marketplaces = []
    for marketplace_id in ids:
        marketplace = load_marketplace_dir(join(root, marketplace_id), s3_endpoint_url=s3_endpoint_url)
        if marketplace.id != marketplace_id:
            raise DataValidationError(join(join(root, marketplace_id), MARKETPLACE_FILE),
                                      f"says id {marketplace.id!r} but the folder is {marketplace_id!r}", column="id")
        marketplaces.append(marketplace)
    return marketplaces
