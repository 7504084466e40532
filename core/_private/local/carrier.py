"""The engine's I/O layer: carries out the instructions the decisions in `tasks` return.

    scheduler.plan / board.* / actors.* ──► [Dispatch, Spawn, Reclaim, Reply, Fail, ...]
                                                   │ carry() (engine lock held)
        Dispatch ──► admission per task, locate and pin its arguments (restores from spill),
                     FUNCTION for what the worker lacks, one TASKS message
        Spawn    ──► pool.spawn          Reclaim/Reply/StopWorker ──► a message on its socket
        Fail     ──► ObjectTable.fail    Interrupt/KillWorker ──► control pipe, signals

What a dispatch cannot send after all goes back: arguments that no longer fit (`NoRoomNow`, or
admission says wait) to the head of the queue, a lost argument to its rebuild, a failed one
fails the task. With the session's timeline on, each task sent notes when it was sent, its
message carries its submit, and the Tasks message says when the batch was sent: its worker
echoes both in the task's ENDED (`tasks/timeline.py`).
"""

from __future__ import annotations

import os
import signal
from time import monotonic
from typing import Any

from core._private.local import messages as M
from core._private.local.object_table import ObjectTable
from core._private.local.worker_pool import WorkerPool, WorkerProc
from core._private.objects.store import NoRoomNow, ObjectStore
from core._private.tasks.board import Board, requeue_front
from core._private.tasks.resources import unhold
from core._private.tasks.scheduler import Admission, admit
from core._private.tasks.state import Task
from core._private.tasks.transitions import (Dispatch, Fail, Interrupt, KillWorker, Reclaim, Reply, Spawn,
                                             StopWorker, transition)
from core.exceptions import ObjectLostError


class Carrier:
    def __init__(self, board: Board, table: ObjectTable, store: ObjectStore, pool: WorkerPool) -> None:
        self.board = board
        self.table = table
        self.store = store
        self.pool = pool

    def carry(self, instructions: list) -> bool:
        """Carry out `instructions` in order. True when an actor's worker was spawned (plan
        again: its constructor can be sent now)."""
        again = False
        for ins in instructions:
            kind = type(ins)
            if kind is Dispatch:
                self.dispatch(ins.worker, ins.tasks, ins.pipelined)
            elif kind is Fail:
                self.table.fail(ins.task, ins.error)
            elif kind is Spawn:
                if self.board.closing:
                    continue              # shutting down: pool.close would not see the worker
                if ins.actor is None:
                    self.pool.spawn(actor_id=None)
                else:
                    ins.actor.worker = self.pool.spawn(actor_id=ins.actor.actor_id)
                    again = True
            elif kind is Reply:
                ins.worker.chan.send(M.Reply(M.REPLY, ins.req_id, ins.ok, ins.payload))
            elif kind is Reclaim:
                ins.worker.chan.send(M.Reclaim(M.RECLAIM, [t.task_id for t in ins.tasks]))
            elif kind is StopWorker:
                ins.worker.chan.send(M.Exit(M.EXIT))
            elif kind is KillWorker:
                ins.worker.proc.kill()
            elif kind is Interrupt:
                interrupt(ins)
            else:
                raise TypeError(f"no way to carry out {ins!r}")
        return again

    # ── dispatch ────────────────────────────────────────────────────────────────────────────
    def admission(self, task: Task) -> Admission:
        """scheduler.admit for `task`'s top-level arguments (cheap when none is spilled)."""
        if not task.arg_refs and task.args[0] == "inline":
            return "now"                 # the common case of small tasks: nothing to restore
        oids = task.dep_oids()
        sizes = self.store.restore_sizes(oids) if oids else None
        if not sizes:
            return "now"
        pins_will_free = any(w.alive and w.inflight and not w.blocked for w in self.pool.workers.values())
        return admit(sizes, self.store.room(), pins_will_free)

    def dispatch(self, worker: WorkerProc | None, batch: list[Task], pipelined: bool) -> None:
        board = self.board
        if worker is None:                       # the plan took its share for a new worker
            worker = self.pool.spawn(actor_id=None)
            worker.held_need = batch[0].need
            worker.holding = True
        elif pipelined and not (worker.alive and worker.holding and worker.inflight):
            self._give_gpus(batch)               # the task it was to follow was not sent
            requeue_front(board, worker, batch)
            return
        msgs = []
        deferred: list[Task] = []
        inflight = worker.inflight
        rec = board.timeline              # on: each task sent notes when (one clock read for all)
        if rec is not None:
            now = monotonic()
        for task in batch:
            decision = "wait" if deferred else self.admission(task)
            if decision == "wait":
                deferred.append(task)
                continue
            try:
                msg = self._task_message(worker, task, wait_for_room=decision == "try")
            except NoRoomNow:            # the room went to someone else meanwhile: wait
                deferred.append(task)
                continue
            except ObjectLostError as exc:
                self._give_gpus([task])
                error = self.table.arg_lost(task, exc)
                if error is not None:
                    self.table.fail(*transition(task, "failed", error))
                continue
            except BaseException as exc:  # an argument failed upstream: fail without running
                self._give_gpus([task])
                self.table.fail(*transition(task, "failed", exc))
                continue
            msgs.append(msg)
            task.worker = worker
            inflight.append(task)
            if rec is not None:           # its worker echoes these in its ENDED (tasks/timeline.py)
                task.t_sent = now
                try:
                    msg["t_submit"], msg["submitter"] = task.t_submit, task.submitter
                except AttributeError:    # an actor's constructor: not submitted as a task
                    pass
        if deferred:
            self._give_gpus(deferred)
            requeue_front(board, worker, deferred)
        if msgs:
            self._send_functions(worker, batch)
            worker.chan.send(M.Tasks(M.TASKS, msgs, None if rec is None else now))   # on: ENDEDs kept
            if rec is not None:
                rec.workers.setdefault(worker.wid, worker)     # its lane
        elif worker.actor_id is None and not inflight:
            unhold(board.ledger, worker, board.owing)

    def _send_functions(self, worker: WorkerProc, batch: list[Task]) -> None:
        """The functions the worker has not seen yet, once each, before the tasks using them."""
        known = worker.known_fns
        for task in batch:
            fn_id = task.fn_id
            if fn_id is not None and fn_id not in known and task.worker is worker:
                blob = self.board.functions[fn_id]
                worker.chan.send(M.Function(M.FUNCTION, fn_id, blob))
                known.add(fn_id)
                worker.function_bytes += len(blob)

    def _give_gpus(self, tasks: list[Task]) -> None:
        for task in tasks:
            if task.gpu_ids:
                self.board.ledger.give_gpus(task.gpu_ids)
                task.gpu_ids = []

    def _task_message(self, worker: WorkerProc, task: Task, wait_for_room: bool = True) -> M.TaskMessage:
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
        if task.need.get("GPU"):        # ids taken by the plan (ResourceLedger.take_gpus)
            env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, task.gpu_ids))}
        return {"task_id": task.task_id, "kind": task.kind, "fn_id": task.fn_id, "name": task.name,
                "method": task.method, "args": args, "return_ids": task.return_ids,
                "num_returns": task.num_returns, "streaming": task.streaming, "env": env}

    def _locate_for(self, worker: WorkerProc, oid: bytes, wait_for_room: bool = True) -> tuple:
        obj = self.board.objects.get(oid)
        if obj is None:
            raise self.table.missing(oid)
        if obj.status == "failed":
            raise obj.error  # type: ignore[misc]
        try:
            return self.store.locate(oid, worker.wid, wait_for_room=wait_for_room)
        except ObjectLostError as exc:
            exc.oid = oid  # type: ignore[attr-defined]
            raise


def interrupt(ins: Interrupt) -> None:
    """Cancel a task on its worker: its id on the control pipe, then SIGINT (or SIGKILL)."""
    worker: Any = ins.worker
    if worker is None or not worker.alive:
        return
    try:
        os.write(worker.ctl_fd, ins.task_id)
        if ins.force:
            worker.proc.kill()
        else:
            os.kill(worker.proc.pid, signal.SIGINT)
    except OSError:
        pass
