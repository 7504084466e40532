"""Ray's exceptions in our words: every error that crosses the Ray boundary is translated here.

    ray.exceptions.RayTaskError(cause)       ─► TaskError.for_cause (still an instance of the cause's type)
      └ cause is a Ray system error           ─► translated as that error
      └ cause is KeyboardInterrupt            ─► TaskCancelledError (interrupted by core.cancel)
    GetTimeoutError                           ─► GetTimeoutError
    TaskCancelledError                        ─► TaskCancelledError
    WorkerCrashed / NodeDied / OutOfMemory /
      LocalRayletDied                         ─► WorkerCrashedError
    RayActorError                             ─► ActorDiedError
    ObjectLostError                           ─► ObjectLostError
    ObjectStoreFull / OutOfDisk               ─► ObjectStoreFullError
    any other RayError                        ─► CoreError naming it
    our own errors, non-Ray errors            ─► untouched

`ray` is passed in (the module), never imported here.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

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

__all__ = ["first_line", "translate", "translate_get_error"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NAME_FAILED_UP_TO = 64   # naming the failed task asks Ray about each object: only for short lists


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, without Ray's terminal colours."""
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(ray: Any, exc: BaseException, name: str) -> BaseException:
    """Our exception for a Ray one (ours pass through untouched); `name` is the task's label."""
    rx = ray.exceptions
    if isinstance(exc, CoreError) or not isinstance(exc, rx.RayError):
        return exc
    if isinstance(exc, rx.RayTaskError):
        cause = exc.__dict__.get("cause")
        if isinstance(cause, rx.RayError):   # a system error surfaced inside the task (cancel, ...)
            return translate(ray, cause, name)
        if isinstance(cause, KeyboardInterrupt):
            return TaskCancelledError(f"task {name} was cancelled while running")
        tb = exc.__dict__.get("traceback_str") or str(exc)
        return TaskError.for_cause(name, cause, _ANSI.sub("", tb))
    message = first_line(exc)
    if isinstance(exc, rx.GetTimeoutError):
        return GetTimeoutError(f"objects not ready after the timeout: {message}")
    if isinstance(exc, rx.TaskCancelledError):
        return TaskCancelledError(f"task {name} was cancelled")
    if isinstance(exc, (rx.WorkerCrashedError, rx.NodeDiedError, rx.OutOfMemoryError, rx.LocalRayletDiedError)):
        return WorkerCrashedError(f"the worker running task {name} died and retries ran out (Ray: {message})")
    if isinstance(exc, rx.RayActorError):
        return ActorDiedError(f"actor of {name} died: {message}")
    if isinstance(exc, rx.ObjectLostError):
        return ObjectLostError(f"object of {name} was lost: {message}")
    if isinstance(exc, (rx.ObjectStoreFullError, rx.OutOfDiskError)):
        return ObjectStoreFullError(f"Ray's object store is full: {message}")
    return CoreError(f"{type(exc).__name__} from Ray in {name}: {message}")


def translate_get_error(ray: Any, exc: BaseException, entries: Sequence[Any], timeout: float | None,
                        killed: set[bytes]) -> BaseException:
    """Our exception for what `ray.get` raised on `entries` (the table's entries, see table.py):
    a timeout says how many objects were not ready; a failure names the task that failed (looked
    up for short lists), and an actor killed with core.kill() says so."""
    if isinstance(exc, ray.exceptions.GetTimeoutError):
        not_ready = ray.wait([e.ray_ref for e in entries], num_returns=len(entries), timeout=0,
                             fetch_local=False)[1]
        first = not_ready[0].hex() if not_ready else entries[0].ray_ref.hex()
        return GetTimeoutError(f"{len(not_ready) or len(entries)} of {len(entries)} objects not ready "
                               f"after {timeout}s (first: {first}); raise `timeout` or check the tasks "
                               f"that make them")
    name = next((e.name for e in entries if e.kind != "put"), "?")
    if len(entries) <= _NAME_FAILED_UP_TO:
        failed = [e for e in entries if e.kind != "put" and _failed(ray, e.ray_ref)]
        if failed:
            name = failed[0].name
    err = translate(ray, exc, name)
    if isinstance(err, ActorDiedError):
        if any(e.actor_id in killed for e in entries if e.actor_id is not None):
            return ActorDiedError(f"{err}; it was killed with core.kill()")
    return err


def _failed(ray: Any, ray_ref: Any) -> bool:
    """Whether the object is ready and holds an error (without fetching it to this node)."""
    try:
        ready, _ = ray.wait([ray_ref], timeout=0, fetch_local=False)
        if not ready:
            return False
        ray.get(ray_ref, timeout=0)
        return False
    except Exception:  # noqa: BLE001 - this one raised
        return True
