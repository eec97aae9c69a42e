"""``s3://`` paths through boto3 against a real S3 API (moto's server on loopback, dummy credentials)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from tasks.data import DataValidationError, load_data_root, load_marketplace_dir, read_table

BUCKET = "mcl-data"
TABLE = pd.DataFrame({"query": ["rote tasche", "rote tasche", "laufschuhe", "laufschuhe"],
                      "product_title": ["Handtasche, Rot", "Rucksack, Blau", "Laufschuhe Herren", "Kaffeebecher"],
                      "label": [1, 0, 1, 0]})


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint with a bucket holding a marketplace root; yields (endpoint, client)."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("MCL_S3_ENDPOINT_URL", raising=False)
        server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket=BUCKET)
            parquet = io.BytesIO()
            TABLE.to_parquet(parquet, index=False)
            for marketplace_id, language in (("de", "de"), ("at", "de-AT")):
                prefix = f"root/{marketplace_id}"
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/train.parquet", Body=parquet.getvalue())
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/valid.csv", Body=TABLE.to_csv(index=False).encode())
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/test.jsonl",
                                  Body=TABLE.to_json(orient="records", lines=True).encode())
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/marketplace.json",
                                  Body=json.dumps({"id": marketplace_id, "language": language}).encode())
            client.put_object(Bucket=BUCKET, Key="broken.parquet", Body=parquet.getvalue()[:100])
            yield endpoint, client
        finally:
            server.stop()


@pytest.mark.parametrize("key", ["root/de/train.parquet", "root/de/valid.csv", "root/de/test.jsonl"])
def test_read_table_from_s3(s3, key: str) -> None:
    endpoint, _ = s3
    table = read_table(f"s3://{BUCKET}/{key}", s3_endpoint_url=endpoint)
    assert table["query"].tolist() == TABLE["query"].tolist()
    assert table["product_title"].tolist() == TABLE["product_title"].tolist()
    assert [int(v) for v in table["label"]] == [1, 0, 1, 0]


def test_missing_key_is_one_clear_error(s3) -> None:
    endpoint, _ = s3
    path = f"s3://{BUCKET}/root/de/nothing.parquet"
    with pytest.raises(DataValidationError) as caught:
        read_table(path, s3_endpoint_url=endpoint)
    assert str(caught.value) == (f"{path}: no such object: key 'root/de/nothing.parquet' is not in bucket "
                                 f"'{BUCKET}' at {endpoint}")


def test_missing_bucket_and_truncated_object(s3) -> None:
    endpoint, _ = s3
    with pytest.raises(DataValidationError, match="no such bucket 'no-such-bucket'"):
        read_table("s3://no-such-bucket/train.csv", s3_endpoint_url=endpoint)
    with pytest.raises(DataValidationError, match="truncated parquet file") as caught:
        read_table(f"s3://{BUCKET}/broken.parquet", s3_endpoint_url=endpoint)
    assert caught.value.file == f"s3://{BUCKET}/broken.parquet"


def test_endpoint_from_the_environment(s3, monkeypatch) -> None:
    endpoint, _ = s3
    monkeypatch.setenv("MCL_S3_ENDPOINT_URL", endpoint)
    assert len(read_table(f"s3://{BUCKET}/root/de/valid.csv")) == 4


def test_marketplace_folders_and_roots_on_s3(s3) -> None:
    endpoint, _ = s3
    marketplace = load_marketplace_dir(f"s3://{BUCKET}/root/at", s3_endpoint_url=endpoint)
    assert (marketplace.id, marketplace.language) == ("at", "de-AT")
    assert marketplace.sources["valid"] == f"s3://{BUCKET}/root/at/valid.csv"
    assert len(marketplace.warnings) == 2  # the same rows in every split: counted leakage
    marketplaces = load_data_root(f"s3://{BUCKET}/root", ["de", "at"], s3_endpoint_url=endpoint)
    assert [m.id for m in marketplaces] == ["de", "at"]
    with pytest.raises(DataValidationError, match=r"no marketplace 'fr' in s3://mcl-data/root \(available: at, de\)"):
        load_data_root(f"s3://{BUCKET}/root", ["fr"], s3_endpoint_url=endpoint)
    with pytest.raises(DataValidationError, match="no such folder"):
        load_marketplace_dir(f"s3://{BUCKET}/elsewhere", s3_endpoint_url=endpoint)


def test_transient_s3_errors_are_retried_then_reported(s3, monkeypatch) -> None:
    """503 SlowDown twice (injected at the HTTP layer): the read succeeds on the third attempt; an error that never
    clears is one DataValidationError after S3_MAX_ATTEMPTS attempts. botocore's back-off waits are recorded, not
    slept (they add up to tens of seconds)."""
    import types

    import boto3
    import botocore.endpoint
    from botocore.awsrequest import AWSResponse

    waits: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=waits.append))

    from tasks.data import readers

    endpoint, _ = s3
    attempts = []

    def slow_down(request, **_):
        attempts.append(request.url)
        if len(attempts) <= failures:
            return AWSResponse(request.url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code></Error>"))
        return None

    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-send.s3.GetObject", slow_down)
    try:
        failures = 2
        table = read_table(f"s3://{BUCKET}/root/de/train.parquet", s3_endpoint_url=endpoint)
        assert len(table) == 4 and len(attempts) == 3
        attempts.clear()
        failures = 100
        with pytest.raises(DataValidationError, match="S3 error SlowDown"):
            read_table(f"s3://{BUCKET}/root/de/train.parquet", s3_endpoint_url=endpoint)
        assert len(attempts) == readers.S3_MAX_ATTEMPTS
        assert len(waits) == 2 + readers.S3_MAX_ATTEMPTS - 1 and all(w >= 0 for w in waits)  # a wait per retry
    finally:
        boto3.DEFAULT_SESSION.events.unregister("before-send.s3.GetObject", slow_down)


class _Raw:
    """The raw body botocore reads from an injected response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_):
        yield self.body
