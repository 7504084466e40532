"""The session's task timeline: what the engine records as tasks run, and its Chrome trace.

    board.register ─── task.t_submit, task.submitter     noted on the Task (slot stores)
    carrier.dispatch ─ task.t_sent; Recorder.sent: the batch's SENDING (when, to which worker,
                       its tasks' ids and submits: bytes, one entry a batch), kept per worker
    worker ─────────── an ENDED per task, with what only it knows (when the call started, how
                       long it ran, its arguments' and results' bytes, its function's number),
                       made after the frame with its Done went and written to the worker's
                       ring in shared memory (local/timeline_ring.py, names there too); errors'
                       texts in the frame (an Ended message: rare)
    board.failed_run ─ RETRY ─┐
    board.worker_died ─ DIED ─┴► Recorder.own: the driver's own records (as rare as retries)
                                   core.timeline() ──► Recorder.records(): each ring's ENDEDs
                                                       joined with their SENDINGs into END
                                                       records, and the own, by time;
                                                       + not_ended(...)
                                                       ──► chrome_events(...) ──► [dict]
                                                       (pure; the JSON is built only here)

The driver keeps no object per task and reads nothing per task until core.timeline() asks: its
hot path (under the lock the submitting thread and the I/O thread share) costs one clock read
per task submitted and one per batch sent, and per batch one entry of bytes. The worker's cost
is a tuple per task until the frame goes, then one loop and one `struct` call for the frame.
Where each part was first (the ENDEDs in the frames, the submits echoed by the workers), a
no-op flood lost ~2.5% (benchmarks/RESULTS.md).

A worker's ring keeps its last `max_records` ENDEDs, and the recorder as many of its SENDINGs;
a worker's death leaves both to the recorder (read once into a blob: `retired`). A worker that
dies loses only the ENDEDs of Dones it sent just before: those tasks are done, and have no bar.
Records are merged by time, so an END comes before the RETRY decided from its Done, whenever
the worker wrote it.

Chrome's trace-event format (what Perfetto and chrome://tracing open): one "X" (complete) event
per task attempt, on the lane (`pid`) of the worker that ran it, named after the function; "M"
events name the lanes ("worker <pid>", "actor <Class> <pid>", "driver <pid>"); an "i" (instant)
event per submitted task on the submitter's lane. Times are microseconds since the session
started, read from `time.monotonic` (never a clock's absolute value).

When an attempt ran: the worker says when the call started and how long it ran (its clock is
the driver's: `time.monotonic` is CLOCK_MONOTONIC, one per machine), so an ended attempt's bar is
exact. For an attempt with no END (running when the trace is asked for, or its worker died) the
driver knows when it sent it: a worker runs its tasks one at a time in the order sent, so its
bar starts then or when the worker's previous bar ended, whichever is later.

Memory is bounded: a trace has the last `max_records` records (`DEFAULT_MAX_RECORDS`), each
worker's ring as many (57 bytes an ENDED: ~6 MB, a page in use once written) and its SENDINGs
(~29 bytes a task), the workers gone as many together, dropped a blob at a time. `chrome_events` is pure; `write_trace` is this
module's one I/O, called by the runtimes at the edge.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import tempfile
import time
from array import array
from collections import deque
from itertools import chain
from operator import itemgetter
from typing import Any, Iterable, NamedTuple

# Record kinds: the first field of each tuple. An attempt's fields come first, in one order:
#   ATTEMPT = (kind, t, task_id, name, task kind, wid, t_submit, submitter wid, t_sent, arg bytes)
# t_submit and the submitter are None for an actor's constructor (it is not submitted as a task);
# arg bytes are known to the worker only (None in DIED and START).
END = 2      # ATTEMPT + (seconds, error or None, result bytes or None)   t: when the call started
             #                                                             error: "Type: first line"
RETRY = 3    # (RETRY, t, task_id)                                the END just before is retried
DIED = 4     # ATTEMPT + (verdict,)                               its worker died while it ran
# Made by core.timeline() for the tasks not ended yet (never recorded):
START = 1    # ATTEMPT                                            sent, running (t: when it was sent)
SUBMIT = 0   # (SUBMIT, t_submit, task_id, name, submitter wid)   submitted, not sent

# A worker's record of an attempt, packed: task_id (20 bytes), began, seconds, arg bytes, result
# bytes (-1: none), task kind (its index in KINDS), its function's name (its index in the ring's
# names). The rest of the attempt is the driver's SENDING (Recorder.sent).
ENDED = struct.Struct("<20sddqqBI")
ENDED_VALUES = 7                    # values per ENDED, as the worker keeps them before packing
KINDS = ("task", "actor_create", "actor_method")
KIND_CODE = {kind: i for i, kind in enumerate(KINDS)}

DEFAULT_MAX_RECORDS = 100_000


class Recorder:
    """The recorded attempts of one session (owned by the Board, added to under its lock).

    What it keeps is bytes, not objects: the workers' ENDEDs are in their rings until
    core.timeline() reads them, and the driver's SENDINGs are one entry of bytes a batch. Kept
    as Python objects (a task id and a float a task), records left the driver ~5% slower for
    the rest of the session, recording or not (its garbage collections took ~40% longer).
    `own`: the driver's records, RETRY and DIED, as rare as retries and deaths. `workers`: those
    sent a task while recording; each has its `ring` (local/timeline_ring.py) until it dies."""

    __slots__ = ("own", "sendings", "sent_count", "errors", "retired", "retired_count", "max_records",
                 "workers", "t0")

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.max_records = max_records
        self.own: deque[tuple] = deque(maxlen=max_records)
        # wid -> its SENDINGs: (count, t_sent, task ids joined, submits as doubles, submitters
        # or None when all were the driver), the last `max_records` tasks' at least
        self.sendings: dict[int, deque[tuple]] = {}
        self.sent_count: dict[int, int] = {}
        self.errors: dict[int, dict[int, str]] = {}    # wid -> {ENDED index: error text}
        # the dead workers': (count, wid, first index, packed ENDEDs, names, errors, sendings)
        self.retired: deque[tuple] = deque()
        self.retired_count = 0
        self.workers: dict[int, Any] = {}      # wid -> WorkerProc, noted on its first measured dispatch
        self.t0 = time.monotonic()             # the session's start: time 0 of the trace

    def add(self, record: tuple) -> None:
        """Keep one of the driver's records (RETRY, DIED)."""
        self.own.append(record)

    def sent(self, wid: int, t_sent: float, tasks: list) -> None:
        """A batch of `tasks` sent to worker `wid` at `t_sent`: its SENDING. An actor's
        constructor has no submit (NaN, None)."""
        try:
            submits = array("d", [t.t_submit for t in tasks])
            submitters = [t.submitter for t in tasks]
        except AttributeError:
            submits = array("d", [getattr(t, "t_submit", math.nan) for t in tasks])
            submitters = [getattr(t, "submitter", None) for t in tasks]
        n = len(tasks)
        entry = (n, t_sent, b"".join([t.task_id for t in tasks]), submits.tobytes(),
                 None if submitters.count(None) == n else submitters)
        kept = self.sendings.get(wid)
        if kept is None:
            kept = self.sendings[wid] = deque()
            self.sent_count[wid] = 0
        kept.append(entry)
        count = self.sent_count[wid] + n
        while count - kept[0][0] >= self.max_records:      # the rest still hold enough
            count -= kept.popleft()[0]
        self.sent_count[wid] = count

    def add_errors(self, wid: int, errors: list[tuple[int, str]]) -> None:
        """Worker `wid`'s Ended message: its errors' texts by ENDED index (the last
        `max_records` kept)."""
        kept = self.errors.setdefault(wid, {})
        kept.update(errors)
        while len(kept) > self.max_records:
            del kept[next(iter(kept))]

    def retire(self, worker: Any) -> None:
        """`worker` is gone: keep what its ring holds as one blob, and close the ring."""
        ring, worker.ring = worker.ring, None
        first, packed, names = ring.read()
        ring.close()
        wid = worker.wid
        errors, sendings = self.errors.pop(wid, {}), self.sendings.pop(wid, ())
        self.sent_count.pop(wid, None)
        n = len(packed) // ENDED.size
        if not n:
            return
        self.retired.append((n, wid, first, packed, names, errors, sendings))
        self.retired_count += n
        while self.retired_count - self.retired[0][0] >= self.max_records:   # the rest hold enough
            self.retired_count -= self.retired.popleft()[0]

    def caught_up(self) -> bool:
        """Every live worker wrote the ENDEDs of the Dones it sent."""
        return all(w.ring.caught_up() for w in self.workers.values() if w.ring is not None)

    def records(self) -> list[tuple]:
        """The last `max_records` records by time: the workers' ENDEDs joined with their
        SENDINGs (END records), and the driver's own."""
        out: list[tuple] = list(self.own)
        live = [(w.wid, *w.ring.read(), self.errors.get(w.wid, {}), self.sendings.get(w.wid, ()))
                for w in self.workers.values() if w.ring is not None]
        for wid, first, packed, names, errors, sendings in chain((e[1:] for e in self.retired), live):
            sending = sendings_by_task(sendings)
            for i, (task_id, began, seconds, arg_bytes, result_bytes, kind, name) in \
                    enumerate(ENDED.iter_unpack(packed), first):
                t_sent, t_submit, submitter = sending_of(sending, task_id, began)
                out.append((END, began, task_id, names[name] if name < len(names) else "?", KINDS[kind], wid,
                            t_submit, submitter, t_sent, arg_bytes, seconds, errors.get(i),
                            None if result_bytes < 0 else result_bytes))
        out.sort(key=itemgetter(1))
        return out[-self.max_records:]

    def snapshot(self, workers: Iterable[Any], tasks: Iterable[Any]) -> tuple[list[tuple], list[Any]]:
        """What core.timeline() reads under the engine lock: the records, then those of the tasks
        not ended (`not_ended`: the pool's `workers`, the engine's unfinished `tasks`), and the
        workers seen (for their lanes)."""
        return self.records() + not_ended(workers, tasks), list(self.workers.values())

    def close(self, workers: Iterable[Any]) -> None:
        """The session ends: unmap the rings still open (of `workers`, the pool's, and those seen)."""
        for w in chain(workers, self.workers.values()):
            if w.ring is not None:
                w.ring, ring = None, w.ring
                ring.close()


def sendings_by_task(sendings: Iterable[tuple]) -> dict[bytes, Any]:
    """Task id -> (t_sent, t_submit, submitter) from a worker's SENDINGs, oldest first; a task
    sent to it more than once (retried there) -> a list of those, in order."""
    out: dict[bytes, Any] = {}
    for n, t_sent, ids, submits, submitters in sendings:
        times = array("d")
        times.frombytes(submits)
        for k in range(n):
            task_id = ids[20 * k:20 * k + 20]
            t_submit = times[k]
            sent = (t_sent, None if t_submit != t_submit else t_submit, None if submitters is None else submitters[k])
            before = out.get(task_id)
            out[task_id] = sent if before is None else (before if type(before) is list else [before]) + [sent]
    return out


def sending_of(sending: dict[bytes, Any], task_id: bytes, began: float) -> tuple:
    """(t_sent, t_submit, submitter) of the sending an attempt that began at `began` ran from:
    the last before it; (None, None, None) when it is no longer kept."""
    sent = sending.get(task_id)
    if type(sent) is list:
        earlier = [s for s in sent if s[0] <= began]
        return earlier[-1] if earlier else sent[0]
    return sent if sent is not None else (None, None, None)


@functools.lru_cache(maxsize=256)
def endeds_struct(n: int) -> struct.Struct:
    """`n` ENDEDs back to back (built once per count: a worker writes a few counts over and over)."""
    return struct.Struct("<" + ENDED.format[1:] * n)


def attempt(task: Any, wid: int | None) -> tuple:
    """The fields after (kind, t) of an attempt with no Done (DIED, START): what the task carries
    since its submit and its sending (set while the timeline is on; an actor's constructor has no
    submit). Its arguments' bytes are the worker's to say: None."""
    try:
        submitted, submitter = task.t_submit, task.submitter
    except AttributeError:
        submitted = submitter = None
    return (task.task_id, task.name, task.kind, wid, submitted, submitter, task.t_sent, None)


def not_ended(workers: Iterable[Any], tasks: Iterable[Any]) -> list[tuple]:
    """What core.timeline() adds to the records: a START for each task in flight on `workers`
    (a bar up to the call), then a SUBMIT for each of `tasks` (the engine's unfinished ones; a
    mark for those not sent yet: chrome_events marks each task once). An actor's constructor
    has no submit."""
    out = [(START, task.t_sent) + attempt(task, w.wid) for w in workers for task in w.inflight]
    out += [(SUBMIT, task.t_submit, task.task_id, task.name, task.submitter) for task in tasks
            if getattr(task, "t_submit", None) is not None]
    return out


def error_text(error: Any) -> str:
    """What the trace says of a task's error: its own exception's type and first line."""
    cause = getattr(error, "cause", None)
    exc = cause if isinstance(cause, BaseException) else error
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def short_name(name: str) -> str:
    """A function's name as a bar shows it: without the enclosing functions of a local one
    (`test_x.<locals>.square` -> `square`); the args keep the full name."""
    return name.rsplit("<locals>.", 1)[-1]


class Lane(NamedTuple):
    """One worker as the trace shows it."""
    pid: int
    label: str          # "worker 1234", "actor Counter 1234"


def lanes(workers: list[tuple[int, int, Any]], actor_names: dict) -> dict[int, Lane]:
    """Each worker's lane from (wid, pid, actor id or None) and the actors' names."""
    return {wid: Lane(pid, f"worker {pid}" if actor_id is None
                      else f"actor {short_name(actor_names.get(actor_id, '?'))} {pid}")
            for wid, pid, actor_id in workers}


def chrome_events(records: Iterable[tuple], lanes: dict[int, Lane], driver_pid: int, t0: float,
                  now: float) -> list[dict]:
    """Chrome trace events for `records` (END, DIED and RETRY records, then the START and SUBMIT
    of the tasks not ended yet). `lanes`: wid -> Lane (a worker not in it gets a lane named after
    its wid); `t0`: the monotonic time of the session's start; `now`: the monotonic time of the
    call (tasks still running end there)."""
    def us(t: float) -> float:
        return round((t - t0) * 1e6, 3)

    out: list[dict] = []
    used: dict[int, str] = {driver_pid: f"driver {driver_pid}"}

    def lane(wid: int | None) -> int:
        if wid is None:
            return driver_pid
        ln = lanes.get(wid)
        pid, label = (ln.pid, ln.label) if ln is not None else (-wid - 1, f"worker #{wid}")
        used.setdefault(pid, label)
        return pid

    marked: set[bytes] = set()        # tasks whose submit mark is out (once per task, not attempt)
    attempts: dict[bytes, int] = {}
    lane_free: dict[int, float] = {}  # wid -> when its last bar ended
    last_bar: dict[bytes, dict] = {}  # task id -> its last X event (a RETRY marks it)

    def submit_mark(task_id: bytes, name: str, t_submit: float | None, submitter: int | None) -> None:
        if t_submit is None or task_id in marked:
            return
        marked.add(task_id)
        out.append({"name": f"submit {short_name(name)}", "cat": "submit", "ph": "i", "s": "t", "ts": us(t_submit),
                    "pid": lane(submitter), "tid": 0, "args": {"task_id": task_id.hex(), "function": name}})

    def bar(rec: tuple, begin: float | None, finish: float, seconds: float | None, outcome: str,
            error: str | None, out_bytes: int | None = None) -> None:
        """An attempt's bar, from `begin` (None: not known, so from its sending or the end of its
        worker's previous bar, whichever is later) to `finish`."""
        task_id, name, kind, wid, t_submit, submitter, sent, arg_bytes = rec[2:10]
        submit_mark(task_id, name, t_submit, submitter)
        if begin is None:
            begin = sent if sent is not None else finish
            begin = min(max(begin, lane_free.get(wid, begin)), finish)
        lane_free[wid] = max(finish, lane_free.get(wid, finish))
        n = attempts[task_id] = attempts.get(task_id, 0) + 1
        args: dict[str, Any] = {"task_id": task_id.hex(), "function": name, "kind": kind, "outcome": outcome,
                                "attempt": n}
        if arg_bytes is not None:
            args["arg_bytes"] = arg_bytes
        if sent is not None:
            args["sent_us"] = us(sent)
        if seconds is not None:
            args["run_s"] = seconds
        if out_bytes is not None:
            args["result_bytes"] = out_bytes
        if error is not None:
            args["error"] = error
        ev = {"name": short_name(name), "cat": kind, "ph": "X", "ts": us(begin), "dur": round((finish - begin) * 1e6, 3),
              "pid": lane(wid), "tid": 0, "args": args}
        out.append(ev)
        last_bar[task_id] = ev

    for e in records:
        kind = e[0]
        if kind == END:
            error = e[11]
            bar(e, e[1], e[1] + e[10], e[10], "ok" if error is None else "error", error, e[12])
        elif kind == RETRY:
            ev = last_bar.get(e[2])
            if ev is not None and ev["args"]["outcome"] == "error":
                ev["args"]["outcome"] = "retried"
        elif kind == DIED:
            bar(e, None, e[1], None, "worker died, retried" if e[10] == "retry" else "worker died", None)
        elif kind == START:        # not finished when the timeline was asked for
            bar(e, None, max(now, e[1]), None, "running", None)
        elif kind == SUBMIT:
            submit_mark(e[2], e[3], e[1], e[4])
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}}
            for pid, label in used.items()]
    meta += [{"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
              "args": {"sort_index": 0 if pid == driver_pid else i + 1}} for i, pid in enumerate(used)]
    return meta + out


def write_trace(path: str | os.PathLike, events: list[dict]) -> None:
    """Write `events` as a Chrome trace file, atomically (a temporary file beside it, renamed):
    a reader never sees half a trace. The one I/O of this module, called by the runtimes."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".trace-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
        os.chmod(tmp, 0o644)           # mkstemp's 0600: a trace is meant to be opened elsewhere
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["Recorder", "sendings_by_task", "sending_of", "Lane", "short_name", "chrome_events", "write_trace", "error_text", "attempt",
           "endeds_struct", "not_ended", "DEFAULT_MAX_RECORDS", "ENDED", "ENDED_VALUES", "KINDS",
           "KIND_CODE", "SUBMIT", "START", "END", "RETRY", "DIED"]
