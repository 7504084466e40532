"""The engine's state as one plain object, and the decisions on each event that are not
scheduling (that is `scheduler.plan`).

    submit ──► register, enqueue          object ready ──► deps_ready
    DONE ────► finished (+ retry_decision) worker died ──► worker_died / actor_worker_died
    cancel ──► cancel                     nested get ───► request_answer (ready, timed out, wait),
                                                          worker_blocks / worker_unblocks

Each function changes the records it is handed (`Board`, tasks, workers' scheduling fields)
and returns the instructions (`transitions.py`) the I/O layer must carry out. None sends,
spawns, signals or touches the object store. With the session's timeline on
(`board.timeline`, `timeline.Recorder`) a submit notes its time on the task, and a retry or a
death while running adds one record to it (a DONE's comes from its worker): the only clock
these decisions read.
"""

from __future__ import annotations

from collections import deque
from time import monotonic
from typing import Any, Literal

from core._private.tasks.resources import ResourceLedger, unhold
from core._private.tasks.retry import retry_decision, spend_retry
from core._private.tasks.state import Actor, Obj, Stream, Task
from core._private.tasks.timeline import DIED, RETRY, Recorder, attempt
from core._private.tasks.transitions import Interrupt, Reclaim, Spawn, transition
from core.exceptions import ActorDiedError, TaskCancelledError, WorkerCrashedError


class Board:
    """Everything the decisions read and change. Owned by the engine, under its one lock."""

    def __init__(self, ledger: ResourceLedger, workers: dict, pool_size: int, max_workers: int) -> None:
        self.ledger = ledger
        self.workers = workers                 # wid -> WorkerProc (kept by the pool)
        self.pool_size = pool_size             # task workers kept alive
        self.max_workers = max_workers         # task workers at most (blocked ones included)
        self.objects: dict[bytes, Obj] = {}
        self.tasks: dict[bytes, Task] = {}     # not finished yet
        self.by_return: dict[bytes, Task] = {}  # return id -> the task that makes it (lineage)
        self.queue: deque[Task] = deque()      # ready tasks, in submission order (not actor calls)
        self.waiting: dict[bytes, list[Task]] = {}   # object id -> tasks waiting for it
        self.streams: dict[bytes, Stream] = {}
        self.functions: dict[bytes, bytes] = {}      # fn id -> pickled function
        self.fn_time: dict[bytes, float] = {}        # fn id -> moving average of its run time
        self.actors: dict[bytes, Actor] = {}
        self.pending_actors: deque[Actor] = deque()  # waiting for their resources, in order
        self.owing: set = set()        # workers back from a nested get, their share not yet taken
        self.room_wait = False         # a task waits for room to restore its arguments
        self.closing = False           # the session is shutting down: no new worker
        self.timeline: Recorder | None = None   # the task events, when the session records them


# ─── submit ────────────────────────────────────────────────────────────────────────────────────
def register(board: Board, task: Task, owner: Any = None) -> list:
    """Record a new task and its pending return objects. `owner`: the worker that submitted it
    (it borrows the returns). Returns [Fail] if it fails at once (a call on a dead actor)."""
    objects = board.objects
    for oid in task.return_ids:
        obj = Obj("pending", task)
        if owner is not None:
            obj.count = 1
            owner.borrowed.add(oid)
        objects[oid] = obj
        board.by_return[oid] = task
    board.tasks[task.task_id] = task
    rec = board.timeline
    if rec is not None:            # read back by its END record (timeline.py)
        task.t_submit = monotonic()
        if owner is None:
            task.submitter = None
        else:
            task.submitter = owner.wid
            rec.workers.setdefault(owner.wid, owner)
    if task.streaming:
        board.streams[task.task_id] = Stream()
    if task.kind == "actor_method":
        actor = board.actors.get(task.actor_id)
        if actor is None or actor.state == "dead":
            cause = actor.death_cause if actor else "it does not exist"
            return [transition(task, "failed", ActorDiedError(f"cannot call {task.name}: the actor is dead ({cause})"))]
    return []


def count_deps(board: Board, task: Task) -> int:
    """Count (and register as waiting) the top-level arguments of `task` not ready yet."""
    deps = 0
    objects = board.objects
    refs = task.arg_refs
    if task.args[0] == "stored":
        refs = refs + [task.args[1]]
    for ref in refs:
        oid = ref.binary
        obj = objects.get(oid)
        if obj is not None and obj.status == "pending":
            deps += 1
            board.waiting.setdefault(oid, []).append(task)
    task.deps = deps
    return deps


def enqueue(board: Board, task: Task) -> None:
    """Queue `task` (at the back) once its top-level ref arguments are ready."""
    deps = count_deps(board, task)
    if task.kind == "actor_method":
        transition(task, "waiting" if deps else "queued")
        board.actors[task.actor_id].queue.append(task)
    elif deps == 0:
        transition(task, "queued")
        board.queue.append(task)
    else:
        transition(task, "waiting")


def deps_ready(board: Board, oid: bytes) -> None:
    """`oid` is ready (or failed): tasks waiting only for it are queued."""
    for task in board.waiting.pop(oid, ()):
        task.deps -= 1
        if task.deps == 0 and task.state == "waiting":
            transition(task, "queued")
            if task.kind == "task":
                board.queue.append(task)   # actor calls and constructors stay in the actor's queue


def requeue_front(board: Board, worker: Any, tasks: list[Task]) -> None:
    """Tasks not sent after all (their arguments cannot be restored yet) go back to the head of
    their queue, in order."""
    board.room_wait = True
    for task in tasks:
        transition(task, "queued")
    if worker.actor_id is not None:
        actor = board.actors.get(worker.actor_id)
        if actor is not None:
            actor.queue.extendleft(reversed(tasks))
    else:
        board.queue.extendleft(reversed(tasks))


# ─── DONE ──────────────────────────────────────────────────────────────────────────────────────
def finished(board: Board, worker: Any, task_id: bytes, error: Any, seconds: float) -> Task | None:
    """A worker reports a task done: take it off the worker, note its time, give back what it
    held. Returns the task (None if nobody waits for it any more). Its END record, when the
    session records its timeline, came from the worker just before (timeline.py)."""
    inflight = worker.inflight
    if inflight and inflight[0].task_id == task_id:
        inflight.popleft()
    else:
        worker.inflight = inflight = deque(t for t in inflight if t.task_id != task_id)
    if inflight and inflight[0].state == "pipelined":
        transition(inflight[0], "running")     # it starts now, on the share already held
    task = board.tasks.get(task_id)
    if task is None:
        return None
    if task.fn_id is not None and error is None:
        prev = board.fn_time.get(task.fn_id)
        board.fn_time[task.fn_id] = seconds if prev is None else 0.8 * prev + 0.2 * seconds
    if task.gpu_ids:
        board.ledger.give_gpus(task.gpu_ids)
        task.gpu_ids = []
    if worker.actor_id is None and not inflight:
        unhold(board.ledger, worker, board.owing)
    return task


def failed_run(board: Board, task: Task, error: BaseException, app_error: bool) -> list:
    """A task ran and raised (`app_error`: a TaskError from its own code): retry it (at the
    back of its queue) or fail it."""
    if app_error and retry_decision(task, "app_error", error) == "retry":
        spend_retry(task)
        if board.timeline is not None:
            board.timeline.add((RETRY, monotonic(), task.task_id))
        enqueue(board, task)
        return []
    return [transition(task, "failed", error)]


def complete(board: Board, task: Task) -> None:
    transition(task, "done")
    board.tasks.pop(task.task_id, None)


# ─── worker deaths ─────────────────────────────────────────────────────────────────────────────
def worker_died(board: Board, worker: Any, how: str, closing: bool) -> list:
    """A task worker's socket closed (already reaped): what it held comes back; each task it
    had is run again or failed (retry_decision); a replacement is spawned if the pool is short."""
    unhold(board.ledger, worker, board.owing)
    out: list = []
    again: list[Task] = []
    rec = board.timeline
    for task in worker.inflight:
        if task.gpu_ids:
            board.ledger.give_gpus(task.gpu_ids)
            task.gpu_ids = []
        verdict = retry_decision(task, "worker_died")
        if rec is not None and verdict != "requeue":   # a requeued one never started
            rec.add((DIED, monotonic()) + attempt(task, worker.wid) + (verdict,))
        if verdict == "requeue":                 # queued behind the running one: never started
            transition(task, "queued")
            again.append(task)
        elif verdict == "retry":
            spend_retry(task)
            transition(task, "queued")
            again.append(task)
        elif verdict == "cancel":
            out.append(transition(task, "failed", TaskCancelledError(f"task {task.name} was cancelled")))
        else:
            out.append(transition(task, "failed", WorkerCrashedError(
                f"the worker running task {task.name} died ({how}) and it has no retries left "
                f"(max_retries); pid {worker.proc.pid}")))
    worker.inflight.clear()
    board.queue.extendleft(reversed(again))      # first in line, in the order they were sent
    live = sum(1 for w in board.workers.values() if w.alive and w.actor_id is None)
    if not closing and live < board.pool_size:
        out.append(Spawn())
    return out


# ─── cancel ────────────────────────────────────────────────────────────────────────────────────
def cancel(board: Board, task: Task, force: bool) -> list:
    """core.cancel: a task not sent yet fails now; one sent is interrupted on its worker (it
    fails when the worker reports it, or dies)."""
    state = task.state
    if state in ("done", "failed", "new"):
        return []
    if state in ("waiting", "queued"):
        if task.kind == "actor_method":
            actor = board.actors.get(task.actor_id)
            if actor is not None and task in actor.queue:
                actor.queue.remove(task)
        return [transition(task, "failed", TaskCancelledError(f"task {task.name} was cancelled before it ran"))]
    if state == "cancelling":
        return [Interrupt(task.worker, task.task_id, True)] if force else []
    return [transition(task, "cancelling", force)]


# ─── nested get/wait inside a task ─────────────────────────────────────────────────────────────
def worker_blocks(board: Board, worker: Any) -> list:
    """A worker's task waits in a nested get/wait that cannot be answered yet: the tasks
    pipelined behind it come back (it may wait for one of them), and its CPU is free while it
    waits (the pool may start another worker to use it, so nested tasks cannot deadlock)."""
    out = reclaim(board, worker)
    worker.blocked += 1
    if worker.actor_id is None and worker.blocked == 1:
        unhold(board.ledger, worker, board.owing, keep_need=True)
    return out


Answer = Literal["wait", "ready", "timed_out"]


def request_answer(board: Board, oids: list[bytes], num: int, expired: bool) -> tuple[Answer, list[bool]]:
    """A nested get/wait: "ready" once `num` of `oids` are no longer pending (a freed one counts:
    reading it says so), "timed_out" when its deadline passed first, else "wait". Also which
    ones are done (the answer to a wait)."""
    objects = board.objects
    done = [o not in objects or objects[o].status != "pending" for o in oids]
    if sum(done) >= num:
        return "ready", done
    return ("timed_out" if expired else "wait"), done


def worker_unblocks(board: Board, worker: Any) -> None:
    worker.blocked -= 1
    if worker.actor_id is None and worker.blocked == 0 and worker.inflight:
        board.owing.add(worker)            # its share back as soon as it fits (scheduler.plan)


def reclaim(board: Board, worker: Any) -> list:
    """Take back the tasks pipelined behind a worker's running task, to the head of the queue.
    The Reclaim goes out before the reply to its request, so it drops them before it could
    start one."""
    if worker.actor_id is not None or len(worker.inflight) < 2:
        return []
    inflight = list(worker.inflight)
    taken = [t for t in inflight[1:] if t.state == "pipelined"]
    if not taken:
        return []
    worker.inflight = deque([inflight[0]] + [t for t in inflight[1:] if t.state != "pipelined"])
    for task in taken:
        transition(task, "queued")
    board.queue.extendleft(reversed(taken))
    return [Reclaim(worker, taken)]


def fail_all(tasks: list[Task], error: BaseException) -> list:
    """Fail every task of `tasks` not finished yet (one cancelled in a queue already is)."""
    return [transition(t, "failed", error) for t in tasks if t.state != "failed" and t.state != "done"]


__all__ = ["Board", "register", "enqueue", "count_deps", "deps_ready", "requeue_front", "finished",
           "failed_run", "complete", "worker_died", "cancel", "worker_blocks", "worker_unblocks",
           "reclaim", "fail_all", "request_answer"]
