"""`Pipeline.run(trace=PATH)`: the run's task timeline written as its session ends, its path kept
in `last_trace`; a session the run did not start is traced too and left running."""

from __future__ import annotations

import json

import core
from dataflow import Pipeline
from tests.e2e.test_cli import NYC, small


def _bars(path) -> list[dict]:
    return [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X" and e["name"] == "run_shard"]


def test_run_with_trace_keeps_its_path(tmp_path):
    target = tmp_path / "trace.json"
    p = Pipeline.from_yaml(NYC, small(tmp_path, shards=3)[1::2])
    assert p.run(trace=target).shards_done == 3
    assert p.last_trace == target and len(_bars(target)) == 3
    assert not core.is_initialized()                    # the run's own session is shut down


def test_run_in_a_running_session_traces_it_and_leaves_it_running(tmp_path):
    core.init(num_cpus=2, timeline=True)
    try:
        target = tmp_path / "trace.json"
        p = Pipeline.from_yaml(NYC, small(tmp_path, shards=2)[1::2])
        p.run(trace=target)
        assert core.is_initialized() and len(_bars(target)) == 2
    finally:
        core.shutdown()
