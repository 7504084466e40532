"""A worker's timeline records in shared memory: the worker writes them, the driver reads them
only when core.timeline() asks, or once when the worker is gone.

    pool.spawn ── a memfd sized for `capacity` ENDEDs, mapped here, passed with the socket ──► worker
    worker  a task's Done queued ─► TraceWriter.note (the task, its times, its results: kept)
            a frame goes out:   ─► `promised` set, the frame sent, then its tasks' ENDEDs made
                                   and written to the ring (new function names first), and
                                   `written` advanced
    driver  core.timeline() ─► waits until each worker wrote what it promised, reads each ring
            a worker's death ─► its ring read once into the recorder, and closed

Why here, not in the frames: in a flood of no-op tasks the ENDEDs cost the session ~2.5% when
a worker made them before its Dones went (the driver waits for those), and sending them to the
driver after the Dones cost about as much (more for its busy thread to decode and keep). An
ENDED holds only what the worker knows (tasks/timeline.py); the driver keeps its side of each
sending. Errors' texts still go in the frame, ahead of their Dones (messages.Ended).

Layout: a header, then the function names (UTF-8, each ended by a NUL, in the order the worker
numbered them; a name that does not fit is read as "?"), then `capacity` ENDED slots. The header
counts ENDEDs ever written: `begun` is set before the worker writes a batch of slots, `written`
after (slot = index % capacity), and the names a batch uses are in before its `written`. A
reader copies the slots, then reads `begun`: the records in [begun - capacity, written) were
whole before the copy and not overwritten during it. The memfd has no name: it is freed when
the last of the two processes unmaps it (nothing is left in /dev/shm).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

from core._private.local import messages as M
from core._private.tasks import timeline as TL

HEADER = struct.Struct("<QQQQ")   # promised, begun, written (ENDEDs ever), bytes of names used
HEADER_SIZE = 64
NAMES_SIZE = 64 * 1024            # ~1,000 function names of 60 characters
SLOTS = HEADER_SIZE + NAMES_SIZE
_COUNT = struct.Struct("<Q")
_PROMISED, _BEGUN, _WRITTEN, _NAMES = 0, 8, 16, 24


class Ring:
    """`capacity` ENDED slots (tasks/timeline.py: ENDED) and their names, in a shared mapping."""

    __slots__ = ("buf", "capacity")

    def __init__(self, buf: mmap.mmap, capacity: int) -> None:
        self.buf = buf
        self.capacity = capacity

    @classmethod
    def create(cls, capacity: int) -> tuple[int, "Ring"]:
        """The driver's side: a new memfd (its fd, to pass to the worker) and its mapping."""
        fd = os.memfd_create("core-timeline", os.MFD_CLOEXEC)
        try:
            size = SLOTS + capacity * TL.ENDED.size
            os.ftruncate(fd, size)       # sparse: a page is memory once a record is written in it
            return fd, cls(mmap.mmap(fd, size), capacity)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, capacity: int) -> "Ring":
        """The worker's side: map the memfd it was given, and close the fd."""
        try:
            return cls(mmap.mmap(fd, SLOTS + capacity * TL.ENDED.size), capacity)
        finally:
            os.close(fd)

    # ── the worker ──
    def promise(self, count: int) -> None:
        """`count` ENDEDs in all will be written: the Dones of the last go now."""
        _COUNT.pack_into(self.buf, _PROMISED, count)

    def add_name(self, name: str) -> None:
        """The next function name (numbered in order); one that does not fit is left out."""
        used = _COUNT.unpack_from(self.buf, _NAMES)[0]
        data = name.encode("utf-8", "replace").replace(b"\0", b" ") + b"\0"
        if used + len(data) <= NAMES_SIZE:
            self.buf[HEADER_SIZE + used:HEADER_SIZE + used + len(data)] = data
            _COUNT.pack_into(self.buf, _NAMES, used + len(data))

    def write(self, first: int, values: list) -> None:
        """ENDEDs `first`, `first + 1`, ... (TL.ENDED_VALUES flat values each)."""
        cap, width = self.capacity, TL.ENDED_VALUES
        n = len(values) // width
        if n > cap:                      # only the last `cap` would stay
            values = values[(n - cap) * width:]
            first, n = first + n - cap, cap
        buf = self.buf
        _COUNT.pack_into(buf, _BEGUN, first + n)
        slot = first % cap
        head = min(n, cap - slot)
        TL.endeds_struct(head).pack_into(buf, SLOTS + slot * TL.ENDED.size, *values[:head * width])
        if head < n:
            TL.endeds_struct(n - head).pack_into(buf, SLOTS, *values[head * width:])
        _COUNT.pack_into(buf, _WRITTEN, first + n)

    # ── the driver ──
    def caught_up(self) -> bool:
        """Every ENDED promised is written."""
        promised, _, written, _ = HEADER.unpack_from(self.buf)
        return written >= promised

    def read(self) -> tuple[int, bytes, list[str]]:
        """(index of the first, the ENDEDs packed back to back in order, the function names) of
        those kept."""
        buf, cap, size = self.buf, self.capacity, TL.ENDED.size
        written = _COUNT.unpack_from(buf, _WRITTEN)[0]
        names = buf[HEADER_SIZE:HEADER_SIZE + _COUNT.unpack_from(buf, _NAMES)[0]].decode("utf-8", "replace")
        names = names.split("\0")[:-1]
        used = min(written, cap)
        data = buf[SLOTS:SLOTS + used * size]      # a copy
        first = max(0, _COUNT.unpack_from(buf, _BEGUN)[0] - cap)
        if first >= written:
            return written, b"", names
        start, end = first % cap, first % cap + written - first
        if end <= used:
            return first, data[start * size:end * size], names
        return first, data[start * size:] + data[:(end - cap) * size], names

    def close(self) -> None:
        self.buf.close()


class TraceWriter:
    """A worker's side of the timeline: the tasks whose Dones are queued, their ENDEDs made and
    written to its ring once the frame with those Dones went (all under the worker's send lock).
    `on`: the last Tasks message said the session records (the driver notes their sending)."""

    __slots__ = ("ring", "on", "pending", "written", "name_ix", "errors")

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.on = False
        self.pending: list[tuple] = []          # (task message, began, seconds, results)
        self.written = 0                        # ENDEDs written: the index of the next
        self.name_ix: dict[str, int] = {}       # function name -> its number in the ring
        self.errors: list[tuple[int, str]] = []     # (ENDED index, error text) not sent yet

    def note(self, task: M.TaskMessage, began: float, seconds: float, results: Any, error: Any) -> None:
        """A task's Done is queued, in a recording session."""
        self.pending.append((task, began, seconds, results))
        if error is not None:
            self.errors.append((self.written + len(self.pending) - 1, TL.error_text(error)))

    def before_send(self) -> M.Ended | None:
        """The frame is about to go: promise its ENDEDs; its errors' texts, if any."""
        if not self.pending:
            return None
        self.ring.promise(self.written + len(self.pending))
        if not self.errors:
            return None
        msg = M.Ended(M.ENDED, self.errors)
        self.errors = []
        return msg

    def after_send(self) -> None:
        """The frame went: make its tasks' ENDEDs and write them (one loop, no call per task
        but for the sizes of what is not one inline blob: messages.arg_bytes, result_bytes)."""
        pending = self.pending
        if not pending:
            return
        values: list = []
        name_ix, kind_code = self.name_ix, TL.KIND_CODE
        for task, began, seconds, results in pending:
            name = task["name"]
            ix = name_ix.get(name)
            if ix is None:
                ix = name_ix[name] = len(name_ix)
                self.ring.add_name(name)
            args = task["args"]
            if args[0] == "inline" and not args[2]:
                n_args = len(args[1])
            else:
                n_args = M.arg_bytes(args)
            if type(results) is list and len(results) == 1 and results[0][0][0] == "inline":
                n_out = len(results[0][0][1])
            else:
                n_out = M.result_bytes(results)
            values += (task["task_id"], began, seconds, n_args, n_out, kind_code[task["kind"]], ix)
        self.ring.write(self.written, values)
        self.written += len(pending)
        self.pending = []


__all__ = ["Ring", "TraceWriter", "HEADER_SIZE", "NAMES_SIZE"]
