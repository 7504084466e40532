"""Errors raised by `core`. One root, `CoreError`; each subclass also derives from the builtin
that matches its meaning, so `except TimeoutError` catches a `get` timeout. Stdlib only."""

from __future__ import annotations


class CoreError(Exception):
    """Root of every error `core` raises."""


class GetTimeoutError(CoreError, TimeoutError):
    """`get` or `wait` ran out of time before the object was ready."""


class TaskError(CoreError):
    """A task raised. `.cause` is the original exception; `.traceback_str` the remote traceback."""

    def __init__(self, function_name: str, cause: BaseException | None, traceback_str: str):
        self.function_name = function_name
        self.cause = cause
        self.traceback_str = traceback_str
        super().__init__(function_name, cause, traceback_str)

    def __str__(self) -> str:
        return f"task {self.function_name} failed:\n{self.traceback_str.rstrip()}"

    @classmethod
    def for_cause(cls, function_name: str, cause: BaseException | None, traceback_str: str) -> "TaskError":
        """A TaskError that is also an instance of the cause's type where Python allows it,
        so `except ValueError` still catches a remote ValueError (as Ray does)."""
        if cause is None or isinstance(cause, CoreError):
            return cls(function_name, cause, traceback_str)
        try:
            dual = type(f"TaskError({type(cause).__name__})", (cls, type(cause)), {
                "__init__": lambda self, *a: cls.__init__(self, *a),
                "__str__": cls.__str__,
                "__reduce__": lambda self: (cls.for_cause, (self.function_name, self.cause, self.traceback_str)),
            })
            return dual(function_name, cause, traceback_str)
        except TypeError:  # layout conflict, final class, ...
            return cls(function_name, cause, traceback_str)

    def __reduce__(self):
        return (TaskError.for_cause, (self.function_name, self.cause, self.traceback_str))


class WorkerCrashedError(CoreError):
    """The worker running a task died (signal, os._exit, out of memory) and retries ran out."""


class ObjectLostError(CoreError):
    """An object's data is gone (freed, segment or spill file lost) and cannot be rebuilt."""


class ObjectStoreFullError(CoreError, MemoryError):
    """A value does not fit in the object store even after spilling everything that can go."""


class TaskCancelledError(CoreError):
    """The task was cancelled with `core.cancel`."""


class ActorDiedError(CoreError):
    """The actor is dead (killed, crashed past `max_restarts`) and cannot take calls."""


__all__ = [
    "CoreError",
    "GetTimeoutError",
    "TaskError",
    "WorkerCrashedError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "TaskCancelledError",
    "ActorDiedError",
]


class ConfigError(CoreError, ValueError):
    """An `init` argument (spill target, sizes, ...) is invalid; the message names the key."""


__all__.append("ConfigError")
