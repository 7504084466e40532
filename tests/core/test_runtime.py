"""The Runtime protocol and the one runtime slot: every runtime answers every call of the
protocol (no caller tells runtimes apart), and the same calls work in the driver and in tasks."""

from __future__ import annotations

import inspect

import pytest

import core
from core._private import runtime
from core._private.local.engine import LocalEngine
from core._private.local.worker import WorkerClient
from core._private.ray.backend import RayBackend
from core._private.ray.worker import RayWorkerRuntime
from core.exceptions import CoreError, TaskError

PROTOCOL = sorted(name for name, value in vars(runtime.Runtime).items()
                  if callable(value) and not name.startswith("_"))


@pytest.mark.parametrize("cls", [LocalEngine, WorkerClient, RayBackend, RayWorkerRuntime],
                         ids=lambda c: c.__name__)
def test_every_runtime_has_every_protocol_method_with_its_parameters(cls):
    for name in PROTOCOL:
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__name__} has no {name}()"
        want = list(inspect.signature(getattr(runtime.Runtime, name)).parameters)
        got = list(inspect.signature(method).parameters)
        assert got == want, f"{cls.__name__}.{name}{tuple(got)} differs from Runtime.{name}{tuple(want)}"


def test_require_without_a_session_or_auto_start_says_to_call_init(monkeypatch):
    monkeypatch.setattr(runtime, "_current", None)
    monkeypatch.setattr(runtime, "_auto_start", None)
    with pytest.raises(CoreError, match=r"call core\.init\(\) first"):
        runtime.require()


def test_driver_only_calls_before_init_do_not_start_a_session(monkeypatch):
    monkeypatch.setattr(runtime, "_current", None)
    with pytest.raises(CoreError, match=r"call core\.init\(\) first"):
        core.cluster_resources()
    assert runtime.current() is None


def test_the_slot_holds_the_session_while_it_runs(session):
    rt = runtime.current()
    assert isinstance(rt, LocalEngine) and core.is_initialized()
    core.shutdown()
    assert runtime.current() is None and not core.is_initialized()


def test_inside_a_task_the_same_calls_reach_the_worker_runtime(session):
    @core.remote
    def child(x):
        return x * 2

    @core.remote
    def parent():
        rt = runtime.current()
        refs = [child.remote(i) for i in range(3)]
        ready, not_ready = core.wait(refs, num_returns=3, timeout=30)
        return type(rt).__name__, core.is_initialized(), len(ready), len(not_ready), core.get(refs)

    assert core.get(parent.remote(), timeout=60) == ("WorkerClient", True, 3, 0, [0, 2, 4])


def test_driver_only_calls_inside_a_task_say_where_they_belong(session):
    @core.remote(max_retries=0)
    def frees():
        core.free(core.put(1))

    with pytest.raises(TaskError, match="belongs to the driver"):
        core.get(frees.remote(), timeout=60)


def test_a_streaming_task_submitted_inside_a_task_is_refused_at_submit(session):
    @core.remote(num_returns="streaming")
    def gen():
        yield 1

    @core.remote(max_retries=0)
    def parent():
        gen.remote()

    with pytest.raises(TaskError, match="streaming.*inside a task"):
        core.get(parent.remote(), timeout=60)
