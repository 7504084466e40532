"""The driver's table of objects: reference counts, sealing results, failing them, lineage.

    ObjectRef() / __del__ ──► ref events (lock-free deque) ──► apply_ref_events (lock held)
    REFS from a worker ────► borrow / drop ────────────────────┤
                                                               ▼
                                        count 0 ──► release: store.delete, contained refs and
                                                    lineage dropped with it
    DONE / YIELD / PUT ──► seal ──► "ready" ──► tasks waiting for it queued, futures resolved
    Fail ──► fail ──► return objects "failed" (reading them raises), streams end with the error
    lost (segment or spill file gone) ──► recover_lost ──► re-run the task (rebuild_decision)

Every live `ObjectRef` in this process counts +1 for its id. Creating or dropping one appends an
event to a lock-free queue applied under the engine's lock (so `__del__`, which can run
anywhere, never takes a lock). Workers' borrows arrive in REFS messages.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from core._private.objects.store import ObjectStore
from core._private.refs import ObjectRef
from core._private.tasks.board import Board, deps_ready, enqueue
from core._private.tasks.retry import rebuild_decision
from core._private.tasks.state import Obj, Task
from core.exceptions import ObjectLostError

DRIVER = 0  # pin holder id of the driver itself


class ObjectTable:
    def __init__(self, board: Board, store: ObjectStore, cond: threading.Condition,
                 wake: Callable[[], None]) -> None:
        self.board = board
        self.objects = board.objects
        self.store = store
        self.freed: set[bytes] = set()
        self._cond = cond
        self._lock = cond._lock  # type: ignore[attr-defined]
        self._wake = wake                       # the io thread applies events we could not
        self._ref_events: deque[tuple[int, bytes]] = deque()

    # ── reference counting ──────────────────────────────────────────────────────────────────
    def add_local_ref(self, oid: bytes) -> None:
        self._ref_events.append((1, oid))
        self._try_apply()

    def remove_local_ref(self, oid: bytes) -> None:
        self._ref_events.append((-1, oid))
        self._try_apply()

    def unpin_later(self, oid: bytes) -> None:
        self._ref_events.append((0, oid))
        self._try_apply()

    def _try_apply(self) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self.apply_ref_events()
            finally:
                self._lock.release()
        else:
            self._wake()

    def apply_ref_events(self) -> None:
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

    def incref_counted(self, oid: bytes) -> ObjectRef | None:
        """A ref created under the lock (counted directly, not through the event queue)."""
        obj = self.objects.get(oid)
        if obj is None:
            return None
        obj.count += 1
        return ObjectRef(oid, _counted=True)

    def counted(self, oids: list[bytes]) -> list[ObjectRef]:
        return [r for r in (self.incref_counted(o) for o in oids) if r is not None]

    def decref(self, oid: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is not None:
            obj.count -= 1
            if obj.count <= 0:
                self._release(oid, obj)

    def _release(self, oid: bytes, obj: Obj) -> None:
        """Count reached zero: drop the object, its contained refs and its lineage."""
        del self.objects[oid]
        if obj.status != "pending":
            self.store_delete(oid)
        obj.contained = []   # their __del__ queue decrements, applied by the loop we are in
        obj.task = None
        self.board.by_return.pop(oid, None)

    def store_delete(self, oid: bytes) -> None:
        try:
            self.store.delete(oid)
        except KeyError:
            pass

    def free(self, oids: list[bytes]) -> None:
        for oid in oids:
            obj = self.objects.pop(oid, None)
            if obj is None:
                continue
            self.freed.add(oid)
            if obj.status != "pending":
                self.store_delete(oid)
            obj.contained = []
            obj.task = None

    def missing(self, oid: bytes) -> ObjectLostError:
        if oid in self.freed:
            return ObjectLostError(f"object {oid.hex()} was freed with core.free(); it cannot be read again")
        return ObjectLostError(f"object {oid.hex()} is not in this session (its refs were all dropped, "
                               f"or it belongs to another session)")

    # ── results ─────────────────────────────────────────────────────────────────────────────
    def new_counted(self, oid: bytes) -> Obj:
        """A new pending object with one holder (a worker's put, a stream's item)."""
        obj = Obj("pending")
        obj.count = 1
        self.objects[oid] = obj
        return obj

    def seal(self, oid: bytes, result: tuple) -> None:
        """A task's result (or a worker's put) is in the store: the object is ready."""
        loc, contained = result
        if loc[0] == "inline":
            self.store.put_inline(oid, loc[1])
        else:
            self.store.seal(oid)
        obj = self.objects.get(oid)
        if obj is None:
            self.store_delete(oid)
            return
        obj.inline = loc[0] == "inline"
        obj.contained = self.counted(contained) if contained else []
        obj.status = "ready"
        deps_ready(self.board, oid)
        if obj.callbacks:
            self._fire(obj)

    def _fire(self, obj: Obj) -> None:
        cbs, obj.callbacks = obj.callbacks, None
        for cb in cbs or ():
            cb()

    def fail(self, task: Task, error: BaseException) -> None:
        """Carry out `Fail`: the task's return objects and stream hold `error` from now on."""
        board = self.board
        for oid in task.return_ids:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.status = "failed"
                obj.error = error
                obj.task = None
                deps_ready(board, oid)
                if obj.callbacks:
                    self._fire(obj)
        stream = board.streams.get(task.task_id)
        if stream is not None:
            stream.error = error
            stream.finished = True
        board.tasks.pop(task.task_id, None)
        self._cond.notify_all()

    # ── lineage ─────────────────────────────────────────────────────────────────────────────
    def recover_lost(self, oid: bytes, cause: ObjectLostError | None = None) -> bool:
        """Rebuild a lost object by re-running its task (True: the caller schedules), or say why
        we cannot (with `cause`, the store's own words: file gone, or corrupt)."""
        obj = self.objects.get(oid)
        if obj is None:
            raise self.missing(oid)
        verdict = rebuild_decision(obj)
        if verdict == "no_lineage":
            how = f" ({cause})" if cause is not None else ""
            raise ObjectLostError(
                f"object {oid.hex()} was lost (its shared-memory segment or spill file is gone or "
                f"corrupt) and cannot be rebuilt: it was stored with core.put, which keeps no "
                f"lineage{how}")
        if verdict == "too_many":
            raise ObjectLostError(f"object {oid.hex()} was lost {obj.rebuilds} times; giving up rebuilding it")
        if verdict == "building":
            return False
        task = obj.task
        assert task is not None
        for rid in task.return_ids:
            o = self.objects.get(rid)
            if o is not None:
                o.rebuilds += 1
                o.status = "pending"
                self.store_delete(rid)
        self.board.tasks[task.task_id] = task
        enqueue(self.board, task)
        return True

    def arg_lost(self, task: Task, exc: ObjectLostError) -> BaseException | None:
        """An argument of `task` was lost as it was sent: rebuild it and wait for it (None), or
        the error to fail the task with."""
        oid = getattr(exc, "oid", None)
        try:
            if oid is None:
                raise exc
            self.recover_lost(oid, exc)
        except ObjectLostError as final:
            return final
        enqueue(self.board, task)       # waits for the rebuilt argument
        return None
