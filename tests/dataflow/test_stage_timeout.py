"""A stage's `timeout` on a real session, where the worker's own alarm cannot interrupt the call:
the driver gives the block up at its deadline, kills the actor and replaces it, and the block
fails (or is retried) as any failure; what was committed stays committed."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from dataflow import RunError
from dataflow import plan as P
from dataflow import streaming
from tests.dataflow import helpers
from tests.dataflow.test_stages import H, output, pipeline


class Hang:
    """Passes batches on; on the shard $HANG_SHARD it notes $HANG_MARKER and then sleeps with
    SIGALRM blocked (as C code that never returns to Python would: the worker's alarm cannot
    reach it). With $HANG_ONCE it hangs only while the marker does not exist yet."""

    def __init__(self):
        pass

    def __call__(self, batch: dict) -> dict:
        shard = int(batch["id"][0]) // 100
        marker = os.environ.get("HANG_MARKER", "")
        if str(shard) == os.environ.get("HANG_SHARD") and not (os.environ.get("HANG_ONCE") and os.path.exists(marker)):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(600)
        return {"id": batch["id"], "mean": batch["image"].reshape(len(batch["id"]), -1).mean(axis=1)}


class SlowStart(Hang):
    """Hang's calls (quick unless $HANG_SHARD is set), behind a constructor that takes $SLOW_START
    seconds, as loading a model does."""

    def __init__(self):
        time.sleep(float(os.environ["SLOW_START"]))


class SlowStartDiesOnce(SlowStart):
    """SlowStart whose process exits on shard $DIE_SHARD the first time (while $DIE_MARKER does
    not exist): core restarts it, through its slow constructor again."""

    def __call__(self, batch: dict) -> dict:
        marker = os.environ["DIE_MARKER"]
        if int(batch["id"][0]) // 100 == int(os.environ["DIE_SHARD"]) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


def stages(timeout="4s"):  # far above a normal block here, even on a loaded machine
    return [{"name": "parse", "fn": f"{H}:images", "fn_kwargs": {"size": 2}},
            {"name": "hang", "fn": "tests.dataflow.test_stage_timeout:Hang", "concurrency": 1, "timeout": timeout},
            {"name": "post", "fn": f"{H}:fail_on_bad"}]


def test_block_limit_is_timeout_times_batches_only_when_every_stage_has_one():
    timed = P.Stage("a", "m:C", "pool", batch_size=100, timeout=2.0)
    assert streaming.block_limit(P.Segment(0, "pool", (timed,)), 250, None, False) == (6.0, 3)
    untimed = P.Stage("b", "m:f", "tasks")
    assert streaming.block_limit(P.Segment(0, "tasks", (timed, untimed)), 250, None, False) is None
    # a one-segment plan's task: its stages' limit plus the grace for waiting and reading
    fused = P.Segment(0, "tasks", (P.Stage("a", "m:f", "tasks", timeout=2.0), P.Stage("b", "m:g", "tasks", timeout=1.0)))
    assert streaming.segment_deadline(fused, 250, 100, False) == 3 * 2.0 + 3 * 1.0 + streaming.DEADLINE_GRACE
    assert streaming.segment_deadline(P.Segment(0, "tasks", (untimed,)), 250, 100, False) is None


def test_a_hanging_actor_call_fails_the_run_naming_stage_and_shard(tmp_path, monkeypatch):
    marker = tmp_path / "started"
    monkeypatch.setenv("HANG_MARKER", str(marker))
    monkeypatch.setenv("HANG_SHARD", "2")
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=100)
    p = pipeline(tmp_path, data, stages(), max_retries=0)
    with pytest.raises(RunError, match=r"shard 2 .*stage hang: shard 2: a block ran past its deadline "
                                       r"\(timeout 4 s x 1 batches, plus grace\); its actor was killed"):
        p.run()
    assert marker.exists()  # the call really started, and hung
    summary = p.last_summary
    assert summary.status == "failed" and 2 not in [sh for sh in p.committed()]
    committed = p.committed()
    # nothing committed is lost: a rerun (no hang) computes only the rest, and every row is there once
    monkeypatch.delenv("HANG_SHARD")
    again = pipeline(tmp_path, data, stages(), max_retries=0).run()
    assert again.status == "done" and again.shards_skipped == len(committed)
    assert output(tmp_path)["id"].to_pylist() == list(range(400))


def test_a_hanging_actor_call_is_retried_on_a_new_actor(tmp_path, monkeypatch):
    marker = tmp_path / "started"
    monkeypatch.setenv("HANG_MARKER", str(marker))
    monkeypatch.setenv("HANG_SHARD", "1")
    monkeypatch.setenv("HANG_ONCE", "1")
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=100)
    summary = pipeline(tmp_path, data, stages(), max_retries=1).run()
    assert marker.exists()
    assert summary.status == "done" and summary.rows == 300
    out = output(tmp_path)
    assert out["id"].to_pylist() == list(range(300))
    np.testing.assert_allclose(out["y"].to_numpy(), (np.arange(300) % 7) * 2)


def test_an_actors_slow_constructor_does_not_count_against_its_first_calls_timeout(tmp_path, monkeypatch):
    # the limit of a call is 3 s + 1 s; the constructor takes 5 s: counted from their submission
    # (before the actor is up), the first calls would be past their deadline
    monkeypatch.setattr(streaming, "POOL_GRACE", 1.0)
    monkeypatch.setenv("SLOW_START", "5")
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=100)
    plan = stages(timeout="3s")
    plan[1]["fn"] = "tests.dataflow.test_stage_timeout:SlowStart"
    summary = pipeline(tmp_path, data, plan, max_retries=0).run()
    assert summary.status == "done" and summary.rows == 300
    assert output(tmp_path)["id"].to_pylist() == list(range(300))


def test_calls_sent_to_an_actor_restarting_after_a_crash_wait_for_its_constructor(tmp_path, monkeypatch):
    # The actor dies on shard 1 and core restarts it (5 s constructor). The retried call and
    # those sent meanwhile wait for it: counted from their sending, they would pass their 3+1 s
    # and be failed (max_retries is spent by the crash).
    monkeypatch.setattr(streaming, "POOL_GRACE", 1.0)
    monkeypatch.setenv("SLOW_START", "5")
    monkeypatch.setenv("DIE_SHARD", "1")
    monkeypatch.setenv("DIE_MARKER", str(tmp_path / "died"))
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=100)
    plan = stages(timeout="3s")
    plan[1]["fn"] = "tests.dataflow.test_stage_timeout:SlowStartDiesOnce"
    summary = pipeline(tmp_path, data, plan, max_retries=1).run()
    assert (tmp_path / "died").exists()
    assert summary.status == "done" and summary.rows == 400
    assert output(tmp_path)["id"].to_pylist() == list(range(400))
