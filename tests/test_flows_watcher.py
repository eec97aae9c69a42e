"""The landing zone: ready folders are announced once each; half-written ones never (local and s3:// on moto)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tasks.landing import READY_MARKER, announce_arrivals, scan_landing_zone


def fill(folder: Path, splits=("train", "valid", "test"), marker: str | None = '{"language": "es"}') -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (folder / f"{split}.parquet").write_bytes(b"PAR1")
    if marker is not None:
        (folder / READY_MARKER).write_text(marker)


@pytest.fixture()
def zone(tmp_path):
    fill(tmp_path / "es")
    fill(tmp_path / "fr", marker=None)                               # still uploading
    fill(tmp_path / "de", splits=("train", "valid"), marker="{}")     # marked but the test table is missing
    fill(tmp_path / "it", marker="")                                  # marker without language ...
    (tmp_path / "it" / "marketplace.json").write_text(json.dumps({"id": "it", "language": "it"}))  # ... named here
    return tmp_path


def test_scan_finds_only_complete_marked_folders(zone):
    found = scan_landing_zone(zone)
    assert [(f.marketplace, f.language) for f in found] == [("es", "es"), ("it", "it")]
    assert found[0].train == str(zone / "es" / "train.parquet") and found[0].test.endswith("es/test.parquet")
    assert set(found[0].as_payload()) == {"marketplace", "language", "train", "valid", "test"}


def test_each_ready_folder_is_announced_once_and_again_after_a_new_marker(zone):
    emitted: set[str] = set()
    events = []
    assert [a.marketplace for a in announce_arrivals(zone, emitted, events.append)] == ["es", "it"]
    assert announce_arrivals(zone, emitted, events.append) == []
    fill(zone / "fr")                                                 # upload finished
    assert [a.marketplace for a in announce_arrivals(zone, emitted, events.append)] == ["fr"]
    time.sleep(0.01)
    (zone / "es" / READY_MARKER).write_text('{"language": "es", "upload": 2}')  # a re-upload
    assert [a.marketplace for a in announce_arrivals(zone, emitted, events.append)] == ["es"]
    assert [e.marketplace for e in events] == ["es", "it", "fr", "es"]


def test_missing_landing_zone_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="landing zone .*nowhere does not exist"):
        scan_landing_zone(tmp_path / "nowhere")


@pytest.fixture()
def s3(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="landing")
    yield client, endpoint
    server.stop()


def test_s3_landing_zone(s3):
    client, endpoint = s3
    for key in ("zone/es/train.parquet", "zone/es/valid.parquet", "zone/es/test.parquet", "zone/fr/train.parquet",
                "zone/fr/valid.parquet", "zone/fr/test.parquet", "other/es/_READY"):
        client.put_object(Bucket="landing", Key=key, Body=b"x")
    client.put_object(Bucket="landing", Key=f"zone/es/{READY_MARKER}", Body=b'{"language": "es"}')
    emitted: set[str] = set()
    announced = announce_arrivals("s3://landing/zone", emitted, lambda _: None, s3_endpoint_url=endpoint)
    assert [(a.marketplace, a.train) for a in announced] == [("es", "s3://landing/zone/es/train.parquet")]
    assert announce_arrivals("s3://landing/zone/", emitted, lambda _: None, s3_endpoint_url=endpoint) == []
    client.put_object(Bucket="landing", Key=f"zone/fr/{READY_MARKER}", Body=b'{"language": "fr"}')
    assert [a.marketplace for a in announce_arrivals("s3://landing/zone", emitted, lambda _: None,
                                                     s3_endpoint_url=endpoint)] == ["fr"]
