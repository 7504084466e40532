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
from array import array
from collections import deque
from types import SimpleNamespace

import jsonschema
import pytest

import core
from core._private.local import messages as M
from core._private.local import protocol as P
from core._private.local.timeline_ring import NAMES_SIZE, Ring, TraceWriter
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
                     proc=SimpleNamespace(pid=99), ring=None)
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


def _task_message(n: int) -> dict:
    return {"task_id": _tid(n), "kind": "task", "fn_id": b"f" * 16, "name": "g", "method": None,
            "args": ("inline", b"x" * 30, [(_tid(90), ("shared", "seg", 4096))]), "return_ids": [_tid(n)],
            "num_returns": 1, "streaming": False, "env": None}


def test_a_worker_writes_its_endeds_to_its_ring_after_the_frame_and_sends_errors_in_it():
    mine, drivers = socket.socketpair()
    fd, ring = Ring.create(8)
    os.close(fd)
    try:
        client = WorkerClient(mine, 5, 1024)
        client.trace = TraceWriter(ring)
        client.done(_task_message(1), [(("inline", b"r" * 8), [])], None, 2.0, 0.25)    # off: nothing kept
        client.trace.on = True             # a recording session's Tasks message says so
        error = TaskError("g", ValueError("bad input\nmore"), "tb")
        client.done(_task_message(2), [(("inline", b"r" * 8), [])], None, 2.0, 0.25)
        client.done(_task_message(3), None, error, 2.25, 0.5)
        assert ring.read() == (0, b"", []) and ring.caught_up()      # nothing made before the frame
        client.flush()
        batch = P.recv_blocking(drivers, P.FrameReader())[0]
        # the arguments: 30 bytes inline and a 4096-byte ref; the result: 8 bytes, or none
        assert ring.caught_up() and ring.read() == (0, TL.ENDED.pack(_tid(2), 2.0, 0.25, 30 + 4096, 8, 0, 0)
                                                    + TL.ENDED.pack(_tid(3), 2.25, 0.5, 30 + 4096, -1, 0, 0), ["g"])
        assert [m.kind for m in batch.messages] == [M.ENDED, M.DONE, M.DONE, M.DONE]
        assert batch.messages[0] == M.Ended(M.ENDED, [(1, "ValueError: bad input")])
        client.done(dict(_task_message(4), name="h"), [(("inline", b"r" * 8), [])], None, 3.0, 0.25)
        client.flush()                                                # no error: no text
        assert P.recv_blocking(drivers, P.FrameReader())[0].kind == M.DONE
        first, packed, names = ring.read()
        assert names == ["g", "h"] and TL.ENDED.unpack(packed[-TL.ENDED.size:])[::6] == (_tid(4), 1)
    finally:
        mine.close()
        drivers.close()
        ring.close()


def _values(n: int, began: float, seconds: float = 0.1, arg_bytes: int = 30, result_bytes: int = -1, kind: int = 0,
            name: int = 0) -> list:
    """An ENDED's values: task number `n`, what its worker measured."""
    return [_tid(n), began, seconds, arg_bytes, result_bytes, kind, name]


def _ring_worker(wid: int, names: list[str], capacity: int = 100) -> SimpleNamespace:
    fd, ring = Ring.create(capacity)
    os.close(fd)
    for name in names:
        ring.add_name(name)
    return SimpleNamespace(wid=wid, ring=ring)


def _sent(n: int, t_submit: float | None = 0.5, submitter: int | None = None) -> SimpleNamespace:
    """A task as the recorder reads it when sent (an actor's constructor has no submit)."""
    task = SimpleNamespace(task_id=_tid(n))
    if t_submit is not None:
        task.t_submit, task.submitter = t_submit, submitter
    return task


def test_a_ring_keeps_its_last_endeds_in_order_across_the_wrap():
    fd, ring = Ring.create(4)
    os.close(fd)
    try:
        ring.write(0, sum((_values(i, float(i)) for i in range(3)), []))
        assert ring.read() == (0, b"".join(TL.ENDED.pack(*_values(i, float(i))) for i in range(3)), [])
        ring.write(3, sum((_values(i, float(i)) for i in range(3, 6)), []))      # wraps: 0 and 1 gone
        first, packed, _ = ring.read()
        assert first == 2 and [e[1] for e in TL.ENDED.iter_unpack(packed)] == [2.0, 3.0, 4.0, 5.0]
        ring.write(6, sum((_values(i, float(i)) for i in range(6, 15)), []))     # more than it holds
        first, packed, _ = ring.read()
        assert first == 11 and [e[1] for e in TL.ENDED.iter_unpack(packed)] == [11.0, 12.0, 13.0, 14.0]
        # a writer that has begun its next batch (15, 16) is overwriting 11 and 12: not read
        ring.buf[8:16] = (17).to_bytes(8, "little")
        first, packed, _ = ring.read()
        assert first == 13 and [e[1] for e in TL.ENDED.iter_unpack(packed)] == [13.0, 14.0]
        ring.promise(17)
        assert not ring.caught_up()
        ring.add_name("f\0g é")                                      # a NUL would end it: read as a space
        ring.add_name("x" * NAMES_SIZE)                               # does not fit: left out, read as "?"
        assert ring.read()[2] == ["f g é"]
    finally:
        ring.close()


def test_the_recorder_joins_the_rings_endeds_with_its_sendings_by_time():
    rec = TL.Recorder(max_records=100)
    w7, w8, w9 = _ring_worker(7, ["f1", "f2"]), _ring_worker(8, ["f1"]), _ring_worker(9, ["Actor", "Actor.m"])
    rec.workers.update({7: w7, 8: w8, 9: w9})
    rec.sent(7, 1.0, [_sent(1)])
    rec.sent(7, 1.5, [_sent(2)])
    rec.add_errors(7, [(0, "ValueError: no")])
    w7.ring.write(0, _values(1, 1.1, 0.5) + _values(2, 1.6, 0.1, name=1, result_bytes=8))
    rec.add((TL.RETRY, 1.7, _tid(1)))
    rec.sent(8, 2.0, [_sent(1, submitter=3)])                         # submitted by worker 3
    w8.ring.write(0, _values(1, 2.1, 0.2, result_bytes=8))
    # an actor's constructor (not submitted), then a call on it
    rec.sent(9, 4.0, [_sent(4, t_submit=None)])
    rec.sent(9, 4.5, [_sent(5, t_submit=4.1)])
    w9.ring.write(0, _values(4, 4.2, 0.3, arg_bytes=0, kind=1) + _values(5, 4.6, 0.1, 8, 8, kind=2, name=1))
    expected = [
        (TL.END, 1.1, _tid(1), "f1", "task", 7, 0.5, None, 1.0, 30, 0.5, "ValueError: no", None),
        (TL.END, 1.6, _tid(2), "f2", "task", 7, 0.5, None, 1.5, 30, 0.1, None, 8),
        (TL.RETRY, 1.7, _tid(1)),
        (TL.END, 2.1, _tid(1), "f1", "task", 8, 0.5, 3, 2.0, 30, 0.2, None, 8),
        (TL.END, 4.2, _tid(4), "Actor", "actor_create", 9, None, None, 4.0, 0, 0.3, None, None),
        (TL.END, 4.6, _tid(5), "Actor.m", "actor_method", 9, 4.1, None, 4.5, 8, 0.1, None, 8)]
    assert rec.records() == expected
    rec.retire(w7)                                    # its worker died: read once, the ring closed
    assert w7.ring is None and 7 not in rec.sendings and rec.records() == expected
    rec.close([])
    assert w8.ring is None and w9.ring is None


def test_a_task_sent_twice_to_one_worker_has_each_attempt_joined_with_its_own_sending():
    sending = TL.sendings_by_task([(2, 1.0, _tid(1) + _tid(2), array("d", [0.5, float("nan")]).tobytes(), None),
                                   (1, 3.0, _tid(1), array("d", [0.5]).tobytes(), [4])])
    assert sending[_tid(2)] == (1.0, None, None)                       # NaN: no submit
    assert [TL.sending_of(sending, _tid(1), began) for began in (1.2, 3.1)] == [(1.0, 0.5, None), (3.0, 0.5, 4)]
    assert TL.sending_of(sending, _tid(9), 1.0) == (None, None, None)  # no longer kept


def test_the_recorder_is_bounded_and_keeps_no_object_per_task():
    rec = TL.Recorder(max_records=5)
    workers = [_ring_worker(wid, ["f"], capacity=5) for wid in range(1, 5)]
    for w in workers:
        rec.workers[w.wid] = w
    for i in range(24):                               # 6 on each worker, each ring holds 5
        rec.sent(i % 4 + 1, i - 0.5, [_sent(i)])
        workers[i % 4].ring.write(i // 4, _values(i, float(i)))
    assert all(rec.sent_count[w.wid] == 5 for w in workers)       # the sendings of the last 5 each
    rec.add((TL.RETRY, 23.5, _tid(23)))
    assert [e[1] for e in rec.records()] == [20.0, 21.0, 22.0, 23.0, 23.5]    # the last 5 by time
    assert [e[8] for e in rec.records()[:4]] == [19.5, 20.5, 21.5, 22.5]     # each with its sending
    for w in workers[:3]:                             # dead: the blobs of the dead hold 5, the last
        rec.retire(w)
    assert [(n, wid) for n, wid, *_ in rec.retired] == [(5, 3)] and rec.retired_count == 5
    assert [e[1] for e in rec.records()] == [18.0, 19.0, 22.0, 23.0, 23.5]    # wid 3's and 4's
    # what the driver keeps of a task is bytes: no task's id, float or tuple (kept as objects,
    # they slowed the driver for the rest of the session)
    gc.collect()
    kept = [e[3] for e in rec.retired] + [b for q in rec.sendings.values() for e in q for b in e[2:4]]
    assert all(type(b) is bytes and not gc.is_tracked(b) for b in kept)
    assert all(e[4] is None for q in rec.sendings.values() for e in q)       # all sent by the driver
    assert list(rec.own) == [(TL.RETRY, 23.5, _tid(23))]
    rec.close([])


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
    # what it ran before stays: its ring was read when it died
    assert [(bars[n]["pid"], bars[n]["args"]["outcome"]) for n in ("Fragile", "Fragile.pid")] == [(pid, "ok")] * 2

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
    assert len([e for e in core.timeline() if e["ph"] == "X"]) == 5


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
