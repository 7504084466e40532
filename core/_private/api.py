"""The public functions of `core`, dispatching to the process's runtime (`runtime.py`).

In the driver the runtime is the session's backend (`LocalEngine`, or the Ray backend when
`init(address=...)`), which `init` starts and puts in the runtime slot and `shutdown` stops;
inside a worker it is the worker's client, so the same calls work in tasks. The first call that
needs a runtime before any `init` starts a local session with the defaults, as Ray does.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any, Callable, Iterable, Sequence

from core._private import runtime
from core._private.actor import ActorClass, ActorHandle
from core._private.refs import ObjectRef, ObjectRefGenerator
from core._private.remote_function import RemoteFunction
from core.exceptions import CoreError
from core.units import parse_size

_backend: Any = None          # the session this process started (init), until shutdown
_zygote: Any = None           # started by preload_workers(), taken by the next init()
_init_lock = threading.Lock()


def preload_workers(modules: Sequence[str]) -> None:
    """Start importing `modules` for the workers of the next `init()`, now.

    One process (the zygote) imports them once and forks every worker of the session, so the
    workers start in milliseconds with those modules loaded, and share their pages. Call it first
    thing, before the rest of the program's start-up: the imports run meanwhile. A module that
    fails to import is skipped (the task that needs it reports the error). With
    `init(address=...)` (Ray) the zygote is not used and is stopped."""
    global _zygote
    from core._private.local.zygote import Zygote  # the local engine's modules load on first use

    with _init_lock:
        if _zygote is not None:
            _zygote.close()
        _zygote = Zygote([str(m) for m in modules])
        atexit.register(_close_unused_zygote)


def _close_unused_zygote() -> None:
    global _zygote
    zygote, _zygote = _zygote, None
    if zygote is not None:
        zygote.close()


def init(num_cpus: float | None = None, num_gpus: float | None = None, resources: dict | None = None,
         object_store_memory: int | str | None = None, spill: Any = None,
         inline_threshold: int = 100 * 1024, address: str | None = None,
         worker_preload: Sequence[str] | None = None, timeline: bool | int = False,
         **ray_kwargs: Any) -> None:
    """Start a session: the local engine, or attach to Ray when `address` is given.
    `worker_preload`: modules every worker has imported when it starts (see preload_workers).
    `timeline`: record the session's task attempts for `core.timeline()`. Off by default: on, it
    costs 2-3% of a no-op task flood's throughput (benchmarks/RESULTS.md) and keeps up
    to 100,000 records in memory (one per attempt, ~80 bytes each); True turns it on, a number
    bounds the records kept. Ray records its own whatever this says."""
    global _backend, _zygote
    with _init_lock:
        if _backend is not None:
            raise CoreError("core.init() was already called in this process and the session is running; "
                            "call core.shutdown() first to start a new one")
        if runtime.current() is not None:
            raise CoreError("core.init() cannot be called inside a task or actor; the worker already "
                            "belongs to the driver's session")
        if num_cpus is not None and (not isinstance(num_cpus, (int, float)) or num_cpus <= 0):
            raise CoreError(f"num_cpus must be a number > 0, got {num_cpus!r}")
        if not isinstance(timeline, bool) and (not isinstance(timeline, int) or timeline < 1):
            raise CoreError(f"timeline must be True, False or a number of events >= 1, got {timeline!r}")
        if not isinstance(inline_threshold, int) or inline_threshold < 0:
            raise CoreError(f"inline_threshold must be an integer >= 0, got {inline_threshold!r}")
        memory = (None if object_store_memory is None
                  else parse_size(object_store_memory, "object_store_memory", minimum=1))
        zygote, _zygote = _zygote, None
        try:
            _backend = _start_backend(address, zygote, worker_preload, ray_kwargs, num_cpus=num_cpus,
                                      num_gpus=num_gpus, resources=resources,
                                      object_store_memory=memory, spill=spill,
                                      inline_threshold=inline_threshold, timeline=timeline)
        except BaseException:
            if zygote is not None:
                zygote.close()
            raise
        runtime.set_current(_backend)


def _start_backend(address: str | None, zygote: Any, worker_preload: Sequence[str] | None,
                   ray_kwargs: dict, **options: Any) -> Any:
    if address is not None:
        from core._private.ray.backend import RayBackend  # imports ray: only when asked for

        if zygote is not None:  # Ray starts its own workers
            zygote.close()
        options.pop("inline_threshold")
        options.pop("timeline")      # Ray keeps its own task events (ray.timeline)
        return RayBackend(address=address, **options, **ray_kwargs)
    if ray_kwargs:
        raise CoreError(f"unknown argument(s) to core.init: {', '.join(sorted(ray_kwargs))}")
    from core._private.local.engine import LocalEngine  # the engine loads on first init
    from core._private.local.zygote import Zygote

    if worker_preload:
        if zygote is None:
            zygote = Zygote([str(m) for m in worker_preload])
        else:
            zygote.add_preload([str(m) for m in worker_preload])
    try:
        return LocalEngine(**options, zygote=zygote)
    except BaseException:
        if zygote is not None:
            zygote.close()
        raise


def shutdown() -> None:
    """Stop the workers, free every segment and remove spill files. Safe to call twice."""
    global _backend
    with _init_lock:
        backend, _backend = _backend, None
    if backend is not None:
        if runtime.current() is backend:  # first: refs made from now on count for nothing
            runtime.set_current(None)
        backend.shutdown()


atexit.register(shutdown)
runtime.set_auto_start(init)


def is_initialized() -> bool:
    """True in a driver with a session running, and inside its tasks and actors."""
    return runtime.current() is not None


def _session() -> runtime.Runtime:
    """The running session's runtime, for calls that do not start one."""
    rt = runtime.current()
    if rt is None:
        raise CoreError("no session is running in this process; call core.init() first")
    return rt


def put(value: Any) -> ObjectRef:
    """Store an immutable copy of `value`; returns its ref."""
    if isinstance(value, ObjectRef):
        raise TypeError("core.put() of an ObjectRef is not allowed; pass the ref itself, or put [ref]")
    return runtime.require().put(value)


def build(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ObjectRef:
    """Like `put(fn(*args, **kwargs))`, with the value written once: for a model's weights.

    On the local engine with a zygote (`init(worker_preload=...)`, `preload_workers`; the
    dataflow CLI starts one) `fn` runs in the zygote, which keeps the value: workers forked after
    it find it in their own memory, sharing its pages (no copy while nobody writes to it), and
    idle workers forked before are replaced. Anyone else (a busy or actor worker that predates
    the build, the driver's own `get`) reads one copy that the zygote writes into the store once.
    Treat the value as read-only: a worker's tasks all get the same object. `memory_summary`
    lists it as "inherited"; `free` (or dropping the last ref) drops it from the zygote; if the
    zygote dies, reading it raises ObjectLostError. A factory that leaves threads running (an
    OpenMP pool) has its value put into the store at once; the zygote then starts workers as
    fresh interpreters, and later builds run in the driver.

    On Ray, without a zygote, or when the arguments contain refs: made in the driver, put once.
    `fn` raising: a TaskError that is also an instance of the error's type, naming `fn`. `fn`
    and its arguments must pickle (cloudpickle); CoreError naming `fn` otherwise."""
    if not callable(fn):
        raise TypeError(f"core.build() takes a callable and its arguments, got {type(fn).__name__}")
    return runtime.require().build(fn, args, kwargs)


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None, writable: bool = False) -> Any:
    """The value of a ref, or the values of a list of refs, waiting for them to be ready."""
    if isinstance(refs, ObjectRefGenerator):
        raise TypeError("core.get() takes refs; iterate the streaming generator to get its refs")
    single = isinstance(refs, ObjectRef)
    items = [refs] if single else list(refs)
    for r in items:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"core.get() takes an ObjectRef or a list of them, got {type(r).__name__}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    values = runtime.require().get(items, timeout, writable) if items else []
    return values[0] if single else values


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split `refs` into (ready, not ready) once `num_returns` are ready or `timeout` passes."""
    refs = list(refs)
    if not refs:
        return [], []                # as Ray: an empty list is answered before num_returns is checked
    if len(set(refs)) != len(refs):
        raise ValueError("core.wait() got the same ref more than once")
    if not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"num_returns must be an integer >= 1, got {num_returns!r}")
    return runtime.require().wait(refs, num_returns, timeout)


def remote(*args: Any, **options: Any) -> Any:
    """`@core.remote` or `@core.remote(num_cpus=..., ...)` on a function or a class."""

    def make(target: Any) -> Any:
        if isinstance(target, type):
            return ActorClass(target, options)
        return RemoteFunction(target, options)

    if len(args) == 1 and not options and callable(args[0]):
        return make(args[0])
    if args:
        raise TypeError("@core.remote takes keyword options only, e.g. @core.remote(num_cpus=2)")
    return make


def cancel(ref: ObjectRef, *, force: bool = False) -> None:
    """Cancel the task that makes `ref`: dropped if pending, interrupted if running."""
    runtime.require().cancel(ref, force)


def kill(actor: Any) -> None:
    """Kill an actor now; calls on it then raise ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"core.kill() takes an actor handle, got {type(actor).__name__}")
    runtime.require().kill_actor(actor._actor_id)


def free(refs: ObjectRef | Iterable[ObjectRef]) -> None:
    """Drop objects now, whoever still refers to them; a later get raises ObjectLostError."""
    items = [refs] if isinstance(refs, ObjectRef) else list(refs)
    _session().free(items)


def cluster_resources() -> dict:
    return _session().cluster_resources()


def available_resources() -> dict:
    return _session().available_resources()


def memory_summary() -> str:
    """One line per live object (id, size, where it lives, who refers to it), then totals."""
    return _session().memory_summary()


def object_store_stats() -> dict:
    """The object store's figures in bytes: `capacity`, `used` (shared memory in use),
    `spilled_bytes` and `restored_bytes` (totals since the session started; None where the
    backend does not say). What `memory_summary()` ends with, as numbers."""
    return _session().object_store_stats()


def timeline(path: str | None = None) -> list[dict]:
    """The session's task events as Chrome trace events (what Perfetto and chrome://tracing
    open): one bar per task attempt on its worker's lane, with its function, task id, arguments'
    bytes and outcome; a mark per submit. With `path`, also written there as a trace file
    (atomically). Driver only. The local engine keeps the last 100,000 attempts
    (`init(timeline=N)` to change); recorded only when the session was started with
    `init(timeline=True)`; on Ray, Ray's own `ray.timeline()` events."""
    return _session().timeline(None if path is None else str(path))
