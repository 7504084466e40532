"""The worker process: runs tasks and actor methods sent by the driver.

    driver ──TASKS──► queue ──► resolve args (inline bytes, or a read-only view of a segment)
                                  ──► run ──► serialize results ──► DONE (batched) ──► driver
    task code calls core.get/put/remote ──► WorkerClient ──REQUEST/PUT/SUBMIT──► driver

A worker is started with `python -c "from core._private.local.worker import main; ..."`, inherits one end of a Unix socket
pair and the read end of a control pipe, and exits when the driver goes away (EOF on the socket,
or SIGKILL from the kernel via PR_SET_PDEATHSIG). It owns no objects: everything it makes is
registered with the driver. Its refs are borrows, reported to the driver in REFS messages that
always precede the DONE of the task that dropped or kept them.

Cancellation: the driver writes the task id to the control pipe and sends SIGINT; the handler
raises KeyboardInterrupt only if that id is the task running now.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import pickle
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

from core._private.local import protocol as P
from core._private import refs as refs_mod
from core._private.refs import IdSource, ObjectRef, return_id
from core._private.tasks.scheduler import FAST_TASK

BATCH_FLUSH = 64          # results per DONE batch when more tasks are queued
FLUSH_INTERVAL = 0.002    # seconds: never sit on finished results longer than this


class ArgPlaceholder:
    """Stands for the i-th top-level ObjectRef argument inside the pickled (args, kwargs)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (ArgPlaceholder, (self.index,))


class SegmentCache:
    """Read-only mappings of shared segments, kept for reuse: mapping a segment again would
    fault its pages in again. The driver says when a segment goes away (RELEASE_SEGMENTS)."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def view(self, name: str, size: int, *, writable: bool = False) -> memoryview:
        from core._private.objects import shm

        if writable:
            return memoryview(shm.map_segment(name, "copy", size))
        m = self._maps.get(name)
        if m is None or len(m) < size:
            m = shm.map_segment(name, "read", size)
            self._maps[name] = m
        return memoryview(m)[:size]

    def writable(self, name: str, size: int) -> memoryview:
        from core._private.objects import shm

        return memoryview(shm.map_segment(name, "write", size))

    def release(self, names: list[str]) -> None:
        for name in names:
            self._maps.pop(name, None)  # closed when the last view of it dies


class WorkerClient:
    """The worker's runtime: what `core.*` calls and `ObjectRef`s talk to inside a worker."""

    def __init__(self, sock: socket.socket, worker_id: int, inline_threshold: int) -> None:
        self.sock = sock
        self.worker_id = worker_id
        self.inline_threshold = inline_threshold
        self.reader = P.FrameReader()
        self.segments = SegmentCache()
        self.inbox: deque[tuple] = deque()      # TASKS etc. that arrived while waiting for a reply
        self.outbox: list[tuple] = []
        self.ref_events: deque[tuple[str, bytes]] = deque()  # ("+"|"-"|"u", oid), lock-free
        self.counts: dict[bytes, int] = {}
        self.borrowed: set[bytes] = set()       # what the driver believes we hold
        self.functions: dict[bytes, Any] = {}
        self.sent_functions: set[bytes] = set()
        self.bytes_sent = 0
        self._req_ids = itertools.count(1)
        self._ids = IdSource()
        self.current_task: bytes | None = None
        self.load_seconds = 0.0                 # spent unpickling functions (imports), not running

    # ── ids ──
    def new_id(self, index: int = 0) -> bytes:
        return self._ids.new(index)

    # ── refs ──
    def add_local_ref(self, oid: bytes) -> None:
        self.ref_events.append(("+", oid))

    def remove_local_ref(self, oid: bytes) -> None:
        self.ref_events.append(("-", oid))

    def _ref_delta(self) -> tuple[list, list, list] | None:
        events = self.ref_events
        if not events:
            return None
        counts = self.counts
        unpinned = []
        touched = set()
        while events:
            kind, oid = events.popleft()
            if kind == "+":
                counts[oid] = counts.get(oid, 0) + 1
            elif kind == "-":
                counts[oid] = counts.get(oid, 0) - 1
            else:
                unpinned.append(oid)
                continue
            touched.add(oid)
        added, removed = [], []
        for oid in touched:
            n = counts.get(oid, 0)
            if n <= 0:
                counts.pop(oid, None)
                if oid in self.borrowed:
                    self.borrowed.discard(oid)
                    removed.append(oid)
            elif oid not in self.borrowed:
                self.borrowed.add(oid)
                added.append(oid)
        if not (added or removed or unpinned):
            return None
        return added, removed, unpinned

    # ── sending ──
    def queue(self, msg: tuple) -> None:
        delta = self._ref_delta()
        if delta:
            self.outbox.append((P.REFS, *delta))
        self.outbox.append(msg)

    def flush(self) -> None:
        delta = self._ref_delta()
        if delta:
            self.outbox.append((P.REFS, *delta))
        if not self.outbox:
            return
        msgs, self.outbox = self.outbox, []
        msg = msgs[0] if len(msgs) == 1 else ("batch", msgs)
        self.bytes_sent += P.send_frame(self.sock, msg)

    def request(self, op: str, *args: Any) -> Any:
        """Send a request and block for its reply, queueing anything else that arrives."""
        req_id = next(self._req_ids)
        self.queue((P.REQUEST, req_id, op, args))
        self.flush()
        reply = None
        while reply is None:
            pending = deque(P.recv_blocking(self.sock, self.reader))
            while pending:
                msg = pending.popleft()
                if msg[0] == "batch":
                    pending.extendleft(reversed(msg[1]))
                elif msg[0] == P.REPLY and msg[1] == req_id:
                    reply = msg
                else:
                    self.handle_async(msg)
        _, _, ok, payload = reply
        if not ok:
            raise payload
        return payload

    def handle_async(self, msg: tuple) -> None:
        """Messages that need no answer now: keep tasks for the main loop, apply the rest."""
        kind = msg[0]
        if kind == P.RELEASE_SEGMENTS:
            self.segments.release(msg[1])
        elif kind == P.FUNCTION:
            self.functions[msg[1]] = msg[2]
        elif kind == P.EXIT:
            os._exit(0)
        else:
            self.inbox.append(msg)

    # ── objects ──
    def materialize(self, oid: bytes, loc: tuple, *, writable: bool = False) -> Any:
        """Turn a location from the driver into a value (zero-copy for shared objects)."""
        from core._private.objects.serialization import deserialize

        kind = loc[0]
        if kind == "inline":
            return deserialize(loc[1])
        if kind == "shared":
            from core._private.objects.shm import pinned_view

            _, name, size = loc
            raw = self.segments.view(name, size, writable=writable)
            events = self.ref_events
            view = pinned_view(raw, 0, size, lambda: events.append(("u", oid)), readonly=not writable)
            return deserialize(view, writable=writable)
        if kind == "error":
            raise loc[1]
        raise RuntimeError(f"unknown object location {kind!r}")

    def store_value(self, oid: bytes, value: Any) -> tuple:
        """Serialize a value made here; small ones travel inline, large ones are written
        straight into a segment the driver allocates. Returns (location-ish, contained ids)."""
        from core._private.objects.serialization import serialize

        ser = serialize(value)
        return self._place(oid, ser), [r.binary for r in ser.contained_refs]

    def _place(self, oid: bytes, ser: Any) -> tuple:
        if ser.total_size <= self.inline_threshold:
            return ("inline", ser.to_bytes())
        name, size = self.request("create", oid, ser.total_size)
        dest = self.segments.writable(name, size)
        ser.write_to(dest)
        dest.release()
        return ("shared", ser.total_size)

    # ── core API inside a worker ──
    def put(self, value: Any) -> ObjectRef:
        oid = self.new_id()
        result, contained = self.store_value(oid, value)
        self.queue((P.PUT, oid, result, contained))
        self.borrowed.add(oid)  # the driver counts our borrow from the PUT itself
        self.counts[oid] = self.counts.get(oid, 0)
        return ObjectRef(oid)

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list:
        locs = self.request("get", [r.binary for r in refs], timeout)
        return [self.materialize(r.binary, loc, writable=writable) for r, loc in zip(refs, locs)]

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> list[bool]:
        return self.request("wait", [r.binary for r in refs], num_returns, timeout)

    def submit(self, spec: dict) -> None:
        """Submit a task from inside a task. Its return ids were made here; we borrow them."""
        self.queue((P.SUBMIT, spec))
        for oid in spec["return_ids"]:
            self.borrowed.add(oid)

    # ── the runtime interface used by remote_function / actor ──
    def put_serialized(self, ser: Any) -> ObjectRef:
        oid = self.new_id()
        result = self._place(oid, ser)
        self.queue((P.PUT, oid, result, [r.binary for r in ser.contained_refs]))
        self.borrowed.add(oid)
        return ObjectRef(oid)

    def _wire(self, spec: dict) -> dict:
        wire = dict(spec)
        wire["arg_refs"] = [r.binary for r in spec["arg_refs"]]
        wire["held"] = [r.binary for r in spec["held"]]
        if spec["args"][0] == "stored":
            wire["args"] = ("stored", spec["args"][1].binary)
        return wire

    def submit_task(self, spec: dict, fn_blob: bytes | None) -> None:
        wire = self._wire(spec)
        if fn_blob is not None and spec["fn_id"] not in self.sent_functions:
            wire["fn_blob"] = fn_blob
            self.sent_functions.add(spec["fn_id"])
        self.submit(wire)

    def create_actor_task(self, *, name: str, shipped: Any, args: tuple, kwargs: dict, options: dict) -> bytes:
        from core._private.remote_function import pack_args
        from core._private.tasks.scheduler import demand

        blob, fn_id = shipped.blob_and_id()
        args_spec, arg_refs, held = pack_args(self, args, kwargs)
        task_id = self.new_id()
        need = demand(options.get("num_cpus", 0), options.get("num_gpus", 0), options.get("resources"))
        spec = dict(task_id=task_id, kind="actor_create", name=name, fn_id=fn_id, args=args_spec,
                    arg_refs=arg_refs, held=held, return_ids=[task_id], actor_id=task_id, need=need)
        return self.request("create_actor", self._wire(spec), blob, options.get("max_restarts", 0))

    def future(self, ref: ObjectRef):
        import concurrent.futures

        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            fut.set_result(self.get([ref], None)[0])
        except BaseException as exc:  # noqa: BLE001 - handed to the future
            fut.set_exception(exc)
        return fut

    def call(self, op: str, *args: Any) -> Any:
        return self.request(op, *args)


# ─── running tasks ──────────────────────────────────────────────────────────────────────────────
class _Cancelled(BaseException):
    pass


def _load_function(client: WorkerClient, fn_id: bytes) -> Any:
    fn = client.functions.get(fn_id)
    if isinstance(fn, (bytes, bytearray, memoryview)):
        t0 = time.perf_counter()
        fn = pickle.loads(fn)   # by name: imports its module (once), which is not the task's time
        client.load_seconds += time.perf_counter() - t0
        client.functions[fn_id] = fn
    if fn is None:
        raise RuntimeError(f"function {fn_id.hex()} was never shipped to worker {client.worker_id}")
    return fn


def _resolve_args(client: WorkerClient, args_spec: tuple) -> tuple[tuple, dict]:
    from core._private.objects.serialization import deserialize

    kind, payload, arg_locs = args_spec
    if kind == "inline":
        args, kwargs = deserialize(payload)
    else:
        args, kwargs = client.materialize(payload[0], payload[1])
    if arg_locs:
        values = [client.materialize(oid, loc) for oid, loc in arg_locs]
        args = tuple(values[a.index] if isinstance(a, ArgPlaceholder) else a for a in args)
        kwargs = {k: values[v.index] if isinstance(v, ArgPlaceholder) else v for k, v in kwargs.items()}
    return args, kwargs


def _error_payload(name: str, exc: BaseException) -> Any:
    from core.exceptions import ActorDiedError, TaskCancelledError, TaskError

    if isinstance(exc, (KeyboardInterrupt, _Cancelled)):
        return TaskCancelledError(f"task {name} was cancelled")
    if isinstance(exc, (ActorDiedError, TaskCancelledError)):
        return exc
    tb = traceback.format_exc()
    try:
        import cloudpickle

        cloudpickle.dumps(exc)
        cause = exc
    except Exception:  # an exception we cannot ship: keep its text
        cause = RuntimeError(f"{type(exc).__name__}: {exc}")
    return TaskError.for_cause(name, cause, tb)


class TaskRunner:
    """Runs one task message: plain function, generator (streaming), actor create or method."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self.actor: Any = None

    def run(self, task: dict) -> None:
        client = self.client
        task_id = task["task_id"]
        name = task["name"]
        env = task.get("env")
        saved_env = _apply_env(env) if env else None
        client.current_task = task_id
        t0 = time.perf_counter() - client.load_seconds   # the time loading functions is left out
        try:
            value = self._call(task)
            if task.get("streaming"):
                count = self._stream(task, value)
                results = count
            else:
                results = self._store_returns(task, value)
            error = None
        except BaseException as exc:  # noqa: BLE001 - reported to the driver
            if isinstance(exc, SystemExit):
                raise
            results = None
            error = _error_payload(name, exc)
        finally:
            client.current_task = None
            if saved_env is not None:
                _restore_env(saved_env)
        client.queue((P.DONE, task_id, results, error, time.perf_counter() - t0 - client.load_seconds))

    def _call(self, task: dict) -> Any:
        client = self.client
        args, kwargs = _resolve_args(client, task["args"])
        kind = task["kind"]
        if kind == "task":
            return _load_function(client, task["fn_id"])(*args, **kwargs)
        if kind == "actor_create":
            cls = _load_function(client, task["fn_id"])
            self.actor = cls(*args, **kwargs)
            return None
        if kind == "actor_method":
            if self.actor is None:
                from core.exceptions import ActorDiedError

                raise ActorDiedError(f"cannot run {task['name']}: the actor's constructor failed")
            return getattr(self.actor, task["method"])(*args, **kwargs)
        raise RuntimeError(f"unknown task kind {kind!r}")

    def _store_returns(self, task: dict, value: Any) -> list:
        return_ids = task["return_ids"]
        n = len(return_ids)
        if task.get("num_returns", 1) == 1:
            values = [value]
        else:
            values = list(value) if isinstance(value, (tuple, list)) else None
            if values is None or len(values) != n:
                got = f"{len(values)} values" if values is not None else type(value).__name__
                raise ValueError(f"task {task['name']} declared num_returns={n} but returned {got}")
        return [self.client.store_value(oid, v) for oid, v in zip(return_ids, values)]

    def _stream(self, task: dict, gen: Any) -> int:
        client = self.client
        task_id = task["task_id"]
        index = 0
        for item in gen:
            oid = return_id(task_id, index + 1)
            result = client.store_value(oid, item)
            client.queue((P.YIELD, task_id, index, result))
            client.flush()  # an item is available as soon as it is yielded
            index += 1
        return index


def _apply_env(env: dict) -> dict:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return saved


def _restore_env(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ─── main loop ──────────────────────────────────────────────────────────────────────────────────
def die_with_parent(name: str = "core-worker") -> None:
    """Ask the kernel to SIGKILL us when our parent (the driver, or the zygote) dies, so no worker
    outlives a killed driver; and name the process, as `ps` and `top` show it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, name.encode()[:15])  # PR_SET_NAME
    except OSError:
        pass


def extend_sys_path() -> None:
    """Import what the driver can import: its sys.path comes in DDSF_SYS_PATH."""
    extra_path = os.environ.get("DDSF_SYS_PATH")
    if extra_path:
        for p in reversed(extra_path.split(os.pathsep)):
            if p not in sys.path:
                sys.path.insert(0, p)


CANCEL_RETRY_S = 0.02  # a cancel that a finalizer swallowed is signalled again within this


def _install_cancel_handler(client: WorkerClient, ctl_fd: int) -> None:
    os.set_blocking(ctl_fd, False)
    cancelled: set[bytes] = set()
    interrupted: list[bytes | None] = [None]  # the task the last KeyboardInterrupt was for
    default_hook = sys.unraisablehook

    def on_sigint(signum, frame):
        try:
            data = os.read(ctl_fd, 1 << 16)
        except BlockingIOError:
            data = b""
        for i in range(0, len(data) - len(data) % 20, 20):
            cancelled.add(data[i:i + 20])
        if client.current_task is not None and client.current_task in cancelled:
            cancelled.discard(client.current_task)
            interrupted[0] = client.current_task
            raise KeyboardInterrupt

    def on_unraisable(unraisable) -> None:
        # The interrupt landed in a finalizer (a __del__, a weakref callback), where Python can
        # only print it and drop it: cancel again in a moment, once the finalizer has returned
        # (should that land in a finalizer too, this runs again; the jitter keeps a loop that
        # makes and drops objects from catching every retry in the same place).
        task = interrupted[0]
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and task is not None:
            interrupted[0] = None
            if client.current_task == task:
                cancelled.add(task)
                delay = random.uniform(0.1, 1.0) * CANCEL_RETRY_S
                retry = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
                retry.daemon = True
                retry.start()
            return
        default_hook(unraisable)

    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = on_unraisable
    client.cancelled = cancelled  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    fd, ctl_fd, worker_id, inline_threshold = (int(a) for a in argv[:4])
    die_with_parent()
    extend_sys_path()
    sock = socket.socket(fileno=fd)
    client = WorkerClient(sock, worker_id, inline_threshold)
    refs_mod.set_runtime(client)
    _install_cancel_handler(client, ctl_fd)
    try:
        P.send_frame(sock, (P.HELLO, worker_id, os.getpid()))
    except OSError:  # the driver shut down while we started: nothing to do
        os._exit(0)
    # numpy is what most task arguments need; import it while the worker waits for work. A task
    # starts only once it is done: two threads importing numpy at once can see it half made
    # ("partially initialized module"), and unpickling a task's function or arguments imports.
    preimport = threading.Thread(target=_preimport, daemon=True)
    preimport.start()
    runner = TaskRunner(client)
    tasks: deque[dict] = deque()
    last_flush = time.monotonic()
    try:
        while True:
            if not tasks and not client.inbox:
                client.flush()
                last_flush = time.monotonic()
                msgs = P.recv_blocking(sock, client.reader)
            else:
                msgs = _poll(sock, client)
            client.inbox.extend(msgs)
            while client.inbox:
                msg = client.inbox.popleft()
                if msg[0] == P.TASKS:
                    tasks.extend(msg[1])
                elif msg[0] == P.RECLAIM:  # the task we ran blocked: the driver took these back
                    taken = set(msg[1])
                    tasks = deque(t for t in tasks if t["task_id"] not in taken)
                elif msg[0] == "batch":
                    client.inbox.extendleft(reversed(msg[1]))
                else:
                    client.handle_async(msg) if msg[0] != P.REPLY else None
            if not tasks:
                continue
            task = tasks.popleft()
            if preimport is not None:
                preimport.join()
                preimport = None
            began = time.monotonic()
            if task["task_id"] in client.cancelled:  # type: ignore[attr-defined]
                client.cancelled.discard(task["task_id"])  # type: ignore[attr-defined]
                client.queue((P.DONE, task["task_id"], None, _error_payload(task["name"], _Cancelled()), 0.0))
            else:
                try:
                    runner.run(task)
                except KeyboardInterrupt:  # a cancel that landed between tasks: nothing to stop
                    pass
            now = time.monotonic()
            # A result is sent at once unless the task was tiny (then results go in batches): the
            # driver learns it is done while this worker runs the next one it was handed.
            if not tasks or len(client.outbox) >= BATCH_FLUSH or now - last_flush > FLUSH_INTERVAL \
                    or now - began > FAST_TASK:
                client.flush()
                last_flush = now
    except (EOFError, ConnectionError, BrokenPipeError):
        pass
    finally:
        os._exit(0)


def _preimport() -> None:
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass


def _poll(sock: socket.socket, client: WorkerClient) -> list[tuple]:
    """Messages already waiting, without blocking."""
    sock.setblocking(False)
    try:
        data = sock.recv(1 << 20)
    except (BlockingIOError, InterruptedError):
        return []
    finally:
        sock.setblocking(True)
    if not data:
        raise EOFError
    return client.reader.feed(data)


if __name__ == "__main__":
    main(sys.argv[1:])
