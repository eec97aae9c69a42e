"""The landing zone: ready folders are announced once each; half-written ones never (local and s3:// on moto).
What was announced is state per upload (``_ANNOUNCED`` beside ``_READY``), with event ids derived from it."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tasks import landing
from tasks.landing import ANNOUNCED_MARKER, READY_MARKER, announce_arrivals, scan_landing_zone


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
    events = []
    assert [a.marketplace for a in announce_arrivals(zone, events.append)] == ["es", "it"]
    assert announce_arrivals(zone, events.append) == []
    fill(zone / "fr")                                                 # upload finished
    assert [a.marketplace for a in announce_arrivals(zone, events.append)] == ["fr"]
    time.sleep(0.01)
    (zone / "es" / READY_MARKER).write_text('{"language": "es", "upload": 2}')  # a re-upload
    assert [a.marketplace for a in announce_arrivals(zone, events.append)] == ["es"]
    assert [e.marketplace for e in events] == ["es", "it", "fr", "es"]
    # a re-upload is a new landing key, hence a new event id; the first upload's id is not reused
    assert events[3].event_id != events[0].event_id
    assert not (zone / "de" / ANNOUNCED_MARKER).exists()             # skipped folders get no state


def test_event_ids_are_uuid5_of_the_landing_key_and_stable_across_scans(zone):
    first = {f.marketplace: f for f in scan_landing_zone(zone)}
    again = {f.marketplace: f for f in scan_landing_zone(zone)}
    es = first["es"]
    assert es.key == f"{zone / 'es'}@{es.marker}"
    assert es.event_id == again["es"].event_id == uuid.uuid5(landing.EVENT_NAMESPACE, es.key)
    assert es.event_id.version == 5 and es.event_id != first["it"].event_id
    announced = announce_arrivals(zone, lambda _: None)[0]
    record = json.loads((zone / "es" / ANNOUNCED_MARKER).read_text())
    assert record["key"] == es.key and record["event_id"] == str(es.event_id) and record["state"] == "emitted"
    assert announced.announced and scan_landing_zone(zone)[0].announced


def test_state_is_per_landing_key_and_scales_with_the_folders(tmp_path):
    for i in range(200):
        fill(tmp_path / f"m{i:03d}")
    events = []
    assert len(announce_arrivals(tmp_path, events.append)) == 200
    assert len({e.event_id for e in events}) == 200
    assert announce_arrivals(tmp_path, events.append) == []        # the 201st run announces nothing again
    markers = sorted(tmp_path.glob(f"*/{ANNOUNCED_MARKER}"))
    assert len(markers) == 200 and max(m.stat().st_size for m in markers) < 400  # small, one per folder
    time.sleep(0.01)
    fill(tmp_path / "m123", marker='{"language": "es", "upload": 2}')
    assert [a.marketplace for a in announce_arrivals(tmp_path, events.append)] == ["m123"]


def test_state_is_saved_before_the_event_and_an_unfinished_announcement_is_resent_with_the_same_id(zone, monkeypatch):
    def crash(_landing):
        raise ConnectionError("Prefect API unreachable")

    with pytest.raises(ConnectionError):
        announce_arrivals(zone, crash)
    es = json.loads((zone / "es" / ANNOUNCED_MARKER).read_text())
    assert es["state"] == "pending"                                   # written before the emit
    assert not (zone / "it" / ANNOUNCED_MARKER).exists()             # later folders untouched
    events = []
    assert [a.marketplace for a in announce_arrivals(zone, events.append)] == ["es", "it"]
    assert str(events[0].event_id) == es["event_id"]                  # at-least-once, same id: Prefect drops a repeat

    # a store the watcher cannot write stops it before any event: no event without state
    fill(zone / "fr")
    real = landing.record_announcement

    def read_only(landing_, state, **kwargs):
        raise PermissionError(f"cannot write {landing_.folder}/{ANNOUNCED_MARKER}")

    monkeypatch.setattr(landing, "record_announcement", read_only)
    sent = []
    with pytest.raises(PermissionError, match="fr/_ANNOUNCED"):
        announce_arrivals(zone, sent.append)
    assert sent == []
    monkeypatch.setattr(landing, "record_announcement", real)
    assert [a.marketplace for a in announce_arrivals(zone, sent.append)] == ["fr"]


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
    events = []
    announced = announce_arrivals("s3://landing/zone", events.append, s3_endpoint_url=endpoint)
    assert [(a.marketplace, a.train) for a in announced] == [("es", "s3://landing/zone/es/train.parquet")]
    record = json.loads(client.get_object(Bucket="landing", Key=f"zone/es/{ANNOUNCED_MARKER}")["Body"].read())
    assert record["state"] == "emitted" and record["event_id"] == str(events[0].event_id)
    assert record["key"].startswith("s3://landing/zone/es@")
    assert announce_arrivals("s3://landing/zone/", events.append, s3_endpoint_url=endpoint) == []
    client.put_object(Bucket="landing", Key=f"zone/fr/{READY_MARKER}", Body=b'{"language": "fr"}')
    assert [a.marketplace for a in announce_arrivals("s3://landing/zone", events.append,
                                                     s3_endpoint_url=endpoint)] == ["fr"]
    assert [e.event_id for e in events] == [uuid.uuid5(landing.EVENT_NAMESPACE, e.key) for e in events]
