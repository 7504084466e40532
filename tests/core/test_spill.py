"""The victim choice (a pure function, no shared memory), spill configuration validation, and the
spill-target contract, run against every backend (local folder, S3 on a moto server)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from core._private.objects import shm, spill
from core._private.objects.spill import open_spill_target, parse_spill_config
from core._private.objects.spiller import pick_victims
from core.exceptions import ConfigError, ObjectLostError

MiB = 2**20


@pytest.fixture
def session():
    s = shm.Session.start(cleanup_stale=False)
    yield s
    s.close()


# ─── which objects to spill ─────────────────────────────────────────────────────────────────────
# candidates: (key, size, spillable) from least to most recently used
LRU = [("a", 3, True), ("b", 5, False), ("c", 2, True), ("d", 4, True), ("e", 1, True)]


@pytest.mark.parametrize("candidates, short, min_spilling_size, victims", [
    (LRU, 1, 0, ["a"]),                         # the least recently used first
    (LRU, 4, 0, ["a", "c"]),                    # pinned/busy ones skipped
    (LRU, 5, 0, ["a", "c"]),                    # stops as soon as the total reaches `short`
    (LRU, 6, 0, ["a", "c", "d"]),
    (LRU, 1, 8, ["a", "c", "d"]),               # a batch is at least min_spilling_size
    (LRU, 100, 0, ["a", "c", "d", "e"]),        # not enough: all there are
    (LRU, 0, 0, ["a"]),                         # asked for nothing: still one, if any can go
    ([("b", 5, False)], 1, 0, []),              # nothing spillable
    ([], 1, 0, []),
])
def test_pick_victims(candidates, short, min_spilling_size, victims):
    assert pick_victims(iter(candidates), short, min_spilling_size) == victims


# ─── configuration ──────────────────────────────────────────────────────────────────────────────
def test_config_forms():
    assert parse_spill_config(None) == spill.SpillConfig()
    assert parse_spill_config("/tmp/x").uri == "/tmp/x"
    assert parse_spill_config(Path("/tmp/y")).uri == "/tmp/y"
    c = parse_spill_config({"uri": "s3://bucket/pre", "buffer_size": "32MiB", "min_spilling_size": "1GB"})
    assert (c.scheme, c.buffer_size, c.min_spilling_size) == ("s3", 32 * MiB, 10**9)
    assert spill.SpillConfig().buffer_size >= 8 * MiB
    assert parse_spill_config({"min_spilling_size": 0}).uri is None


@pytest.mark.parametrize("value, match", [
    ({"url": "/tmp/x"}, r"unknown key\(s\) \['url'\]"),
    ({"uri": "/tmp/x", "bufsize": 1}, r"bufsize.*allowed keys"),
    (42, "expected None, a folder path, a URI"),
    ({"uri": ""}, "spill.uri"),
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("s3://", "valid bucket name"),
    ("s3://Bad_Bucket/x", "Bad_Bucket"),
    ({"uri": "s3://bucket", "buffer_size": MiB}, "spill.buffer_size.*5 MiB"),
    ({"buffer_size": "lots"}, "spill.buffer_size"),
    ({"min_spilling_size": -1}, "spill.min_spilling_size"),
    ({"min_spilling_size": True}, "spill.min_spilling_size"),
])
def test_bad_config_raises_naming_the_key(value, match):
    with pytest.raises(ConfigError, match=match):
        parse_spill_config(value)


def test_unwritable_local_target_fails_at_init(session, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="file/sub"):
        open_spill_target(str(blocker / "sub"), session)


def test_missing_bucket_fails_at_init(session, s3_server):
    with pytest.raises(ConfigError, match="s3://no-such-bucket-here/x"):
        open_spill_target("s3://no-such-bucket-here/x", session)


def test_unreachable_endpoint_fails_at_init(session, monkeypatch):
    import socket

    with socket.socket() as s:                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ConfigError, match="not writable"):
        open_spill_target("s3://some-bucket/x", session)


# ─── contract suite, one run per backend ────────────────────────────────────────────────────────
@pytest.fixture(params=["local", "s3"])
def target(request, session, tmp_path):
    if request.param == "local":
        t = open_spill_target({"uri": str(tmp_path / "spill")}, session)
    else:
        bucket = request.getfixturevalue("s3_bucket")
        t = open_spill_target({"uri": f"s3://{bucket}/some/prefix", "buffer_size": 5 * MiB}, session)
    yield t
    t.close()


def objects():
    rng = np.random.default_rng(1)
    return [memoryview(rng.bytes(n)) for n in (100, 6 * MiB + 17, 1, 70_000)]


def read(target, loc) -> bytes:
    buf = bytearray(loc.length)
    target.read_into(loc, memoryview(buf), "ab" * 20)
    return bytes(buf)


class TestSpillTargetContract:
    def test_batch_round_trip(self, target, session):
        items = objects()
        locs = target.write_batch(items)
        assert len({loc.file.url for loc in locs}) == 1             # one file per batch
        assert [loc.offset for loc in locs] == [0, 100, 100 + 6 * MiB + 17, 101 + 6 * MiB + 17]
        assert locs[0].file.live == 4
        for item, loc in zip(items, locs):
            assert read(target, loc) == bytes(item)
        assert target.url in json.loads(session.manifest_path.read_text())["spill"]
        assert f"ddsf-{session.token}" in target.url

    def test_corruption_detected(self, target):
        items = objects()
        locs = target.write_batch(items)
        data = bytearray(b"".join(bytes(i) for i in items))
        data[locs[1].offset + 12345] ^= 0x01
        overwrite(target, locs[0].file.url, bytes(data))
        assert read(target, locs[0]) == bytes(items[0])             # other objects still fine
        with pytest.raises(ObjectLostError, match="ab" * 20 + ".*corrupt"):
            read(target, locs[1])

    def test_missing_file_is_lost(self, target):
        locs = target.write_batch(objects()[:2])
        target.delete_file(locs[0].file)
        with pytest.raises(ObjectLostError, match="ab" * 20):
            read(target, locs[1])

    def test_close_removes_everything(self, target):
        for _ in range(3):
            target.write_batch(objects()[:1])
        target.close()
        assert list_files(target) == []


def overwrite(target, url, data: bytes):
    if isinstance(target, spill.LocalSpillTarget):
        Path(url).write_bytes(data)
    else:
        target.client.put_object(Bucket=target.bucket, Key=url.split("/", 3)[3], Body=data)


def list_files(target) -> list[str]:
    if isinstance(target, spill.LocalSpillTarget):
        return [str(p) for p in Path(target.url).glob("*")] if os.path.exists(target.url) else []
    resp = target.client.list_objects_v2(Bucket=target.bucket, Prefix=target.prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


# ─── backend specifics ──────────────────────────────────────────────────────────────────────────
def test_local_permissions(session, tmp_path):
    t = open_spill_target(str(tmp_path / "spill"), session)
    loc = t.write_batch([memoryview(b"x" * 10)])[0]
    assert stat.S_IMODE(os.stat(t.url).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(loc.file.url).st_mode) == 0o600
    t.close()
    assert not os.path.exists(t.url)


def test_default_local_target_is_a_session_folder_in_tmp(session):
    t = open_spill_target(None, session)
    try:
        assert Path(t.url).name == f"ddsf-{session.token}"
        assert stat.S_IMODE(os.stat(Path(t.url).parent).st_mode) == 0o700
    finally:
        t.close()


def test_s3_one_client_and_multipart_writes(session, s3_bucket, monkeypatch):
    import boto3.session

    made = []
    real_client = boto3.session.Session.client

    def counting_client(self, *a, **kw):            # a spy: counts, then builds the real client
        made.append(a[0] if a else kw.get("service_name"))
        return real_client(self, *a, **kw)

    monkeypatch.setattr(boto3.session.Session, "client", counting_client)
    t = open_spill_target({"uri": f"s3://{s3_bucket}/mp", "buffer_size": 5 * MiB}, session)
    try:
        locs = [t.write_batch([memoryview(os.urandom(12 * MiB))])[0] for _ in range(3)]
        for loc in locs:
            assert len(read(t, loc)) == 12 * MiB
        assert made == ["s3"]                        # one client for probe, 3 writes and reads
        head = t.client.head_object(Bucket=s3_bucket, Key=locs[0].file.url.split("/", 3)[3])
        assert "-" in head["ETag"]                   # a multipart upload: "<md5>-<parts>"
        assert int(head["ETag"].strip('"').split("-")[1]) >= 2
    finally:
        t.close()
