"""Scheduling decisions as pure functions over plain values; the engine does the I/O.

Policy:
- Tasks start in submission order once their top-level ObjectRef arguments are ready.
- A task needs `{"CPU": num_cpus, "GPU": num_gpus, **resources}`; it starts when that fits in
  what is available. A task that could not fit even in an empty session is refused at submit.
- A worker runs one task at a time. For functions measured to be short (under `FAST_TASK`
  seconds on average), the queue is split across idle workers in batches, so one message and one
  reply carry many tasks: that is what makes thousands of tiny tasks per second possible.
- A worker running a task measured to be short (under `PIPELINE_TASK` on average, but not so
  short that it is batched) gets its next task while it runs this one: it starts it at once
  instead of waiting for a round trip through the driver (~1 ms per task). The next task waits at
  most one short task behind it.
- Admission: a task is sent only when its arguments are in memory or their restores fit in
  room that exists now (`admit`); otherwise it waits at the head of the queue until running
  tasks release their pins, as Ray's pull manager does.
- A worker blocked in `get`/`wait` inside a task gives its CPU back while it waits, and the pool
  may start another worker to use it (up to `max_workers`), so nested tasks cannot deadlock. It
  also hands back the task queued behind the one that blocked, which may be what it waits for.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

from core._private.tasks.actors import start_pending_actors
from core._private.tasks.board import Board
from core._private.tasks.resources import EPS, fits, hold, retake_shares
from core._private.tasks.transitions import Dispatch, transition

__all__ = ["demand", "infeasible", "fits", "batch_size", "pipelined", "should_spawn", "admit", "plan",
           "Admission", "FAST_TASK", "MAX_BATCH", "PIPELINE_TASK"]

FAST_TASK = 0.002        # seconds: below this a task is cheap enough to batch
MAX_BATCH = 128          # tasks in one TASKS message
PIPELINE_TASK = 0.1      # seconds: below this a busy worker gets its next task in advance


def demand(num_cpus: float, num_gpus: float, resources: dict[str, float] | None) -> dict[str, float]:
    """The resource vector a task or actor asks for."""
    need = {"CPU": float(num_cpus), "GPU": float(num_gpus)}
    for name, amount in (resources or {}).items():
        need[name] = need.get(name, 0.0) + float(amount)
    return {k: v for k, v in need.items() if v > 0}


def infeasible(need: dict[str, float], total: dict[str, float]) -> dict[str, tuple[float, float]]:
    """The resources `need` asks for beyond what the session has at all: {name: (asked, total)}."""
    return {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + EPS}


def batch_size(avg_seconds: float | None, queued: int, idle_workers: int) -> int:
    """How many queued tasks of one function to hand one idle worker at once."""
    if avg_seconds is None or avg_seconds > FAST_TASK or queued <= 1:
        return 1
    share = math.ceil(queued / max(idle_workers, 1))
    return max(1, min(share, MAX_BATCH))


def pipelined(avg_seconds: float | None) -> bool:
    """Hand a busy worker its next task of this function in advance?"""
    return avg_seconds is not None and FAST_TASK < avg_seconds < PIPELINE_TASK


def should_spawn(idle: int, starting: int, live: int, max_workers: int, runnable: int) -> bool:
    """Start another worker when runnable tasks wait with nobody idle or on the way."""
    return runnable > 0 and idle == 0 and starting == 0 and live < max_workers


Admission = Literal["now", "wait", "try"]


def admit(restore_sizes: list[int], room: int, pins_will_free: bool) -> Admission:
    """May a task be sent (or pipelined, or batched) now? Its top-level arguments must be read
    into shared memory first: `restore_sizes` are the segments its spilled ones need, `room` the
    bytes that exist now (free, pooled, or held by unpinned objects that can be spilled).

    - "now": everything is in memory, or the restores fit in that room.
    - "wait": they do not fit, and running tasks hold pins they will release: the task stays
      queued and is looked at again when they do (a task never fails because memory is busy).
    - "try": they do not fit and nothing running will free room (only the caller's own views
      pin it): send it; its restore waits for unpins like a put, and fails with
      ObjectStoreFullError if the arguments can never fit.
    """
    if not restore_sizes or sum(restore_sizes) <= room:
        return "now"
    return "wait" if pins_will_free else "try"


# ─── the plan: which tasks go to which worker now ──────────────────────────────────────────────
def plan(board: Board, admission: Callable[[Any], Admission]) -> list:
    """Everything that can start now, as instructions (lock held; no I/O here).

    In order: workers back from a nested get retake their share; pending actors start; actors'
    ready calls go to their workers; queued tasks go in batches to idle workers (or to a new
    worker, `Dispatch(None, ...)`, while the pool may grow), taking their share from the ledger
    and their GPU ids; then short tasks are pipelined behind busy workers' running tasks.
    `admission(task)` is `admit` for the task's arguments (the engine reads the store's sizes).
    """
    board.room_wait = False
    ledger = board.ledger
    if board.owing:
        retake_shares(ledger, board.owing)
    out: list = start_pending_actors(board) if board.pending_actors else []
    for actor in board.actors.values():
        if actor.queue and actor.worker is not None and actor.state != "dead":
            batch = _ready_calls(actor.queue)
            if batch:
                _take_gpus(ledger, batch)
                out.append(Dispatch(actor.worker, batch))
    queue = board.queue
    if not queue or board.owing:
        return out   # a worker back from a nested get takes its share before new tasks start
    workers = board.workers.values()
    idle = [w for w in workers if w.alive and w.actor_id is None and not w.inflight and not w.blocked]
    fn_time = board.fn_time
    spawning = 0
    given: dict = {}                           # worker -> the one task planned for it here
    while queue:
        task = queue[0]
        if task.state != "queued":             # cancelled (failed) while queued: drop it
            queue.popleft()
            continue
        need = task.need
        if not ledger.fits(need):
            break
        if admission(task) == "wait":
            board.room_wait = True
            break
        if idle:
            worker = idle.pop()
        else:
            live = sum(1 for w in workers if w.alive and w.actor_id is None) + spawning
            starting = sum(1 for w in workers if w.alive and w.actor_id is None and not w.started) + spawning
            if board.closing or not should_spawn(0, starting, live, board.max_workers, len(queue)):
                break
            worker = None
            spawning += 1
        n = batch_size(fn_time.get(task.fn_id), len(queue), len(idle) + 1)
        batch = [queue.popleft()]
        while len(batch) < n and queue and queue[0].fn_id == task.fn_id \
                and queue[0].need == need and not queue[0].streaming:
            batch.append(queue.popleft())
        what = f"task {task.name}"
        if worker is None:
            ledger.acquire(need, what)         # the new worker adopts it when spawned
        else:
            hold(ledger, worker, need, what)
            if len(batch) == 1:
                given[worker] = task
        for t in batch:
            transition(t, "running", worker)
        if "GPU" in need:
            _take_gpus(ledger, batch)
        out.append(Dispatch(worker, batch))
    if queue:
        _pipeline(board, admission, given, out)
    return out


def _ready_calls(actor_queue: Any) -> list:
    """An actor's calls from the head of its queue whose arguments are ready (order is kept:
    the first one waiting for an argument stops the batch)."""
    batch = []
    while actor_queue and actor_queue[0].state != "waiting":
        t = actor_queue.popleft()
        if t.state == "queued":                # not cancelled meanwhile
            transition(t, "running", None)
            batch.append(t)
    return batch


def _take_gpus(ledger: Any, batch: list) -> None:
    for t in batch:
        count = t.need.get("GPU")
        if count:
            t.gpu_ids = ledger.take_gpus(count)


def _pipeline(board: Board, admission: Callable[[Any], Admission], given: dict, out: list) -> None:
    """Queued short tasks go to busy workers as their next task (`pipelined`). The worker
    already holds what the task needs; it runs the two one after the other. `given`: workers
    handed one task by this plan (not in their `inflight` yet)."""
    queue = board.queue
    fn_time = board.fn_time
    for worker in board.workers.values():
        while queue and queue[0].state != "queued":
            queue.popleft()
        if not queue:
            return
        task = queue[0]
        first = given.get(worker)
        if first is None:
            if len(worker.inflight) != 1:
                continue
            first = worker.inflight[0]
        elif worker.inflight:
            continue
        if (worker.alive and worker.actor_id is None and not worker.blocked and worker.holding
                and not first.streaming and not task.streaming and worker.held_need == task.need
                and "GPU" not in task.need       # its devices are picked when it is sent
                and pipelined(fn_time.get(task.fn_id))):
            if admission(task) == "wait":
                board.room_wait = True
                return
            queue.popleft()
            transition(task, "pipelined", worker)
            out.append(Dispatch(worker, [task], True))
