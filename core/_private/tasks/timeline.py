"""The session's task timeline: what the engine records as tasks run, and its Chrome trace.

    board.register ─── task.t_submit, task.submitter     noted on the Task (slot stores)
    carrier.dispatch ─ task.t_sent; the task's message carries its submit (t_submit, submitter)
                       and the Tasks message when it was sent (one time for the batch)
    worker ─────────── an ENDED per task: all of that, echoed, and what only it knows (when the
                       call started, how long it ran, its arguments' and results' bytes), and
                       its error's text; those of a batch of Dones packed (73 bytes each, with
                       their functions' names beside) in one Ended message, first in their frame
    inbox ──────────── Ended ─┐
    board.failed_run ─ RETRY ─┼─► Recorder.fresh: the Ended messages as they came (bytes, not
    board.worker_died ─ DIED ─┘   read) and the driver's own records, in order; every CHUNK
                                  records sealed into one blob (Recorder.seal)
                                   core.timeline() ──► Recorder.records(): each ENDED unpacked
                                                       into an END record; + not_ended(...)
                                                       ──► chrome_events(...) ──► [dict]
                                                       (pure; the JSON is built only here)

The driver keeps nothing per task: its hot path (under the lock the submitting thread and the
I/O thread share) costs one clock read per task submitted and one per batch sent, and two items
in each task's message; a batch of Dones costs it one Ended message kept as it came, and every
CHUNK records one `marshal` call seals them: nothing a task made outlives its chunk (see
Recorder). Everything else is the worker's: it echoes the submit and the sending in the task's
ENDED, adds what it measured, and packs a frame's ENDEDs with one `struct` call (pickling them,
or a `struct` call per task, cost it several times more). Only core.timeline() unpacks them. A
worker measures the tasks whose Tasks message says when they were sent (the session records).

The Ended message goes first in the frame with the Dones, so an END is kept before the RETRY the
driver decides on from its Done. A worker that dies loses only the ENDEDs of Dones the driver
never got: those tasks were still in flight, and the driver records their DIED.

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

Memory is bounded: the recorder keeps the last `max_records` records (`DEFAULT_MAX_RECORDS`;
~80 bytes a task attempt: ~8 MB); older ones are dropped a blob at a time. `chrome_events` is
pure; `write_trace` is this module's one I/O, called by the runtimes at the edge.
"""

from __future__ import annotations

import functools
import json
import marshal
import math
import os
import struct
import tempfile
import time
from collections import deque
from itertools import chain
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
# bytes (-1: none), t_submit (NaN: none), t_sent, submitter wid (-1: the driver or none), task
# kind (its index in KINDS); its function's name and its error's text beside it
ENDED = struct.Struct("<20sddqqddiB")
ENDED_VALUES = 9                    # values per ENDED, as the worker keeps them before packing
KINDS = ("task", "actor_create", "actor_method")
KIND_CODE = {kind: i for i, kind in enumerate(KINDS)}

DEFAULT_MAX_RECORDS = 100_000
CHUNK = 1024     # records sealed at a time (see Recorder)


class Recorder:
    """The recorded attempts of one session (owned by the Board, added to under its lock).

    `fresh`: in the order they came, the workers' Ended messages (packed ENDEDs kept as bytes,
    their functions' names, their errors) and the driver's own records (RETRY, DIED: as rare as
    retries and deaths). Every `CHUNK` records they are sealed into one `marshal` blob, so no
    object a task made outlives its chunk: kept as Python objects (a task id and a float a
    task), records left the driver ~5% slower for the rest of the session, recording or not
    (its garbage collections took ~40% longer, as many of them over as many objects: the small
    objects kept, likely, scattered the ones it allocates and walks). `entries` keeps enough
    blobs to hold `max_records` records, dropped a blob at a time."""

    __slots__ = ("fresh", "fresh_count", "seal_at", "entries", "count", "max_records", "workers", "t0")

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.max_records = max_records
        self.seal_at = min(CHUNK, max_records)     # records in `fresh` that make a blob
        self.fresh: list[tuple] = []   # (records, wid, packed, names, errors | None) | (1, None, record, None, None)
        self.fresh_count = 0                       # records in `fresh`
        self.entries: deque[tuple[int, bytes]] = deque()   # sealed (records, blob of `fresh` entries)
        self.count = 0                             # records in `entries`
        self.workers: dict[int, Any] = {}          # wid -> WorkerProc, noted on its first dispatch
        self.t0 = time.monotonic()                 # the session's start: time 0 of the trace

    def seal(self) -> None:
        self.entries.append((self.fresh_count, marshal.dumps(self.fresh)))
        self.count += self.fresh_count
        self.fresh.clear()
        self.fresh_count = 0
        entries = self.entries
        while self.count - entries[0][0] >= self.max_records:   # the rest still holds enough
            self.count -= entries.popleft()[0]

    def add(self, record: tuple) -> None:
        """Keep one of the driver's records (RETRY, DIED)."""
        self.fresh.append((1, None, record, None, None))
        self.fresh_count += 1
        if self.fresh_count >= self.seal_at:
            self.seal()

    def add_ended(self, wid: int, packed: bytes, names: list[str], errors: list[tuple[int, str]]) -> None:
        """Keep worker `wid`'s Ended message as it came: ENDEDs `packed`, their functions'
        `names`, and `errors` (index among them, error text)."""
        n = len(packed) // ENDED.size
        self.fresh.append((n, wid, packed, names, errors or None))
        self.fresh_count += n
        if self.fresh_count >= self.seal_at:
            self.seal()

    def records(self) -> list[tuple]:
        """The last `max_records` records, oldest first: the workers' ENDEDs (END records) and
        the driver's own."""
        out: list[tuple] = []
        nan = math.isnan
        sealed = chain.from_iterable(marshal.loads(blob) for _, blob in self.entries)
        for _, wid, entry, names, errors in chain(sealed, self.fresh):
            if wid is None:
                out.append(entry)
                continue
            error_of = dict(errors or ())
            for i, (task_id, began, seconds, arg_bytes, result_bytes, t_submit, t_sent, submitter,
                    kind) in enumerate(ENDED.iter_unpack(entry)):
                out.append((END, began, task_id, names[i], KINDS[kind], wid, None if nan(t_submit) else t_submit,
                            None if submitter < 0 else submitter, t_sent, arg_bytes, seconds, error_of.get(i),
                            None if result_bytes < 0 else result_bytes))
        return out[-self.max_records:]

    def snapshot(self, workers: Iterable[Any], tasks: Iterable[Any]) -> tuple[list[tuple], list[Any]]:
        """What core.timeline() reads under the engine lock: the records, then those of the tasks
        not ended (`not_ended`: the pool's `workers`, the engine's unfinished `tasks`), and the
        workers seen (for their lanes)."""
        return self.records() + not_ended(workers, tasks), list(self.workers.values())


def pack_endeds(values: list) -> bytes:
    """A worker's ENDEDs, ENDED_VALUES flat values each, packed in one call (`ENDED` each)."""
    return _endeds_struct(len(values) // ENDED_VALUES).pack(*values)


@functools.lru_cache(maxsize=256)
def _endeds_struct(n: int) -> struct.Struct:
    """`n` ENDEDs back to back (built once per count: a worker flushes a few counts over and over)."""
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


__all__ = ["Recorder", "Lane", "short_name", "chrome_events", "write_trace", "error_text", "attempt",
           "pack_endeds", "not_ended", "DEFAULT_MAX_RECORDS", "CHUNK", "ENDED", "ENDED_VALUES", "KINDS",
           "KIND_CODE", "SUBMIT", "START", "END", "RETRY", "DIED"]
