"""The task life cycle as one table, and the instructions decisions hand to the I/O layer.

    event (submit, dispatch, DONE, death, cancel, ...) ──► decision (scheduler, retry, here)
        │ moves tasks with transition(task, finish, arg): TRANSITIONS[(start, finish)](task, arg)
        ▼
    instructions: Dispatch, Spawn, Reclaim, Reply, Fail, Interrupt, StopWorker, KillWorker
        │
        ▼
    local/ (the engine's I/O layer) carries them out: sockets, processes, the object store

A handler changes only the task record (which worker it is on, what it holds) and returns at most
one instruction (None in the table: the move only changes the state); a move that is not in the table raises `InvalidTransition` with the task's
story. Decisions change the records they are handed (queues, the resource ledger) and return
instructions; none of them sends, spawns, signals or touches the store, so every one of them can
be driven by a test with no process (tests/core/test_decisions.py).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from core._private.tasks.state import STORY_LENGTH, InvalidTransition, Task


# ─── instructions ──────────────────────────────────────────────────────────────────────────────
class Dispatch(NamedTuple):
    """Send `tasks` to `worker` (None: a new worker spawned for them), the functions it lacks
    first. `pipelined`: they queue behind the task the worker runs."""
    worker: Any
    tasks: list
    pipelined: bool = False


class Spawn(NamedTuple):
    """Start a worker: a task worker (actor None) or the given actor's process."""
    actor: Any = None


class Reclaim(NamedTuple):
    """Tell `worker` not to run `tasks`, queued behind the one it runs (taken back)."""
    worker: Any
    tasks: list


class Reply(NamedTuple):
    """Answer a worker's request."""
    worker: Any
    req_id: int
    ok: bool
    payload: Any


class Fail(NamedTuple):
    """The task failed with `error`: its return objects and its stream hold the error now."""
    task: Task
    error: BaseException


class Interrupt(NamedTuple):
    """Cancel `task_id` running (or queued) on `worker`: control pipe + SIGINT, or SIGKILL."""
    worker: Any
    task_id: bytes
    force: bool


class StopWorker(NamedTuple):
    """Ask a worker to exit (an actor whose constructor failed)."""
    worker: Any


class KillWorker(NamedTuple):
    """SIGKILL a worker (an actor killed with core.kill)."""
    worker: Any


Instruction = Dispatch | Spawn | Reclaim | Reply | Fail | Interrupt | StopWorker | KillWorker


# ─── the table ─────────────────────────────────────────────────────────────────────────────────
def _off_worker(task: Task, _arg: Any) -> None:
    task.worker = None


def _onto_worker(task: Task, worker: Any) -> None:
    task.worker = worker


_keep = None   # nothing to do but change the state (no call made)
_ILLEGAL: Any = object()


def _cancel(task: Task, force: Any) -> Interrupt:
    return Interrupt(task.worker, task.task_id, bool(force))


def _fail(task: Task, error: Any) -> Fail:
    task.worker = None
    task.held = []          # its arguments are no longer needed: it will not run again
    return Fail(task, error)


Handler = Callable[[Task, Any], Any]

TRANSITIONS: dict[tuple[str, str], Handler | None] = {
    # submitted: its arguments are ready or not; a call on a dead actor fails at once
    ("new", "waiting"): _keep,
    ("new", "queued"): _keep,
    ("new", "failed"): _fail,
    # its arguments became ready
    ("waiting", "queued"): _keep,
    ("waiting", "failed"): _fail,            # cancelled, or an argument can never be read
    # sent
    ("queued", "running"): _onto_worker,
    ("queued", "pipelined"): _onto_worker,
    ("queued", "waiting"): _off_worker,      # an argument was lost: wait for its rebuild
    ("queued", "failed"): _fail,             # cancelled before it ran; an argument failed
    ("pipelined", "running"): _keep,         # the task ahead of it on its worker finished
    ("pipelined", "queued"): _off_worker,    # reclaimed, deferred, or its worker died first
    ("pipelined", "waiting"): _off_worker,   # an argument was lost when it was sent
    ("pipelined", "cancelling"): _cancel,
    ("pipelined", "done"): _off_worker,      # its worker reports results in the order it ran them
    ("pipelined", "failed"): _fail,
    ("running", "queued"): _off_worker,      # retried, or deferred before it was sent
    ("running", "waiting"): _off_worker,     # retried with arguments not ready, or one was lost
    ("running", "cancelling"): _cancel,
    ("running", "done"): _off_worker,
    ("running", "failed"): _fail,
    ("cancelling", "failed"): _fail,         # the cancel landed (or its worker died)
    ("cancelling", "done"): _off_worker,     # it finished before the cancel landed
    # lineage: an object it made was lost, run it again
    ("done", "waiting"): _off_worker,
    ("done", "queued"): _off_worker,
}


def transition(task: Task, finish: str, arg: Any = None) -> Any:
    """Move `task` to `finish`; returns the handler's instruction (or None)."""
    key = (task.state, finish)
    handler = TRANSITIONS.get(key, _ILLEGAL)
    if handler is _ILLEGAL:
        raise InvalidTransition(task, finish)
    story = task.story
    story.append(key)
    if len(story) > STORY_LENGTH:
        del story[: STORY_LENGTH // 2]
    task.state = finish  # type: ignore[assignment]
    return None if handler is None else handler(task, arg)


ACTOR_TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    ("pending", "alive"),     # its resources were free: its worker is spawned
    ("pending", "dead"),      # killed before it started
    ("alive", "alive"),       # its process died and it was restarted
    ("alive", "dead"),        # killed, constructor failed, or no restarts left
})


class InvalidActorTransition(RuntimeError):
    pass


def move_actor(actor: Any, finish: str) -> None:
    if (actor.state, finish) not in ACTOR_TRANSITIONS:
        raise InvalidActorTransition(f"actor {actor.name} cannot go from {actor.state!r} to {finish!r}")
    actor.state = finish
