"""Workers' nested core calls (get, wait, put room, cancel, kill, actors, resources).

    Request(get|wait) ──► answerable now? ──yes──► Reply (locations, or which are ready)
                              │ no
                              ▼
                  board.worker_blocks (Reclaim pipelined tasks, its CPU freed) ──► pending list
    every io round: answer what became ready (or timed out) ──► Reply, board.worker_unblocks
    Request(create) ──► a thread reserves room in the store (it may wait for spilling) ──► Reply
    Request(copy)   ──► a thread has a built object written into the store once ──► Reply
    Request(cancel|kill) ──► Reply at once, the work on a thread (it takes the engine's lock)
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple

from core._private.local import messages as M
from core._private.local.worker_pool import WorkerProc
from core._private.refs import ObjectRef
from core._private.tasks.board import request_answer, worker_blocks, worker_unblocks
from core._private.tasks.transitions import Reply
from core.exceptions import CoreError, GetTimeoutError, ObjectLostError

# `LocalEngine` in annotations is local/engine.py's, not imported: the engine imports this module.


class Pending(NamedTuple):
    worker: WorkerProc
    req_id: int
    op: str
    oids: list
    num: int
    deadline: float | None


class Requests:
    def __init__(self, engine: "LocalEngine") -> None:
        self.engine = engine
        self.board = engine.board
        self.table = engine.table
        self.pending: list[Pending] = []

    def _reply(self, worker: WorkerProc, req_id: int, ok: bool, payload: Any) -> None:
        self.engine.carrier.carry([Reply(worker, req_id, ok, payload)])

    def on_request(self, worker: WorkerProc, msg: M.Request) -> None:
        req_id, op, args = msg.request_id, msg.op, msg.args
        engine = self.engine
        try:
            if op == M.GET:
                self._begin_blocking(worker, req_id, op, args.oids, len(args.oids), args.timeout)
            elif op == M.WAIT:
                self._begin_blocking(worker, req_id, op, args.oids, args.num_returns, args.timeout)
            elif op == M.CREATE:
                engine.background(self._create_for, worker, req_id, args.oid, args.size)
            elif op == M.CANCEL:
                self._reply(worker, req_id, True, None)
                # on a thread of its own: it takes the lock, and must not wait behind a put
                threading.Thread(target=engine.cancel, args=(ObjectRef(args.oid, _counted=True), args.force)).start()
            elif op == M.KILL:
                self._reply(worker, req_id, True, None)
                threading.Thread(target=engine.kill_actor, args=(args.actor_id,)).start()
            elif op == M.CREATE_ACTOR:
                self._reply(worker, req_id, True, engine.create_actor_from_wire(args.spec, args.fn_blob,
                                                                                args.max_restarts))
            elif op == M.COPY:      # a built object this worker lacks: the zygote writes it once
                engine.background(self._copy_for, worker, req_id, args.oid)
            elif op == M.RESOURCES:
                self._reply(worker, req_id, True, (dict(self.board.ledger.total), self.board.ledger.snapshot()))
            else:
                raise CoreError(f"unknown request {op!r} from worker {worker.wid}")
        except BaseException as exc:  # noqa: BLE001 - sent back to the worker
            self._reply(worker, req_id, False, exc)

    def _create_for(self, worker: WorkerProc, req_id: int, oid: bytes, size: int) -> None:
        try:
            room = self.engine.collecting_if_full(lambda: self.engine.store.create(oid, size))
            self._reply(worker, req_id, True, room)
        except BaseException as exc:  # noqa: BLE001
            self._reply(worker, req_id, False, exc)

    def _copy_for(self, worker: WorkerProc, req_id: int, oid: bytes) -> None:
        try:
            self._reply(worker, req_id, True, self.engine.store.locate(oid, worker.wid, copy=True))
        except BaseException as exc:  # noqa: BLE001
            self._reply(worker, req_id, False, exc)

    def _begin_blocking(self, worker: WorkerProc, req_id: int, op: str, oids: list, num: int,
                        timeout: float | None) -> None:
        objects = self.board.objects
        for oid in oids:
            if oid not in objects:
                raise self.table.missing(oid)
        deadline = None if timeout is None else time.monotonic() + timeout
        req = Pending(worker, req_id, op, oids, num, deadline)
        if not self._try_answer(req):
            self.engine.carrier.carry(worker_blocks(self.board, worker))
            self.pending.append(req)
            self.engine.schedule()

    def _try_answer(self, req: Pending, *, expired: bool = False) -> bool:
        worker, req_id, op, oids, num, _deadline = req
        answer, done = request_answer(self.board, oids, num, expired)
        if answer == "wait":
            return False
        if op == M.WAIT:
            self._reply(worker, req_id, True, done)
            return True
        if answer == "timed_out":
            self._reply(worker, req_id, False, GetTimeoutError(
                f"{len(oids) - sum(done)} of {len(oids)} objects not ready after the timeout"))
            return True
        objects = self.board.objects
        locs = []
        for oid in oids:
            try:
                obj = objects.get(oid)
                if obj is None:
                    raise self.table.missing(oid)
                if obj.status == "failed":
                    locs.append(("error", obj.error))
                else:
                    locs.append(self.engine.store.locate(oid, worker.wid))
            except ObjectLostError as exc:
                exc.oid = oid  # type: ignore[attr-defined]
                try:
                    if self.table.recover_lost(oid, exc):
                        self.engine.schedule()
                    return False  # answered when rebuilt
                except ObjectLostError as final:
                    locs.append(("error", final))
        self._reply(worker, req_id, True, locs)
        return True

    def answer(self, now: float | None = None) -> None:
        """Answer the pending requests that can be (or timed out, given `now`)."""
        if not self.pending:
            return
        keep = []
        for req in self.pending:
            expired = now is not None and req.deadline is not None and now >= req.deadline
            if self._try_answer(req, expired=expired):
                worker_unblocks(self.board, req.worker)
            else:
                keep.append(req)
        self.pending = keep

    def drop(self, worker: WorkerProc) -> None:
        """The worker died: its requests are not answered."""
        if self.pending:
            self.pending = [r for r in self.pending if r.worker is not worker]
