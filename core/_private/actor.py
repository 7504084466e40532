"""`@core.remote` on a class: actors.

`C.remote(...)` starts a dedicated worker process, builds the instance there and returns an
`ActorHandle`. `h.method.remote(...)` queues a call; calls run one at a time, in the order they
were submitted. A handle is picklable, so it can be passed to tasks and other actors.
"""

from __future__ import annotations

import inspect
from typing import Any

from core._private.refs import ObjectRef
from core._private.remote_function import ACTOR_OPTIONS, _Shipped, check_options, submit
from core._private.taskspec import TaskSpec
from core.exceptions import CoreError


class ActorClass:
    """What `@core.remote` makes of a class."""

    def __init__(self, cls: type, options: dict) -> None:
        self._cls = cls
        self._shipped = _Shipped(cls)
        self._options = check_options(options, ACTOR_OPTIONS, f"actor {cls.__qualname__}")
        self._methods = tuple(name for name, _ in inspect.getmembers(cls, callable)
                              if not name.startswith("__") or name == "__call__")

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._create(self._options, args, kwargs)

    def options(self, **options: Any) -> "_BoundActorClass":
        given = {k: v for k, v in self._options.items() if ACTOR_OPTIONS.get(k, object()) != v}
        return _BoundActorClass(self, check_options({**given, **options}, ACTOR_OPTIONS,
                                                    f"actor {self._cls.__qualname__}"))

    def _create(self, options: dict, args: tuple, kwargs: dict) -> "ActorHandle":
        name = options.get("name") or self._cls.__qualname__
        actor_id = submit(TaskSpec("actor_create", name, self._shipped, args, kwargs, options))
        return ActorHandle(actor_id, name, self._methods)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._cls.__qualname__} cannot be instantiated directly; "
                        f"use {self._cls.__qualname__}.remote(...)")


class _BoundActorClass:
    def __init__(self, actor_class: ActorClass, options: dict) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._actor_class._create(self._options, args, kwargs)


class ActorHandle:
    """A handle on a live actor; `handle.method.remote(...)` returns an ObjectRef."""

    def __init__(self, actor_id: bytes, name: str, methods: tuple[str, ...]) -> None:
        self._actor_id = actor_id
        self._name = name
        self._methods = methods

    def __getattr__(self, item: str) -> "ActorMethod":
        if item.startswith("_"):
            raise AttributeError(item)
        if item not in self._methods:
            raise AttributeError(f"actor {self._name} has no method {item!r}; "
                                 f"it has: {', '.join(m for m in self._methods if not m.startswith('_'))}")
        return ActorMethod(self, item)

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._name, self._methods))

    def __repr__(self) -> str:
        return f"ActorHandle({self._name}, {self._actor_id.hex()[:12]})"


class ActorMethod:
    def __init__(self, handle: ActorHandle, method: str, options: dict | None = None) -> None:
        self._handle = handle
        self._method = method
        self._options = options or {}

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        opts = {"num_returns": self._options.get("num_returns", 1), "max_retries": 0}
        handle = self._handle
        return submit(TaskSpec("actor_method", f"{handle._name}.{self._method}", None, args, kwargs, opts,
                               handle._actor_id, self._method))

    def options(self, **options: Any) -> "ActorMethod":
        unknown = set(options) - {"num_returns", "name"}
        if unknown:
            raise CoreError(f"unknown option(s) {', '.join(sorted(unknown))} for an actor method")
        return ActorMethod(self._handle, self._method, options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods cannot be called directly; use .{self._method}.remote(...)")
