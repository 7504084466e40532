"""Processes killed with SIGKILL in the middle of a run.

- Workers: a killer thread SIGKILLs a random worker of a running `python -m dataflow run`
  every 0.5-1 s until the run ends. The run finishes and its output equals a clean run's.
  (One crash of one task is covered by tests/core/test_tasks.py and
  tests/dataflow/test_pipeline.py::test_a_crashed_worker_is_retried.)
- The driver: SIGKILL after some shards are committed, then the same command again. Extends
  tests/e2e/test_cli.py::test_resume_after_sigkill_matches_a_clean_run with what the kill leaves
  behind: the workers exit by themselves, and the next run's `init` removes the dead session's
  segments, spill folder and manifest; the rerun recomputes exactly the shards missing from the
  sink manifest.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading

import psutil

from .conftest import (
    assert_identical,
    dataflow,
    leftovers,
    make_data,
    manifest,
    segments,
    session_of,
    session_manifests,
    start,
    stop,
    wait_for,
    write_pipeline,
)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def workers_of(pid: int) -> list[psutil.Process]:
    """The driver's workers: its children, or the zygote's (each names itself core-worker)."""
    found = []
    for child in descendants(pid):
        try:
            if child.name() == "core-worker":
                found.append(child)
        except psutil.Error:
            pass
    return found


class Killer(threading.Thread):
    """SIGKILLs a random worker of `pid` every 0.5-1 s until stopped."""

    def __init__(self, pid: int, seed: int = 7):
        super().__init__(daemon=True)
        self.pid = pid
        self.rng = random.Random(seed)
        self.killed: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.rng.uniform(0.5, 1.0)):
            victims = workers_of(self.pid)
            if not victims:
                continue
            victim = self.rng.choice(victims)
            try:
                victim.send_signal(signal.SIGKILL)
                self.killed.append(victim.pid)
            except psutil.Error:
                pass


def test_workers_killed_repeatedly_output_identical_to_clean_run(tmp_path, record_property):
    make_data(tmp_path / "data", shards=8, scale=0.02)
    clean = write_pipeline(tmp_path / "clean.yaml", sink__parquet="clean/")
    r = dataflow("run", clean, cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    # 0.1 s per batch of 1024 rows: each shard (about 4,300 rows) takes about half a second
    flaky = write_pipeline(tmp_path / "p.yaml", model__args={"payload_mb": 1, "delay": 0.1},
                           runtime__max_retries=1000)
    proc = start("run", flaky, "--json", cwd=tmp_path)
    killer = Killer(proc.pid)
    killer.start()
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        killer.done.set()
        killer.join()
        stop(proc)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["shards_done"] == 8 and summary["failed"] == []
    record_property("workers_killed", str(len(killer.killed)))
    record_property("shard_retries", str(err.count("retrying")))
    assert len(killer.killed) >= 3, killer.killed
    # some kills landed in the middle of a shard: that shard was retried
    assert "retrying" in err, err
    assert_identical(tmp_path / "out", tmp_path / "clean")
    assert leftovers(tmp_path / "out") == []


def test_driver_killed_then_rerun_resumes_and_leaves_nothing_behind(tmp_path, record_property):
    make_data(tmp_path / "data", shards=10, scale=0.02)
    clean = write_pipeline(tmp_path / "clean.yaml", sink__parquet="clean/")
    assert dataflow("run", clean, cwd=tmp_path).returncode == 0
    slow = write_pipeline(tmp_path / "p.yaml", model__args={"payload_mb": 8, "delay": 0.15, "leave_thread": True},
                          runtime__object_store_memory="16MB")  # small: results spill too
    proc = start("run", slow, cwd=tmp_path)
    try:
        wait_for(lambda: len(manifest(tmp_path / "out")) >= 2 or proc.poll() is not None,
                 what="two committed shards")
        assert proc.poll() is None, stop(proc)[1]
        session = wait_for(lambda: session_of(proc.pid), what="the driver's session manifest")
        workers = workers_of(proc.pid)
        processes = descendants(proc.pid)  # the workers, and the zygote they were forked from
        assert workers and segments(session["shm_prefix"]), "the run should use shared memory"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    done_before = manifest(tmp_path / "out")
    assert 2 <= len(done_before) < 10
    record_property("shards_committed_before_kill", str(len(done_before)))

    # the workers (and the zygote) notice their driver died and exit by themselves
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, f"processes outlived the killed driver: {alive}"

    # the same command again: skips what the manifest lists, computes the rest
    r = dataflow("run", slow, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["shards_skipped"] == len(done_before) and s["shards_done"] == 10 - len(done_before)
    assert s["rows"] == sum(n for i, n in manifest(tmp_path / "out").items() if i not in done_before)
    assert_identical(tmp_path / "out", tmp_path / "clean")
    assert leftovers(tmp_path / "out") == []

    # ... and its init removed everything the killed session left: segments, spill folder, manifest
    assert not segments(session["shm_prefix"])
    assert not os.path.exists(session["_path"])
    for folder in session["spill"]:
        assert not os.path.exists(folder), folder
    assert not [m for m in session_manifests() if m["token"] == session["token"]]
    assert not any(n.startswith(f"ddsf-{session['token']}") for n in os.listdir(tmp_path / "spill"))
