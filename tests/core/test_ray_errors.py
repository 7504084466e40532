"""How Ray's exceptions reach a user of `core` (core/_private/ray/errors.py), from a table: Ray's
exception classes are built here, no Ray instance is started."""

from __future__ import annotations

import importlib.util

import pytest

from core._private.ray.errors import first_line, translate
from core.exceptions import (
    ActorDiedError,
    CoreError,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed: install the extra with `pip install 'ddsf[ray]'`")


@pytest.fixture(scope="module")
def ray():
    from core._private.ray.config import import_ray

    return import_ray()


def _system_errors(rx) -> list[tuple[BaseException, type, str]]:
    """(Ray's exception, ours, a text our message has) for Ray's system errors."""
    return [
        (rx.GetTimeoutError("Get timed out: some object(s) not ready."), GetTimeoutError, "not ready"),
        (rx.TaskCancelledError(), TaskCancelledError, "task score was cancelled"),
        (rx.WorkerCrashedError(), WorkerCrashedError, "the worker running task score died"),
        (rx.NodeDiedError("node gone"), WorkerCrashedError, "node gone"),
        (rx.OutOfMemoryError("oom killer"), WorkerCrashedError, "oom killer"),
        (rx.LocalRayletDiedError(), WorkerCrashedError, "retries ran out"),
        (rx.RayActorError(error_msg="\x1b[31mthe actor died\x1b[0m"), ActorDiedError, "actor of score died: the actor died"),
        (rx.ObjectLostError("ab" * 14, None, ""), ObjectLostError, "object of score was lost"),
        (rx.ObjectStoreFullError("store full"), ObjectStoreFullError, "Ray's object store is full: store full"),
        (rx.OutOfDiskError("disk full"), ObjectStoreFullError, "disk full"),
        (rx.RaySystemError("rpc broke"), CoreError, "RaySystemError from Ray in score"),
    ]


def test_ray_system_errors_become_ours(ray):
    for theirs, ours, text in _system_errors(ray.exceptions):
        got = translate(ray, theirs, "score")
        assert type(got) is ours, (theirs, got)
        assert text in str(got), (theirs, str(got))
        assert "\x1b[" not in str(got)


def test_a_task_exception_keeps_its_type_and_remote_traceback(ray):
    remote = "Traceback (most recent call last):\n  File \"model.py\", line 3\n\x1b[31mValueError: bad row\x1b[0m"
    got = translate(ray, ray.exceptions.RayTaskError("score", remote, ValueError("bad row")), "score")
    assert isinstance(got, TaskError) and isinstance(got, ValueError)
    assert isinstance(got.cause, ValueError) and str(got.cause) == "bad row"
    assert "model.py" in got.traceback_str and "\x1b[" not in got.traceback_str


def test_system_errors_and_interrupts_inside_a_task_are_not_task_errors(ray):
    rx = ray.exceptions
    crashed = translate(ray, rx.RayTaskError("score", "tb", rx.WorkerCrashedError()), "score")
    assert type(crashed) is WorkerCrashedError
    interrupted = translate(ray, rx.RayTaskError("score", "tb", KeyboardInterrupt()), "score")
    assert type(interrupted) is TaskCancelledError
    assert "cancelled while running" in str(interrupted)


def test_our_errors_and_foreign_errors_pass_through_untouched(ray):
    for exc in (ObjectLostError("freed"), ValueError("not Ray's"), KeyError("k")):
        assert translate(ray, exc, "score") is exc


def test_first_line_drops_terminal_colours_and_the_rest():
    assert first_line(RuntimeError("\x1b[1mraylet died\x1b[0m\nmore detail")) == "raylet died"
    assert first_line(RuntimeError("")) == "RuntimeError"
