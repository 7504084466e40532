"""Where tasks run: a thin adapter around `core` (local engine or Ray, as `core.init` decides),
and an inline backend that runs each task in the driver for debugging (pdb, prints).

The executor only needs: start, workers, put, submit, wait, result, cancel, stop. A task's own
exception reaches the executor as `TaskFailure` with the original error as `.cause`, whatever
the backend. With `trace=PATH`, `CoreBackend.stop` writes the session's task timeline there
(`core.timeline`, a Chrome trace) before it shuts the session down, however the run ended.
"""

from __future__ import annotations

from typing import Any, Callable


# What every shard task imports (reading Parquet through pyarrow.dataset, writing its part); the
# CLI has the workers import these before it even reads the pipeline file.
TASK_MODULES = ("dataflow._task", "connectors.sources", "pyarrow.dataset", "connectors.sinks",
                "pyarrow.parquet")


def preload_workers() -> None:
    """Start the workers' imports first: they run while this process reads the pipeline file,
    plans the shards and builds the model. (Wasted, in parallel, if the run is inline or on Ray.)"""
    import core

    core.preload_workers([*TASK_MODULES, "pandas"])


def store_stats() -> dict:
    """Object-store bytes in use and spilled so far (core.object_store_stats; {} without a
    session): the report's memory chart. Called from the recorder's sampler thread."""
    import core

    if not core.is_initialized():
        return {}
    stats = core.object_store_stats()
    out = {"used": stats["used"]}
    if stats.get("spilled_bytes") is not None:
        out["spilled"] = stats["spilled_bytes"]
    return out


class TaskFailure(Exception):
    """A task did not produce a result: it raised, its worker died, or it was cancelled.
    `.cause` is the task's own exception when there is one; `.died`: its worker (or actor)
    process died."""

    def __init__(self, message: str, cause: BaseException | None = None, died: bool = False):
        self.cause = cause
        self.died = died
        super().__init__(message)


class CoreBackend:
    """Tasks on `core`. Starts a session unless one is already running (and then leaves it)."""

    name = "core"

    def __init__(self, *, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                 spill=None, address=None, trace=None):
        self.init_kwargs = {k: v for k, v in dict(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None,
                                                  object_store_memory=object_store_memory,
                                                  spill=spill, address=address).items() if v is not None}
        self.owns_session = False
        self.trace = trace                       # where stop() writes the session's timeline
        self.trace_written: str | None = None    # ... once it did
        self._remote: dict[Callable, Any] = {}
        self._warming: list = []

    def start(self, modules: list[str]) -> None:
        """Start a session whose workers have imported `modules` (forked from a zygote that
        imported them once); on Ray, or in a session already running, ask each worker to."""
        import core

        if not core.is_initialized():
            # A trace asked for: this session records its task events (core.timeline).
            core.init(**self.init_kwargs, worker_preload=modules, timeline=self.trace is not None)
            self.owns_session = True
            if "address" not in self.init_kwargs:
                return
        self.warm(modules)

    @property
    def local(self) -> bool:
        """Workers on this machine: a session we started ourselves, without a cluster address."""
        return self.owns_session and self.init_kwargs.get("address") in (None, "local-ray")

    def workers(self) -> int:
        import core

        try:
            return max(1, int(core.cluster_resources().get("CPU", 1)))
        except Exception:  # a backend without cluster_resources: assume the requested size
            return int(self.init_kwargs.get("num_cpus") or 1)

    def put(self, value: Any) -> Any:
        import core

        return core.put(value)

    def build(self, fn: Callable, *args: Any) -> Any:
        """`fn(*args)` stored once: on the local engine made where the workers are forked from,
        so they inherit its pages (core.build)."""
        import core

        return core.build(fn, *args)

    def warm(self, modules: list[str]) -> None:
        """One fire-and-forget import task per worker."""
        for _ in range(self.workers()):
            self._warming.append(self.submit(import_modules, modules))

    def resources(self) -> dict:
        """The session's total resources ({"CPU": 2.0, "GPU": 0.0, ...})."""
        import core

        try:
            return {k: float(v) for k, v in core.cluster_resources().items()}
        except Exception:  # noqa: BLE001 - a backend without it: what was asked for
            return {"CPU": float(self.init_kwargs.get("num_cpus") or 1)}

    def submit(self, fn: Callable, *args: Any, options: dict | None = None) -> Any:
        """`fn(*args)` as a task; `options` are core's (num_cpus, num_gpus, resources,
        num_returns): with num_returns=2 the result is a list of two handles."""
        import core

        key = (fn, tuple(sorted((k, repr(v)) for k, v in (options or {}).items())))
        remote = self._remote.get(key)
        if remote is None:
            # Retries are the executor's (it counts and reports them), so core does none.
            opts = {"num_cpus": 1, **(options or {})}
            remote = self._remote[key] = core.remote(max_retries=0, retry_exceptions=False, **opts)(fn)
        return remote.remote(*args)

    def start_actor(self, cls: type, args: tuple, options: dict) -> Any:
        """An actor of `cls` (core's: its own process, restarted by core if it dies)."""
        import core

        key = (cls, "actor")
        actor_class = self._remote.get(key)
        if actor_class is None:
            actor_class = self._remote[key] = core.remote(cls)
        return actor_class.options(**options).remote(*args)

    def call(self, actor: Any, method: str, *args: Any, num_returns: int = 1) -> Any:
        m = getattr(actor, method)
        return (m.options(num_returns=num_returns) if num_returns != 1 else m).remote(*args)

    def as_arg(self, handle: Any) -> Any:
        """A result handle as another task's argument (a ref: resolved in the worker, zero-copy)."""
        return handle

    def kill(self, actor: Any) -> None:
        import core

        try:
            core.kill(actor)
        except Exception:  # noqa: BLE001 - already dead
            pass

    def wait(self, handles: list, timeout: float) -> list:
        import core

        ready, rest = core.wait(list(handles), num_returns=1, timeout=timeout)
        if ready and rest:  # collect whatever else is done too, without waiting
            more, _ = core.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any) -> Any:
        import core
        from core.exceptions import ActorDiedError, CoreError, TaskError, WorkerCrashedError

        try:
            return core.get(handle)
        except TaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise TaskFailure(describe(cause), cause) from exc
        except CoreError as exc:  # worker crashed, object lost, store full, cancelled
            raise TaskFailure(describe(exc), exc, isinstance(exc, (ActorDiedError, WorkerCrashedError))) from exc

    def cancel(self, handle: Any, force: bool = False) -> None:
        import core

        try:
            core.cancel(handle, force=force)
        except Exception:  # already finished or already gone: nothing to cancel
            pass

    def stop(self) -> None:
        import core

        self._warming.clear()
        if self.trace is not None and core.is_initialized():
            self.trace_written = write_trace(self.trace)
        if self.owns_session and core.is_initialized():
            core.shutdown()
        self.owns_session = False


def write_trace(path: Any) -> str | None:
    """The running session's task timeline written to `path` (core.timeline): its path, or None
    with a warning when the session has none (started with timeline=False, or Ray gave none):
    a run's trace is a diagnostic, it never fails the run."""
    import warnings

    import core
    from core.exceptions import CoreError

    try:
        core.timeline(str(path))
    except CoreError as exc:
        warnings.warn(f"no trace written to {path}: {exc}", RuntimeWarning, stacklevel=2)
        return None
    return str(path)


class _Done:
    __slots__ = ("value", "error")

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error


class InlineBackend:
    """Every task runs in the driver, at submit time, one after another."""

    name = "inline"
    local = True  # tasks run in the driver itself

    def __init__(self, **_ignored):
        pass

    def start(self, modules: list[str]) -> None:
        pass

    def workers(self) -> int:
        return 1

    def put(self, value: Any) -> Any:
        return value

    def build(self, fn: Callable, *args: Any) -> Any:
        return fn(*args)

    def resources(self) -> dict:
        return {"CPU": 1.0}

    def submit(self, fn: Callable, *args: Any, options: dict | None = None) -> Any:
        try:
            value = fn(*args)
        except Exception as exc:
            n = (options or {}).get("num_returns", 1)
            return _Done(error=exc) if n == 1 else [_Done(error=exc) for _ in range(n)]
        n = (options or {}).get("num_returns", 1)
        return _Done(value=value) if n == 1 else [_Done(value=v) for v in value]

    def start_actor(self, cls: type, args: tuple, options: dict) -> Any:
        try:
            return cls(*args)
        except Exception as exc:  # every call then fails with the constructor's error
            return _Done(error=exc)

    def call(self, actor: Any, method: str, *args: Any, num_returns: int = 1) -> Any:
        if isinstance(actor, _Done):
            return actor if num_returns == 1 else [actor] * num_returns
        return self.submit(getattr(actor, method), *args, options={"num_returns": num_returns})

    def as_arg(self, handle: Any) -> Any:
        return None if handle is None else self.result(handle)

    def kill(self, actor: Any) -> None:
        pass

    def wait(self, handles: list, timeout: float) -> list:
        return list(handles)[:1]

    def result(self, handle: _Done) -> Any:
        if handle.error is not None:
            raise TaskFailure(describe(handle.error), handle.error)
        return handle.value

    def cancel(self, handle: Any, force: bool = False) -> None:
        pass

    def stop(self) -> None:
        pass


def import_modules(modules: list[str]) -> None:
    """Import what the tasks will need (in a worker, while the driver is still busy)."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the real task will report it, with context
            pass


def describe(exc: BaseException) -> str:
    """One line for a task's error: our own messages as they are (they name what failed), any
    other error with its type in front."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if type(exc).__module__.split(".")[0] == "dataflow" and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def make_backend(name: str, **kwargs) -> CoreBackend | InlineBackend:
    return {"core": CoreBackend, "inline": InlineBackend}[name](**kwargs)
