"""The worker process: runs tasks and actor methods sent by the driver.

    driver ──TASKS──► queue ──► resolve args (inline bytes, or a read-only view of a segment)
                                  ──► run ──► serialize results ──► DONE (batched) ──► driver
    task code calls core.get/put/remote ──► WorkerClient ──REQUEST/PUT/SUBMIT──► driver

A worker is started with `python -c "from core._private.local.worker import main; ..."` (or
forked by the zygote), inherits one end of a Unix socket pair and the read end of a control pipe,
and exits when the driver goes away (EOF on the socket, or SIGKILL from the kernel via
PR_SET_PDEATHSIG). It owns no objects: everything it makes is registered with the driver. Its
refs are borrows, reported to the driver in REFS messages that always precede the DONE of the
task that dropped or kept them.

Cancellation: the driver writes the task id to the control pipe and sends SIGINT; the handler
raises KeyboardInterrupt only if that id is the task running now.

Built objects (`core.build`): the zygote keeps their values in `BUILT`, and a worker it forks
afterwards finds them there, in pages it shares with the zygote and its siblings (the driver
sends the location ("inherited", oid, size)). A worker without one (forked before the build, or
started fresh), or asking for a writable copy, reads the copy in the store (COPY), which the
zygote writes once.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import mmap
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import cloudpickle

from core._private import runtime
from core._private.local.held_results import FLUSH_INTERVAL, HeldResults
from core._private.local.process import die_with_parent, extend_sys_path, install_cancel_handler
from core._private.local import messages as M
from core._private.local import protocol as P
from core._private.objects import shm
from core._private.objects.serialization import SerializedObject, deserialize, serialize
from core._private.refs import IdSource, ObjectRef, return_id
from core._private.taskspec import ArgPlaceholder, TaskSpec, pack_args, return_ids
from core._private.tasks import timeline as TL
from core._private.tasks.scheduler import FAST_TASK, demand
from core.exceptions import ActorDiedError, CoreError, TaskCancelledError, TaskError

# oid -> value made by core.build in the zygote (filled there, inherited by its forks; the same
# object for every task of this worker, as a model built before a pool forks: read it, do not
# change it)
BUILT: dict[bytes, Any] = {}

BATCH_FLUSH = 64          # results per DONE batch when more tasks are queued


class SegmentCache:
    """Read-only mappings of shared segments, kept for reuse: mapping a segment again would
    fault its pages in again. The driver says when a segment goes away (RELEASE_SEGMENTS)."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def view(self, name: str, size: int, *, writable: bool = False) -> memoryview:
        if writable:
            return memoryview(shm.map_segment(name, "copy", size))
        m = self._maps.get(name)
        if m is None or len(m) < size:
            m = shm.map_segment(name, "read", size)
            self._maps[name] = m
        return memoryview(m)[:size]

    def release(self, names: list[str]) -> None:
        for name in names:
            self._maps.pop(name, None)  # closed when the last view of it dies


class WorkerClient(runtime.DriverOnlyCalls):
    """The worker's runtime (`runtime.Runtime`): what `core.*`, remote functions and
    `ObjectRef`s call inside a worker. Objects and tasks go to the driver; refs are borrows."""

    def __init__(self, sock: socket.socket, worker_id: int, inline_threshold: int) -> None:
        self.sock = sock
        self.worker_id = worker_id
        self.inline_threshold = inline_threshold
        self.reader = P.FrameReader()
        self.segments = SegmentCache()
        self.inbox: deque[M.Message] = deque()  # Tasks etc. that arrived while waiting for a reply
        self.outbox: list[M.Message] = []
        # held by whoever touches the outbox or sends: the main thread, and HeldResults' thread
        # (which sends what a long task would otherwise keep waiting)
        self.send_lock = threading.Lock()
        self.ref_events: deque[tuple[str, bytes]] = deque()  # ("+"|"-"|"u", oid), lock-free
        self.counts: dict[bytes, int] = {}
        self.borrowed: set[bytes] = set()       # what the driver believes we hold
        self.functions: dict[bytes, Any] = {}
        self.sent_functions: set[bytes] = set()
        self.bytes_sent = 0
        self._req_ids = itertools.count(1)
        self._ids = IdSource()
        self.current_task: bytes | None = None
        self.cancelled: set[bytes] = set()      # ids the driver asked to cancel (control pipe)
        self.load_seconds = 0.0                 # spent unpickling functions (imports), not running
        self.ended: list = []                   # ENDEDs of the Dones in the outbox, flat (tasks/timeline.py)
        self.ended_names: list[str] = []        # their functions' names
        self.ended_errors: list[tuple[int, str]] = []   # (index among them, error text)

    def new_id(self, index: int = 0) -> bytes:
        return self._ids.new(index)

    # ── refs ──
    def add_local_ref(self, oid: bytes) -> None:
        self.ref_events.append(("+", oid))

    def remove_local_ref(self, oid: bytes) -> None:
        self.ref_events.append(("-", oid))

    def _ref_delta(self) -> M.Refs | None:
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
        return M.Refs(M.REFS, added, removed, unpinned)

    # ── sending ──
    def queue(self, msg: M.Message) -> None:
        delta = self._ref_delta()
        with self.send_lock:
            if delta:
                self.outbox.append(delta)
            self.outbox.append(msg)

    def done(self, task: M.TaskMessage, results: Any, error: Any, began: float, seconds: float) -> None:
        """Queue a task's Done and, if its Tasks message said when it was sent (the session
        records its timeline), its ENDED."""
        task_id = task["task_id"]
        ended = None
        t_sent = task.get("t_sent")
        if t_sent is not None:
            ended = M.ended(task, began, seconds, results, t_sent)
        delta = self._ref_delta()
        with self.send_lock:
            if delta:
                self.outbox.append(delta)
            self.outbox.append(M.Done(M.DONE, task_id, results, error, seconds))
            if ended is not None:
                if error is not None:
                    self.ended_errors.append((len(self.ended) // TL.ENDED_VALUES, TL.error_text(error)))
                self.ended += ended
                self.ended_names.append(task["name"])

    def flush(self) -> None:
        delta = self._ref_delta()
        with self.send_lock:
            if delta:
                self.outbox.append(delta)
            self._send_outbox()

    def flush_during(self, task_id: bytes) -> None:
        """Send what is queued if `task_id` is still running (HeldResults' thread): the queued
        messages and ref deltas were complete when queued, so they go as they are."""
        with self.send_lock:
            if self.current_task == task_id:
                self._send_outbox()

    def _send_outbox(self) -> None:
        if not self.outbox:
            return
        msgs, self.outbox = self.outbox, []
        if self.ended:   # first: the driver keeps a task's ENDED before it may retry the task
            msgs.insert(0, M.Ended(M.ENDED, TL.pack_endeds(self.ended), self.ended_names, self.ended_errors))
            self.ended = []
            self.ended_names = []
            self.ended_errors = []
        msg = msgs[0] if len(msgs) == 1 else M.Batch(M.BATCH, msgs)
        self.bytes_sent += P.send_frame(self.sock, msg)

    def request(self, op: str, args: M.RequestArgs) -> Any:
        """Send a request and block for its reply, queueing anything else that arrives."""
        req_id = next(self._req_ids)
        self.queue(M.Request(M.REQUEST, req_id, op, args))
        self.flush()
        reply = None
        while reply is None:
            pending = deque(P.recv_blocking(self.sock, self.reader))
            while pending:
                msg = pending.popleft()
                if msg.kind == M.BATCH:
                    pending.extendleft(reversed(msg.messages))
                elif msg.kind == M.REPLY and msg.request_id == req_id:
                    reply = msg
                else:
                    self.handle_async(msg)
        if not reply.ok:
            raise reply.payload
        return reply.payload

    def handle_async(self, msg: M.Message) -> None:
        """Messages that need no answer now: keep tasks for the main loop, apply the rest."""
        kind = msg.kind
        if kind == M.RELEASE_SEGMENTS:
            self.segments.release(msg.names)
        elif kind == M.FUNCTION:
            self.functions[msg.fn_id] = msg.blob
        elif kind == M.EXIT:
            os._exit(0)
        else:
            self.inbox.append(msg)

    # ── objects ──
    def materialize(self, oid: bytes, loc: tuple, *, writable: bool = False) -> Any:
        """Turn a location from the driver into a value (zero-copy for shared objects)."""
        kind = loc[0]
        if kind == "inline":
            return deserialize(loc[1])
        if kind == "shared":
            _, name, size = loc
            raw = self.segments.view(name, size, writable=writable)
            events = self.ref_events
            view = shm.pinned_view(raw, 0, size, lambda: events.append(("u", oid)), readonly=not writable)
            return deserialize(view, writable=writable)
        if kind == "error":
            raise loc[1]
        if kind == "inherited":
            value = BUILT.get(oid)
            if value is not None and not writable:
                return value
            # not forked after the build after all, or a private copy asked for: the store's copy
            return self.materialize(oid, self.request(M.COPY, M.CopyArgs(oid)), writable=writable)
        raise RuntimeError(f"unknown object location {kind!r}")

    def store_value(self, oid: bytes, value: Any) -> tuple:
        """Serialize a value made here; small ones travel inline, large ones are written
        straight into a segment the driver allocates. Returns (location-ish, contained ids)."""
        ser = serialize(value)
        return self._place(oid, ser), [r.binary for r in ser.contained_refs]

    def _place(self, oid: bytes, ser: SerializedObject) -> tuple:
        if ser.total_size <= self.inline_threshold:
            return ("inline", ser.to_bytes())
        name, size = self.request(M.CREATE, M.CreateArgs(oid, ser.total_size))
        dest = memoryview(shm.map_segment(name, "write", size))
        ser.write_to(dest)
        dest.release()
        return ("shared", ser.total_size)

    # ── the Runtime protocol inside a worker ──
    def put(self, value: Any) -> ObjectRef:
        return self.put_serialized(serialize(value))

    def put_serialized(self, ser: SerializedObject) -> ObjectRef:
        oid = self.new_id()
        result = self._place(oid, ser)
        self.queue(M.Put(M.PUT, oid, result, [r.binary for r in ser.contained_refs]))
        self.borrowed.add(oid)  # the driver counts our borrow from the Put itself
        self.counts[oid] = self.counts.get(oid, 0)
        return ObjectRef(oid)

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list:
        locs = self.request(M.GET, M.GetArgs([r.binary for r in refs], timeout))
        return [self.materialize(r.binary, loc, writable=writable) for r, loc in zip(refs, locs)]

    def wait(self, refs: list[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        num_returns = min(num_returns, len(refs))
        done = self.request(M.WAIT, M.WaitArgs([r.binary for r in refs], num_returns, timeout))
        ready = [r for r, d in zip(refs, done) if d][:num_returns]
        chosen = set(ready)
        return ready, [r for r in refs if r not in chosen]

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            fut.set_result(self.get([ref], None)[0])
        except BaseException as exc:  # noqa: BLE001 - handed to the future
            fut.set_exception(exc)
        return fut

    def submit(self, spec: TaskSpec) -> Any:
        """A task (or actor) submitted from inside a task: its return ids are made here and
        borrowed by this worker; the driver runs it."""
        if spec.streaming:
            raise CoreError(f"{spec.name}: num_returns=\"streaming\" is not supported for tasks "
                            f"submitted inside a task; return a list instead")
        task_id = self.new_id()
        rids = [task_id] if spec.kind == "actor_create" else return_ids(task_id, spec.num_returns)
        wire = self._wire(spec, task_id, rids)
        if spec.kind == "actor_create":
            blob = wire.pop("fn_blob", None) or spec.shipped.blob_and_id()[0]  # type: ignore[union-attr]
            return self.request(M.CREATE_ACTOR, M.CreateActorArgs(
                wire, blob, spec.options.get("max_restarts", 0)))
        self.queue(M.Submit(M.SUBMIT, wire))
        self.borrowed.update(rids)
        refs = [ObjectRef(oid) for oid in rids]
        return refs[0] if len(refs) == 1 else refs

    def _wire(self, spec: TaskSpec, task_id: bytes, rids: list[bytes]) -> M.WireTask:
        """The task as it travels to the driver: refs as ids, the function the first time."""
        opts = spec.options
        packed = pack_args(spec.args, spec.kwargs, self.inline_threshold, self.put_serialized)
        args = packed.args if packed.args[0] == "inline" else ("stored", packed.args[1].binary)
        wire: M.WireTask = {
            "task_id": task_id, "kind": spec.kind, "name": spec.name, "fn_id": None, "args": args,
            "arg_refs": [r.binary for r in packed.arg_refs], "held": [r.binary for r in packed.held],
            "return_ids": rids, "num_returns": len(rids), "streaming": False,
            "need": demand(opts.get("num_cpus", 0), opts.get("num_gpus", 0), opts.get("resources")),
            "max_retries": opts.get("max_retries", 0), "retry_exceptions": opts.get("retry_exceptions", False),
            "actor_id": task_id if spec.kind == "actor_create" else spec.actor_id, "method": spec.method}
        if spec.shipped is not None:
            blob, fn_id = spec.shipped.blob_and_id()
            wire["fn_id"] = fn_id
            if fn_id not in self.sent_functions:
                wire["fn_blob"] = blob
                self.sent_functions.add(fn_id)
        return wire

    def next_stream_item(self, task_id: bytes, index: int, timeout: float | None) -> ObjectRef | None:
        raise CoreError("streaming generators are not available inside a task")  # see submit

    def release_stream(self, task_id: bytes) -> None:
        pass  # never made here (see submit)

    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        self.request(M.CANCEL, M.CancelArgs(ref.binary, force))

    def kill_actor(self, actor_id: bytes) -> None:
        self.request(M.KILL, M.KillArgs(actor_id))

    def shutdown(self) -> None:
        pass  # the session is the driver's: the worker exits when the driver tells it to


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


def error_payload(name: str, exc: BaseException) -> Any:
    if isinstance(exc, (KeyboardInterrupt, _Cancelled)):
        return TaskCancelledError(f"task {name} was cancelled")
    if isinstance(exc, (ActorDiedError, TaskCancelledError)):
        return exc
    tb = traceback.format_exc()
    try:
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

    def run(self, task: M.TaskMessage) -> None:
        client = self.client
        task_id = task["task_id"]
        name = task["name"]
        env = task.get("env")
        saved_env = {k: os.environ.get(k) for k in env} if env else None
        if env:
            os.environ.update(env)
        client.current_task = task_id
        t0 = time.monotonic() - client.load_seconds   # the time loading functions is left out
        try:
            value = self._call(task)
            if task.get("streaming"):
                results = self._stream(task, value)
            else:
                results = self._store_returns(task, value)
            error = None
        except BaseException as exc:  # noqa: BLE001 - reported to the driver
            if isinstance(exc, SystemExit):
                raise
            results = None
            error = error_payload(name, exc)
        finally:
            with client.send_lock:   # HeldResults' thread sends only while a task runs
                client.current_task = None
            if saved_env is not None:
                _restore_env(saved_env)
        began = t0 + client.load_seconds      # when it ran: after loading its function, if it did
        client.done(task, results, error, began, time.monotonic() - began)

    def _call(self, task: M.TaskMessage) -> Any:
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
                raise ActorDiedError(f"cannot run {task['name']}: the actor's constructor failed")
            return getattr(self.actor, task["method"])(*args, **kwargs)
        raise RuntimeError(f"unknown task kind {kind!r}")

    def _store_returns(self, task: M.TaskMessage, value: Any) -> list:
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

    def _stream(self, task: M.TaskMessage, gen: Any) -> int:
        client = self.client
        task_id = task["task_id"]
        index = 0
        for item in gen:
            oid = return_id(task_id, index + 1)
            result = client.store_value(oid, item)
            client.queue(M.Yield(M.YIELD, task_id, index, result))
            client.flush()  # an item is available as soon as it is yielded
            index += 1
        return index


def _restore_env(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ─── main loop ──────────────────────────────────────────────────────────────────────────────────
def main(argv: list[str]) -> None:
    fd, ctl_fd, worker_id, inline_threshold = (int(a) for a in argv[:4])
    die_with_parent()
    extend_sys_path()
    sock = socket.socket(fileno=fd)
    client = WorkerClient(sock, worker_id, inline_threshold)
    runtime.set_current(client)
    install_cancel_handler(client, ctl_fd)
    try:
        P.send_frame(sock, M.Hello(M.HELLO, worker_id, os.getpid()))
    except OSError:  # the driver shut down while we started: nothing to do
        os._exit(0)
    # numpy is what most task arguments need; import it while the worker waits for work. A task
    # starts only once it is done: two threads importing numpy at once can see it half made
    # ("partially initialized module"), and unpickling a task's function or arguments imports.
    preimport = threading.Thread(target=_preimport, daemon=True)
    preimport.start()
    runner = TaskRunner(client)
    held = HeldResults(client)
    tasks: deque[M.TaskMessage] = deque()
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
                kind = msg.kind
                if kind == M.TASKS:
                    if msg.timeline is not None:   # the session records: each task's ENDED says when
                        for t in msg.tasks:
                            t["t_sent"] = msg.timeline
                    tasks.extend(msg.tasks)
                elif kind == M.RECLAIM:  # the task we ran blocked: the driver took these back
                    taken = set(msg.task_ids)
                    tasks = deque(t for t in tasks if t["task_id"] not in taken)
                elif kind == M.BATCH:
                    client.inbox.extendleft(reversed(msg.messages))
                elif kind != M.REPLY:  # a reply nobody waits for any more
                    client.handle_async(msg)
            if not tasks:
                continue
            task = tasks.popleft()
            if preimport is not None:
                preimport.join()
                preimport = None
            began = time.monotonic()
            if task["task_id"] in client.cancelled:
                client.cancelled.discard(task["task_id"])
                client.done(task, None, error_payload(task["name"], _Cancelled()), began, 0.0)
            else:
                held.starting(task["task_id"])
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


def _poll(sock: socket.socket, client: WorkerClient) -> list[M.Message]:
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

