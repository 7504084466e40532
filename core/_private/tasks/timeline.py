"""The session's task timeline: what the engine records as tasks run, and its Chrome trace.

    board.register ── SUBMIT ──┐
    carrier.dispatch ─ START ──┼─► Recorder.events  (a bounded deque of plain tuples: one append
    board.finished ─── END ────┤                     per event, no formatting, under the engine lock)
    board.failed_run ─ RETRY ──┤
    board.worker_died ─ DIED ──┘
                                   core.timeline() ──► chrome_events(events, lanes, ...) ──► [dict]
                                                       (pure; the JSON is built only here)

Chrome's trace-event format (what Perfetto and chrome://tracing open): one "X" (complete) event
per task attempt, on the lane (`pid`) of the worker that ran it, named after the function; "M"
events name the lanes ("worker <pid>", "actor <Class> <pid>", "driver <pid>"); an "i" (instant)
event per submit on the submitter's lane. Times are microseconds since the session started,
read from `time.monotonic` (never a clock's absolute value).

When an attempt ran: the driver knows when it sent the task (START) and when the result came
back (END), the worker how long the function ran (`seconds`). A worker runs its tasks one at a
time in the order sent, so a bar starts when it was sent or when the worker's previous bar
ended, whichever is later, and lasts `seconds` (cut at the result's arrival): tasks sent in one
batch, or pipelined behind a running one, line up instead of overlapping.

Memory is bounded: the recorder keeps the last `max_events` events (`DEFAULT_MAX_EVENTS`, three
per task: about the last 65,000 tasks, ~30 MB); older ones are dropped. `chrome_events` is pure;
`write_trace` is this module's one I/O, called by the runtimes at the edge.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import deque
from typing import Any, Iterable, NamedTuple

# Event kinds: the first field of each recorded tuple.
SUBMIT = 0   # (SUBMIT, t, task_id, name, submitter wid or None)
START = 1    # (START, t, task_id, name, kind, wid, argument bytes)
END = 2      # (END, t, task_id, wid, seconds, error or None, result bytes or None)
             #                                                    error: "Type: first line"
RETRY = 3    # (RETRY, t, task_id)                                the END just before is retried
DIED = 4     # (DIED, t, task_id, wid, verdict)                   its worker died while it ran

DEFAULT_MAX_EVENTS = 200_000


class Recorder:
    """The recorded events of one session (owned by the Board, appended to under its lock)."""

    __slots__ = ("events", "workers", "t0")

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.events: deque[tuple] = deque(maxlen=max_events)
        self.workers: dict[int, Any] = {}   # wid -> WorkerProc, noted on its first dispatch
        self.t0 = time.monotonic()          # the session's start: time 0 of the trace


def result_bytes(results: Any) -> int | None:
    """Bytes of a DONE's results, from their locations (("inline", bytes) or ("shared", size),
    or ("inherited", oid, size)); None when not given (a streaming task's count, an error)."""
    if not isinstance(results, list):
        return None
    n = 0
    for loc, _contained in results:
        n += len(loc[1]) if loc[0] == "inline" else loc[-1]
    return n


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


def chrome_events(events: Iterable[tuple], lanes: dict[int, Lane], driver_pid: int, t0: float,
                  now: float) -> list[dict]:
    """Chrome trace events for the recorded `events`. `lanes`: wid -> Lane (a worker not in it
    gets a lane named after its wid); `t0`: the monotonic time of the session's start; `now`:
    the monotonic time of the call (tasks still running end there)."""
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

    opened: dict[bytes, tuple] = {}    # task id -> its START not ended yet
    attempts: dict[bytes, int] = {}
    lane_free: dict[int, float] = {}   # wid -> when its last bar ended
    last_bar: dict[bytes, dict] = {}   # task id -> its last X event (a RETRY marks it)

    def bar(start: tuple, end_t: float, seconds: float | None, outcome: str, error: str | None,
            out_bytes: int | None = None) -> dict:
        _, sent, task_id, name, kind, wid, arg_bytes = start
        begin = max(sent, lane_free.get(wid, sent))
        finish = end_t if seconds is None else max(begin, min(begin + seconds, end_t))
        lane_free[wid] = finish
        n = attempts[task_id] = attempts.get(task_id, 0) + 1
        args: dict[str, Any] = {"task_id": task_id.hex(), "function": name, "kind": kind, "outcome": outcome,
                                "attempt": n, "arg_bytes": arg_bytes, "sent_us": us(sent)}
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
        return ev

    for e in events:
        kind = e[0]
        if kind == START:
            opened[e[2]] = e        # a START for a task still open: it was taken back unrun
        elif kind == END:
            start = opened.pop(e[2], None)
            if start is not None:
                bar(start, e[1], e[4], "ok" if e[5] is None else "error", e[5], e[6])
        elif kind == SUBMIT:
            out.append({"name": f"submit {short_name(e[3])}", "cat": "submit", "ph": "i", "s": "t", "ts": us(e[1]),
                        "pid": lane(e[4]), "tid": 0, "args": {"task_id": e[2].hex(), "function": e[3]}})
        elif kind == RETRY:
            ev = last_bar.get(e[2])
            if ev is not None:
                ev["args"]["outcome"] = "retried" if ev["args"]["outcome"] == "error" else ev["args"]["outcome"]
        elif kind == DIED:
            start = opened.pop(e[2], None)
            if start is not None:
                outcome = "worker died, retried" if e[4] == "retry" else "worker died"
                bar(start, e[1], None, outcome, None)
    for start in opened.values():       # not finished when the timeline was asked for
        bar(start, max(now, start[1]), None, "running", None)
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


__all__ = ["Recorder", "Lane", "short_name", "chrome_events", "write_trace", "error_text", "result_bytes", "DEFAULT_MAX_EVENTS",
           "SUBMIT", "START", "END", "RETRY", "DIED"]
