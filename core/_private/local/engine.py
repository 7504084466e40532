"""The local engine: the driver side of a session on one machine.

    user thread ── put/get/wait/submit ──┐
                                         ▼
                               ┌─────────────────────┐   TASKS/REPLY/FUNCTION   ┌─────────┐
                               │ LocalEngine state   │ ───────────────────────► │ worker  │ ×N
                               │  objects, tasks,    │ ◄─────────────────────── │ process │
                               │  actors, workers    │  DONE/YIELD/REQUEST/REFS └─────────┘
                               └─────────┬───────────┘
                     io thread: select() over worker sockets, applies their messages
                                         │
                               ObjectStore (inline │ shared segments │ spilled)

All state lives in this one object, guarded by one lock. Two threads touch it: the caller's
(API calls) and the io thread (worker messages, timeouts, worker deaths). Socket writes never
block (`protocol.Channel`), so the lock is never held across a blocking wait on a worker.

Reference counting: every live `ObjectRef` in this process counts +1 for its id. Creating or
dropping one appends an event to a lock-free queue which is applied under the lock (so `__del__`,
which can run anywhere, never takes a lock). Workers' borrows arrive in REFS messages. An object
whose count drops to zero is deleted from the store, and with it the refs it contains and the
lineage (the task that made it) that held its arguments.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from core._private.local import protocol as P
from core._private import refs as refs_mod
from core._private.tasks import scheduler as S
from core._private.objects.store import NoRoomNow
from core._private.refs import IdSource, ObjectRef, return_id
from core._private.tasks.resources import ResourceLedger
from core._private.local.worker_pool import WorkerPool, WorkerProc
from core.exceptions import (
    ActorDiedError,
    CoreError,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

PENDING, READY, FAILED = 0, 1, 2
DRIVER = 0  # pin holder id of the driver itself
MAX_RECONSTRUCTIONS = 3


def _collecting_if_full(store_call: Callable[[], Any]) -> Any:
    """Run a store allocation; if the store is full of pinned objects, collect garbage once and
    retry: views caught in reference cycles (an exception's traceback, say) pin objects until
    the cyclic collector runs."""
    try:
        return store_call()
    except ObjectStoreFullError:
        import gc

        gc.collect()
        return store_call()


# ─── state records ──────────────────────────────────────────────────────────────────────────────
class Obj:
    """What the engine knows of one object. The bytes themselves are in the ObjectStore."""

    __slots__ = ("count", "status", "error", "task", "contained", "callbacks", "rebuilds", "inline")

    def __init__(self, status: int, task: "Task | None" = None, inline: bool = False) -> None:
        self.count = 0
        self.inline = inline
        self.status = status
        self.error: BaseException | None = None
        self.task = task              # lineage: the task that made it (None for put)
        self.contained: list = []     # ObjectRefs inside the value, kept alive with it
        self.callbacks: list[Callable[[], None]] | None = None
        self.rebuilds = 0


@dataclass(eq=False)
class Task:
    task_id: bytes
    kind: str                         # "task" | "actor_create" | "actor_method"
    name: str
    fn_id: bytes | None
    args: tuple                       # ("inline", bytes) | ("stored", ObjectRef)
    arg_refs: list                    # top-level ObjectRef arguments, in placeholder order
    held: list                        # every ref the arguments carry (kept alive until done)
    return_ids: list
    num_returns: int = 1
    streaming: bool = False
    need: dict = field(default_factory=dict)
    max_retries: int = 0
    retry_exceptions: Any = False
    actor_id: bytes | None = None
    method: str | None = None
    # life cycle
    state: str = "waiting"            # waiting | queued | running | done
    deps: int = 0
    worker: "WorkerProc | None" = None
    cancelled: bool = False
    gpu_ids: list = field(default_factory=list)
    pipelined: bool = False           # sent to a busy worker, to start after its current task


class Actor:
    def __init__(self, actor_id: bytes, name: str, create: Task, max_restarts: int, need: dict) -> None:
        self.actor_id = actor_id
        self.name = name
        self.create = create          # re-run on restart
        self.restarts_left = max_restarts
        self.need = need
        self.worker: WorkerProc | None = None
        self.holding = False          # `need` is taken from the ledger (from start to death)
        self.queue: deque[Task] = deque()   # calls not yet sent, in submission order
        self.dead = False
        self.death_cause = ""


class Stream:
    """Items of a streaming-generator task as they arrive."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.taken = 0
        self.finished = False
        self.error: BaseException | None = None


class _Locked:
    """`with engine.locked:` — takes the lock; applies queued ref events before releasing."""

    __slots__ = ("_engine",)

    def __init__(self, engine: "LocalEngine") -> None:
        self._engine = engine

    def __enter__(self) -> None:
        self._engine._lock.acquire()

    def __exit__(self, *exc) -> None:
        try:
            self._engine._apply_ref_events()
        finally:
            self._engine._lock.release()


# ─── the engine ─────────────────────────────────────────────────────────────────────────────────
class LocalEngine:
    def __init__(self, *, num_cpus: float | None, num_gpus: float | None,
                 resources: dict | None, object_store_memory: int | None, spill: Any,
                 inline_threshold: int, zygote: Any = None) -> None:
        from core._private.objects.store import ObjectStore
        from core._private.objects.shm import Session

        self.inline_threshold = inline_threshold
        cpus = float(os.cpu_count() or 1) if num_cpus is None else float(num_cpus)
        gpus = float(num_gpus or 0)
        self.total = {"CPU": cpus, "GPU": gpus, **{k: float(v) for k, v in (resources or {}).items()}}
        self.resources = ResourceLedger(self.total)
        self._owing: set[WorkerProc] = set()   # back from a nested get, its share not yet free
        self._pending_actors: deque[Actor] = deque()   # waiting for their resources, in order
        self._room_wait = False                # a task waits for room to restore its arguments
        self.free_gpus = list(range(int(gpus)))
        self.pool_size = max(1, int(cpus))
        self.max_workers = max(4, int(cpus) * 4)

        self._lock = threading.Lock()
        self.locked = _Locked(self)
        self._cond = threading.Condition(self._lock)
        self._ref_events: deque[tuple[int, bytes]] = deque()
        self._ids = IdSource()

        self.session = Session.start()
        try:
            self.store = ObjectStore(capacity=object_store_memory, spill=spill,
                                     inline_threshold=inline_threshold, session=self.session)
        except BaseException:
            self.session.close()
            raise

        self.objects: dict[bytes, Obj] = {}
        self.freed: set[bytes] = set()
        self.tasks: dict[bytes, Task] = {}
        self.by_return: dict[bytes, Task] = {}
        self.queue: deque[Task] = deque()
        self.waiting: dict[bytes, list[Task]] = {}
        self.streams: dict[bytes, Stream] = {}
        self.functions: dict[bytes, bytes] = {}
        self.fn_time: dict[bytes, float] = {}
        self.actors: dict[bytes, Actor] = {}
        self.requests: list[tuple] = []        # pending nested get/wait: (worker, req_id, op, args, deadline)
        self._futures_pool: concurrent.futures.ThreadPoolExecutor | None = None

        self.pool = WorkerPool(inline_threshold, self._on_io, zygote)
        self.workers = self.pool.workers       # wid -> WorkerProc, kept by the pool
        refs_mod.set_runtime(self)
        with self.locked:
            for _ in range(self.pool_size):
                self.pool.spawn(actor_id=None)
        self.pool.start()

    # ── ids ──
    def new_id(self, index: int = 0) -> bytes:
        return self._ids.new(index)

    # ── reference counting ──────────────────────────────────────────────────────────────────
    def add_local_ref(self, oid: bytes) -> None:
        self._ref_events.append((1, oid))
        self._try_apply()

    def remove_local_ref(self, oid: bytes) -> None:
        self._ref_events.append((-1, oid))
        self._try_apply()

    def _unpin_later(self, oid: bytes) -> None:
        self._ref_events.append((0, oid))
        self._try_apply()

    def _try_apply(self) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self._apply_ref_events()
            finally:
                self._lock.release()
        else:
            self.pool.wake()

    def _apply_ref_events(self) -> None:
        events = self._ref_events
        objects = self.objects
        while events:
            delta, oid = events.popleft()
            if delta == 0:
                self.store.unpin(oid, DRIVER)
                continue
            obj = objects.get(oid)
            if obj is None:
                continue
            obj.count += delta
            if obj.count <= 0:
                self._release(oid, obj)

    def _incref_counted(self, oid: bytes) -> ObjectRef | None:
        """A ref created under the lock (counted directly, not through the event queue)."""
        obj = self.objects.get(oid)
        if obj is None:
            return None
        obj.count += 1
        return ObjectRef(oid, _counted=True)

    def _decref(self, oid: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is not None:
            obj.count -= 1
            if obj.count <= 0:
                self._release(oid, obj)

    def _release(self, oid: bytes, obj: Obj) -> None:
        """Count reached zero: drop the object, its contained refs and its lineage."""
        del self.objects[oid]
        if obj.status != PENDING:
            self._store_delete(oid)
        obj.contained = []   # their __del__ queue decrements, applied by the loop we are in
        obj.task = None
        self.by_return.pop(oid, None)

    def _store_delete(self, oid: bytes) -> None:
        try:
            self.store.delete(oid)
        except KeyError:
            pass

    # ── objects ─────────────────────────────────────────────────────────────────────────────
    def put(self, value: Any) -> ObjectRef:
        from core._private.objects.serialization import serialize

        return self.put_serialized(serialize(value))

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list:
        oids = [r.binary for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.locked:
                self._wait_ready(oids, len(oids), deadline)
                plan = [self._read_plan(oid) for oid in oids]
            try:
                return [self._materialize(oid, p, writable) for oid, p in zip(oids, plan)]
            except ObjectLostError as lost:
                with self.locked:
                    self._recover_lost(lost.oid, lost)  # type: ignore[attr-defined]

    def _wait_ready(self, oids: list[bytes], num: int, deadline: float | None) -> None:
        while True:
            ready = 0
            for oid in oids:
                obj = self.objects.get(oid)
                if obj is None:
                    raise self._missing(oid)
                if obj.status != PENDING:
                    ready += 1
            if ready >= num:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                pending = [o.hex() for o in oids if self.objects[o].status == PENDING]
                raise GetTimeoutError(
                    f"{len(pending)} of {len(oids)} objects not ready after the timeout "
                    f"(first: {pending[0]}); raise `timeout` or check the tasks that make them")
            self._cond.wait(remaining if remaining is None else min(remaining, 1.0))

    def _missing(self, oid: bytes) -> ObjectLostError:
        if oid in self.freed:
            return ObjectLostError(f"object {oid.hex()} was freed with core.free(); it cannot be read again")
        return ObjectLostError(f"object {oid.hex()} is not in this session (its refs were all dropped, "
                               f"or it belongs to another session)")

    def _read_plan(self, oid: bytes) -> tuple:
        obj = self.objects[oid]
        if obj.status == FAILED:
            return ("error", obj.error)
        return ("inline",) if obj.inline else ("shared",)

    def _materialize(self, oid: bytes, plan: tuple, writable: bool) -> Any:
        from core._private.objects.serialization import deserialize

        kind = plan[0]
        if kind == "error":
            raise plan[1]
        try:
            if kind == "inline":
                view = self.store.view(oid, writable=writable)
            else:
                view = self.store.pinned_view(oid, holder=DRIVER, writable=writable)
        except ObjectLostError as exc:
            # Drop the store's frames: one of them may hold the exception (a reference cycle
            # through the traceback) and with it this frame, keeping pinned views alive.
            exc.oid = oid  # type: ignore[attr-defined]
            raise exc.with_traceback(None) from None
        return deserialize(view, writable=writable)

    def _recover_lost(self, oid: bytes, cause: ObjectLostError | None = None) -> None:
        """Rebuild a lost object by re-running its task (lineage), or say why we cannot (with
        `cause`, the store's own words: file gone, or corrupt)."""
        obj = self.objects.get(oid)
        if obj is None:
            raise self._missing(oid)
        task = obj.task
        if task is None:
            how = f" ({cause})" if cause is not None else ""
            raise ObjectLostError(
                f"object {oid.hex()} was lost (its shared-memory segment or spill file is gone or "
                f"corrupt) and cannot be rebuilt: it was stored with core.put, which keeps no "
                f"lineage{how}")
        if obj.rebuilds >= MAX_RECONSTRUCTIONS:
            raise ObjectLostError(f"object {oid.hex()} was lost {obj.rebuilds} times; giving up rebuilding it")
        if task.state != "done":
            return  # already being rebuilt
        for rid in task.return_ids:
            o = self.objects.get(rid)
            if o is not None:
                o.rebuilds += 1
                o.status = PENDING
                self._store_delete(rid)
        task.state = "waiting"
        task.worker = None
        self.tasks[task.task_id] = task
        self._enqueue(task)
        self._schedule()

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        if num_returns > len(refs):
            raise ValueError(f"num_returns={num_returns} is more than the {len(refs)} refs given")
        oids = [r.binary for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.locked:
            try:
                self._wait_ready(oids, num_returns, deadline)
            except GetTimeoutError:
                pass
            done = [self.objects[o].status != PENDING for o in oids]
        ready, not_ready = [], []
        for ref, d in zip(refs, done):
            (ready if d and len(ready) < num_returns else not_ready).append(ref)
        return ready, not_ready

    def free(self, refs: list[ObjectRef]) -> None:
        with self.locked:
            for r in refs:
                oid = r.binary
                obj = self.objects.pop(oid, None)
                if obj is None:
                    continue
                self.freed.add(oid)
                if obj.status != PENDING:
                    self._store_delete(oid)
                obj.contained = []
                obj.task = None

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        oid = ref.binary

        def resolve() -> None:
            def run() -> None:
                try:
                    fut.set_result(self.get([ref], None)[0])
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    fut.set_exception(exc)
            self._pool().submit(run)

        with self.locked:
            obj = self.objects.get(oid)
            if obj is not None and obj.status == PENDING:
                if obj.callbacks is None:
                    obj.callbacks = []
                obj.callbacks.append(resolve)
                return fut
        resolve()
        return fut

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._futures_pool is None:
            self._futures_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="core-futures")
        return self._futures_pool

    # ── the runtime interface used by remote_function / actor ──────────────────────────────
    def put_serialized(self, ser: Any) -> ObjectRef:
        oid = self.new_id()
        _collecting_if_full(lambda: self.store.put(oid, ser))
        obj = Obj(READY, inline=ser.total_size <= self.inline_threshold)
        obj.contained = ser.contained_refs
        with self.locked:
            self.objects[oid] = obj
        return ObjectRef(oid)

    def submit_task(self, spec: dict, fn_blob: bytes | None) -> None:
        if fn_blob is not None:
            self.register_function(spec["fn_id"], fn_blob)
        self.submit(Task(**spec))

    def create_actor_task(self, *, name: str, shipped: Any, args: tuple, kwargs: dict, options: dict) -> bytes:
        from core._private.remote_function import pack_args

        blob, fn_id = shipped.blob_and_id()
        self.register_function(fn_id, blob)
        args_spec, arg_refs, held = pack_args(self, args, kwargs)
        task_id = self.new_id()
        create = Task(task_id=task_id, kind="actor_create", name=name, fn_id=fn_id, args=args_spec,
                      arg_refs=arg_refs, held=held, return_ids=[task_id], actor_id=task_id)
        need = S.demand(options.get("num_cpus", 0), options.get("num_gpus", 0), options.get("resources"))
        with self.locked:
            self._create_actor(create, options.get("max_restarts", 0), need)
        return task_id

    # ── tasks ───────────────────────────────────────────────────────────────────────────────
    def register_function(self, fn_id: bytes, blob: bytes) -> None:
        if fn_id not in self.functions:
            self.functions[fn_id] = blob

    def submit(self, task: Task) -> None:
        """Queue a task submitted by the driver, which owns its return objects."""
        bad = S.infeasible(task.need, self.total)
        if bad and task.kind != "actor_method":
            asked = ", ".join(f"{k}={v[0]:g} (the session has {v[1]:g})" for k, v in bad.items())
            raise CoreError(f"task {task.name} can never run here: it asks for {asked}; "
                            f"pass more to core.init(...) or ask for less in .options(...)")
        with self.locked:
            if self._register_task(task, owner=None):
                self._enqueue(task)
                self._schedule()

    def _register_task(self, task: Task, owner: WorkerProc | None) -> bool:
        """Record a new task and its pending return objects (lock held). Returns False if it
        was failed at once (a call on a dead actor)."""
        for oid in task.return_ids:
            obj = Obj(PENDING, task)
            if owner is not None:  # a worker submitted it: the worker borrows its returns
                obj.count = 1
                owner.borrowed.add(oid)
            self.objects[oid] = obj
            self.by_return[oid] = task
        self.tasks[task.task_id] = task
        if task.streaming:
            self.streams[task.task_id] = Stream()
        if task.kind == "actor_method":
            actor = self.actors.get(task.actor_id)
            if actor is None or actor.dead:
                cause = actor.death_cause if actor else "it does not exist"
                self._finish_failed(task, ActorDiedError(f"cannot call {task.name}: the actor is dead ({cause})"))
                return False
        return True

    def _enqueue(self, task: Task) -> None:
        """Queue `task` once its top-level ref arguments are ready."""
        task.deps = 0
        for ref in task.arg_refs + ([task.args[1]] if task.args[0] == "stored" else []):
            obj = self.objects.get(ref.binary)
            if obj is not None and obj.status == PENDING:
                task.deps += 1
                self.waiting.setdefault(ref.binary, []).append(task)
        if task.kind == "actor_method":
            task.state = "queued"
            self.actors[task.actor_id].queue.append(task)
        elif task.deps == 0:
            task.state = "queued"
            self.queue.append(task)
        else:
            task.state = "waiting"

    def _deps_ready(self, oid: bytes) -> None:
        for task in self.waiting.pop(oid, ()):
            task.deps -= 1
            if task.deps == 0 and task.kind != "actor_method" and task.state == "waiting":
                task.state = "queued"
                self.queue.append(task)

    def _schedule(self) -> None:
        """Hand queued tasks to idle workers while resources and memory allow (lock held)."""
        self._room_wait = False
        if self._owing:
            self._retake_shares()
        if self._pending_actors:
            self._start_pending_actors()
        for actor in self.actors.values():
            if actor.queue and actor.worker is not None and not actor.dead:
                self._dispatch_actor(actor)
        if not self.queue or self._owing:
            return   # a worker back from a nested get takes its share before new tasks start
        idle = [w for w in self.workers.values()
                if w.alive and w.actor_id is None and not w.inflight and not w.blocked]
        while self.queue:
            task = self.queue[0]
            if task.cancelled or task.state != "queued":
                self.queue.popleft()
                continue
            if not self.resources.fits(task.need):
                break
            if self._admission(task) == "wait":
                self._room_wait = True
                break
            if not idle:
                live = sum(1 for w in self.workers.values() if w.alive and w.actor_id is None)
                starting = sum(1 for w in self.workers.values()
                               if w.alive and w.actor_id is None and not w.started)
                if S.should_spawn(0, starting, live, self.max_workers, len(self.queue)):
                    idle.append(self.pool.spawn(actor_id=None))
                else:
                    break
            worker = idle.pop()
            n = S.batch_size(self.fn_time.get(task.fn_id), len(self.queue), len(idle) + 1)
            batch = [self.queue.popleft()]
            while len(batch) < n and self.queue and self.queue[0].fn_id == task.fn_id \
                    and self.queue[0].need == task.need and not self.queue[0].streaming:
                batch.append(self.queue.popleft())
            self._hold(worker, task.need, f"task {task.name}")
            self._dispatch(worker, batch)
        self._pipeline()

    # ── resources: every take and give-back of a worker's or an actor's share ───────────────
    def _hold(self, worker: WorkerProc, need: dict, what: str) -> None:
        self.resources.acquire(need, what)
        worker.held_need = need
        worker.holding = True

    def _unhold(self, worker: WorkerProc, keep_need: bool = False) -> None:
        """Give back the worker's share if it holds it (once: a blocked worker already did)."""
        self._owing.discard(worker)
        if worker.holding:
            self.resources.release(worker.held_need, f"worker {worker.wid}")
            worker.holding = False
        if not keep_need:
            worker.held_need = {}

    def _retake_shares(self) -> None:
        """Workers back from a nested get/wait run again: they take their share back before any
        new task starts, each as soon as it fits (the CPU may have gone to a nested task)."""
        for worker in list(self._owing):
            if not worker.alive or worker.blocked or not worker.inflight or worker.holding:
                self._owing.discard(worker)
            elif self.resources.fits(worker.held_need):
                self._owing.discard(worker)
                self._hold(worker, worker.held_need, f"worker {worker.wid}")

    def _start_pending_actors(self) -> None:
        """Actors waiting for their resources start in creation order as their share frees up."""
        while self._pending_actors:
            actor = self._pending_actors[0]
            if not actor.dead and not self.resources.fits(actor.need):
                return
            self._pending_actors.popleft()     # first: _start_actor schedules again
            if not actor.dead:
                self._hold_actor(actor)
                self._start_actor(actor)

    def _hold_actor(self, actor: Actor) -> None:
        self.resources.acquire(actor.need, f"actor {actor.name}")
        actor.holding = True

    def _pipeline(self) -> None:
        """Queued short tasks go to busy workers as their next task (scheduler.pipelined). The
        worker already holds what the task needs; it runs the two one after the other."""
        for worker in self.workers.values():
            while self.queue and (self.queue[0].cancelled or self.queue[0].state != "queued"):
                self.queue.popleft()
            if not self.queue:
                return
            task = self.queue[0]
            if (worker.alive and worker.actor_id is None and not worker.blocked and worker.holding
                    and len(worker.inflight) == 1 and not worker.inflight[0].streaming
                    and not task.streaming and worker.held_need == task.need
                    and "GPU" not in task.need  # its devices are picked when it is sent
                    and S.pipelined(self.fn_time.get(task.fn_id))):
                if self._admission(task) == "wait":
                    self._room_wait = True
                    return
                self.queue.popleft()
                task.pipelined = True
                self._dispatch(worker, [task])

    def _reclaim(self, worker: WorkerProc) -> None:
        """Take back the tasks queued behind a worker's running task: it blocked, maybe waiting
        for one of them. Sent before the reply to its request, so it drops them before it could
        start one; they go back to the front of the queue."""
        queued = [t for t in list(worker.inflight)[1:] if t.pipelined]
        if not queued or worker.actor_id is not None:
            return
        worker.inflight = deque(list(worker.inflight)[:1] + [t for t in list(worker.inflight)[1:]
                                                              if not t.pipelined])
        worker.chan.send((P.RECLAIM, [t.task_id for t in queued]))
        for task in reversed(queued):
            task.state, task.worker, task.pipelined = "queued", None, False
            self.queue.appendleft(task)

    def _dispatch_actor(self, actor: Actor) -> None:
        batch = []
        while actor.queue and actor.queue[0].deps == 0:
            t = actor.queue.popleft()
            if not t.cancelled:
                batch.append(t)
        if batch:
            self._dispatch(actor.worker, batch)

    def _dispatch(self, worker: WorkerProc, batch: list[Task]) -> None:
        msgs = []
        deferred: list[Task] = []
        for task in batch:
            decision = "wait" if deferred else self._admission(task)
            if decision == "wait":
                deferred.append(task)
                continue
            try:
                msgs.append(self._task_message(worker, task, wait_for_room=decision == "try"))
            except NoRoomNow:            # the room went to someone else meanwhile: wait
                deferred.append(task)
                continue
            except ObjectLostError as exc:
                self._arg_lost(task, exc)
                continue
            except BaseException as exc:  # an argument failed upstream: fail without running
                self._finish_failed(task, exc)
                continue
            task.state = "running"
            task.worker = worker
            worker.inflight.append(task)
        if deferred:
            self._requeue_front(worker, deferred)
        if msgs:
            worker.chan.send((P.TASKS, msgs))
        elif worker.actor_id is None and not worker.inflight:
            self._unhold(worker)

    def _requeue_front(self, worker: WorkerProc, tasks: list[Task]) -> None:
        """Tasks whose arguments cannot be restored yet go back to the head of their queue."""
        self._room_wait = True
        for task in tasks:
            task.pipelined = False
        if worker.actor_id is not None:
            actor = self.actors.get(worker.actor_id)
            if actor is not None:
                actor.queue.extendleft(reversed(tasks))
        else:
            self.queue.extendleft(reversed(tasks))

    def _admission(self, task: Task) -> str:
        """scheduler.admit for `task`'s top-level arguments (cheap when none is spilled)."""
        if not task.arg_refs and task.args[0] == "inline":
            return "now"                 # the common case of small tasks: nothing to restore
        oids = [r.binary for r in task.arg_refs]
        if task.args[0] == "stored":
            oids.append(task.args[1].binary)
        sizes = self.store.restore_sizes(oids) if oids else None
        if not sizes:
            return "now"
        pins_will_free = any(w.alive and w.inflight and not w.blocked for w in self.workers.values())
        return S.admit(sizes, self.store.room(), pins_will_free)

    def _arg_lost(self, task: Task, exc: ObjectLostError) -> None:
        oid = getattr(exc, "oid", None)
        try:
            if oid is None:
                raise exc
            self._recover_lost(oid, exc)
        except ObjectLostError as final:
            self._finish_failed(task, final)
            return
        task.state = "waiting"
        self._enqueue(task)

    def _task_message(self, worker: WorkerProc, task: Task, wait_for_room: bool = True) -> dict:
        if task.fn_id is not None and task.fn_id not in worker.known_fns:
            blob = self.functions[task.fn_id]
            worker.chan.send((P.FUNCTION, task.fn_id, blob))
            worker.known_fns.add(task.fn_id)
            worker.function_bytes += len(blob)
        located: list[bytes] = []       # pinned for the worker: unpinned if the task is not sent

        def locate(oid: bytes) -> tuple:
            loc = self._locate_for(worker, oid, wait_for_room)
            located.append(oid)
            return loc

        try:
            arg_locs = [(r.binary, locate(r.binary)) for r in task.arg_refs]
            if task.args[0] == "inline":
                args = ("inline", task.args[1], arg_locs)
            else:
                oid = task.args[1].binary
                args = ("stored", (oid, locate(oid)), arg_locs)
        except BaseException:
            for oid in located:
                self.store.unpin(oid, worker.wid)
            raise
        env = None
        if task.need.get("GPU"):
            task.gpu_ids = S.pick_gpus(task.need["GPU"], self.free_gpus)
            self.free_gpus = [g for g in self.free_gpus if g not in task.gpu_ids]
            env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, task.gpu_ids))}
        return {"task_id": task.task_id, "kind": task.kind, "fn_id": task.fn_id, "name": task.name,
                "method": task.method, "args": args, "return_ids": task.return_ids,
                "num_returns": task.num_returns, "streaming": task.streaming, "env": env}

    def _locate_for(self, worker: WorkerProc, oid: bytes, wait_for_room: bool = True) -> tuple:
        obj = self.objects.get(oid)
        if obj is None:
            raise self._missing(oid)
        if obj.status == FAILED:
            raise obj.error
        try:
            return self.store.locate(oid, worker.wid, wait_for_room=wait_for_room)
        except ObjectLostError as exc:
            exc.oid = oid  # type: ignore[attr-defined]
            raise

    # ── results ─────────────────────────────────────────────────────────────────────────────
    def _on_done(self, worker: WorkerProc, task_id: bytes, results: Any, error: Any, seconds: float) -> None:
        task = self.tasks.get(task_id)
        if worker.inflight and worker.inflight[0].task_id == task_id:
            worker.inflight.popleft()
        else:
            worker.inflight = deque(t for t in worker.inflight if t.task_id != task_id)
        if task is None:
            self._discard_results(task_id, results)
            return
        if task.fn_id is not None and error is None:
            prev = self.fn_time.get(task.fn_id)
            self.fn_time[task.fn_id] = seconds if prev is None else 0.8 * prev + 0.2 * seconds
        if task.gpu_ids:
            self.free_gpus.extend(task.gpu_ids)
            task.gpu_ids = []
        if worker.actor_id is None and not worker.inflight:
            self._unhold(worker)
        if error is not None:
            if isinstance(error, TaskError) and self._retry_app_error(task, error):
                return
            if task.kind == "actor_create":
                self._actor_create_failed(task, error)
            self._finish_failed(task, error)
            return
        if task.streaming:
            stream = self.streams.get(task_id)
            if stream is not None:
                stream.finished = True
            self._complete(task)
            return
        for oid, result in zip(task.return_ids, results):
            self._seal(oid, result, worker)
        self._complete(task)

    def _seal(self, oid: bytes, result: tuple, worker: WorkerProc | None) -> None:
        (loc, contained) = result
        if loc[0] == "inline":
            self.store.put_inline(oid, loc[1])
        else:
            self.store.seal(oid)
        obj = self.objects.get(oid)
        if obj is None:
            self._store_delete(oid)
            return
        obj.inline = loc[0] == "inline"
        obj.contained = [r for r in (self._incref_counted(c) for c in contained) if r is not None]
        self._set_ready(oid, obj)

    def _set_ready(self, oid: bytes, obj: Obj) -> None:
        obj.status = READY
        self._deps_ready(oid)
        self._fire(obj)

    def _fire(self, obj: Obj) -> None:
        if obj.callbacks:
            cbs, obj.callbacks = obj.callbacks, None
            for cb in cbs:
                cb()

    def _complete(self, task: Task) -> None:
        task.state = "done"
        task.worker = None
        self.tasks.pop(task.task_id, None)
        # Arguments are no longer needed to run it; lineage keeps them only through task.held
        # when a return object still exists (task is referenced from Obj.task).
        self._cond.notify_all()

    def _finish_failed(self, task: Task, error: BaseException) -> None:
        for oid in task.return_ids:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.status = FAILED
                obj.error = error
                obj.task = None
                self._deps_ready(oid)
                self._fire(obj)
        stream = self.streams.get(task.task_id)
        if stream is not None:
            stream.error = error
            stream.finished = True
        task.state = "done"
        task.worker = None
        task.held = []
        self.tasks.pop(task.task_id, None)
        self._cond.notify_all()

    def _retry_app_error(self, task: Task, error: TaskError) -> bool:
        retry = task.retry_exceptions
        if not retry or task.max_retries == 0 or task.cancelled:
            return False
        if isinstance(retry, (list, tuple)) and not isinstance(error.cause, tuple(retry)):
            return False
        if task.max_retries > 0:
            task.max_retries -= 1
        self._enqueue(task)
        return True

    def _discard_results(self, task_id: bytes, results: Any) -> None:
        """Results of a task nobody waits for any more (cancelled, failed over): a shared
        result was written into a segment the store reserved, so seal it and free it."""
        if not isinstance(results, list):
            return
        ids = [task_id] if len(results) == 1 else \
            [return_id(task_id, i) for i in range(len(results))]
        for oid, (loc, _contained) in zip(ids, results):
            if loc[0] == "shared" and oid not in self.objects:
                try:
                    self.store.seal(oid)
                except CoreError:
                    pass
                self._store_delete(oid)

    def _on_yield(self, worker: WorkerProc, task_id: bytes, index: int, result: tuple) -> None:
        stream = self.streams.get(task_id)
        oid = return_id(task_id, index + 1)
        if stream is None:
            self._store_delete(oid)
            return
        obj = Obj(PENDING)
        obj.count = 1  # held by the stream until the consumer takes its ref
        self.objects[oid] = obj
        self._seal(oid, result, worker)
        stream.items.append(oid)
        self._cond.notify_all()

    def next_stream_item(self, task_id: bytes, index: int, timeout: float | None) -> ObjectRef | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.locked:
            while True:
                stream = self.streams.get(task_id)
                if stream is None:
                    return None
                if index < len(stream.items):
                    oid = stream.items[index]
                    stream.taken = index + 1
                    ref = self._incref_counted(oid)
                    self._decref(oid)  # the stream's hold passes to the consumer's ref
                    return ref
                if stream.finished:
                    if stream.error is not None:
                        err, stream.error = stream.error, None
                        raise err
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise GetTimeoutError(f"no item from the stream of task {task_id.hex()} within the timeout")
                self._cond.wait(remaining)

    def release_stream(self, task_id: bytes) -> None:
        """The consumer dropped the generator: release the items it never took."""
        with self.locked:
            stream = self.streams.pop(task_id, None)
            if stream is not None:
                for oid in stream.items[stream.taken:]:
                    self._decref(oid)

    # ── cancel / kill ───────────────────────────────────────────────────────────────────────
    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        with self.locked:
            task = self.by_return.get(ref.binary)
            if task is None or task.state == "done":
                return
            task.cancelled = True
            if task.state in ("waiting", "queued"):
                if task.kind == "actor_method":
                    actor = self.actors.get(task.actor_id)
                    if actor and task in actor.queue:
                        actor.queue.remove(task)
                self._finish_failed(task, TaskCancelledError(f"task {task.name} was cancelled before it ran"))
                return
            worker = task.worker
        if worker is not None and worker.alive:
            try:
                os.write(worker.ctl_fd, task.task_id)
                if force:
                    worker.proc.kill()
                else:
                    os.kill(worker.proc.pid, signal.SIGINT)
            except OSError:
                pass

    def _create_actor(self, create: Task, max_restarts: int, need: dict) -> None:
        bad = S.infeasible(need, self.total)
        if bad:
            asked = ", ".join(f"{k}={v[0]:g} (the session has {v[1]:g})" for k, v in bad.items())
            raise CoreError(f"actor {create.name} can never start here: it asks for {asked}")
        actor = Actor(create.task_id, create.name, create, max_restarts, need)
        self.actors[create.task_id] = actor
        if self._pending_actors or not self.resources.fits(need):
            self._pending_actors.append(actor)   # started by _schedule once its share is free
            return
        self._hold_actor(actor)
        self._start_actor(actor)

    def _start_actor(self, actor: Actor) -> None:
        create = actor.create
        for oid in create.return_ids:
            self.objects.setdefault(oid, Obj(PENDING, None)).status = PENDING
        self.tasks[create.task_id] = create
        actor.worker = self.pool.spawn(actor_id=actor.actor_id)
        create.state = "queued"
        create.deps = 0
        actor.queue.appendleft(create)
        for ref in create.arg_refs:
            obj = self.objects.get(ref.binary)
            if obj is not None and obj.status == PENDING:
                create.deps += 1
                self.waiting.setdefault(ref.binary, []).append(create)
        self._schedule()

    def _actor_create_failed(self, task: Task, error: BaseException) -> None:
        actor = self.actors.get(task.actor_id or task.task_id)
        if actor is None:
            return
        actor.dead = True
        actor.death_cause = f"its constructor raised: {error}"
        self._fail_actor_calls(actor)
        if actor.worker is not None:
            actor.worker.chan.send((P.EXIT,))

    def kill_actor(self, actor_id: bytes) -> None:
        with self.locked:
            actor = self.actors.get(actor_id)
            if actor is None or actor.dead:
                return
            actor.dead = True
            actor.restarts_left = 0
            actor.death_cause = "it was killed with core.kill()"
            worker = actor.worker
            self._fail_actor_calls(actor)
        if worker is not None:
            worker.proc.kill()

    def _fail_actor_calls(self, actor: Actor) -> None:
        err = ActorDiedError(f"actor {actor.name} is dead: {actor.death_cause}")
        while actor.queue:
            self._finish_failed(actor.queue.popleft(), err)
        if actor.worker is not None:
            for t in list(actor.worker.inflight):
                self._finish_failed(t, err)
            actor.worker.inflight.clear()
        if actor.holding:
            self.resources.release(actor.need, f"actor {actor.name}")
            actor.holding = False

    # ── workers ─────────────────────────────────────────────────────────────────────────────
    def _on_worker_death(self, worker: WorkerProc) -> None:
        """A worker's socket closed: give back what it held, retry or fail what it ran."""
        if not worker.alive:
            return
        how = self.pool.reap(worker)
        self.store.unpin_all(worker.wid)
        for oid in worker.borrowed:
            self._decref(oid)
        worker.borrowed.clear()
        self.requests = [r for r in self.requests if r[0] is not worker]
        if worker.actor_id is None:
            self._unhold(worker)
            for i, task in enumerate(worker.inflight):
                if task.gpu_ids:
                    self.free_gpus.extend(task.gpu_ids)
                    task.gpu_ids = []
                if task.pipelined and i > 0:  # queued behind the running task: it never started
                    task.state, task.worker, task.pipelined = "queued", None, False
                    self.queue.appendleft(task)
                elif task.cancelled:
                    self._finish_failed(task, TaskCancelledError(f"task {task.name} was cancelled"))
                elif task.max_retries != 0:
                    if task.max_retries > 0:
                        task.max_retries -= 1
                    task.state = "queued"
                    task.worker = None
                    self.queue.appendleft(task)
                else:
                    self._finish_failed(task, WorkerCrashedError(
                        f"the worker running task {task.name} died ({how}) and it has no retries left "
                        f"(max_retries); pid {worker.proc.pid}"))
            worker.inflight.clear()
            live = sum(1 for w in self.workers.values() if w.alive and w.actor_id is None)
            if not self.pool.closing and live < self.pool_size:
                self.pool.spawn(actor_id=None)
        else:
            self._on_actor_worker_death(worker, how)
        self._schedule()
        self._cond.notify_all()

    def _on_actor_worker_death(self, worker: WorkerProc, how: str) -> None:
        actor = self.actors.get(worker.actor_id)
        if actor is None or actor.worker is not worker:
            return
        err = ActorDiedError(f"actor {actor.name} died ({how}) while running this call")
        for t in list(worker.inflight):
            if t.kind == "actor_create":
                continue
            self._finish_failed(t, err)
        worker.inflight.clear()
        actor.worker = None
        if actor.dead or self.pool.closing:
            return
        if actor.restarts_left != 0:
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            self._start_actor(actor)
        else:
            actor.dead = True
            actor.death_cause = f"its process died ({how}) and max_restarts is used up"
            self._fail_actor_calls(actor)

    # ── worker requests (nested core calls inside tasks) ────────────────────────────────────
    def _on_request(self, worker: WorkerProc, req_id: int, op: str, args: tuple) -> None:
        try:
            if op == "get":
                oids, timeout = args
                self._begin_blocking(worker, req_id, "get", oids, len(oids), timeout)
            elif op == "wait":
                oids, num, timeout = args
                self._begin_blocking(worker, req_id, "wait", oids, num, timeout)
            elif op == "create":
                oid, size = args
                self._pool().submit(self._create_for, worker, req_id, oid, size)
            elif op == "cancel":
                self._reply(worker, req_id, True, None)
                threading.Thread(target=self.cancel, args=(ObjectRef(args[0], _counted=True), args[1])).start()
            elif op == "kill":
                self._reply(worker, req_id, True, None)
                threading.Thread(target=self.kill_actor, args=(args[0],)).start()
            elif op == "create_actor":
                self._reply(worker, req_id, True, self._create_actor_from_worker(worker, *args))
            elif op == "resources":
                self._reply(worker, req_id, True, (dict(self.total), self.resources.snapshot()))
            else:
                raise CoreError(f"unknown request {op!r} from worker {worker.wid}")
        except BaseException as exc:  # noqa: BLE001 - sent back to the worker
            self._reply(worker, req_id, False, exc)

    def _create_actor_from_worker(self, worker: WorkerProc, spec: dict, fn_blob: bytes,
                                  max_restarts: int) -> bytes:
        create = self._task_from_wire({**spec, "fn_blob": fn_blob})
        self._create_actor(create, max_restarts, create.need)
        return create.task_id

    def _create_for(self, worker: WorkerProc, req_id: int, oid: bytes, size: int) -> None:
        try:
            self._reply(worker, req_id, True, _collecting_if_full(lambda: self.store.create(oid, size)))
        except BaseException as exc:  # noqa: BLE001
            self._reply(worker, req_id, False, exc)

    def _reply(self, worker: WorkerProc, req_id: int, ok: bool, payload: Any) -> None:
        worker.chan.send((P.REPLY, req_id, ok, payload))

    def _begin_blocking(self, worker, req_id, op, oids, num, timeout) -> None:
        for oid in oids:
            if oid not in self.objects:
                raise self._missing(oid)
        deadline = None if timeout is None else time.monotonic() + timeout
        req = (worker, req_id, op, oids, num, deadline)
        if not self._try_answer(req):
            self._reclaim(worker)
            worker.blocked += 1
            if worker.actor_id is None and worker.blocked == 1:
                self._unhold(worker, keep_need=True)   # its CPU is free while it waits
            self.requests.append(req)
            self._schedule()

    def _try_answer(self, req: tuple, *, expired: bool = False) -> bool:
        worker, req_id, op, oids, num, deadline = req
        done = [self.objects.get(o) is None or self.objects[o].status != PENDING for o in oids]
        if sum(done) < num and not expired:
            return False
        if op == "wait":
            self._reply(worker, req_id, True, done)
            return True
        if sum(done) < num:
            self._reply(worker, req_id, False, GetTimeoutError(
                f"{len(oids) - sum(done)} of {len(oids)} objects not ready after the timeout"))
            return True
        locs = []
        for oid in oids:
            try:
                obj = self.objects.get(oid)
                if obj is None:
                    raise self._missing(oid)
                if obj.status == FAILED:
                    locs.append(("error", obj.error))
                else:
                    locs.append(self.store.locate(oid, worker.wid))
            except ObjectLostError as exc:
                exc.oid = oid  # type: ignore[attr-defined]
                try:
                    self._recover_lost(oid, exc)
                    return False  # answered when rebuilt
                except ObjectLostError as final:
                    locs.append(("error", final))
        self._reply(worker, req_id, True, locs)
        return True

    def _answer_requests(self, now: float | None = None) -> None:
        if not self.requests:
            return
        keep = []
        for req in self.requests:
            expired = now is not None and req[5] is not None and now >= req[5]
            if self._try_answer(req, expired=expired):
                worker = req[0]
                worker.blocked -= 1
                if worker.actor_id is None and worker.blocked == 0 and worker.inflight:
                    self._owing.add(worker)            # its share back as soon as it fits
            else:
                keep.append(req)
        self.requests = keep

    # ── io thread ───────────────────────────────────────────────────────────────────────────
    def _on_io(self, msgs: list[tuple[WorkerProc, tuple]], dead: list[WorkerProc]) -> None:
        """Called by the pool's io thread after each select(): apply what the workers said."""
        released = self.store.released_segments
        if released:
            names = [released.popleft() for _ in range(len(released))]
            self.pool.broadcast((P.RELEASE_SEGMENTS, names))
        with self.locked:
            for worker, m in msgs:
                self._handle(worker, m)
            for worker in dead:
                self._on_worker_death(worker)
            self._answer_requests(time.monotonic())
            if msgs or self._room_wait:   # a task waiting for room: pins may be gone by now
                self._schedule()
                self._cond.notify_all()

    def _handle(self, worker: WorkerProc, msg: tuple) -> None:
        kind = msg[0]
        if kind == "batch":
            for m in msg[1]:
                self._handle(worker, m)
        elif kind == P.DONE:
            self._on_done(worker, msg[1], msg[2], msg[3], msg[4])
        elif kind == P.REFS:
            _, added, removed, unpinned = msg
            for oid in added:
                obj = self.objects.get(oid)
                if obj is not None:
                    obj.count += 1
                    worker.borrowed.add(oid)
            for oid in removed:
                if oid in worker.borrowed:
                    worker.borrowed.discard(oid)
                    self._decref(oid)
            for oid in unpinned:
                self.store.unpin(oid, worker.wid)
        elif kind == P.YIELD:
            self._on_yield(worker, msg[1], msg[2], msg[3])
        elif kind == P.PUT:
            _, oid, result, contained = msg
            obj = Obj(PENDING)
            obj.count = 1
            worker.borrowed.add(oid)
            self.objects[oid] = obj
            self._seal(oid, (result, contained), worker)
        elif kind == P.SUBMIT:
            self._submit_from_worker(worker, msg[1])
        elif kind == P.REQUEST:
            self._on_request(worker, msg[1], msg[2], msg[3])
        elif kind == P.HELLO:
            worker.started = True
        else:
            raise CoreError(f"unknown message {kind!r} from worker {worker.wid}")

    def _submit_from_worker(self, worker: WorkerProc, spec: dict) -> None:
        """A task submitted inside a task: its refs travel as ids, the worker borrows the returns."""
        task = self._task_from_wire(spec)
        if self._register_task(task, worker):
            self._enqueue(task)

    def _task_from_wire(self, spec: dict) -> Task:
        """A Task from a worker's spec: ref ids become counted refs, its function is kept."""
        blob = spec.pop("fn_blob", None)
        if blob is not None:
            self.register_function(spec["fn_id"], blob)
        counted = lambda ids: [r for r in (self._incref_counted(o) for o in ids) if r is not None]  # noqa: E731
        spec["arg_refs"] = counted(spec["arg_refs"])
        spec["held"] = counted(spec["held"])
        if spec["args"][0] == "stored":
            spec["args"] = ("stored", counted([spec["args"][1]])[0])
        return Task(**spec)

    # ── reporting ───────────────────────────────────────────────────────────────────────────
    def cluster_resources(self) -> dict:
        out = dict(self.total)
        out["object_store_memory"] = float(self.store.usage()["capacity"])
        return out

    def available_resources(self) -> dict:
        with self.locked:
            out = self.resources.snapshot()
        usage = self.store.usage()
        out["object_store_memory"] = float(max(0, usage["capacity"] - usage["used"]))
        return out

    def worker_stats(self) -> list[dict]:
        """Per worker: pid, bytes the driver sent it and received from it (for tests)."""
        return [{"wid": w.wid, "pid": w.proc.pid, "actor": w.actor_id is not None,
                 "bytes_received_from": w.bytes_received, "alive": w.alive,
                 "functions": len(w.known_fns), "function_bytes": w.function_bytes}
                for w in self.workers.values()]

    def function_bytes_sent(self) -> int:
        """Bytes of pickled functions shipped to workers so far, all workers together."""
        with self.locked:
            return sum(w.function_bytes for w in self.workers.values())

    def memory_summary(self) -> str:
        from core._private.objects.memory_summary import render

        with self.locked:
            counts = {oid: (o.count, o.task.name if o.task else "put") for oid, o in self.objects.items()}
        return render(self.store.entries(), counts, self.store.usage())

    # ── shutdown ────────────────────────────────────────────────────────────────────────────
    def shutdown(self) -> None:
        self.pool.close()
        if self._futures_pool is not None:
            self._futures_pool.shutdown(wait=False, cancel_futures=True)
        refs_mod.set_runtime(None)
        self.objects.clear()
        self.tasks.clear()
        self.store.shutdown()
        self.session.close()
