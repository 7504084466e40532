"""S3 faults during `python -m dataflow run`, injected by a proxy in front of the moto server:
throttling (503 SlowDown), a connection dropped in the middle of a read, the server gone.

Transient faults are retried (bounded, with backoff) and the run's output is identical to a
clean run's. Persistent faults end the run with exit code 1 and one error line naming the URI
that failed; the committed shards stay, and once the fault is gone the same command resumes and
finishes with an output identical to a clean run. (Throttling of single connector calls is
covered by tests/connectors/test_s3_http.py.)
"""

from __future__ import annotations

import json
import re

import pytest

from connectors.storage import MAX_ATTEMPTS

from .conftest import (
    assert_identical,
    dataflow,
    leftovers,
    make_data,
    manifest,
    one_error_line,
    start,
    stop,
    wait_for,
    write_pipeline,
)
from .s3proxy import FaultProxy

SHARDS = 5


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(s3_server)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def taxi(tmp_path, s3_server, s3_bucket):
    """Taxi shards on S3 and a clean run's output (read straight from moto) in clean/."""
    make_data(f"s3://{s3_bucket}/data", shards=SHARDS, scale=0.01)
    clean = write_pipeline(tmp_path / "clean.yaml", sink__parquet="clean/",
                           source__parquet=f"s3://{s3_bucket}/data/",
                           source__storage_options={"endpoint_url": s3_server})
    r = dataflow("run", clean, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return f"s3://{s3_bucket}/data/"


def through(tmp_path, proxy, data, **more) -> str:
    return write_pipeline(tmp_path / "p.yaml", source__parquet=data,
                          source__storage_options={"endpoint_url": proxy.url}, **more)


def resume_and_compare(tmp_path, spec, committed_before: dict) -> None:
    r = dataflow("run", spec, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["shards_skipped"] == len(committed_before)
    assert s["shards_done"] == SHARDS - len(committed_before)
    assert_identical(tmp_path / "out", tmp_path / "clean")
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_transient_fault_is_retried_and_output_identical(tmp_path, proxy, taxi, fault, record_property):
    spec = through(tmp_path, proxy, taxi, runtime__max_retries=0)
    proxy.match = "/data/part-00002.parquet"
    if fault == "503":
        proxy.fail_503 = MAX_ATTEMPTS - 1     # within one call's retries
    else:
        proxy.drop = 1
    r = dataflow("run", spec, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shards_done"] == SHARDS
    record_property("faults_served", str(proxy.failed + proxy.dropped))
    assert (proxy.failed, proxy.dropped) == ((MAX_ATTEMPTS - 1, 0) if fault == "503" else (0, 1))
    assert_identical(tmp_path / "out", tmp_path / "clean")


def slow_run(tmp_path, proxy, data) -> str:
    """One shard at a time, about a second each: faults can be turned on after planning."""
    return through(tmp_path, proxy, data, runtime__max_retries=1, runtime__num_cpus=1,
                   runtime__max_in_flight=1, model__args={"payload_mb": 1, "delay": 0.3})


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_persistent_fault_names_the_uri_then_the_run_resumes(tmp_path, proxy, taxi, fault, record_property):
    spec = slow_run(tmp_path, proxy, taxi)
    bad = f"{taxi}part-00004.parquet"
    proc = start("run", spec, cwd=tmp_path)
    try:
        wait_for(lambda: manifest(tmp_path / "out") or proc.poll() is not None,
                 what="a committed shard")
        proxy.match = "/data/part-00004.parquet"   # the last shard: not read yet
        if fault == "503":
            proxy.fail_503 = -1
        else:
            proxy.drop = -1
        _, err = proc.communicate(timeout=180)
    finally:
        stop(proc)
    assert proc.returncode == 1, err
    record_property("faults_served", str(proxy.failed + proxy.dropped))
    line = one_error_line(err)
    assert line.startswith(f"dataflow: error: shard 4 ({bad}) failed after 2 attempts: "), line
    assert bad in line.partition("attempts: ")[2], line   # the cause names the object too
    if fault == "503":
        assert "throttling or unavailable after 3 attempts with backoff" in line, line
        # bounded: 2 shard attempts x MAX_ATTEMPTS per request, a few requests per read
        assert 0 < proxy.failed <= 2 * MAX_ATTEMPTS * 4
    else:
        assert "Transferred a partial file" in line or "partial" in line.lower(), line
        assert 0 < proxy.dropped <= 2 * MAX_ATTEMPTS * 4
    committed = manifest(tmp_path / "out")
    assert sorted(committed) == [0, 1, 2, 3]
    proxy.reset()
    resume_and_compare(tmp_path, spec, committed)


def test_server_gone_mid_run_names_the_uri_then_the_run_resumes(tmp_path, proxy, taxi, record_property):
    spec = slow_run(tmp_path, proxy, taxi)
    proc = start("run", spec, cwd=tmp_path)
    try:
        wait_for(lambda: manifest(tmp_path / "out") or proc.poll() is not None,
                 what="a committed shard")
        proxy.stop()
        _, err = proc.communicate(timeout=180)
    finally:
        stop(proc)
    committed = manifest(tmp_path / "out")
    assert proc.returncode == 1, err
    assert 1 <= len(committed) < SHARDS
    record_property("shards_committed_before_stop", str(len(committed)))
    line = one_error_line(err)
    assert re.match(rf"dataflow: error: shard \d \({re.escape(taxi)}part-0000\d\.parquet\) failed "
                    rf"after 2 attempts: .*{re.escape(taxi)}part-0000\d\.parquet", line), line
    assert "127.0.0.1" in line or "connect" in line.lower(), line
    proxy.start()
    resume_and_compare(tmp_path, spec, committed)
