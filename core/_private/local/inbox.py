"""What the workers say, applied: the io thread's side of the engine.

    pool io thread ── on_io(messages, dead workers) ──► (engine lock)
        Done    ──► board.finished ─► results sealed, task done │ failed_run: retry or Fail
        Ended   ──► the timeline's ENDEDs, kept as they came (tasks/timeline.py)
        Yield   ──► a stream item sealed          Put ──► a worker's object sealed
        Refs    ──► borrows counted / dropped, pins released
        Submit  ──► a task submitted inside a task     Request ──► requests.Requests
        death   ──► reaped; pins, borrows, requests dropped; board.worker_died /
                    actors.actor_worker_died ──► retries, Fail, Spawn
    then: pending requests answered, a new plan carried out, waiters woken
"""

from __future__ import annotations

import time
from typing import Any

from core._private.local import messages as M
from core._private.local.worker_pool import WorkerProc
from core._private.refs import return_id
from core._private.tasks.actors import actor_worker_died, constructor_failed
from core._private.tasks.board import complete, enqueue, failed_run, finished, register, worker_died
from core.exceptions import CoreError, TaskError

# `LocalEngine` in annotations is local/engine.py's, not imported: the engine imports this module.


class Inbox:
    def __init__(self, engine: "LocalEngine") -> None:
        self.engine = engine
        self.board = engine.board
        self.table = engine.table
        self.store = engine.store

    def on_io(self, msgs: list[tuple[WorkerProc, Any]], dead: list[WorkerProc]) -> None:
        """Called by the pool's io thread after each select(): apply what the workers said."""
        engine = self.engine
        released = self.store.released_segments
        if released:
            names = [released.popleft() for _ in range(len(released))]
            engine.pool.broadcast(M.ReleaseSegments(M.RELEASE_SEGMENTS, names))
        with engine.locked:
            handle = self.handle
            for worker, m in msgs:
                handle(worker, m)
            for worker in dead:
                self.on_worker_death(worker)
            engine.requests.answer(time.monotonic())
            if msgs or self.board.room_wait:   # a task waiting for room: pins may be gone by now
                engine.schedule()
                engine.cond.notify_all()

    def handle(self, worker: WorkerProc, msg: Any) -> None:
        kind = msg.kind
        if kind == M.DONE:
            self.on_done(worker, msg.task_id, msg.results, msg.error, msg.seconds)
        elif kind == M.BATCH:
            for m in msg.messages:
                self.handle(worker, m)
        elif kind == M.ENDED:                        # before the Dones: kept as it came
            rec = self.board.timeline
            if rec is not None:
                rec.add_ended(worker.wid, msg.packed, msg.names, msg.errors)
        elif kind == M.REFS:
            self._on_refs(worker, msg)
        elif kind == M.YIELD:
            self.on_yield(msg.task_id, msg.index, msg.result)
        elif kind == M.PUT:
            self.table.new_counted(msg.oid)          # the worker holds it: counted once
            worker.borrowed.add(msg.oid)
            self.table.seal(msg.oid, (msg.result, msg.contained))
        elif kind == M.SUBMIT:
            task = self.engine.task_from_wire(msg.spec)    # its returns borrowed by the worker
            failed = register(self.board, task, worker)
            if failed:
                self.engine.carrier.carry(failed)
            else:
                enqueue(self.board, task)
        elif kind == M.REQUEST:
            self.engine.requests.on_request(worker, msg)
        elif kind == M.HELLO:
            worker.started = True
        else:
            raise CoreError(f"unknown message {kind!r} from worker {worker.wid}")

    def _on_refs(self, worker: WorkerProc, msg: M.Refs) -> None:
        objects = self.board.objects
        for oid in msg.added:
            obj = objects.get(oid)
            if obj is not None:
                obj.count += 1
                worker.borrowed.add(oid)
        for oid in msg.removed:
            if oid in worker.borrowed:
                worker.borrowed.discard(oid)
                self.table.decref(oid)
        for oid in msg.unpinned:
            self.store.unpin(oid, worker.wid)

    # ── results ─────────────────────────────────────────────────────────────────────────────
    def on_done(self, worker: WorkerProc, task_id: bytes, results: Any, error: Any, seconds: float) -> None:
        board = self.board
        task = finished(board, worker, task_id, error, seconds)
        if task is None:
            self._discard_results(task_id, results)
            return
        if error is not None:
            if task.kind == "actor_create":
                self.engine.carrier.carry(constructor_failed(board, task, error))
            else:
                self.engine.carrier.carry(failed_run(board, task, error, isinstance(error, TaskError)))
            return
        if task.streaming:
            stream = board.streams.get(task_id)
            if stream is not None:
                stream.finished = True
        else:
            seal = self.table.seal
            for oid, result in zip(task.return_ids, results):
                seal(oid, result)
        complete(board, task)
        self.engine.cond.notify_all()

    def _discard_results(self, task_id: bytes, results: Any) -> None:
        """Results of a task nobody waits for any more (cancelled, failed over): a shared
        result was written into a segment the store reserved, so seal it and free it."""
        if not isinstance(results, list):
            return
        ids = [task_id] if len(results) == 1 else [return_id(task_id, i) for i in range(len(results))]
        for oid, (loc, _contained) in zip(ids, results):
            if loc[0] == "shared" and oid not in self.board.objects:
                try:
                    self.store.seal(oid)
                except CoreError:
                    pass
                self.table.store_delete(oid)

    def on_yield(self, task_id: bytes, index: int, result: tuple) -> None:
        stream = self.board.streams.get(task_id)
        oid = return_id(task_id, index + 1)
        if stream is None:
            self.table.store_delete(oid)
            return
        self.table.new_counted(oid)     # held by the stream until the consumer takes its ref
        self.table.seal(oid, result)
        stream.items.append(oid)
        self.engine.cond.notify_all()

    # ── deaths ──────────────────────────────────────────────────────────────────────────────
    def on_worker_death(self, worker: WorkerProc) -> None:
        """A worker's socket closed: give back what it held, retry or fail what it ran."""
        if not worker.alive:
            return
        engine = self.engine
        how = engine.pool.reap(worker)
        self.store.unpin_all(worker.wid)
        for oid in worker.borrowed:
            self.table.decref(oid)
        worker.borrowed.clear()
        engine.requests.drop(worker)
        closing = self.board.closing or engine.pool.closing
        if worker.actor_id is None:
            engine.carrier.carry(worker_died(self.board, worker, how, closing))
        else:
            engine.carrier.carry(actor_worker_died(self.board, worker, how, closing))
        engine.schedule()
        engine.cond.notify_all()
