"""The local engine: the driver side of a session on one machine, a thin front over its parts.

    user thread ── put/get/wait/submit/cancel/kill ──► LocalEngine (this file): the Runtime
                                                            │ one lock
      state    tasks.board.Board (tasks, queues, actors, ledger), object_table.ObjectTable
      decide   tasks.scheduler.plan, tasks.board, tasks.actors, tasks.retry ──► instructions
      do       carrier.Carrier ──► Tasks/Function/Reply/Reclaim/Exit, spawns, signals ──┐
                                                                                        ▼
      pool io thread (select) ──► inbox.Inbox, requests.Requests ◄── Done/Yield/Put/  workers ×N
                                                                     Submit/Refs/Request
      bytes: ObjectStore (inline │ shared segments │ spilled)

All state is guarded by one lock. Two threads touch it: the caller's (API calls) and the pool's
io thread (worker messages, timeouts, deaths, through `Inbox.on_io`). Socket writes never block
(`protocol.Channel`), so the lock is never held across a blocking wait on a worker. Every change
of plan goes through `schedule()`: `scheduler.plan` decides, `Carrier.carry` does the I/O.
"""

from __future__ import annotations

import concurrent.futures
import gc
import os
import threading
import time
from typing import Any, Callable

from core._private.local.builder import Builder
from core._private.local.carrier import Carrier, interrupt
from core._private.local.inbox import Inbox
from core._private.local.object_table import DRIVER, ObjectTable
from core._private.local.readiness import wait_ready
from core._private.local.requests import Requests
from core._private.local.worker_pool import WorkerPool
from core._private.objects.memory_summary import render
from core._private.objects.serialization import deserialize, serialize
from core._private.objects.shm import Session
from core._private.objects.store import ObjectStore
from core._private.refs import IdSource, ObjectRef, ObjectRefGenerator
from core._private.tasks import actors as A
from core._private.tasks import board as B
from core._private.tasks import scheduler as S
from core._private.tasks import timeline as TL
from core._private.tasks.resources import ResourceLedger
from core._private.tasks.state import Obj, Task
from core._private.tasks.transitions import Interrupt, KillWorker
from core._private.taskspec import TaskSpec, pack_args, return_ids
from core.exceptions import CoreError, GetTimeoutError, ObjectLostError, ObjectStoreFullError


class _Locked:
    """`with engine.locked:` takes the lock; applies queued ref events before releasing."""

    __slots__ = ("_lock", "_apply")

    def __init__(self, lock: threading.Lock, apply: Callable[[], None]) -> None:
        self._lock = lock
        self._apply = apply

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        try:
            self._apply()
        finally:
            self._lock.release()


class LocalEngine:
    _builder: Builder | None = None

    def __init__(self, *, num_cpus: float | None, num_gpus: float | None,
                 resources: dict | None, object_store_memory: int | None, spill: Any,
                 inline_threshold: int, zygote: Any = None, timeline: bool | int = True) -> None:
        self.inline_threshold = inline_threshold
        cpus = float(os.cpu_count() or 1) if num_cpus is None else float(num_cpus)
        gpus = float(num_gpus or 0)
        self.total = {"CPU": cpus, "GPU": gpus, **{k: float(v) for k, v in (resources or {}).items()}}
        self.resources = ResourceLedger(self.total)
        self._ids = IdSource()
        self._lock = threading.Lock()
        self.cond = threading.Condition(self._lock)
        self._background: concurrent.futures.ThreadPoolExecutor | None = None

        self.session = Session.start()
        try:
            self.store = ObjectStore(capacity=object_store_memory, spill=spill,
                                     inline_threshold=inline_threshold, session=self.session)
        except BaseException:
            self.session.close()
            raise

        self.inbox: Inbox
        self.pool = WorkerPool(inline_threshold, lambda msgs, dead: self.inbox.on_io(msgs, dead), zygote)
        self.workers = self.pool.workers       # wid -> WorkerProc, kept by the pool
        self.board = B.Board(self.resources, self.workers, pool_size=max(1, int(cpus)),
                             max_workers=max(4, int(cpus) * 4))
        if timeline:   # True: the default bound; a number: the last that many task attempts
            self.board.timeline = TL.Recorder(TL.DEFAULT_MAX_RECORDS if timeline is True else int(timeline))
        self.table = ObjectTable(self.board, self.store, self.cond, self.pool.wake)
        self.locked = _Locked(self._lock, self.table.apply_ref_events)
        self.carrier = Carrier(self.board, self.table, self.store, self.pool)
        self.requests = Requests(self)
        self.inbox = Inbox(self)
        with self.locked:
            for _ in range(self.board.pool_size):
                self.pool.spawn(actor_id=None)
        self.pool.start()

    # ── what tests and reports read ────────────────────────────────────────────────────────
    @property
    def objects(self) -> dict:
        return self.board.objects

    @property
    def tasks(self) -> dict:
        return self.board.tasks

    @property
    def by_return(self) -> dict:
        return self.board.by_return

    @property
    def fn_time(self) -> dict:
        return self.board.fn_time

    # ── the loop every change of plan goes through (lock held) ─────────────────────────────
    def schedule(self) -> None:
        """Plan what can start now and carry it out; again when an actor's worker was spawned
        (its constructor can go now)."""
        while self.carrier.carry(S.plan(self.board, self.carrier.admission)):
            pass

    def background(self, fn: Callable, *args: Any) -> None:
        """Run `fn(*args)` off the io thread (work that takes the lock, or may wait for room)."""
        if self._background is None:
            self._background = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="core-background")
        self._background.submit(fn, *args)

    @staticmethod
    def collecting_if_full(store_call: Callable[[], Any]) -> Any:
        """Run a store allocation; if the store is full of pinned objects, collect garbage once
        and retry: views caught in reference cycles (an exception's traceback, say) pin objects
        until the cyclic collector runs."""
        try:
            return store_call()
        except ObjectStoreFullError:
            gc.collect()
            return store_call()

    # ── reference counting (ObjectRef.__init__/__del__; never blocks) ──────────────────────
    def new_id(self, index: int = 0) -> bytes:
        return self._ids.new(index)

    def add_local_ref(self, oid: bytes) -> None:
        self.table.add_local_ref(oid)

    def remove_local_ref(self, oid: bytes) -> None:
        self.table.remove_local_ref(oid)

    # ── objects ─────────────────────────────────────────────────────────────────────────────
    def put(self, value: Any) -> ObjectRef:
        return self.put_serialized(serialize(value))

    def put_serialized(self, ser: Any) -> ObjectRef:
        oid = self.new_id()
        self.collecting_if_full(lambda: self.store.put(oid, ser))
        obj = Obj("ready", inline=ser.total_size <= self.inline_threshold)
        obj.contained = ser.contained_refs
        with self.locked:
            self.board.objects[oid] = obj
        return ObjectRef(oid)

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list:
        oids = [r.binary for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.locked:
                wait_ready(self.board.objects, oids, len(oids), deadline, self.cond, self.table.missing)
                plan = [self._read_plan(oid) for oid in oids]
            try:
                return [self._materialize(oid, p, writable) for oid, p in zip(oids, plan)]
            except ObjectLostError as lost:
                with self.locked:
                    if self.table.recover_lost(lost.oid, lost):  # type: ignore[attr-defined]
                        self.schedule()

    def _read_plan(self, oid: bytes) -> tuple:
        obj = self.board.objects[oid]
        if obj.status == "failed":
            return ("error", obj.error)
        return ("inline",) if obj.inline else ("shared",)

    def _materialize(self, oid: bytes, plan: tuple, writable: bool) -> Any:
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

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        if num_returns > len(refs):
            raise ValueError(f"num_returns={num_returns} is more than the {len(refs)} refs given")
        oids = [r.binary for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.locked:
            try:
                wait_ready(self.board.objects, oids, num_returns, deadline, self.cond, self.table.missing)
            except GetTimeoutError:
                pass
            done = [self.board.objects[o].status != "pending" for o in oids]
        ready, not_ready = [], []
        for ref, d in zip(refs, done):
            (ready if d and len(ready) < num_returns else not_ready).append(ref)
        return ready, not_ready

    def free(self, refs: list[ObjectRef]) -> None:
        with self.locked:
            self.table.free([r.binary for r in refs])

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def resolve() -> None:
            def run() -> None:
                try:
                    fut.set_result(self.get([ref], None)[0])
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    fut.set_exception(exc)
            self.background(run)

        with self.locked:
            obj = self.board.objects.get(ref.binary)
            if obj is not None and obj.status == "pending":
                if obj.callbacks is None:
                    obj.callbacks = []
                obj.callbacks.append(resolve)
                return fut
        resolve()
        return fut

    # ── tasks and actors ────────────────────────────────────────────────────────────────────
    def submit(self, spec: TaskSpec) -> Any:
        """Run `spec` (the Runtime protocol): its ref(s), a generator, or an actor's id."""
        opts = spec.options
        shipped = spec.shipped
        fn_blob, fn_id = shipped.blob_and_id() if shipped is not None else (None, None)
        packed = pack_args(spec.args, spec.kwargs, self.inline_threshold, self.put_serialized)
        need = S.demand(opts.get("num_cpus", 0), opts.get("num_gpus", 0), opts.get("resources"))
        task_id = self.new_id()
        if spec.kind == "actor_create":
            self._register_function(fn_id, fn_blob)
            create = Task(task_id, "actor_create", spec.name, fn_id, packed.args, packed.arg_refs,
                          packed.held, [task_id], actor_id=task_id)
            with self.locked:
                self._create_actor(create, opts.get("max_restarts", 0), need)
            return task_id
        n = spec.num_returns
        rids = return_ids(task_id, n)
        task = Task(task_id, spec.kind, spec.name, fn_id, packed.args, packed.arg_refs, packed.held, rids,
                    n, spec.streaming, need, opts.get("max_retries", 0), opts.get("retry_exceptions", False),
                    spec.actor_id, spec.method)
        if fn_blob is not None:
            self._register_function(fn_id, fn_blob)
        self._submit_task(task)
        if task.streaming:
            return ObjectRefGenerator(self, task_id)
        refs = [ObjectRef(oid) for oid in rids]
        return refs[0] if n == 1 else refs

    def _register_function(self, fn_id: Any, blob: Any) -> None:
        functions = self.board.functions
        if fn_id not in functions:
            functions[fn_id] = blob

    def _submit_task(self, task: Task) -> None:
        """Queue a task submitted by the driver, which owns its return objects."""
        bad = S.infeasible(task.need, self.total)
        if bad and task.kind != "actor_method":
            asked = ", ".join(f"{k}={v[0]:g} (the session has {v[1]:g})" for k, v in bad.items())
            raise CoreError(f"task {task.name} can never run here: it asks for {asked}; "
                            f"pass more to core.init(...) or ask for less in .options(...)")
        with self.locked:
            failed = B.register(self.board, task)
            if failed:
                self.carrier.carry(failed)
            else:
                B.enqueue(self.board, task)
                self.schedule()

    def task_from_wire(self, spec: dict) -> Task:
        """A Task from a worker's spec (lock held): ref ids become counted refs, its function
        is kept."""
        blob = spec.pop("fn_blob", None)
        if blob is not None:
            self._register_function(spec["fn_id"], blob)
        counted = self.table.counted
        spec["arg_refs"] = counted(spec["arg_refs"])
        spec["held"] = counted(spec["held"])
        if spec["args"][0] == "stored":
            spec["args"] = ("stored", counted([spec["args"][1]])[0])
        return Task(**spec)

    def create_actor_from_wire(self, spec: dict, fn_blob: bytes, max_restarts: int) -> bytes:
        create = self.task_from_wire({**spec, "fn_blob": fn_blob})
        self._create_actor(create, max_restarts, create.need)
        return create.task_id

    def _create_actor(self, create: Task, max_restarts: int, need: dict) -> None:
        bad = S.infeasible(need, self.total)
        if bad:
            asked = ", ".join(f"{k}={v[0]:g} (the session has {v[1]:g})" for k, v in bad.items())
            raise CoreError(f"actor {create.name} can never start here: it asks for {asked}")
        if self.carrier.carry(A.create_actor(self.board, create, max_restarts, need)):
            self.schedule()

    def next_stream_item(self, task_id: bytes, index: int, timeout: float | None) -> ObjectRef | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.locked:
            while True:
                stream = self.board.streams.get(task_id)
                if stream is None:
                    return None
                if index < len(stream.items):
                    oid = stream.items[index]
                    stream.taken = index + 1
                    ref = self.table.incref_counted(oid)
                    self.table.decref(oid)  # the stream's hold passes to the consumer's ref
                    return ref
                if stream.finished:
                    if stream.error is not None:
                        err, stream.error = stream.error, None
                        raise err
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise GetTimeoutError(f"no item from the stream of task {task_id.hex()} within the timeout")
                self.cond.wait(remaining)

    def release_stream(self, task_id: bytes) -> None:
        """The consumer dropped the generator: release the items it never took."""
        with self.locked:
            stream = self.board.streams.pop(task_id, None)
            if stream is not None:
                for oid in stream.items[stream.taken:]:
                    self.table.decref(oid)

    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        with self.locked:
            task = self.board.by_return.get(ref.binary)
            if task is None:
                return
            instructions = B.cancel(self.board, task, force)
            self.carrier.carry([i for i in instructions if type(i) is not Interrupt])
        for ins in instructions:      # signals, outside the lock
            if type(ins) is Interrupt:
                interrupt(ins)

    def kill_actor(self, actor_id: bytes) -> None:
        with self.locked:
            actor = self.board.actors.get(actor_id)
            if actor is None:
                return
            instructions = A.kill_actor(self.board, actor)
            self.carrier.carry([i for i in instructions if type(i) is not KillWorker])
            self.schedule()
        for ins in instructions:      # the kill, outside the lock
            if type(ins) is KillWorker:
                ins.worker.proc.kill()

    # ── reporting ───────────────────────────────────────────────────────────────────────────
    def cluster_resources(self) -> dict:
        out = dict(self.total)
        out["object_store_memory"] = float(self.store.usage()["capacity"])
        return out

    def object_store_stats(self) -> dict:
        u = self.store.usage()
        return dict(capacity=u["capacity"], used=u["used"], spilled_bytes=u["total_spilled_bytes"],
                    restored_bytes=u["total_restored_bytes"])

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
        with self.locked:
            counts = {oid: (o.count, o.task.name if o.task else "put") for oid, o in self.board.objects.items()}
        return render(self.store.entries(), counts, self.store.usage())

    def timeline(self, path: str | None = None) -> list[dict]:
        """core.timeline: the task events as Chrome trace events (tasks/timeline.py), to `path` too."""
        rec = self.board.timeline
        if rec is None:
            raise CoreError("this session records no timeline (off by default): core.init(timeline=True)")
        with self.locked:
            records, workers = rec.snapshot(self.workers.values(), self.board.tasks.values())
            actors = {aid: a.name for aid, a in self.board.actors.items()}
        # pids read outside the lock (a zygote's child may be forking)
        lanes = TL.lanes([(w.wid, w.proc.pid, w.actor_id) for w in workers], actors)
        out = TL.chrome_events(records, lanes, os.getpid(), rec.t0, time.monotonic())
        if path is not None:
            TL.write_trace(path, out)
        return out

    # ── shutdown ────────────────────────────────────────────────────────────────────────────
    def build(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> ObjectRef:
        """core.build: made in the zygote, inherited by later forks (builder.py), or here and put."""
        if self._builder is None:      # made by the first build (most sessions build nothing)
            self._builder = Builder(self)
        return self._builder.build(fn, args, kwargs)

    def shutdown(self) -> None:
        with self.locked:
            # From here no decision spawns a worker: one spawned while pool.close() lists the
            # workers (a death handled by the io thread meanwhile) would be left running.
            self.board.closing = True
        self.pool.close()
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)
        self.board.objects.clear()
        self.board.tasks.clear()
        self.store.shutdown()
        self.session.close()
