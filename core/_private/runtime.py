"""The runtime of this process, and what every runtime offers.

    core.put/get/wait/...  ─┐
    f.remote(), C.remote() ─┼──► require() ──► the process's Runtime ──► LocalEngine   (driver, local)
    ObjectRef (counts, get) ─┘       (one slot)                     ├──► WorkerClient  (inside a local worker)
                                                                    ├──► RayBackend    (driver, on Ray)
                                                                    └──► RayWorkerRuntime (inside a Ray worker)

One slot holds the process's runtime: set by `core.init()` in the driver (the backend it
started; the first API call before any `init` starts one, as in Ray), by the worker's main loop
in a local worker, or on first use in a Ray worker. Callers
never tell runtimes apart: what only some of them do is a method every one of them has (a no-op,
or an error that says where the call belongs, where it does not apply).

A leaf module: it imports nothing of ours at run time, so anything may import it.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, Iterable, Protocol

from core.exceptions import CoreError

# The annotations below name refs.ObjectRef, refs.ObjectRefGenerator and taskspec.TaskSpec
# without importing them, not even for type checkers: both modules import this one.


class Runtime(Protocol):
    """What `core.*`, `ObjectRef`, `ObjectRefGenerator` and remote functions call."""

    # ── reference counting: called from ObjectRef.__init__/__del__, must never block ──
    def add_local_ref(self, oid: bytes) -> None: ...

    def remove_local_ref(self, oid: bytes) -> None: ...

    # ── objects ──
    def put(self, value: Any) -> ObjectRef: ...

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list: ...

    def wait(self, refs: list[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """(ready, not ready), in the order of `refs`."""
        ...

    def future(self, ref: ObjectRef) -> concurrent.futures.Future: ...

    def free(self, refs: Iterable[ObjectRef]) -> None: ...

    # ── tasks and actors ──
    def submit(self, spec: TaskSpec) -> ObjectRef | list[ObjectRef] | ObjectRefGenerator | bytes:
        """Run `spec`: its ref (a list for num_returns > 1, a generator for "streaming"); for an
        "actor_create" spec, the new actor's id."""
        ...

    def next_stream_item(self, task_id: bytes, index: int, timeout: float | None) -> ObjectRef | None:
        """Item `index` of a streaming task once it is yielded; None after the last one."""
        ...

    def release_stream(self, task_id: bytes) -> None: ...

    def cancel(self, ref: ObjectRef, force: bool = False) -> None: ...

    def kill_actor(self, actor_id: bytes) -> None: ...

    # ── the session ──
    def cluster_resources(self) -> dict: ...

    def available_resources(self) -> dict: ...

    def memory_summary(self) -> str: ...

    def object_store_stats(self) -> dict:
        """{"capacity", "used", "spilled_bytes", "restored_bytes"}: bytes (None: not known)."""
        ...

    def build(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> ObjectRef:
        """`fn(*args, **kwargs)` stored as an object, its value written once (core.build)."""
        ...

    def timeline(self, path: str | None = None) -> list[dict]:
        """The session's task events as Chrome trace events (core.timeline), written to `path`
        as a trace file too when given."""
        ...

    def shutdown(self) -> None: ...


def driver_only(call: str) -> CoreError:
    """The error a task or actor gets when it calls what only the driver's session can answer."""
    return CoreError(f"{call} belongs to the driver; call it there, not inside a task")


class DriverOnlyCalls:
    """The Runtime calls that belong to the driver's session, as a task or actor meets them:
    each raises `driver_only`. The two worker runtimes (local and Ray) inherit these."""

    def free(self, refs: Iterable[ObjectRef]) -> None:
        raise driver_only("core.free()")

    def cluster_resources(self) -> dict:
        raise driver_only("core.cluster_resources()")

    def available_resources(self) -> dict:
        raise driver_only("core.available_resources()")

    def memory_summary(self) -> str:
        raise driver_only("core.memory_summary()")

    def object_store_stats(self) -> dict:
        raise driver_only("core.object_store_stats()")

    def build(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> ObjectRef:
        raise driver_only("core.build()")

    def timeline(self, path: str | None = None) -> list[dict]:
        raise driver_only("core.timeline()")


# The slot. Read directly (`runtime._current`) by ObjectRef.__init__, which runs for every ref.
_current: Runtime | None = None
# What require() calls when the slot is empty: `core.init()` with no arguments, registered by
# api.py (the first API call starts a local session, as Ray's does).
_auto_start: Callable[[], object] | None = None


def current() -> Runtime | None:
    """The process's runtime, or None outside any session."""
    return _current


def set_current(rt: Runtime | None) -> None:
    """Install the process's runtime (None when its session ends)."""
    global _current
    _current = rt


def set_auto_start(start: Callable[[], object] | None) -> None:
    """What require() calls to start a session when none is running (None: raise instead)."""
    global _auto_start
    _auto_start = start


def require() -> Runtime:
    """The process's runtime, starting the default session first if there is none and an
    auto-start is registered; a CoreError otherwise."""
    rt = _current
    if rt is None and _auto_start is not None:
        _auto_start()
        rt = _current
    if rt is None:
        raise CoreError("no core session is running in this process; call core.init() first")
    return rt
