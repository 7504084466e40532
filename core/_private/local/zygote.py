"""A zygote: one process that imports what workers need once, then forks them on request.

A fresh worker interpreter pays its imports (pyarrow and pandas: ~0.35 s of CPU) on the critical
path of a short job, once per worker. Forked from a zygote that paid them once, a worker starts
in a few milliseconds and shares those pages with its siblings.

    driver (Zygote)                                  zygote (python -c "...zygote.serve(...)")
    start(preload) ──── spawn, SEQPACKET socket ───►  import core's worker + the preload modules
    add_preload(modules) ── ("import", modules) ──►  import them too (before later forks)
                            (the preload is imported by a helper thread, zygote_imports: a build
                             runs meanwhile, a spawn asked for meanwhile waits for it)
    spawn(wid, args, fds) ── ("spawn", wid, args) + fds (SCM_RIGHTS) ──►  fork ─► worker.main(fds + args)
          ◄── ("pid", wid, pid) ───────────────────
          ◄── ("exit", pid, returncode) ───────────  SIGCHLD: reaped, as Popen.returncode
    stop_forking() ── write side shut ──►  reap and report its workers, then exit with the last
    close()  ── socket closed, wait (pidfd)

    core.build (the values its forks inherit, in worker.BUILT):
    build(oid, blob) ── ("build", oid) + memfd of (fn, args, kwargs) ──►  value = fn(...); BUILT[oid]
          ◄── ("built", oid, size, error, threads) ────  (size: what a copy in the store takes)
    materialize(oid, segment) ── ("materialize", ...) ──►  serialize BUILT[oid] into the segment
          ◄── ("materialized", oid, error) ─────────────
    drop(oid) ── ("drop", oid) ──►  del BUILT[oid]: later forks do not carry it

A factory that leaves threads running (torch's OpenMP pool, counted in /proc/self/task before
and after) makes forking the zygote unsafe: a lock held by one of them would stay held in every
child. The zygote then starts its later workers as fresh interpreters (posix_spawn, which only
execs), still its children, and reports `threads`: the driver has the value written into the
store at once (one copy) and dropped, and builds later values itself.

The zygote is forked from the driver while the driver is still single-threaded (the dataflow CLI
starts it first thing), spawned as a fresh interpreter otherwise: forking a process that runs
threads can leave a lock held forever in the child. It dies with the driver
(PR_SET_PDEATHSIG), and its workers die with it. Should it die early, the pool
falls back to starting workers as fresh interpreters. `multiprocessing`'s forkserver does the
same job for `multiprocessing.Process`; ours hands over the worker's socket and control pipe and
reports exit statuses, which the pool's crash handling needs.
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from core._private.local import messages as M
from core._private.local import process, worker
from core._private.local import zygote_builds as builds
from core._private.local.zygote_imports import Imports
from core.exceptions import CoreError, ObjectLostError

_MAX_MESSAGE = 1 << 16
_DRAIN_S = 2.0  # how long the zygote, told to stop, waits for its workers to exit


class ZygoteChild:
    """A worker forked by the zygote, with the part of `subprocess.Popen` the pool uses."""

    def __init__(self, zygote: "Zygote", wid: int) -> None:
        self._zygote = zygote
        self.wid = wid
        self._pid: int | None = None
        self.returncode: int | None = None
        self._kill_pending = False
        self.inherits: frozenset[bytes] = frozenset()   # built values it was forked with

    @property
    def pid(self) -> int:
        """The worker's pid; waits for the zygote to fork it (it may still be importing)."""
        with self._zygote.cond:
            self._zygote.cond.wait_for(lambda: self._pid is not None or self.returncode is not None,
                                       timeout=60)
            return self._pid if self._pid is not None else -1

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._zygote.cond:
            if not self._zygote.cond.wait_for(lambda: self.returncode is not None, timeout):
                raise subprocess.TimeoutExpired(f"worker {self.wid}", timeout)
            return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        with self._zygote.cond:
            if self.returncode is not None:
                return
            if self._pid is None:  # not forked yet: kill it as soon as it is
                self._kill_pending = True
                return
            pid = self._pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Zygote:
    """The driver's handle on the zygote process."""

    def __init__(self, preload: Sequence[str] = ()) -> None:
        self.preload = tuple(preload)
        self.cond = threading.Condition()
        self._children: dict[int, ZygoteChild] = {}      # wid -> child
        self._by_pid: dict[int, ZygoteChild] = {}
        self._early_exits: dict[int, int] = {}            # pid -> code, seen before its pid message
        self.alive = True
        self.held: dict[bytes, str] = {}    # built values it keeps (asked for, not dropped) -> name
        self.forks = True                   # False once a factory left threads running in it
        self.on_exit: list[Callable[[], None]] = []       # called (reader thread) when it dies
        self._replies: dict[tuple[str, bytes], Any] = {}  # (kind, oid) -> built/materialized
        self._send = threading.Lock()       # what a fork inherits is what was sent before it
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        try:
            self.proc = _fork(ours, theirs, self.preload) if _single_threaded() else \
                _spawn(theirs, self.preload)
        finally:
            theirs.close()
        self._reader = threading.Thread(target=self._read_loop, name="core-zygote", daemon=True)
        self._reader.start()

    def add_preload(self, modules: Sequence[str]) -> None:
        """Import `modules` too, before forking the workers asked for after this."""
        modules = [m for m in modules if m not in self.preload]
        if modules:
            self.preload += tuple(modules)
            try:
                self._sock.send(pickle.dumps(M.encode(M.ZygoteImport("import", modules))))
            except OSError:  # gone: the pool falls back to fresh interpreters
                pass

    def spawn(self, wid: int, args: list[str], fds: Sequence[int]) -> ZygoteChild:
        """Ask for a worker running `worker.main(fds + args)`; returns at once (the zygote forks
        it when its imports are done). Raises OSError when the zygote is gone."""
        child = ZygoteChild(self, wid)
        with self.cond:
            if not self.alive:
                raise BrokenPipeError("the zygote has exited")
            self._children[wid] = child
        try:
            with self._send:
                # forked after every build sent so far (the zygote serves its socket in order)
                child.inherits = frozenset(self.held) if self.forks else frozenset()
                socket.send_fds(self._sock, [pickle.dumps(M.encode(M.ZygoteSpawn("spawn", wid, args)))], list(fds))
        except OSError:
            with self.cond:
                self._children.pop(wid, None)
            raise
        return child

    # ── core.build ─────────────────────────────────────────────────────────────────────────
    def build(self, oid: bytes, name: str, blob: bytes) -> M.ZygoteBuilt:
        """Have the zygote run the factory pickled in `blob` and keep its value as `oid`; waits
        for it. The reply's `error` is the factory's (the caller raises it). Raises CoreError if
        the zygote dies meanwhile."""
        fd = os.memfd_create("core-build", os.MFD_CLOEXEC)
        try:
            _write_all(fd, blob)
            with self._send:
                if not self.alive:
                    raise CoreError(f"core.build({name}): the zygote has exited")
                self.held[oid] = name
                socket.send_fds(self._sock, [pickle.dumps(M.encode(M.ZygoteBuild("build", oid, name)))], [fd])
        except OSError as exc:
            self.held.pop(oid, None)
            raise CoreError(f"core.build({name}): the zygote is gone ({exc})") from exc
        finally:
            os.close(fd)
        reply = self._await(("built", oid))
        if reply is None:
            self.held.pop(oid, None)
            raise CoreError(f"core.build({name}): the zygote died while running it (the factory may "
                            f"have crashed the process, or run out of memory)")
        if reply.error is not None:
            self.held.pop(oid, None)
        if reply.threads:
            self.forks = False
        return reply

    def materialize(self, oid: bytes, segment: str, size: int) -> None:
        """Have the zygote write the value of `oid` into `segment` (the store's copy); waits."""
        name = self.held.get(oid, "?")
        try:
            with self._send:
                self._sock.send(pickle.dumps(M.encode(M.ZygoteMaterialize("materialize", oid, segment, size))))
        except OSError:
            pass                                  # gone: _await says so
        reply = self._await(("materialized", oid))
        if reply is None:
            raise ObjectLostError(f"object {oid.hex()} (made by core.build({name})) is lost: the zygote "
                                  f"that held it exited")
        if reply.error is not None:
            raise builds.unpack_error(reply.error, name)

    def drop(self, oid: bytes) -> None:
        """Forget a built value (freed): workers forked from now on do not carry it."""
        with self._send:
            if self.held.pop(oid, None) is None:
                return
            try:
                self._sock.send(pickle.dumps(M.encode(M.ZygoteDrop("drop", oid))))
            except OSError:
                pass

    def _await(self, key: tuple[str, bytes]) -> Any:
        """The reply for `key`, or None when the zygote exited without sending it."""
        with self.cond:
            self.cond.wait_for(lambda: key in self._replies or not self.alive)
            return self._replies.pop(key, None)

    def stop_forking(self) -> None:
        """No more workers: the zygote exits as soon as its workers have (it still reports their
        exits). Called right after the workers are told to exit, so the two exits overlap."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Stop the zygote (after the pool has stopped its workers). Safe to call twice."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=2.0)
        self._sock.close()

    # ── the reader thread ───────────────────────────────────────────────────────────────────
    def _read_loop(self) -> None:
        while True:
            try:
                data = self._sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                self._on_zygote_exit()
                return
            msg = M.decode_zygote(pickle.loads(data))
            with self.cond:
                if msg.kind == "pid":
                    self._on_pid(msg.wid, msg.pid)
                elif msg.kind == "exit":
                    self._on_exit(msg.pid, msg.returncode)
                elif msg.kind in ("built", "materialized"):
                    self._replies[(msg.kind, msg.oid)] = msg
                self.cond.notify_all()

    def _on_pid(self, wid: int, pid: int) -> None:
        child = self._children.pop(wid, None)
        if child is None:
            return
        child._pid = pid
        self._by_pid[pid] = child
        if pid in self._early_exits:
            child.returncode = self._early_exits.pop(pid)
        elif child._kill_pending:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _on_exit(self, pid: int, code: int) -> None:
        child = self._by_pid.pop(pid, None)
        if child is None:
            self._early_exits[pid] = code
        else:
            child.returncode = code

    def _on_zygote_exit(self) -> None:
        # Its workers die with it (PR_SET_PDEATHSIG): report them killed, like the kernel will.
        with self.cond:
            self.alive = False
            for child in list(self._children.values()) + list(self._by_pid.values()):
                if child.returncode is None:
                    child.returncode = -signal.SIGKILL
            self._children.clear()
            self._by_pid.clear()
            self.cond.notify_all()
        for callback in self.on_exit:  # what it held is lost
            callback()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _single_threaded() -> bool:
    """Only then is fork() safe: no other thread can hold a lock the child would inherit held."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork(ours: socket.socket, theirs: socket.socket, preload: tuple[str, ...]) -> "_ForkedProcess":
    """The zygote as a fork of this (single-threaded) process: it skips an interpreter's start
    and the imports this process already made (~40 ms, at the start of every run)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            fd = theirs.fileno()
            os.closerange(3, fd)         # none of the driver's files belong to the workers
            os.closerange(fd + 1, 1 << 20)
            os.environ.update(worker_environment())
            serve(fd, list(preload))
        finally:
            os._exit(1)
    return _ForkedProcess(pid)


def _spawn(theirs: socket.socket, preload: tuple[str, ...]) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from core._private.local.zygote import serve; "
           "serve(int(sys.argv[1]), sys.argv[2:])", str(theirs.fileno()), *preload]
    return subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=worker_environment(),
                            stdin=subprocess.DEVNULL, close_fds=True)


class _ForkedProcess:
    """wait() and kill() for a child forked with os.fork (what Zygote.close uses of Popen)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_exit(timeout)
        while self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: as Popen, report 0
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            else:
                time.sleep(0.005)
        return self.returncode

    def _wait_exit(self, timeout: float | None) -> None:
        """Block until the process exits (or `timeout`), woken by the kernel through a pidfd
        rather than polled: a stop waits for the zygote's exit at the end of every run."""
        if self.returncode is not None or not hasattr(os, "pidfd_open"):
            return
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:  # already reaped, or a kernel without pidfds: poll below
            return
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def worker_environment() -> dict[str, str]:
    """The environment a worker starts with: the driver's, its import path, one BLAS thread."""
    env = dict(os.environ)
    env["DDSF_SYS_PATH"] = os.pathsep.join(p for p in sys.path if p)  # the driver's imports
    env.setdefault("OMP_NUM_THREADS", "1")  # as Ray: one BLAS thread per worker
    return env


# ── the zygote process ──────────────────────────────────────────────────────────────────────
def serve(fd: int, preload: list[str]) -> None:
    """The zygote's main: import, then fork a worker per request until the driver goes away."""
    process.die_with_parent("core-zygote")
    process.extend_sys_path()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # not passed on to workers it spawns fresh (see _spawn_fresh)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    own_fds = (wake_r, wake_w)
    imports = Imports(wake_w)     # in a helper thread: a build runs meanwhile (zygote_imports)
    imports.add(preload)
    deferred: list[tuple] = []    # spawns asked for while importing: forked once that is done
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the wake-up fd
    try:
        while True:
            _reap(sock)
            readable, _, _ = select.select([sock, wake_r], [], [])
            if wake_r in readable:
                _drain(wake_r)
            if sock in readable and not _serve_one(sock, own_fds, imports, deferred):
                break
            if deferred and not imports.busy() and not _fork_deferred(sock, own_fds, deferred):
                break
        _wait_children(sock, wake_r, _DRAIN_S)
    finally:
        _reap(sock)
        os._exit(0)


def _serve_one(sock: socket.socket, own_fds: tuple[int, int], imports: Imports,
               deferred: list[tuple]) -> bool:
    try:
        data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 4)
    except OSError:
        return False
    if not data:
        return False
    msg = M.decode_zygote(pickle.loads(data))
    if msg.kind == "import":
        imports.add(msg.modules)
        return True
    if msg.kind in ("build", "materialize", "drop"):
        return _serve_built(sock, msg, fds)
    # A worker carries the values built before it was asked for (what the driver counts on),
    # not those built while it waited for the imports.
    spawn = (msg.wid, msg.args, fds, frozenset(worker.BUILT))
    if deferred or imports.busy():
        for fd in fds:  # until its turn: not passed on to a worker spawned fresh meanwhile
            os.set_inheritable(fd, False)
        deferred.append(spawn)
        return True
    return _fork_worker(sock, own_fds, *spawn)


def _fork_deferred(sock: socket.socket, own_fds: tuple[int, int], deferred: list[tuple]) -> bool:
    """Fork the spawns that waited for the imports, in the order asked for. Each child closes
    the sockets of those forked after it: a copy held open would hide that worker's death from
    the driver (it learns of one from its socket's end)."""
    while deferred:
        spawn = deferred.pop(0)
        later = [fd for _, _, fds, _ in deferred for fd in fds]
        if not _fork_worker(sock, (*own_fds, *later), *spawn):
            return False
    return True


def _fork_worker(sock: socket.socket, own_fds: tuple[int, ...], wid: int, args: list[str], fds: list[int],
                 built: frozenset) -> bool:
    """`own_fds`: this process's files the worker closes."""
    if not _forks_safe:
        return _spawn_fresh(sock, wid, args, fds)
    # Objects made so far go to the permanent generation, which the workers' collections skip:
    # a collection touches every object it scans, and in a fork each touched page is a copy.
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # the fds arrive renumbered: they lead the worker's arguments
        for oid in set(worker.BUILT) - built:
            del worker.BUILT[oid]
        _become_worker(sock, own_fds, [str(fd) for fd in fds] + list(args))
    for fd in fds:
        os.close(fd)
    try:
        sock.send(pickle.dumps(M.encode(M.ZygotePid("pid", wid, pid))))
    except OSError:
        return False
    return True


_forks_safe = True  # False once a factory left threads running here (see the module's docstring)


def _serve_built(sock: socket.socket, msg: Any, fds: list[int]) -> bool:
    global _forks_safe
    reply, threads = builds.serve_built(msg, fds)
    if threads:
        _forks_safe = False
    if reply is None:
        return True
    try:
        sock.send(pickle.dumps(M.encode(reply)))
    except OSError:
        return False
    return True


def _spawn_fresh(sock: socket.socket, wid: int, args: list[str], fds: list[int]) -> bool:
    """A worker as a fresh interpreter, still this process's child (reaped and reported as the
    forked ones): once threads run here, posix_spawn (which only execs) is safe where fork is not."""
    for fd in fds:
        os.set_inheritable(fd, True)
    cmd = [sys.executable, "-c", "import sys; from core._private.local.worker import main; main(sys.argv[1:])",
           *(str(fd) for fd in fds), *args]
    try:
        pid = os.posix_spawn(sys.executable, cmd, os.environ)
    except OSError:
        pid = -1
    finally:
        for fd in fds:
            os.close(fd)
    msgs = [M.ZygotePid("pid", wid, pid)]
    if pid < 0:  # a worker that exited at once (no such process: its exit is reported first)
        pid = -1_000_000 - wid
        msgs = [M.ZygoteExit("exit", pid, 1), M.ZygotePid("pid", wid, pid)]
    try:
        for m in msgs:
            sock.send(pickle.dumps(M.encode(m)))
    except OSError:
        return False
    return True


def _become_worker(sock: socket.socket, own_fds: tuple[int, ...], args: list[str]) -> None:
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in own_fds:
            os.close(fd)
        worker.main(args)  # exits the process
    finally:
        os._exit(1)


def _wait_children(sock: socket.socket, wake_r: int, timeout: float) -> None:
    """Reap (and report) workers until none is left, for at most `timeout` seconds; those left
    then die with this process (PR_SET_PDEATHSIG)."""
    deadline = time.monotonic() + timeout
    while _reap(sock) and (left := deadline - time.monotonic()) > 0:
        select.select([wake_r], [], [], left)  # SIGCHLD writes to the wake-up fd
        _drain(wake_r)


def _reap(sock: socket.socket) -> bool:
    """Reap and report the workers that exited; True if some are still running."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        try:
            sock.send(pickle.dumps(M.encode(M.ZygoteExit("exit", pid, os.waitstatus_to_exitcode(status)))))
        except OSError:
            pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass

