"""`dataflow run --trace PATH`: the run's task timeline (core.timeline) as a Chrome trace file,
written when the session ends, also after Ctrl-C (exit 130), and its path printed."""

from __future__ import annotations

import json
import re

import jsonschema

from tests.core.test_timeline import TRACE_SCHEMA
from tests.e2e.test_cli import NYC, dataflow, interrupt_after_first_commit, slow, small, start


def _printed_trace(stderr: str) -> str:
    found = re.findall(r"^trace: (.+)$", stderr, re.M)
    assert len(found) == 1, stderr
    return found[0]


def _shard_bars(path) -> list[dict]:
    trace = json.loads(open(path, encoding="utf-8").read())
    jsonschema.validate(trace, TRACE_SCHEMA)
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == "run_shard"]


def test_trace_has_one_bar_per_shard_task(tmp_path):
    target = tmp_path / "traces" / "run.json"
    r = dataflow("run", NYC, *small(tmp_path, shards=4), "--json", "--trace", str(target), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shards_done"] == 4          # stdout stays the JSON result
    assert _printed_trace(r.stderr) == str(target)
    bars = _shard_bars(target)
    assert len(bars) == 4 and {b["args"]["outcome"] for b in bars} == {"ok"}
    assert len({b["args"]["task_id"] for b in bars}) == 4
    lanes = {e["pid"]: e["args"]["name"] for e in json.loads(target.read_text())["traceEvents"]
             if e["name"] == "process_name"}
    assert all(lanes[b["pid"]] == f"worker {b['pid']}" for b in bars)
    assert [p.name for p in target.parent.iterdir()] == ["run.json"]   # no temporary left


def test_an_interrupted_run_still_writes_its_trace(tmp_path):
    target = tmp_path / "trace.json"
    proc = start(["run", NYC, *slow(tmp_path, "out", 0.15), "--trace", str(target)], tmp_path)
    err = interrupt_after_first_commit(proc, tmp_path / "out")
    assert proc.returncode == 130, err
    assert _printed_trace(err) == str(target)
    bars = _shard_bars(target)
    done = [b for b in bars if b["args"]["outcome"] == "ok"]
    assert 1 <= len(done) <= len(bars) <= 10


def test_the_inline_backend_says_no_trace_was_written(tmp_path):
    target = tmp_path / "trace.json"
    r = dataflow("run", NYC, *small(tmp_path, shards=2), "--set", "runtime.backend=inline",
                 "--trace", str(target), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"dataflow: no trace written to {target}" in r.stderr and not target.exists()
