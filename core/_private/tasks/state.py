"""The engine's records: what a task, an object and an actor are, and their life cycles as data.

A task moves through these states (the legal moves are `transitions.TRANSITIONS`):

        submit            args ready            sent to an idle worker            DONE ok
  new ─────────► waiting ───────────► queued ─────────────────────────► running ───────► done
   │                                  ▲  │                                 ▲  │            │
   └──── its args ready at submit ────┘  │ sent behind a busy worker's     │  │ error or   │ an object it
                                         │ running task (short tasks)      │  │ death, no  │ made was lost:
                                         ▼                                 │  ▼ retry      ▼ run it again
                                     pipelined ── the task ahead is done ──┘ failed     waiting / queued
  back to queued: retried, reclaimed (its worker blocked in a nested get), deferred (its
  arguments cannot be restored yet), its worker died before it started
  running / pipelined ── cancel ──► cancelling ── DONE or death ──► failed (done if it won the race)

An object is "pending" (its task has not finished), "ready" (sealed in the store) or "failed"
(reading it raises the task's error); a lost object that is rebuilt goes back to "pending". An
actor is "pending" (waiting for its resources), "alive" (it has a worker, restarted or not) or
"dead" (killed, constructor failed, or out of restarts).

The records are plain classes with `__slots__`: one of each per task or object, made on the hot
path, so no validation and no copies. Nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Literal

TaskKind = Literal["task", "actor_create", "actor_method"]
TaskState = Literal["new", "waiting", "queued", "pipelined", "running", "cancelling", "done", "failed"]
ObjectState = Literal["pending", "ready", "failed"]
ActorState = Literal["pending", "alive", "dead"]

STORY_LENGTH = 32   # transitions a task remembers for the error of an illegal one


class InvalidTransition(RuntimeError):
    """A task was asked to move where its life cycle does not go: a bookkeeping bug in the
    engine. The message carries the task's story (its past transitions) to find it."""

    def __init__(self, task: "Task", finish: str) -> None:
        self.task_id = task.task_id
        self.start = task.state
        self.finish = finish
        self.story = list(task.story)
        story = " → ".join([self.story[0][0], *(s[1] for s in self.story)]) if self.story else "(none)"
        super().__init__(
            f"task {task.name} ({task.task_id.hex()}) cannot go from {task.state!r} to {finish!r}; "
            f"its story: {story}")


class Task:
    """One task (a function call, an actor's constructor or one of its method calls)."""

    __slots__ = ("task_id", "kind", "name", "fn_id", "args", "arg_refs", "held", "return_ids",
                 "num_returns", "streaming", "need", "retries_left", "retry_exceptions", "actor_id",
                 "method", "state", "story", "deps", "worker", "gpu_ids",
                 # set only while the session records its timeline (tasks/timeline.py), unset
                 # otherwise: when it was submitted and by which worker (None: the driver), when
                 # it was last sent
                 "t_submit", "submitter", "t_sent")

    def __init__(self, task_id: bytes, kind: TaskKind, name: str, fn_id: bytes | None, args: tuple,
                 arg_refs: list, held: list, return_ids: list, num_returns: int = 1,
                 streaming: bool = False, need: dict | None = None, max_retries: int = 0,
                 retry_exceptions: Any = False, actor_id: bytes | None = None,
                 method: str | None = None) -> None:
        self.task_id = task_id
        self.kind = kind
        self.name = name
        self.fn_id = fn_id
        self.args = args                  # ("inline", bytes) | ("stored", ObjectRef)
        self.arg_refs = arg_refs          # top-level ObjectRef arguments, in placeholder order
        self.held = held                  # every ref the arguments carry (kept alive until done)
        self.return_ids = return_ids
        self.num_returns = num_returns
        self.streaming = streaming
        self.need = need if need is not None else {}
        self.retries_left = max_retries   # -1: retry forever
        self.retry_exceptions = retry_exceptions
        self.actor_id = actor_id
        self.method = method
        self.state: TaskState = "new"
        self.story: list[tuple[str, str]] = []
        self.deps = 0                     # top-level arguments not ready yet
        self.worker: Any = None           # the WorkerProc it was sent to
        self.gpu_ids: list[int] = []

    @property
    def pipelined(self) -> bool:
        """Sent to a busy worker, to start when the task ahead of it finishes (a view of
        `state`, read by tests that check a precondition)."""
        return self.state == "pipelined"

    def dep_oids(self) -> list[bytes]:
        """Ids of the top-level ref arguments (the stored argument blob included)."""
        oids = [r.binary for r in self.arg_refs]
        if self.args[0] == "stored":
            oids.append(self.args[1].binary)
        return oids

    def __repr__(self) -> str:
        return f"Task({self.name}, {self.state})"


class Obj:
    """What the engine knows of one object. The bytes themselves are in the ObjectStore."""

    __slots__ = ("count", "status", "error", "task", "contained", "callbacks", "rebuilds", "inline")

    def __init__(self, status: ObjectState, task: Task | None = None, inline: bool = False) -> None:
        self.count = 0
        self.inline = inline
        self.status: ObjectState = status
        self.error: BaseException | None = None
        self.task = task              # lineage: the task that made it (None for put)
        self.contained: list = []     # ObjectRefs inside the value, kept alive with it
        self.callbacks: list[Callable[[], None]] | None = None
        self.rebuilds = 0


class Actor:
    """One actor: its constructor task (re-run on restart), its queue of calls, its worker."""

    __slots__ = ("actor_id", "name", "create", "retries_left", "need", "worker", "holding", "queue",
                 "state", "death_cause")

    def __init__(self, actor_id: bytes, name: str, create: Task, max_restarts: int, need: dict) -> None:
        self.actor_id = actor_id
        self.name = name
        self.create = create
        self.retries_left = max_restarts   # restarts left; -1: forever
        self.need = need
        self.worker: Any = None
        self.holding = False               # `need` is taken from the ledger (from start to death)
        self.queue: deque[Task] = deque()  # calls not yet sent, in submission order
        self.state: ActorState = "pending"
        self.death_cause = ""


class Stream:
    """Items of a streaming-generator task as they arrive."""

    __slots__ = ("items", "taken", "finished", "error")

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.taken = 0
        self.finished = False
        self.error: BaseException | None = None
