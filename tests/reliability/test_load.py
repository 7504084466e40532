"""Load: many tiny tasks, a pipeline over many tiny shards, and a soak of repeated runs, each
ending with memory, file descriptors and /dev/shm where they started.

(tests/core/test_objects.py::test_no_leak_over_100k_put_get_del_cycles covers 100,000
put/get/del cycles; here 100,000 *tasks*, and whole pipelines.)

The soak is `@pytest.mark.slow` (about 90 s): `python -m pytest -m slow tests/reliability` or
DDSF_SLOW=1.
"""

from __future__ import annotations

import gc
import json
import os
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import core

from .conftest import MODELS, dataflow, make_data, manifest, segments, write_pipeline

MiB = 2**20


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@core.remote
def inc(x):
    return x + 1


def test_100k_tiny_tasks(tmp_path, record_property):
    core.init(num_cpus=2)
    try:
        from core._private.runtime import current as current_runtime

        rt = current_runtime()
        me = psutil.Process()
        core.get([inc.remote(i) for i in range(2_000)])     # warm up workers and caches
        gc.collect()
        rss, files, shm = me.memory_info().rss, fds(), segments(rt.session.prefix)

        refs = [inc.remote(i) for i in range(100_000)]
        assert core.get(refs) == list(range(1, 100_001))
        del refs
        gc.collect()
        with rt.locked:
            assert len(rt.objects) == 0 and len(rt.tasks) == 0
        assert fds() == files and segments(rt.session.prefix) == shm
        record_property("rss_growth_mb", f"{(me.memory_info().rss - rss) / MiB:.1f}")
        assert me.memory_info().rss - rss < 64 * MiB
    finally:
        core.shutdown()


def tiny_shards(folder, n: int) -> None:
    os.makedirs(folder)
    for i in range(n):
        pq.write_table(pa.table({"passenger_count": pa.array([i % 5] * 3, pa.int8()),
                                 "trip_distance": pa.array([float(i)] * 3, pa.float32())}),
                       os.path.join(folder, f"part-{i:05d}.parquet"))


def test_pipeline_over_10k_tiny_shards(tmp_path):
    tiny_shards(tmp_path / "data", 10_000)
    spec = write_pipeline(tmp_path / "p.yaml", predict__batch_size=16)
    r = dataflow("run", spec, "--json", cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["status"] == "done" and s["shards_done"] == 10_000 and s["rows"] == 30_000
    done = manifest(tmp_path / "out")
    assert sorted(done) == list(range(10_000)) and set(done.values()) == {3}
    names = sorted(n for n in os.listdir(tmp_path / "out") if n.startswith("part-"))
    assert len(names) == 10_000
    t = pq.read_table(tmp_path / "out" / "part-09999.parquet")
    assert t.column_names == ["trip_distance", "score"] and t["trip_distance"].to_pylist() == [9999.0] * 3
    again = dataflow("run", spec, "--json", cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and json.loads(again.stdout)["shards_skipped"] == 10_000


@pytest.mark.slow
def test_soak_repeated_runs_leave_memory_fds_and_shm_flat(tmp_path, record_property):
    """Pipelines run back to back in one driver process for about 90 s (each run starts and
    stops its own session, workers and segments): the driver's RSS, its open files and
    /dev/shm end where they were after the first runs."""
    from dataflow import Pipeline

    data = make_data(tmp_path / "data", shards=6, scale=0.01)

    def run_once(i: int) -> None:
        p = Pipeline(source={"parquet": data, "columns": ["passenger_count"]},
                     model={"factory": f"{MODELS}:tip_model", "args": {"payload_mb": 8}},
                     predict={"batch_size": 1024, "keep_columns": ["trip_distance"]},
                     sink=str(tmp_path / "out"),
                     runtime={"num_cpus": 2, "object_store_memory": "32MB",
                              "spill": str(tmp_path / "spill")})
        s = p.run(restart=True)
        assert s.status == "done" and s.rows == 17_106, i

    me = psutil.Process()
    for i in range(3):
        run_once(i)
    gc.collect()
    rss, files, shm = me.memory_info().rss, fds(), segments()
    runs, deadline = 3, time.monotonic() + 90
    while time.monotonic() < deadline:
        run_once(runs)
        runs += 1
    gc.collect()
    record_property("runs", str(runs))
    record_property("rss_growth_mb", f"{(me.memory_info().rss - rss) / MiB:.1f}")
    assert runs >= 10
    assert fds() == files
    # other sessions on the machine may come and go; ours all ended: none of ours is left
    leaked = [n for n in segments() - shm if not _owned_by_a_live_session(n)]
    assert not leaked, leaked
    assert me.memory_info().rss - rss < 64 * MiB, (rss, me.memory_info().rss, runs)
    assert not core.is_initialized()


def _owned_by_a_live_session(name: str) -> bool:
    from .conftest import session_manifests
    from core._private.objects.shm import _session_alive

    return any(name.startswith(m.get("shm_prefix", "\0")) and _session_alive(m)
               for m in session_manifests())
