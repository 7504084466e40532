"""Where tasks run: a thin adapter around `core` (local engine or Ray, as `core.init` decides),
and an inline backend that runs each task in the driver for debugging (pdb, prints).

The executor only needs: start, workers, put, submit, wait, result, cancel, stop. A task's own
exception reaches the executor as `TaskFailure` with the original error as `.cause`, whatever
the backend.
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


class TaskFailure(Exception):
    """A task did not produce a result: it raised, its worker died, or it was cancelled.
    `.cause` is the task's own exception when there is one."""

    def __init__(self, message: str, cause: BaseException | None = None):
        self.cause = cause
        super().__init__(message)


class CoreBackend:
    """Tasks on `core`. Starts a session unless one is already running (and then leaves it)."""

    name = "core"

    def __init__(self, *, num_cpus=None, object_store_memory=None, spill=None, address=None):
        self.init_kwargs = {k: v for k, v in dict(num_cpus=num_cpus, object_store_memory=object_store_memory,
                                                  spill=spill, address=address).items() if v is not None}
        self.owns_session = False
        self._remote: dict[Callable, Any] = {}
        self._warming: list = []

    def start(self, modules: list[str]) -> None:
        """Start a session whose workers have imported `modules` (forked from a zygote that
        imported them once); on Ray, or in a session already running, ask each worker to."""
        import core

        if not core.is_initialized():
            core.init(**self.init_kwargs, worker_preload=modules)
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

    def warm(self, modules: list[str]) -> None:
        """One fire-and-forget import task per worker."""
        for _ in range(self.workers()):
            self._warming.append(self.submit(import_modules, modules))

    def submit(self, fn: Callable, *args: Any) -> Any:
        import core

        remote = self._remote.get(fn)
        if remote is None:
            # Retries are the executor's (it counts and reports them), so core does none.
            remote = self._remote[fn] = core.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(fn)
        return remote.remote(*args)

    def wait(self, handles: list, timeout: float) -> list:
        import core

        ready, rest = core.wait(list(handles), num_returns=1, timeout=timeout)
        if ready and rest:  # collect whatever else is done too, without waiting
            more, _ = core.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any) -> Any:
        import core
        from core.exceptions import CoreError, TaskError

        try:
            return core.get(handle)
        except TaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise TaskFailure(describe(cause), cause) from exc
        except CoreError as exc:  # worker crashed, object lost, store full, cancelled
            raise TaskFailure(describe(exc), exc) from exc

    def cancel(self, handle: Any, force: bool = False) -> None:
        import core

        try:
            core.cancel(handle, force=force)
        except Exception:  # already finished or already gone: nothing to cancel
            pass

    def stop(self) -> None:
        import core

        self._warming.clear()
        if self.owns_session and core.is_initialized():
            core.shutdown()
        self.owns_session = False


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

    def submit(self, fn: Callable, *args: Any) -> _Done:
        try:
            return _Done(value=fn(*args))
        except Exception as exc:
            return _Done(error=exc)

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
