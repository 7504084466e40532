"""S3 over the wire: retries of transient errors, and range requests for projected columns.

A small HTTP proxy sits in front of the moto server. It answers the next `fail` requests with
``503 SlowDown`` (what S3 sends when throttling) and forwards everything else to moto unchanged,
recording each request and counting the bytes of object data it forwards, so the clients' real
retry logic and request patterns run over HTTP.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from connectors import StorageError, make_nyc_taxi_shards, open_sink, plan_shards, read_shard
from connectors import _planning
from connectors.storage import MAX_ATTEMPTS

from .conftest import small_table, upload_files

SLOW_DOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyProxy:
    def __init__(self, upstream: str) -> None:
        self.fail = 0  # answer this many next requests with 503 SlowDown
        self.failed = 0
        self.forwarded = 0
        self.bytes_forwarded = 0  # body bytes of GET responses
        self.requests: list[tuple[str, str]] = []  # (method, path) of each forwarded request
        self.lock = threading.Lock()
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    failing = proxy.fail > 0
                    if failing:
                        proxy.fail -= 1
                        proxy.failed += 1
                    else:
                        proxy.forwarded += 1
                        proxy.requests.append((self.command, self.path))
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port,
                                                           timeout=30)
                upstream_conn.request(self.command, self.path, body=body,
                                      headers=dict(self.headers))
                response = upstream_conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                # A HEAD answer has no body but says the object's size: pass that on.
                length = (response.getheader("Content-Length", "0") if self.command == "HEAD"
                          else str(len(data)))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command == "GET":
                    with proxy.lock:
                        proxy.bytes_forwarded += len(data)
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream_conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def flaky(s3_server):
    proxy = FlakyProxy(s3_server)
    try:
        yield proxy
    finally:
        proxy.close()


def test_slowdown_responses_are_retried_and_planning_succeeds(s3_dataset, flaky):
    options = {"endpoint_url": flaky.url}
    flaky.fail = MAX_ATTEMPTS - 1

    shards = plan_shards(s3_dataset, storage_options=options)

    assert flaky.failed == MAX_ATTEMPTS - 1
    assert [s.num_rows for s in shards] == [100, 100, 100]
    flaky.fail = MAX_ATTEMPTS - 1
    assert read_shard(shards[0], storage_options=options).num_rows == 100


def test_slowdown_on_sink_writes_is_retried(s3_bucket, flaky):
    sink = open_sink(f"s3://{s3_bucket}/out", storage_options={"endpoint_url": flaky.url})
    flaky.fail = MAX_ATTEMPTS - 1

    sink.write_part(0, small_table(0, 10))

    assert flaky.failed == MAX_ATTEMPTS - 1
    assert sink.committed() == {0: 10}


def test_persistent_slowdown_raises_storage_error_after_bounded_retries(s3_dataset, flaky):
    flaky.fail = 10_000
    start = time.monotonic()

    with pytest.raises(StorageError, match=r"cannot list Parquet files at s3://.*/data/: the "
                                           r"store is still throttling or unavailable after 3 "
                                           r"attempts with backoff \(.*SLOW_DOWN"):
        plan_shards(s3_dataset, storage_options={"endpoint_url": flaky.url})
    assert time.monotonic() - start < 20
    assert flaky.failed <= MAX_ATTEMPTS


def test_planning_many_files_fetches_each_footer_with_one_get_and_no_head(s3_dataset, flaky,
                                                                          monkeypatch):
    monkeypatch.setattr(_planning, "_S3_FRAGMENT_FOOTERS_FROM", 3)  # 3 files count as many
    flaky.requests.clear()

    shards = plan_shards(s3_dataset, storage_options={"endpoint_url": flaky.url})

    objects = sorted(path for method, path in flaky.requests if "?" not in path)
    assert [method for method, _ in flaky.requests].count("HEAD") == 0
    assert objects == sorted(f"/{s.path.removeprefix('s3://')}" for s in shards)
    assert len(shards) == 3


def test_planning_few_files_sends_a_head_and_a_get_per_footer(s3_dataset, flaky):
    flaky.requests.clear()

    shards = plan_shards(s3_dataset, storage_options={"endpoint_url": flaky.url})

    paths = sorted(f"/{s.path.removeprefix('s3://')}" for s in shards)
    heads = sorted(path for method, path in flaky.requests if method == "HEAD")
    gets = sorted(path for method, path in flaky.requests if method == "GET" and "?" not in path)
    assert heads == paths and gets == paths


def test_planning_64_objects_reads_16_footers_and_estimates_the_rest(s3_client, s3_bucket,
                                                                     flaky):
    upload_files(s3_client, s3_bucket, "many", count=64, rows=20, row_group_size=20)
    flaky.requests.clear()

    shards = plan_shards(f"s3://{s3_bucket}/many/", storage_options={"endpoint_url": flaky.url})

    footers = {path for method, path in flaky.requests if method == "GET" and "?" not in path}
    read = {f"/{s.path.removeprefix('s3://')}" for s in shards if not s.estimated}
    assert len(shards) == 64 and len(footers) == 16 and footers == read
    assert [s.index for s in shards] == list(range(64))
    # Same-shaped files: the sample's rows per byte give every estimated shard its 20 rows.
    assert all(abs(s.num_rows - 20) <= 1 for s in shards)


def test_footers_all_reads_every_footer_of_many_objects(s3_client, s3_bucket, flaky):
    upload_files(s3_client, s3_bucket, "many", count=64, rows=20, row_group_size=20)
    flaky.requests.clear()

    shards = plan_shards(f"s3://{s3_bucket}/many/", storage_options={"endpoint_url": flaky.url},
                         footers="all")

    footers = {path for method, path in flaky.requests if method == "GET" and "?" not in path}
    assert len(footers) == 64 and not any(s.estimated for s in shards)
    assert [s.num_rows for s in shards] == [20] * 64


def test_reading_one_column_fetches_a_small_part_of_the_object(s3_bucket, flaky):
    make_nyc_taxi_shards(f"s3://{s3_bucket}/taxi", shards=1, rows_per_shard=100_000)
    options = {"endpoint_url": flaky.url}
    shard = plan_shards(f"s3://{s3_bucket}/taxi/", storage_options=options)[0]
    flaky.bytes_forwarded = 0

    table = read_shard(shard, columns=["passenger_count"], storage_options=options)

    assert table.num_rows == 100_000
    assert flaky.bytes_forwarded < shard.file_size / 10
