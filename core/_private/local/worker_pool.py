"""Worker processes and the io thread that talks to them.

    WorkerPool.spawn() ──► python -c "...worker.main(...)"   (socket pair + control pipe inherited)
                      └──► or forked by the zygote, when there is one (see zygote.py)
    io thread: select() over every worker socket and a wake-up pipe
        readable  ──► whole messages ─┐
        EOF       ──► dead worker  ───┼──► on_io(messages, dead)   (the engine applies them)
        writable  ──► flush the channel's backlog
    close(): EXIT to every worker, then wait, then SIGKILL what is left

The pool knows processes, sockets and pipes; what a message or a death *means* (results,
retries, borrowed refs) is the engine's business, handed over through `on_io`.
"""

from __future__ import annotations

import itertools
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable

from core._private.local import messages as M
from core._private.local import protocol as P
from core._private.local.zygote import Zygote, ZygoteChild, worker_environment

IO_TICK = 0.05  # seconds between io-thread wake-ups when nothing happens (timeouts, ref events)


class WorkerProc:
    """One worker process as the driver sees it."""

    def __init__(self, wid: int, proc: subprocess.Popen | ZygoteChild, chan: P.Channel, ctl_fd: int,
                 actor_id: bytes | None) -> None:
        self.wid = wid
        self.proc = proc
        self.chan = chan
        self.ctl_fd = ctl_fd          # control pipe: ids of tasks to cancel (read by its SIGINT handler)
        self.actor_id = actor_id
        self.started = False          # HELLO received
        self.alive = True
        self.inflight: deque = deque()  # tasks sent to it, in the order it runs them
        self.held_need: dict = {}     # resources held while it runs a batch
        self.holding = False          # held_need is taken from the ledger now (not while blocked)
        self.blocked = 0              # nested get/wait requests outstanding
        self.known_fns: set[bytes] = set()
        self.borrowed: set[bytes] = set()
        self.bytes_received = 0
        self.function_bytes = 0       # function/class code shipped to it (once per function)
        # built objects (core.build) in its own memory: forked by the zygote after they were made
        self.inherits: frozenset[bytes] = getattr(proc, "inherits", frozenset())


OnIo = Callable[[list[tuple[WorkerProc, M.Message]], list[WorkerProc]], None]


class WorkerPool:
    def __init__(self, inline_threshold: int, on_io: OnIo, zygote: Zygote | None = None) -> None:
        self.inline_threshold = inline_threshold
        self.zygote = zygote
        self.workers: dict[int, WorkerProc] = {}
        self._on_io = on_io
        self._wids = itertools.count(1)
        self._closing = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._want_write: set[P.Channel] = set()
        self._io = threading.Thread(target=self._io_loop, name="core-io", daemon=True)

    def start(self) -> None:
        self._io.start()

    # ── processes ───────────────────────────────────────────────────────────────────────────
    def spawn(self, actor_id: bytes | None) -> WorkerProc:
        """Start a worker. It can take messages at once: they wait in its socket until it runs."""
        wid = next(self._wids)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl_r, ctl_w = os.pipe()
        try:
            proc = self._start(wid, [str(wid), str(self.inline_threshold)], (child.fileno(), ctl_r))
        finally:
            child.close()
            os.close(ctl_r)
        worker = WorkerProc(wid, proc, P.Channel(parent, self._want_flush), ctl_w, actor_id)
        self.workers[wid] = worker
        self._sel.register(parent, selectors.EVENT_READ, worker)
        return worker

    def _start(self, wid: int, args: list[str], fds: tuple[int, int]) -> subprocess.Popen | ZygoteChild:
        """A process running worker.main(fds + args)."""
        if self.zygote is not None and self.zygote.alive:
            try:
                return self.zygote.spawn(wid, args, fds)
            except OSError:  # the zygote died: fresh interpreters from now on
                pass
        # -c, not -m: run as __main__ the module's classes would be a second copy of themselves.
        cmd = [sys.executable, "-c", "import sys; from core._private.local.worker import main; main(sys.argv[1:])",
               *map(str, fds), *args]
        return subprocess.Popen(cmd, pass_fds=fds, env=worker_environment(), stdin=subprocess.DEVNULL,
                                close_fds=True)

    def reap(self, worker: WorkerProc) -> str:
        """Close a dead worker's channel and collect its exit status: "signal 9", "exit code 3"."""
        worker.alive = False
        try:
            self._sel.unregister(worker.chan.sock)
        except (KeyError, ValueError):
            pass
        worker.chan.close()
        _close_quietly(worker.ctl_fd)
        code = worker.proc.poll()
        if code is None:
            try:
                code = worker.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                code = worker.proc.wait()
        self.workers.pop(worker.wid, None)
        return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"

    def broadcast(self, msg: M.Message) -> None:
        for w in list(self.workers.values()):
            if w.alive:
                w.chan.send(msg)

    def close(self, grace: float = 1.0) -> None:
        """Ask every worker to exit, stop the io thread, then kill whatever is left."""
        self._closing = True
        workers = list(self.workers.values())
        for w in workers:
            w.chan.send(M.Exit(M.EXIT))
        self.wake()
        if self.zygote is not None:
            self.zygote.stop_forking()  # it exits with its workers, not after them
        self._io.join(timeout=2.0)
        deadline = time.monotonic() + grace
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.chan.close()
            _close_quietly(w.ctl_fd)
        self._sel.close()
        _close_quietly(self._wake_r)
        _close_quietly(self._wake_w)
        if self.zygote is not None:
            self.zygote.close()

    @property
    def closing(self) -> bool:
        return self._closing

    # ── io thread ───────────────────────────────────────────────────────────────────────────
    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full (already woken) or closed (shutting down)

    def _want_flush(self, chan: P.Channel) -> None:
        self._want_write.add(chan)
        self.wake()

    def _io_loop(self) -> None:
        while not self._closing:
            try:
                events = self._sel.select(IO_TICK)
            except OSError:
                if self._closing:
                    return
                raise
            msgs: list[tuple[WorkerProc, M.Message]] = []
            dead: list[WorkerProc] = []
            for key, mask in events:
                worker = key.data
                if worker is None:
                    self._drain_wake_pipe()
                    continue
                if mask & selectors.EVENT_WRITE and worker.chan.flush():
                    self._sel.modify(worker.chan.sock, selectors.EVENT_READ, worker)
                if mask & selectors.EVENT_READ:
                    self._read(worker, msgs, dead)
            self._on_io(msgs, dead)
            self._watch_backlogs()

    def _read(self, worker: WorkerProc, msgs: list, dead: list) -> None:
        try:
            data = worker.chan.sock.recv(4 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            dead.append(worker)
            return
        worker.bytes_received += len(data)
        msgs.extend((worker, m) for m in worker.chan.reader.feed(data))

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _watch_backlogs(self) -> None:
        """Channels whose sends did not all fit: watch their sockets for writability."""
        for chan in list(self._want_write):
            self._want_write.discard(chan)
            if chan.closed or not chan.has_backlog():
                continue
            for w in self.workers.values():
                if w.chan is chan:
                    self._sel.modify(chan.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, w)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
