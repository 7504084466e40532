"""Fixtures for the connectors tests: small Parquet datasets on disk and on the moto S3 server.

Every dataset is written into pytest's `tmp_path` or a fresh bucket from `s3_bucket`, so tests
never share state and leave nothing behind.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def small_table(start: int = 0, rows: int = 100) -> pa.Table:
    """Rows `start`..`start+rows-1`: an int id, a float and a string column."""
    ids = list(range(start, start + rows))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "value": pa.array([i * 0.5 for i in ids], pa.float64()),
        "name": pa.array([f"n{i}" for i in ids], pa.string()),
    })


def write_files(folder: Path, count: int = 3, rows: int = 100,
                row_group_size: int = 25) -> list[Path]:
    """`count` Parquet files of `rows` rows each (ids continue across files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"f{i}.parquet"
        pq.write_table(small_table(i * rows, rows), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


@pytest.fixture
def local_dataset(tmp_path: Path) -> Path:
    """A folder of 3 files × 100 rows in row groups of 25, plus files readers must skip."""
    folder = tmp_path / "data"
    write_files(folder)
    (folder / "_SUCCESS").write_text("")
    (folder / ".hidden.parquet").write_text("not parquet")
    (folder / "_tmp").mkdir()
    (folder / "_tmp" / "junk.parquet").write_text("not parquet")
    return folder


@pytest.fixture
def s3_client(s3_server):
    return boto3.client("s3", endpoint_url=s3_server)


def upload_files(client, bucket: str, prefix: str, count: int = 3, rows: int = 100,
                 row_group_size: int = 25, acl: str | None = None) -> list[str]:
    """Put `count` Parquet files under s3://bucket/prefix/ and return their URIs."""
    uris = []
    for i in range(count):
        sink = pa.BufferOutputStream()
        pq.write_table(small_table(i * rows, rows), sink, row_group_size=row_group_size)
        key = f"{prefix}/f{i}.parquet"
        extra = {"ACL": acl} if acl else {}
        client.put_object(Bucket=bucket, Key=key, Body=sink.getvalue().to_pybytes(), **extra)
        uris.append(f"s3://{bucket}/{key}")
    return uris


@pytest.fixture
def s3_dataset(s3_client, s3_bucket) -> str:
    """s3://<fresh bucket>/data/ with 3 files × 100 rows in row groups of 25."""
    upload_files(s3_client, s3_bucket, "data")
    return f"s3://{s3_bucket}/data/"


@pytest.fixture
def s3_auth_enforced(s3_server):
    """Make the moto server check credentials (it accepts any by default), then restore it.

    moto's own HTTP switch (POST /moto-api/reset-auth) turns on IAM authentication: from then on
    only keys of IAM users it knows are accepted, so the test keys are refused with 403.
    """
    def set_count(value: str) -> str:
        request = urllib.request.Request(f"{s3_server}/moto-api/reset-auth",
                                         data=value.encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    previous = set_count("0")
    try:
        yield
    finally:
        set_count(previous)
