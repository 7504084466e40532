"""Actor life cycle decisions: create, start (and restart), die, get killed.

    create ──fits──► start: hold its share, Spawn its worker, its constructor first in its queue
       └─ no room ─► pending_actors (started in creation order by scheduler.plan as room frees)
    its process died ──► retry_decision(actor, "actor_died") ──► restart │ dead: calls fail
    core.kill ──► dead: calls fail, KillWorker         constructor raised ──► dead, StopWorker

An actor holds its resources from start to death (`actor.holding`), whatever it runs. Like the
rest of `tasks`, these change records and return instructions; the engine does the I/O.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from core._private.tasks.board import Board, count_deps, fail_all
from core._private.tasks.retry import retry_decision, spend_retry
from core._private.tasks.state import Actor, Obj, Task
from core._private.tasks.timeline import DIED, attempt
from core._private.tasks.transitions import KillWorker, Spawn, StopWorker, move_actor, transition
from core.exceptions import ActorDiedError


def create_actor(board: Board, create: Task, max_restarts: int, need: dict) -> list:
    """A new actor (its feasibility already checked): start it now, or once its share is free."""
    actor = Actor(create.task_id, create.name, create, max_restarts, need)
    board.actors[create.task_id] = actor
    if board.pending_actors or not board.ledger.fits(need):
        board.pending_actors.append(actor)
        return []
    return hold_and_start(board, actor)


def hold_and_start(board: Board, actor: Actor) -> list:
    board.ledger.acquire(actor.need, f"actor {actor.name}")
    actor.holding = True
    return start_actor(board, actor)


def start_pending_actors(board: Board) -> list:
    """Actors waiting for their resources start in creation order as their share frees up."""
    out: list = []
    pending = board.pending_actors
    while pending:
        actor = pending[0]
        if actor.state != "dead" and not board.ledger.fits(actor.need):
            break
        pending.popleft()
        if actor.state != "dead":
            out.extend(hold_and_start(board, actor))
    return out


def start_actor(board: Board, actor: Actor) -> list:
    """(Re)start: its handle is pending again, its constructor goes first in its queue, and a
    worker is spawned for it (the engine sets `actor.worker`, then plans again)."""
    create = actor.create
    for oid in create.return_ids:
        obj = board.objects.get(oid)
        if obj is None:
            board.objects[oid] = Obj("pending")
        else:
            obj.status = "pending"
    board.tasks[create.task_id] = create
    move_actor(actor, "alive")
    transition(create, "waiting" if count_deps(board, create) else "queued")
    actor.queue.appendleft(create)
    return [Spawn(actor)]


def fail_actor_calls(board: Board, actor: Actor) -> list:
    """The actor is dead: its queued and running calls fail; its share comes back."""
    err = ActorDiedError(f"actor {actor.name} is dead: {actor.death_cause}")
    out = fail_all(list(actor.queue), err)
    actor.queue.clear()
    if actor.worker is not None:
        _give_gpus(board, actor.worker.inflight)
        out.extend(fail_all(list(actor.worker.inflight), err))
        actor.worker.inflight.clear()
    if actor.create.state not in ("done", "failed", "new"):
        out.extend(fail_all([actor.create], err))   # it died before its constructor returned
    if actor.holding:
        board.ledger.release(actor.need, f"actor {actor.name}")
        actor.holding = False
    return out


def actor_worker_died(board: Board, worker: Any, how: str, closing: bool) -> list:
    """An actor's process died: the calls it ran fail; the actor restarts if it may."""
    actor = board.actors.get(worker.actor_id)
    if actor is None or actor.worker is not worker:
        return []
    err = ActorDiedError(f"actor {actor.name} died ({how}) while running this call")
    _give_gpus(board, worker.inflight)
    if board.timeline is not None:   # the calls it ran end here, on the timeline too
        now = monotonic()
        for t in worker.inflight:
            if t.kind != "actor_create":
                board.timeline.add((DIED, now) + attempt(t, worker.wid) + ("fail",))
    out = fail_all([t for t in worker.inflight if t.kind != "actor_create"], err)
    worker.inflight.clear()
    actor.worker = None
    if actor.state == "dead" or closing:
        return out
    if retry_decision(actor, "actor_died") == "retry":
        spend_retry(actor)
        return out + start_actor(board, actor)
    move_actor(actor, "dead")
    actor.death_cause = f"its process died ({how}) and max_restarts is used up"
    return out + fail_actor_calls(board, actor)


def constructor_failed(board: Board, task: Task, error: BaseException) -> list:
    """The actor's constructor raised: it fails with that error, the actor is dead, its calls
    fail, its worker is asked to exit."""
    out = [transition(task, "failed", error)]
    actor = board.actors.get(task.actor_id or task.task_id)
    if actor is None or actor.state == "dead":
        return out
    move_actor(actor, "dead")
    actor.death_cause = f"its constructor raised: {error}"
    out.extend(fail_actor_calls(board, actor))
    if actor.worker is not None:
        out.append(StopWorker(actor.worker))
    return out


def kill_actor(board: Board, actor: Actor) -> list:
    """core.kill: the actor is dead at once (no restart); its process is killed."""
    if actor.state == "dead":
        return []
    move_actor(actor, "dead")
    actor.retries_left = 0
    actor.death_cause = "it was killed with core.kill()"
    out = fail_actor_calls(board, actor)
    if actor.worker is not None:
        out.append(KillWorker(actor.worker))
    return out


def _give_gpus(board: Board, tasks: Any) -> None:
    for t in tasks:
        if t.gpu_ids:
            board.ledger.give_gpus(t.gpu_ids)
            t.gpu_ids = []
