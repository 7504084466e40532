"""The engine's decisions driven by event sequences, with no process, socket or store.

Each test builds a `Board` (the engine's state), feeds it events through the same functions the
engine calls (submit = register + enqueue, scheduler.plan, board.finished, worker_died, cancel,
...) and checks the instructions they return and the states they leave. `Carry` below stands in
for local/carrier.py: it puts dispatched tasks on their (fake) worker, as the real one does after
sending them; nothing else of the I/O layer is imitated.
"""

from __future__ import annotations

import itertools
from collections import deque
from types import SimpleNamespace

import pytest

from core._private.tasks import actors as A
from core._private.tasks import board as B
from core._private.tasks import scheduler as S
from core._private.tasks.resources import ResourceInvariantError, ResourceLedger
from core._private.tasks.retry import MAX_RECONSTRUCTIONS, rebuild_decision, retry_decision, spend_retry
from core._private.tasks.state import InvalidTransition, Obj, Task
from core._private.tasks.transitions import (
    TRANSITIONS, Dispatch, Fail, Interrupt, KillWorker, Reclaim, Spawn, StopWorker, transition)
from core.exceptions import ActorDiedError, TaskCancelledError, TaskError, WorkerCrashedError

CPU1 = {"CPU": 1.0}
SHORT = 0.01        # seconds: a function measured this short is pipelined (not batched)
TINY = 0.0001       # ... and this short is batched

_ids = itertools.count(1)


class Worker:
    """The scheduling fields of local.worker_pool.WorkerProc, and nothing else."""

    def __init__(self, wid: int, actor_id: bytes | None = None) -> None:
        self.wid = wid
        self.actor_id = actor_id
        self.alive = True
        self.started = True
        self.inflight: deque = deque()
        self.held_need: dict = {}
        self.holding = False
        self.blocked = 0
        self.borrowed: set = set()
        self.known_fns: set = set()
        self.proc = SimpleNamespace(pid=1000 + wid)

    def __repr__(self) -> str:
        return f"Worker({self.wid})"


class Ref:
    def __init__(self, oid: bytes) -> None:
        self.binary = oid


def make_board(cpus: float = 2, gpus: float = 0, workers: int = 2, max_workers: int = 8) -> B.Board:
    ledger = ResourceLedger({"CPU": float(cpus), "GPU": float(gpus)})
    pool = {i: Worker(i) for i in range(1, workers + 1)}
    return B.Board(ledger, pool, pool_size=workers, max_workers=max_workers)


def make_task(name: str = "f", *, fn: bytes = b"fn", need: dict | None = None, args: list | None = None,
              retries: int = 0, retry_exceptions=False, kind: str = "task", actor_id: bytes | None = None) -> Task:
    tid = next(_ids).to_bytes(20, "little")
    return Task(tid, kind, name, fn, ("inline", b""), list(args or []), [], [tid],
                need=dict(CPU1 if need is None else need), max_retries=retries,
                retry_exceptions=retry_exceptions, actor_id=actor_id)


def submit(board: B.Board, task: Task) -> list:
    failed = B.register(board, task)
    if not failed:
        B.enqueue(board, task)
    return failed


class Carry:
    """The I/O layer's bookkeeping for what the decisions send: tasks onto their worker."""

    def __init__(self, board: B.Board) -> None:
        self.board = board
        self.spawned: list[Worker] = []

    def __call__(self, instructions: list) -> list:
        for ins in instructions:
            if type(ins) is Dispatch:
                worker = ins.worker
                if worker is None:
                    worker = Worker(100 + len(self.spawned))
                    worker.held_need, worker.holding = ins.tasks[0].need, True
                    self.board.workers[worker.wid] = worker
                    self.spawned.append(worker)
                for t in ins.tasks:
                    t.worker = worker
                    worker.inflight.append(t)
            elif type(ins) is Spawn and ins.actor is not None:
                ins.actor.worker = Worker(200 + len(self.spawned), ins.actor.actor_id)
                self.spawned.append(ins.actor.worker)
        return instructions


def plan(board: B.Board, admission=lambda task: "now") -> list:
    return Carry(board)(S.plan(board, admission))


def done(board: B.Board, task: Task, error=None, seconds: float = 0.001) -> list:
    worker = task.worker
    t = B.finished(board, worker, task.task_id, error, seconds)
    assert t is task
    if error is not None:
        return B.failed_run(board, task, error, isinstance(error, TaskError))
    B.complete(board, task)
    return []


def dispatches(instructions: list) -> list[tuple]:
    return [(i.worker, [t.name for t in i.tasks], i.pipelined) for i in instructions if type(i) is Dispatch]


def app_error(cause: BaseException) -> TaskError:
    return TaskError("f", cause, "Traceback: ...")


# ─── a task's life ─────────────────────────────────────────────────────────────────────────────
def test_submit_dispatch_done_gives_every_cpu_back():
    board = make_board(cpus=2)
    a, b, c = make_task("a"), make_task("b"), make_task("c")
    for t in (a, b, c):
        submit(board, t)
    out = plan(board)
    assert sorted(n for _, names, _ in dispatches(out) for n in names) == ["a", "b"]
    assert [a.state, b.state, c.state] == ["running", "running", "queued"]
    assert board.ledger.available["CPU"] == 0
    done(board, a)
    assert a.state == "done" and a.story == [("new", "queued"), ("queued", "running"), ("running", "done")]
    out = plan(board)
    [(worker, names, pipelined)] = dispatches(out)
    assert names == ["c"] and not pipelined and worker not in (b.worker,)   # the worker a freed
    done(board, b)
    done(board, c)
    assert board.ledger.available == board.ledger.total and not board.tasks


def test_a_task_waits_for_its_argument_then_is_queued():
    board = make_board()
    board.objects[b"x"] = Obj("pending")
    t = make_task("needs_x", args=[Ref(b"x")])
    submit(board, t)
    assert t.state == "waiting" and not board.queue and not dispatches(plan(board))
    board.objects[b"x"].status = "ready"
    B.deps_ready(board, b"x")
    assert t.state == "queued"
    assert dispatches(plan(board))[0][1] == ["needs_x"]


def test_fast_tasks_go_in_batches_and_a_new_worker_is_planned_when_none_is_idle():
    board = make_board(cpus=4, workers=1)
    board.fn_time[b"fn"] = TINY
    tasks = [make_task(f"t{i}", need={"CPU": 1.0}) for i in range(6)]
    for t in tasks:
        submit(board, t)
    out = plan(board)
    ds = dispatches(out)
    assert ds[0][0] is board.workers[1] and len(ds[0][1]) == 6   # one message for all six
    board2 = make_board(cpus=4, workers=1)
    slow = [make_task(f"s{i}") for i in range(3)]
    for t in slow:
        submit(board2, t)
    board2.workers[1].inflight.append(make_task("busy"))         # nobody idle
    out = S.plan(board2, lambda task: "now")
    assert dispatches(out) == [(None, ["s0"], False)]            # a worker spawned for it
    assert board2.ledger.available["CPU"] == 3                   # its share is taken already


def test_no_worker_is_planned_once_the_session_is_closing():
    board = make_board(cpus=4, workers=1)
    board.workers[1].inflight.append(make_task("busy"))
    submit(board, make_task("late"))
    board.closing = True
    assert S.plan(board, lambda task: "now") == [] and board.ledger.available == board.ledger.total


def test_gpu_ids_are_handed_out_by_the_plan_and_given_back_when_done():
    board = make_board(cpus=2, gpus=2)
    a, b = make_task("a", need={"CPU": 1, "GPU": 1}), make_task("b", need={"CPU": 1, "GPU": 1})
    submit(board, a)
    submit(board, b)
    plan(board)
    assert sorted(a.gpu_ids + b.gpu_ids) == [0, 1] and board.ledger.free_gpus == []
    ids = list(a.gpu_ids)
    done(board, a)
    assert board.ledger.free_gpus == ids and a.gpu_ids == []


# ─── pipelining, nested gets, deaths ───────────────────────────────────────────────────────────
def pipelined_pair(board: B.Board, retries: int = 0) -> tuple[Task, Task, Worker]:
    board.fn_time[b"fn"] = SHORT
    a, b = make_task("a", retries=retries), make_task("b", retries=retries)
    submit(board, a)
    submit(board, b)
    out = plan(board)
    assert [d[2] for d in dispatches(out)] == [False, True], "precondition: b pipelined behind a"
    assert a.worker is b.worker and b.state == "pipelined" and b.pipelined
    return a, b, a.worker


def test_a_pipelined_task_starts_when_the_one_ahead_finishes():
    board = make_board(cpus=1, workers=1)
    a, b, worker = pipelined_pair(board)
    done(board, a)
    assert b.state == "running" and worker.holding      # on the share the worker already held
    done(board, b)
    assert board.ledger.available == board.ledger.total and not worker.holding


@pytest.mark.parametrize("retries", [1, 0])
def test_worker_death_while_blocked_in_a_nested_get(retries):
    board = make_board(cpus=1, workers=1)
    a, b, worker = pipelined_pair(board, retries=retries)
    out = B.worker_blocks(board, worker)                  # a calls core.get on something not ready
    assert out == [Reclaim(worker, [b])] and b.state == "queued" and board.queue[0] is b
    assert board.ledger.available["CPU"] == 1 and worker.blocked == 1    # its CPU is free meanwhile
    out = plan(board)                                     # b runs on a new worker
    assert dispatches(out) == [(None, ["b"], False)] and b.worker is board.workers[100]
    worker.alive = False
    del board.workers[worker.wid]
    out = B.worker_died(board, worker, "signal 9", closing=False)
    assert Spawn() not in out                             # the worker made for b keeps the pool full
    fails = [i for i in out if type(i) is Fail]
    if retries:
        assert not fails and a.state == "queued" and a.retries_left == 0 and board.queue[0] is a
    else:
        assert len(fails) == 1 and isinstance(fails[0].error, WorkerCrashedError) and a.state == "failed"
        assert "signal 9" in str(fails[0].error) and "pid 1001" in str(fails[0].error)
    done(board, b)
    assert board.ledger.available == board.ledger.total   # nothing released twice (ledger checks)


@pytest.mark.parametrize("statuses, num, expired, answer", [
    (["ready", "pending"], 2, False, "wait"),
    (["ready", "pending"], 2, True, "timed_out"),
    (["ready", "pending"], 1, True, "ready"),          # a wait for one: answered, not timed out
    (["failed", None], 2, False, "ready"),             # failed and freed objects are answers too
])
def test_a_nested_request_is_answered_when_ready_or_timed_out(statuses, num, expired, answer):
    board = make_board()
    oids = [bytes([i]) * 20 for i in range(len(statuses))]
    for oid, status in zip(oids, statuses):
        if status is not None:
            board.objects[oid] = Obj(status)
    got, done = B.request_answer(board, oids, num, expired)
    assert got == answer and done == [s != "pending" for s in statuses]


def test_death_requeues_a_pipelined_task_without_spending_its_retries():
    board = make_board(cpus=1, workers=1)
    a, b, worker = pipelined_pair(board, retries=2)
    worker.alive = False
    out = B.worker_died(board, worker, "signal 9", closing=True)
    assert [t.name for t in board.queue] == ["a", "b"] and (a.retries_left, b.retries_left) == (1, 2)
    assert out == [] and board.ledger.available == board.ledger.total   # closing: no Spawn


def test_a_dead_worker_is_replaced_while_the_session_runs():
    board = make_board(cpus=2, workers=2)
    t = make_task("t")
    submit(board, t)
    plan(board)
    worker = t.worker
    worker.alive = False
    del board.workers[worker.wid]
    assert B.worker_died(board, worker, "exit code 1", closing=False)[-1] == Spawn()
    assert B.worker_died(board, Worker(9), "exit code 1", closing=True) == []


def test_cancel_of_a_pipelined_task():
    board = make_board(cpus=1, workers=1)
    a, b, worker = pipelined_pair(board)
    out = B.cancel(board, b, force=False)
    assert out == [Interrupt(worker, b.task_id, False)] and b.state == "cancelling"
    assert B.reclaim(board, worker) == []                 # a cancelled task is not taken back
    done(board, a)
    assert b.state == "cancelling"                        # it does not start: the worker skips it
    out = done(board, b, error=TaskCancelledError("task b was cancelled"))
    assert [type(i) for i in out] == [Fail] and b.state == "failed"
    assert board.ledger.available == board.ledger.total


def test_cancel_of_a_pipelined_task_whose_worker_dies_fails_it_as_cancelled():
    board = make_board(cpus=1, workers=1)
    a, b, worker = pipelined_pair(board, retries=3)
    B.cancel(board, b, force=True)
    worker.alive = False
    out = B.worker_died(board, worker, "signal 9", closing=True)
    assert [type(i.error) for i in out] == [TaskCancelledError] and b.state == "failed"
    assert a.state == "queued"                            # a was not cancelled: retried


def test_cancel_before_it_runs_fails_at_once_and_the_plan_drops_it():
    board = make_board(cpus=1, workers=1)
    a, b = make_task("a"), make_task("b")
    submit(board, a)
    submit(board, b)
    plan(board)
    out = B.cancel(board, b, force=False)
    assert [type(i) for i in out] == [Fail] and "before it ran" in str(out[0].error)
    done(board, a)
    assert dispatches(plan(board)) == [] and not board.queue


# ─── admission ─────────────────────────────────────────────────────────────────────────────────
def test_a_restore_that_does_not_fit_waits_at_the_head_of_the_queue():
    board = make_board(cpus=2)
    a, b = make_task("a"), make_task("b")
    submit(board, a)
    submit(board, b)
    room = {"ok": False}
    out = plan(board, lambda task: "now" if room["ok"] else S.admit([600], 500, pins_will_free=True))
    assert out == [] and board.room_wait and list(board.queue) == [a, b] and a.state == "queued"
    assert board.ledger.available == board.ledger.total   # nothing taken for a task not sent
    room["ok"] = True
    assert len(dispatches(plan(board, lambda task: "now"))) == 2 and not board.room_wait


@pytest.mark.parametrize("sizes, room, pins_will_free, expected", [
    ([], 0, True, "now"),
    ([100, 200], 300, True, "now"),
    ([100, 201], 300, True, "wait"),
    ([100, 201], 300, False, "try"),
])
def test_admit(sizes, room, pins_will_free, expected):
    assert S.admit(sizes, room, pins_will_free) == expected


def test_deferred_tasks_go_back_to_the_head_of_the_queue_in_order():
    board = make_board(cpus=1, workers=1)
    board.fn_time[b"fn"] = TINY
    tasks = [make_task(f"t{i}") for i in range(3)]
    for t in tasks:
        submit(board, t)
    out = S.plan(board, lambda task: "now")
    assert dispatches(out)[0][1] == ["t0", "t1", "t2"]
    B.requeue_front(board, board.workers[1], tasks[1:])    # the carrier could not restore t1
    assert [t.name for t in board.queue] == ["t1", "t2"] and tasks[1].state == "queued"
    assert board.room_wait


# ─── actors ────────────────────────────────────────────────────────────────────────────────────
def make_actor(board: B.Board, restarts: int, need: dict | None = None):
    create = make_task("Counter", kind="actor_create", need={})
    create.actor_id = create.task_id
    out = A.create_actor(board, create, restarts, dict(CPU1 if need is None else need))
    return board.actors[create.task_id], create, out


def call(board: B.Board, actor, name: str = "add") -> Task:
    t = make_task(name, kind="actor_method", actor_id=actor.actor_id, need={})
    submit(board, t)
    return t


def test_actor_restart_then_death_when_restarts_are_used_up():
    board = make_board(cpus=2)
    actor, create, out = make_actor(board, restarts=1)
    assert out == [Spawn(actor)] and actor.state == "alive" and board.ledger.available["CPU"] == 1
    Carry(board)(out)
    first = actor.worker
    m1 = call(board, actor)
    out = plan(board)
    assert dispatches(out) == [(first, ["Counter", "add"], False)]
    assert done(board, create) == [] and create.state == "done"
    out = A.actor_worker_died(board, first, "signal 9", closing=False)    # m1 was running
    assert [type(i) for i in out] == [Fail, Spawn] and isinstance(out[0].error, ActorDiedError)
    assert m1.state == "failed" and actor.retries_left == 0 and create.state == "queued"
    Carry(board)(out)
    m2 = call(board, actor)
    assert dispatches(plan(board)) == [(actor.worker, ["Counter", "add"], False)]
    out = A.actor_worker_died(board, actor.worker, "signal 9", closing=False)
    assert actor.state == "dead" and "max_restarts" in actor.death_cause
    assert {i.task.name for i in out if type(i) is Fail} == {"add", "Counter"} and m2.state == "failed"
    assert board.ledger.available == board.ledger.total
    late = call(board, actor)
    assert late.state == "failed"                        # a call on a dead actor fails at once


def test_actors_wait_for_their_share_in_creation_order():
    board = make_board(cpus=1)
    first, _, out1 = make_actor(board, 0)
    second, _, out2 = make_actor(board, 0)
    assert out1 == [Spawn(first)] and out2 == [] and second.state == "pending"
    Carry(board)(out1)
    out = A.kill_actor(board, first)
    assert [type(i) for i in out] == [Fail, KillWorker] and first.state == "dead"
    assert Spawn(second) in S.plan(board, lambda task: "now") and second.state == "alive"


def test_a_constructor_that_raises_kills_the_actor():
    board = make_board(cpus=1)
    actor, create, out = make_actor(board, restarts=5)
    Carry(board)(out)
    m = call(board, actor)
    plan(board)
    B.finished(board, actor.worker, create.task_id, app_error(RuntimeError("bad init")), 0.0)
    out = A.constructor_failed(board, create, app_error(RuntimeError("bad init")))
    assert create.state == "failed" and actor.state == "dead" and m.state == "failed"
    assert StopWorker(actor.worker) in out and board.ledger.available == board.ledger.total


# ─── the one retry rule, from a table ──────────────────────────────────────────────────────────
def subject(state: str = "running", retries: int = 1, retry_exceptions=False):
    return SimpleNamespace(state=state, retries_left=retries, retry_exceptions=retry_exceptions)


@pytest.mark.parametrize("who, cause, error, verdict", [
    # app errors: retried only when asked for, and only the listed exception types
    (subject(retries=3), "app_error", app_error(ValueError()), "fail"),
    (subject(retries=3, retry_exceptions=True), "app_error", app_error(ValueError()), "retry"),
    (subject(retries=0, retry_exceptions=True), "app_error", app_error(ValueError()), "fail"),
    (subject(retries=-1, retry_exceptions=True), "app_error", app_error(ValueError()), "retry"),
    (subject(retries=3, retry_exceptions=[KeyError]), "app_error", app_error(ValueError()), "fail"),
    (subject(retries=3, retry_exceptions=[ValueError]), "app_error", app_error(ValueError()), "retry"),
    (subject("cancelling", retries=3, retry_exceptions=True), "app_error", app_error(ValueError()), "cancel"),
    # worker deaths: retried while retries are left; a task that never started is requeued free
    (subject(retries=1), "worker_died", None, "retry"),
    (subject(retries=0), "worker_died", None, "fail"),
    (subject(retries=-1), "worker_died", None, "retry"),
    (subject("pipelined", retries=0), "worker_died", None, "requeue"),
    (subject("cancelling", retries=5), "worker_died", None, "cancel"),
    # actor process deaths: restarted while restarts are left; a killed actor never is
    (subject("alive", retries=2), "actor_died", None, "retry"),
    (subject("alive", retries=0), "actor_died", None, "fail"),
    (subject("alive", retries=-1), "actor_died", None, "retry"),
    (subject("dead", retries=2), "actor_died", None, "cancel"),
])
def test_retry_decision(who, cause, error, verdict):
    assert retry_decision(who, cause, error) == verdict


@pytest.mark.parametrize("left, after", [(3, 2), (1, 0), (-1, -1)])
def test_spend_retry(left, after):
    who = subject(retries=left)
    spend_retry(who)
    assert who.retries_left == after


def test_an_app_error_retried_goes_back_to_the_queue():
    board = make_board(cpus=1, workers=1)
    t = make_task("flaky", retries=1, retry_exceptions=True)
    submit(board, t)
    plan(board)
    assert done(board, t, error=app_error(ValueError())) == [] and t.state == "queued"
    plan(board)
    out = done(board, t, error=app_error(ValueError()))
    assert [type(i) for i in out] == [Fail] and t.state == "failed"


@pytest.mark.parametrize("task_state, rebuilds, expected", [
    (None, 0, "no_lineage"), ("done", 0, "rebuild"), ("running", 0, "building"),
    ("done", MAX_RECONSTRUCTIONS, "too_many"),
])
def test_rebuild_decision(task_state, rebuilds, expected):
    obj = Obj("ready", None if task_state is None else SimpleNamespace(state=task_state))
    obj.rebuilds = rebuilds
    assert rebuild_decision(obj) == expected


# ─── the table and the ledger refuse bookkeeping bugs ──────────────────────────────────────────
def test_an_illegal_transition_carries_the_story():
    board = make_board(cpus=1, workers=1)
    t = make_task("once")
    submit(board, t)
    plan(board)
    done(board, t)
    with pytest.raises(InvalidTransition, match=r"once .* from 'done' to 'running'.*new → queued → running → done"):
        transition(t, "running")
    assert ("done", "running") not in TRANSITIONS


def test_every_state_but_new_and_failed_can_be_left():
    starts = {s for s, _ in TRANSITIONS}
    assert starts == {"new", "waiting", "queued", "pipelined", "running", "cancelling", "done"}


def test_the_ledger_refuses_a_double_release():
    ledger = ResourceLedger({"CPU": 1.0})
    ledger.acquire({"CPU": 1.0}, "task a")
    ledger.release({"CPU": 1.0}, "task a")
    with pytest.raises(ResourceInvariantError, match="released twice"):
        ledger.release({"CPU": 1.0}, "task a")
    with pytest.raises(ResourceInvariantError, match="only"):
        ledger.acquire({"CPU": 2.0}, "task b")
