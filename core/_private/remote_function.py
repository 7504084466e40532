"""`@core.remote` on a function: options, shipping the function, submission.

A call becomes a `TaskSpec` handed to the process's runtime (`runtime.require().submit(spec)`):
the same in the driver and inside a worker; only the runtime differs (the driver's `LocalEngine`,
a worker's `WorkerClient`, which forwards to the driver, or the Ray backend). The runtime packs
the arguments (`taskspec.pack_args`).

The function itself is pickled once per process and identified by a hash of the bytes; the
driver ships it to each worker once. A function (or class) the worker can import is shipped by
name (module, qualified name, and the sys.path folder it was found in): a few bytes, and its
code is the file's, so a remote traceback shows the failing line. Others (defined in `__main__`
or inside a function) go by value with cloudpickle, their code keeping its real file name.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import types
from typing import Any

import cloudpickle

from core._private import runtime
from core._private.taskspec import TaskSpec
from core.exceptions import CoreError

TASK_OPTIONS = {"num_cpus": 1, "num_gpus": 0, "resources": None, "num_returns": 1,
                "max_retries": 3, "retry_exceptions": False, "name": None}
ACTOR_OPTIONS = {"num_cpus": 0, "num_gpus": 0, "resources": None, "max_restarts": 0,
                 "max_task_retries": 0, "name": None}


def check_options(given: dict, allowed: dict, what: str) -> dict:
    """Validate `.options(...)`/`@remote(...)` keywords; unknown or ill-typed ones are errors."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise CoreError(f"unknown option(s) {', '.join(unknown)} for {what}; "
                        f"valid options are: {', '.join(sorted(allowed))}")
    for key in ("num_cpus", "num_gpus"):
        if key in given and not (isinstance(given[key], (int, float)) and given[key] >= 0):
            raise CoreError(f"{key} for {what} must be a number >= 0, got {given[key]!r}")
    if "num_returns" in given:
        n = given["num_returns"]
        if not (n == "streaming" or (isinstance(n, int) and not isinstance(n, bool) and n >= 1)):
            raise CoreError(f"num_returns for {what} must be an integer >= 1 or \"streaming\", got {n!r}")
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        if key in given and not (isinstance(given[key], int) and given[key] >= -1):
            raise CoreError(f"{key} for {what} must be an integer >= -1 (-1 = forever), got {given[key]!r}")
    if given.get("resources") is not None:
        res = given["resources"]
        if not isinstance(res, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in res.values()):
            raise CoreError(f"resources for {what} must be a dict of name -> amount >= 0, got {res!r}")
        if "CPU" in res or "GPU" in res:
            raise CoreError(f"resources for {what}: use num_cpus/num_gpus for CPU and GPU, not resources")
    return {**allowed, **given}


class _Shipped:
    """A function or class pickled once in this process, with the id the driver caches it by."""

    __slots__ = ("obj", "_blob", "_id")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self._blob: bytes | None = None
        self._id: bytes | None = None

    def blob_and_id(self) -> tuple[bytes, bytes]:
        if self._blob is None:
            name = importable_name(self.obj)
            try:
                if name is not None:
                    self._blob = cloudpickle.dumps(_ByName(*name), protocol=5)
                else:
                    self._blob = cloudpickle.dumps(_ByValue(self.obj), protocol=5)
            except Exception as exc:
                raise CoreError(f"cannot pickle {getattr(self.obj, '__qualname__', self.obj)!r} to send it to "
                                f"workers: {exc}. Create what it captures inside the function instead") from exc
            self._id = hashlib.blake2b(self._blob, digest_size=16).digest()
        return self._blob, self._id  # type: ignore[return-value]


# ─── shipping by name or by value ───────────────────────────────────────────────────────────────
def _unwrap(obj: Any) -> Any:
    """The function or class behind a `@core.remote` wrapper (the module attribute is the wrapper)."""
    shipped = getattr(obj, "_shipped", None)
    return shipped.obj if isinstance(shipped, _Shipped) else obj


def _resolve(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = _unwrap(getattr(obj, part))
    return obj


def importable_name(obj: Any) -> tuple[str, str, str] | None:
    """(module, qualified name, sys.path folder) when a worker with this process's files can
    import `obj` by name and find this very object; None when it must go by value."""
    mod_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not mod_name or not qualname or mod_name == "__main__" or "<locals>" in qualname:
        return None
    module = sys.modules.get(mod_name)
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return None
    try:
        if _resolve(module, qualname) is not obj:
            return None
    except AttributeError:
        return None
    parts = mod_name.split(".")
    is_package = os.path.basename(file) == "__init__.py"
    root = os.path.dirname(os.path.abspath(file))
    for _ in range(len(parts) - (0 if is_package else 1)):
        root = os.path.dirname(root)
    expected = os.path.join(root, *parts, "__init__.py") if is_package else os.path.join(root, *parts) + ".py"
    if os.path.abspath(file) != expected:
        return None                  # loaded from a path its name does not lead to (importlib mode)
    return mod_name, qualname, root


class _ByName:
    """Pickles as an import of `module` and a walk down `qualname` (done in the worker)."""

    def __init__(self, module: str, qualname: str, root: str) -> None:
        self.args = (module, qualname, root)

    def __reduce__(self):
        return (load_by_name, self.args)


def load_by_name(module: str, qualname: str, root: str) -> Any:
    """The function or class `module.qualname`, unwrapped from its `@core.remote` wrapper."""
    if root not in sys.path:
        sys.path.append(root)        # appended: never shadows what the worker already imports
    try:
        return _resolve(importlib.import_module(module), qualname)
    except (ImportError, AttributeError) as exc:
        raise CoreError(f"the worker cannot import {module}.{qualname} (looked in {root} and "
                        f"sys.path): {exc}") from exc


class _ByValue:
    """Pickles `obj` by value (cloudpickle) with the file name of its code, restored on load if
    the pickler dropped it: tracebacks then show the source lines."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self):
        code = getattr(self.obj, "__code__", None)
        return (load_by_value, (self.obj, code.co_filename if code is not None else None))


def load_by_value(obj: Any, filename: str | None) -> Any:
    if filename and isinstance(obj, types.FunctionType) and obj.__code__.co_filename != filename:
        obj.__code__ = _refile(obj.__code__, filename)
    return obj


def _refile(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_refile(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def submit(spec: TaskSpec) -> Any:
    """Hand `spec` to the process's runtime (starting a session first if there is none)."""
    return runtime.require().submit(spec)


class RemoteFunction:
    """What `@core.remote` makes of a function: call `.remote(...)` to run it as a task."""

    def __init__(self, fn: Any, options: dict) -> None:
        if not callable(fn):
            raise CoreError(f"@core.remote needs a function or a class, got {fn!r}")
        self._shipped = _Shipped(fn)
        self._options = check_options(options, TASK_OPTIONS, f"task {fn.__qualname__}")
        self._name = fn.__qualname__
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self._streaming_ok = inspect.isgeneratorfunction(fn)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._submit(self._options, args, kwargs)

    def options(self, **options: Any) -> "_BoundFunction":
        merged = check_options({**self._given(), **options}, TASK_OPTIONS, f"task {self._name}")
        return _BoundFunction(self, merged)

    def _given(self) -> dict:
        return {k: v for k, v in self._options.items() if TASK_OPTIONS.get(k, object()) != v}

    def _submit(self, options: dict, args: tuple, kwargs: dict) -> Any:
        if options.get("num_returns") == "streaming" and not self._streaming_ok:
            raise CoreError(f"num_returns=\"streaming\" needs a generator function; {self._name} is not one")
        return submit(TaskSpec("task", options.get("name") or self._name, self._shipped, args, kwargs, options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self._name} cannot be called directly; "
                        f"use {self._name}.remote(...) (or {self._name}.__wrapped__(...) to run it here)")

    def __reduce__(self):
        return (_rebuild_function, (self._shipped.obj, self._given()))

    def __repr__(self) -> str:
        return f"RemoteFunction({self._name})"


def _rebuild_function(fn: Any, options: dict) -> RemoteFunction:
    return RemoteFunction(fn, options)


class _BoundFunction:
    def __init__(self, fn: RemoteFunction, options: dict) -> None:
        self._fn = fn
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn._submit(self._options, args, kwargs)
