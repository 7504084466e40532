"""core.timeline(): the session's task events as a Chrome trace (core/_private/tasks/timeline.py).

First the conversion and the recording decisions, with no process: recorded tuples in, trace
events out (lanes, bars lined up per worker, retries and deaths marked). Then real sessions:
tasks, an actor, a retried error and a worker's death, written to a file that is checked
against the trace-event schema below (what Perfetto and chrome://tracing read).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import socket
import time
from collections import deque
from types import SimpleNamespace

import jsonschema
import pytest

import core
from core._private.local import messages as M
from core._private.local import protocol as P
from core._private.local.worker import WorkerClient
from core._private.runtime import current
from core._private.tasks import board as B
from core._private.tasks import timeline as TL
from core._private.tasks.resources import ResourceLedger
from core._private.tasks.state import Task
from core.exceptions import CoreError, TaskError, WorkerCrashedError

_NUMBER = {"type": "number"}
_EVENT_ARGS = {"type": "object"}
# Chrome's trace-event format, the parts we write: "M" metadata naming lanes, "X" complete
# events (one per task attempt), "i" instant events (submits). Times in microseconds.
TRACE_SCHEMA = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "traceEvents": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "ph", "pid", "tid"],
                "properties": {"name": {"type": "string"}, "ph": {"enum": ["M", "X", "i"]},
                               "pid": {"type": "integer"}, "tid": {"type": "integer"}},
                "allOf": [
                    {"if": {"properties": {"ph": {"const": "X"}}},
                     "then": {"required": ["ts", "dur", "cat", "args"],
                              "properties": {
                                  "ts": {"type": "number", "minimum": 0}, "dur": {"type": "number", "minimum": 0},
                                  "args": {"type": "object",
                                           "required": ["task_id", "function", "kind", "outcome", "attempt",
                                                        "sent_us"],
                                           "properties": {
                                               "task_id": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
                                               "function": {"type": "string"},
                                               "kind": {"enum": ["task", "actor_create", "actor_method"]},
                                               "outcome": {"enum": ["ok", "error", "retried", "worker died",
                                                                    "worker died, retried", "running"]},
                                               "attempt": {"type": "integer", "minimum": 1},
                                               "arg_bytes": {"type": "integer", "minimum": 0},
                                               "sent_us": _NUMBER, "run_s": _NUMBER,
                                               "result_bytes": {"type": "integer", "minimum": 0},
                                               "error": {"type": "string"}}}}}},
                    {"if": {"properties": {"ph": {"const": "i"}}},
                     "then": {"required": ["ts", "s", "args"],
                              "properties": {"ts": {"type": "number", "minimum": 0}, "s": {"enum": ["t", "p", "g"]},
                                             "args": _EVENT_ARGS}}},
                    {"if": {"properties": {"ph": {"const": "M"}}},
                     "then": {"required": ["args"],
                              "properties": {"name": {"enum": ["process_name", "process_sort_index"]}}}},
                ],
            },
        },
    },
}


class _Worker(SimpleNamespace):
    """The fields of a WorkerProc the decisions read (hashable, as a worker is)."""

    __hash__ = object.__hash__


def _tid(n: int) -> bytes:
    return n.to_bytes(20, "big")


# ── the conversion, pure ──────────────────────────────────────────────────────────────────────
def _end(t, task_id, name, wid, sent, seconds, error=None, out=None, arg_bytes=40, submit=None, submitter=None,
         kind="task"):
    """An END record (timeline.py: the attempt's fields, then seconds, error, result bytes; `t`:
    when the call started, as its worker said)."""
    return (TL.END, t, task_id, name, kind, wid, submit, submitter, sent, arg_bytes, seconds, error, out)


def test_an_ended_attempts_bar_is_where_its_worker_says_it_ran():
    t0 = 100.0   # two tasks sent in one batch: the worker ran one, then the other
    records = [_end(100.010, _tid(1), "f", 7, 100.010, 0.002, out=24, submit=100.001),
               _end(100.012, _tid(2), "f", 7, 100.010, 0.003, submit=100.002)]
    out = TL.chrome_events(records, {7: TL.Lane(4242, "worker 4242")}, driver_pid=1, t0=t0, now=101.0)
    bars = [e for e in out if e["ph"] == "X"]
    assert [(b["pid"], b["ts"], b["dur"]) for b in bars] == [(4242, 10000.0, 2000.0), (4242, 12000.0, 3000.0)]
    assert bars[0]["args"] == {"task_id": _tid(1).hex(), "function": "f", "kind": "task", "outcome": "ok",
                               "attempt": 1, "arg_bytes": 40, "sent_us": 10000.0, "run_s": 0.002,
                               "result_bytes": 24}
    assert "result_bytes" not in bars[1]["args"]          # not known: left out
    names = {e["pid"]: e["args"]["name"] for e in out if e["name"] == "process_name"}
    assert names == {1: "driver 1", 4242: "worker 4242"}
    submits = [e for e in out if e["ph"] == "i"]
    assert [(s["pid"], s["ts"], s["args"]["task_id"]) for s in submits] == [(1, 1000.0, _tid(1).hex()),
                                                                          (1, 2000.0, _tid(2).hex())]


def test_an_attempt_with_no_done_starts_when_sent_or_after_the_bar_before_it():
    # worker 0 ran one task 1.0-1.5 s; the next one, sent at 1.2 s (pipelined), was running at
    # 1.6 s when its worker died: it started when the first ended. None knows its arguments' bytes.
    records = [_end(1.0, _tid(1), "f", 0, 1.0, 0.5),
               (TL.DIED, 1.6, _tid(2), "g", "task", 0, 1.1, None, 1.2, None, "fail")]
    bars = [e for e in TL.chrome_events(records, {}, 1, 0.0, 2.0) if e["ph"] == "X"]
    assert [(b["ts"], b["dur"]) for b in bars] == [(1e6, pytest.approx(5e5)), (1.5e6, pytest.approx(1e5))]
    assert "arg_bytes" not in bars[1]["args"] and bars[1]["args"]["sent_us"] == 1.2e6


def test_retries_deaths_and_running_tasks_are_marked():
    lanes = {0: TL.Lane(10, "worker 10"), 1: TL.Lane(11, "worker 11"), 2: TL.Lane(12, "actor C 12")}
    records = [
        _end(1.0, _tid(1), "flaky", 0, 1.0, 0.5, "ValueError: no", arg_bytes=8, submit=0.9),
        (TL.RETRY, 1.5, _tid(1)),
        _end(1.6, _tid(1), "flaky", 1, 1.6, 0.1, out=8, arg_bytes=8, submit=0.9),
        (TL.DIED, 2.5, _tid(2), "boom", "task", 1, 1.9, None, 2.0, 8, "retry"),
        (TL.DIED, 2.7, _tid(2), "boom", "task", 0, 1.9, None, 2.6, 8, "fail"),
        (TL.START, 3.0, _tid(3), "C.m", "actor_method", 2, 2.9, None, 3.0, 8),      # still running
        (TL.SUBMIT, 3.5, _tid(4), "g", None),                                       # not sent yet
    ]
    out = TL.chrome_events(records, lanes, 1, 0.0, now=4.0)
    bars = [e for e in out if e["ph"] == "X"]
    got = [(b["name"], b["pid"], b["args"]["attempt"], b["args"]["outcome"]) for b in bars]
    assert got == [("flaky", 10, 1, "retried"), ("flaky", 11, 2, "ok"), ("boom", 11, 1, "worker died, retried"),
                   ("boom", 10, 2, "worker died"), ("C.m", 12, 1, "running")]
    assert bars[0]["args"]["error"] == "ValueError: no"
    assert bars[-1]["dur"] == pytest.approx(1e6)      # still running: up to the call
    # one submit mark per task, not per attempt; one for the task not sent yet
    assert [(e["name"], e["ts"]) for e in out if e["ph"] == "i"] == [
        ("submit flaky", 0.9e6), ("submit boom", 1.9e6), ("submit C.m", 2.9e6), ("submit g", 3.5e6)]


def test_a_task_taken_back_before_it_ran_has_one_bar_where_it_ran():
    # Sent to worker 0 behind a busy task, reclaimed, then sent again to worker 1: the carrier's
    # second sending replaced the first on the task, so its END has one bar, attempt 1.
    records = [_end(2.0, _tid(1), "f", 1, 2.0, 0.1, arg_bytes=0)]
    bars = [e for e in TL.chrome_events(records, {}, 1, 0.0, 3.0) if e["ph"] == "X"]
    assert [(b["pid"], b["args"]["attempt"], b["args"]["sent_us"]) for b in bars] == [(-2, 1, 2e6)]  # worker #1


def test_the_decisions_note_the_submit_and_record_retries_and_deaths():
    board = B.Board(ResourceLedger({"CPU": 2.0}), {}, pool_size=2, max_workers=8)
    off = Task(_tid(1), "task", "f", b"fn", ("inline", b""), [], [], [_tid(1)])
    B.register(board, off)
    assert board.timeline is None and not hasattr(off, "t_submit")   # off: nothing kept anywhere
    board.timeline = rec = TL.Recorder(max_records=100)
    worker = _Worker(wid=3, actor_id=None, inflight=deque(), held_need={}, holding=False, blocked=0,
                     proc=SimpleNamespace(pid=99))
    task = Task(_tid(2), "task", "g", b"fn", ("inline", b""), [], [], [_tid(2)], max_retries=1,
                retry_exceptions=True)
    B.register(board, task)
    assert task.t_submit > 0 and task.submitter is None and rec.records() == []   # noted on the task
    B.enqueue(board, task)
    board.queue.clear()
    task.state = "running"
    task.t_sent = task.t_submit + 0.001                             # what the carrier notes as it sends
    worker.inflight.append(task)
    B.finished(board, worker, task.task_id, TaskError("g", ValueError("bad"), "tb"), 0.25)
    assert rec.records() == []                                      # its ENDED is its worker's to keep
    B.failed_run(board, task, TaskError("g", ValueError("bad"), "tb"), True)
    board.queue.clear()
    task.state = "running"
    worker.inflight.append(task)
    B.worker_died(board, worker, "signal 9", closing=True)
    records = rec.records()
    assert [e[0] for e in records] == [TL.RETRY, TL.DIED]
    attempt = (task.task_id, "g", "task", 3, task.t_submit, None, task.t_sent)
    assert records[1][2:10] == attempt + (None,) and records[1][10] == "fail"   # bytes: the worker's to say


def _task_message(n: int, **timeline) -> dict:
    return {"task_id": _tid(n), "kind": "task", "fn_id": b"f" * 16, "name": "g", "method": None,
            "args": ("inline", b"x" * 30, [(_tid(90), ("shared", "seg", 4096))]), "return_ids": [_tid(n)],
            "num_returns": 1, "streaming": False, "env": None, **timeline}


def test_a_worker_sends_its_endeds_ahead_of_its_dones_in_the_same_frame():
    mine, drivers = socket.socketpair()
    try:
        client = WorkerClient(mine, 5, 1024)
        client.done(_task_message(1), [(("inline", b"r" * 8), [])], None, 2.0, 0.25)    # off: nothing kept
        # what a recording session's messages say: the submit (carrier) and when sent (Tasks)
        submitted = {"t_submit": 1.5, "submitter": None, "t_sent": 1.75}
        error = TaskError("g", ValueError("bad input\nmore"), "tb")
        client.done(_task_message(2, **submitted), [(("inline", b"r" * 8), [])], None, 2.0, 0.25)
        client.done(_task_message(3, **submitted), None, error, 2.25, 0.5)
        client.flush()
        batch = P.recv_blocking(drivers, P.FrameReader())[0]
    finally:
        mine.close()
        drivers.close()
    assert [m.kind for m in batch.messages] == [M.ENDED, M.DONE, M.DONE, M.DONE]
    ended = batch.messages[0]
    assert list(TL.ENDED.iter_unpack(ended.packed)) == [(_tid(2), 2.0, 0.25, 30 + 4096, 8, 1.5, 1.75, -1, 0),
                                                       (_tid(3), 2.25, 0.5, 30 + 4096, -1, 1.5, 1.75, -1, 0)]
    assert ended.names == ["g", "g"] and ended.errors == [(1, "ValueError: bad input")]
    assert not client.ended and not client.ended_names and not client.ended_errors


def _packed(*endeds: tuple) -> bytes:
    """ENDEDs (task number, began, seconds, arg bytes, result bytes, t_submit, t_sent,
    submitter, kind) as a worker packs them; the last four default to (0.5, began - 0.1, -1, 0)."""
    out = []
    for n, began, *rest in endeds:
        rest += [0.5, began - 0.1, -1, 0][len(rest) - 3:]
        out.append(TL.ENDED.pack(_tid(n), began, *rest))
    return b"".join(out)


def test_the_recorder_keeps_endeds_as_they_came_and_reads_them_into_end_records():
    rec = TL.Recorder(max_records=100)
    rec.add_ended(7, _packed((1, 1.1, 0.5, 30, -1), (2, 1.6, 0.1, 30, 8)), ["f1", "f2"], [(0, "ValueError: no")])
    rec.add((TL.RETRY, 1.7, _tid(1)))
    rec.add_ended(8, _packed((1, 2.1, 0.2, 30, 8, 0.5, 2.0, 3, 0)), ["f1"], [])      # submitted by worker 3
    # an actor's constructor (no submit: NaN, -1), then a call on it
    rec.add_ended(9, _packed((4, 4.2, 0.3, 0, -1, math.nan, 4.0, -1, 1), (5, 4.6, 0.1, 8, 8, 4.1, 4.5, -1, 2)),
                  ["Actor", "Actor.m"], [])
    assert rec.records() == [
        (TL.END, 1.1, _tid(1), "f1", "task", 7, 0.5, None, 1.0, 30, 0.5, "ValueError: no", None),
        (TL.END, 1.6, _tid(2), "f2", "task", 7, 0.5, None, 1.5, 30, 0.1, None, 8),
        (TL.RETRY, 1.7, _tid(1)),
        (TL.END, 2.1, _tid(1), "f1", "task", 8, 0.5, 3, 2.0, 30, 0.2, None, 8),
        (TL.END, 4.2, _tid(4), "Actor", "actor_create", 9, None, None, 4.0, 0, 0.3, None, None),
        (TL.END, 4.6, _tid(5), "Actor.m", "actor_method", 9, 4.1, None, 4.5, 8, 0.1, None, 8)]


def test_the_recorder_is_bounded_and_keeps_no_object_per_task():
    rec = TL.Recorder(max_records=5)                    # a blob: 5 records

    def ended(first, n):
        rec.add_ended(7, _packed(*[(i, i + 0.5, 0.1, 0, -1) for i in range(first, first + n)]), ["f"] * n, [])

    ended(0, 3)
    rec.add((TL.RETRY, 3.0, _tid(2)))
    assert rec.fresh_count == 4 and not rec.entries
    ended(3, 2)                                         # 6 records: sealed in one blob
    assert [n for n, _ in rec.entries] == [6] and rec.count == 6 and not rec.fresh
    ended(5, 2)
    assert [e[1] for e in rec.records()] == [3.0, 3.5, 4.5, 5.5, 6.5]
    ended(7, 4)                                         # a second blob holds enough: the first goes
    assert [n for n, _ in rec.entries] == [6] and rec.count == 6
    assert [e[1] for e in rec.records()] == [6.5, 7.5, 8.5, 9.5, 10.5]
    ended(11, 3)                                        # not sealed yet: both are read
    assert [e[1] for e in rec.records()] == [9.5, 10.5, 11.5, 12.5, 13.5]

    rec = TL.Recorder(max_records=5 * TL.CHUNK // 2)
    for i in range(0, 10 * TL.CHUNK, 64):
        ended(i, 64)
    kept = rec.records()
    assert len(kept) == rec.max_records and kept[-1][2] == _tid(10 * TL.CHUNK - 1)
    assert rec.count <= rec.max_records + TL.CHUNK + 64
    # what stays after a seal is one blob of bytes: no task's id, float or tuple outlives its
    # chunk (kept as objects, they slowed the driver for the rest of the session)
    assert all(type(b) is bytes for _, b in rec.entries) and rec.fresh_count < TL.CHUNK
    gc.collect()
    assert not any(gc.is_tracked(e) for e in rec.entries)


# ── real sessions ─────────────────────────────────────────────────────────────────────────────
@core.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return os.getpid()


def test_a_sessions_trace_file_has_one_bar_per_attempt_on_its_workers_lane(make_session, tmp_path):
    make_session(num_cpus=2, timeline=True)
    marker = tmp_path / "failed-once"

    @core.remote
    def square(x):
        return x * x

    @core.remote(max_retries=1, retry_exceptions=True)
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            raise ValueError("first attempt fails")
        return os.getpid()

    @core.remote(max_retries=1)
    def dies():
        os._exit(3)

    big = core.put(bytes(300_000))

    @core.remote
    def size(blob):
        return len(blob)

    assert core.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]
    assert core.get(size.remote(big)) == 300_000
    flaky_pid = core.get(flaky.remote(str(marker)))
    counter = Counter.remote()
    actor_pid = core.get([counter.add.remote(1) for _ in range(3)])[0]
    with pytest.raises(WorkerCrashedError):
        core.get(dies.remote())

    path = tmp_path / "trace.json"
    events = core.timeline(str(path))
    on_disk = json.loads(path.read_text())
    jsonschema.validate(on_disk, TRACE_SCHEMA)
    assert on_disk["traceEvents"] == events
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".trace-")]   # the temp file renamed

    lanes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    bars = [e for e in events if e["ph"] == "X"]
    by_fn: dict[str, list] = {}
    for b in bars:
        by_fn.setdefault(b["name"], []).append(b)
        assert lanes[b["pid"]] in (f"worker {b['pid']}", f"actor Counter {b['pid']}")   # a lane per worker pid
        assert b["ts"] >= b["args"]["sent_us"] >= 0 and b["dur"] >= 0
    assert len(by_fn["square"]) == 20 and {b["args"]["outcome"] for b in by_fn["square"]} == {"ok"}
    assert len({b["args"]["task_id"] for b in by_fn["square"]}) == 20
    assert by_fn["size"][0]["args"]["arg_bytes"] >= 300_000      # the stored argument counted
    assert [(b["args"]["attempt"], b["args"]["outcome"]) for b in by_fn["flaky"]] == [(1, "retried"), (2, "ok")]
    assert "first attempt fails" in by_fn["flaky"][0]["args"]["error"]
    assert lanes[by_fn["flaky"][1]["pid"]] == f"worker {flaky_pid}"
    assert [b["args"]["outcome"] for b in by_fn["dies"]] == ["worker died, retried", "worker died"]
    assert [b["pid"] for b in by_fn["Counter"] + by_fn["Counter.add"]] == [actor_pid] * 4
    assert lanes[actor_pid] == f"actor Counter {actor_pid}"
    for lane in {b["pid"] for b in bars}:          # one task at a time per worker: no overlap
        spans = sorted((b["ts"], b["ts"] + b["dur"]) for b in bars if b["pid"] == lane)
        assert all(a_end <= b_start + 1e-3 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    submits = [e for e in events if e["ph"] == "i"]
    assert {e["args"]["task_id"] for e in submits} >= {b["args"]["task_id"] for b in by_fn["square"]}
    assert {e["pid"] for e in submits} == {os.getpid()} and lanes[os.getpid()] == f"driver {os.getpid()}"


def test_submits_inside_a_task_are_marked_on_that_workers_lane(make_session):
    make_session(num_cpus=2, timeline=True)
    @core.remote
    def child(x):
        return x + 1

    @core.remote
    def parent():
        return os.getpid(), core.get([child.remote(i) for i in range(3)])

    pid, values = core.get(parent.remote())
    assert values == [1, 2, 3]
    submits = [e for e in core.timeline() if e["ph"] == "i" and e["name"] == "submit child"]
    assert [e["pid"] for e in submits] == [pid] * 3


def test_a_running_task_is_a_running_bar_and_a_waiting_one_a_submit_mark(make_session, tmp_path):
    make_session(num_cpus=1, timeline=True)
    gate = tmp_path / "gate"

    @core.remote
    def held(path):
        for _ in range(3000):              # until the test opens the gate (30 s at most)
            if os.path.exists(path):
                return 1
            time.sleep(0.01)
        return 0

    @core.remote
    def after(x):
        return x + 1

    first = held.remote(str(gate))
    second = after.remote(first)           # waits for its argument: submitted, never sent yet
    for _ in range(500):                   # until `held` is on its worker
        running = [e for e in core.timeline() if e["ph"] == "X"]
        if running:
            break
        time.sleep(0.01)
    events = core.timeline()
    assert [(e["name"], e["args"]["outcome"]) for e in events if e["ph"] == "X"] == [("held", "running")]
    assert sorted(e["name"] for e in events if e["ph"] == "i") == ["submit after", "submit held"]
    gate.touch()
    assert core.get(second) == 2
    events = core.timeline()
    assert [(e["name"], e["args"]["outcome"]) for e in events if e["ph"] == "X"] == [("held", "ok"), ("after", "ok")]
    assert sorted(e["name"] for e in events if e["ph"] == "i") == ["submit after", "submit held"]   # once each



def test_an_actor_call_cut_by_its_actors_death_is_a_bar_marked_so(make_session):
    from core.exceptions import ActorDiedError

    make_session(num_cpus=1, timeline=True)

    @core.remote
    class Fragile:
        def pid(self):
            return os.getpid()

        def die(self):
            os._exit(1)

    a = Fragile.remote()
    pid = core.get(a.pid.remote())
    with pytest.raises(ActorDiedError):
        core.get(a.die.remote(), timeout=60)
    bars = {e["name"]: e for e in core.timeline() if e["ph"] == "X"}
    assert bars["Fragile.die"]["pid"] == pid and bars["Fragile.die"]["args"]["outcome"] == "worker died"

def test_timeline_off_records_nothing_and_says_how_to_turn_it_on(make_session):
    make_session(num_cpus=1)                # off by default
    assert current().board.timeline is None

    @core.remote
    def f():
        return 1

    assert core.get(f.remote()) == 1
    with pytest.raises(CoreError, match=r"off by default.*core\.init\(timeline=True\)"):
        core.timeline()


def test_a_number_bounds_the_events_kept(make_session):
    make_session(num_cpus=1, timeline=5)

    @core.remote
    def f():
        return 1

    core.get([f.remote() for _ in range(10)])
    assert len(current().board.timeline.records()) == 5


@pytest.mark.parametrize("bad", [0, -1, "yes", 2.5])
def test_a_bad_timeline_option_is_refused(bad):
    with pytest.raises(CoreError, match="timeline must be True, False or a number"):
        core.init(timeline=bad)
    assert not core.is_initialized()


def test_timeline_inside_a_task_is_the_drivers(session):
    @core.remote(max_retries=0)
    def asks():
        core.timeline()

    with pytest.raises(TaskError, match=r"core\.timeline\(\) belongs to the driver"):
        core.get(asks.remote())


def test_without_a_session_timeline_does_not_start_one():
    assert not core.is_initialized()
    with pytest.raises(CoreError, match=r"call core\.init\(\) first"):
        core.timeline()
    assert not core.is_initialized()


@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (the ray extra)")
def test_on_ray_the_trace_is_rays_own_passed_through(tmp_path, capfd):
    core.init(address="local-ray", num_cpus=2)
    try:
        @core.remote
        def square(x):
            return x * x

        assert core.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
        path = tmp_path / "ray.json"
        events = core.timeline(str(path))
    finally:
        core.shutdown()
    assert json.loads(path.read_text())["traceEvents"] == events
    assert any(e["ph"] == "X" and e["name"] == "task:execute" for e in events)
    assert "In the near future" not in capfd.readouterr().err
