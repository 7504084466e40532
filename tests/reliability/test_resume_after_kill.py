"""A run SIGKILLed right after parts were committed, then run again: no committed shard is
computed again, and the output equals a clean run's.

A part is committed when it appears under its final name (an atomic rename); its record in the
sink's manifest, which a rerun trusts, follows within `connectors.sinks.MANIFEST_DELAY_S`
whatever happens next (the sink's flusher thread writes it). Before the flusher, a record
deferred by a quick commit waited for a *later* commit: with slow shards finishing together,
the second part of a pair sat unrecorded until the next pair finished, and a kill in between
made the rerun compute that shard again.

The workload: 2 workers, shards of ~2 s each (the model sleeps), the first two starting and so
finishing together. The trigger: the first part file under its final name; then 1 s (well past
the flusher's delay, well before the next pair of shards ends); then SIGKILL to the process
group of `python -m dataflow run` (driver, zygote, workers at once).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from .conftest import (
    assert_identical,
    dataflow,
    env,
    leftovers,
    make_data,
    wait_for,
    write_pipeline,
)
from .counting_models import read_calls

SHARDS = 6
MODEL = "tests.reliability.counting_models:counting_model"


def committed_parts(folder) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "part-*.parquet")))


def batches_of(parts: list[str]) -> set[str]:
    """The fingerprints of the batches that made these parts (the model's `batch` column)."""
    return {fp for p in parts for fp in pq.read_table(p, columns=["batch"])["batch"].to_pylist()}


def pipeline(tmp_path, name: str, calls: str, seconds: float) -> str:
    return write_pipeline(
        tmp_path / f"{name}.yaml", sink__parquet=f"{name}/",
        model={"factory": MODEL, "args": {"calls": str(tmp_path / calls), "seconds": seconds}},
        predict={"batch_size": 1_000_000, "batch_format": "pandas",
                 "keep_columns": ["trip_distance"]})


def test_a_kill_after_parts_are_committed_recomputes_none_of_them(tmp_path):
    make_data(tmp_path / "data", shards=SHARDS, scale=0.02)
    clean = pipeline(tmp_path, "clean", "clean-calls.txt", seconds=0)
    r = dataflow("run", clean, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    every_batch = read_calls(tmp_path / "clean-calls.txt")
    assert len(every_batch) == len(set(every_batch)) == SHARDS  # one call, one batch per shard

    spec = pipeline(tmp_path, "out", "calls-1.txt", seconds=2.0)
    proc = subprocess.Popen([sys.executable, "-m", "dataflow", "run", spec], cwd=tmp_path,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: committed_parts(tmp_path / "out") or proc.poll() is not None,
                 what="the first part under its final name")
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(1.0)  # the record's delay is 0.25 s; the next shards end ~2 s after these
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    committed = committed_parts(tmp_path / "out")  # what the kill left under final names
    done_before = batches_of(committed)
    assert 1 <= len(committed) < SHARDS, committed

    # the same command again (its calls counted apart): resumes
    r = dataflow("run", spec, "--json", "--set", f"model.args.calls={tmp_path / 'calls-2.txt'}",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    recomputed = read_calls(tmp_path / "calls-2.txt")
    assert not done_before & set(recomputed), (
        f"{len(done_before & set(recomputed))} of the {len(committed)} shard(s) committed "
        f"before the kill ({[os.path.basename(p) for p in committed]}) were computed again")
    assert summary["shards_skipped"] == len(committed)
    assert sorted(recomputed) == sorted(set(every_batch) - done_before)  # the others, once each
    assert_identical(tmp_path / "out", tmp_path / "clean")
    assert leftovers(tmp_path / "out") == []
