"""Actors on dedicated worker processes: order, state, restarts, kill, handles passed around."""

from __future__ import annotations

import os
import signal
import time

import pytest

import core
from core.exceptions import ActorDiedError, TaskError


@core.remote
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.calls = []

    def add(self, n):
        self.calls.append(n)
        self.value += n
        return self.value

    def history(self):
        return self.calls

    def pid(self):
        return os.getpid()

    def crash(self):
        os.kill(os.getpid(), signal.SIGKILL)

    def fail(self):
        raise ValueError("method failed")


def test_calls_run_one_at_a_time_in_submission_order(session):
    c = Counter.remote(10)
    refs = [c.add.remote(i) for i in range(200)]
    assert core.get(refs[-1]) == 10 + sum(range(200))
    assert core.get(c.history.remote()) == list(range(200))


def test_actor_runs_in_its_own_process(session):
    a, b = Counter.remote(), Counter.remote()
    pa, pb = core.get([a.pid.remote(), b.pid.remote()])
    assert len({pa, pb, os.getpid()}) == 3


def test_actor_reserves_no_cpu_by_default(session):
    actors = [Counter.remote() for _ in range(3)]
    core.get([a.add.remote(1) for a in actors])
    assert core.available_resources()["CPU"] == 2.0

    @core.remote
    def one():
        return 1

    assert core.get(one.remote(), timeout=30) == 1


def test_method_error_is_a_task_error_and_actor_survives(session):
    c = Counter.remote()
    with pytest.raises(TaskError, match="method failed"):
        core.get(c.fail.remote())
    assert core.get(c.add.remote(5)) == 5


def test_constructor_error_makes_calls_raise_actor_died(session):
    @core.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("no good")

        def ping(self):
            return "pong"

    b = Broken.remote()
    with pytest.raises(ActorDiedError):
        core.get(b.ping.remote(), timeout=30)


def test_crashed_actor_without_restarts_is_dead(session):
    c = Counter.remote()
    core.get(c.add.remote(1))
    with pytest.raises(ActorDiedError, match="died"):
        core.get(c.crash.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        core.get(c.add.remote(1), timeout=30)


def test_max_restarts_restarts_with_fresh_state(session):
    c = Counter.options(max_restarts=1).remote(100)
    assert core.get(c.add.remote(1)) == 101
    first_pid = core.get(c.pid.remote())
    with pytest.raises(ActorDiedError):
        core.get(c.crash.remote(), timeout=30)
    assert core.get(c.add.remote(1), timeout=30) == 101  # state re-initialised
    assert core.get(c.pid.remote()) != first_pid
    with pytest.raises(ActorDiedError):
        core.get(c.crash.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        core.get(c.add.remote(1), timeout=30)


def test_kill_stops_the_actor(session):
    c = Counter.remote()
    pid = core.get(c.pid.remote())
    core.kill(c)
    with pytest.raises(ActorDiedError, match="killed"):
        core.get(c.add.remote(1), timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the killed actor's process is still alive")


def test_handles_can_be_passed_to_tasks(session):
    c = Counter.remote()

    @core.remote
    def bump(handle, n):
        return core.get(handle.add.remote(n))

    core.get([bump.remote(c, 1) for _ in range(5)], timeout=60)
    assert core.get(c.add.remote(0)) == 5


def test_actor_method_takes_refs_and_results_are_refs(session):
    c = Counter.remote()
    r = core.put(7)
    out = c.add.remote(r)
    assert core.get(out) == 7


def test_unknown_method_is_an_attribute_error(session):
    c = Counter.remote()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope.remote()
