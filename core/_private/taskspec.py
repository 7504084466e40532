"""What a remote call asks for (`TaskSpec`), and how a local runtime packs its arguments.

    f.remote(*a, **kw) / C.remote(...) / h.m.remote(...)
          │  remote_function / actor: options checked once, then
          ▼
    TaskSpec(kind, name, shipped, args, kwargs, options, actor_id, method)
          │  runtime.require().submit(spec)
          ├──► LocalEngine / WorkerClient: pack_args ──► ("inline", bytes) | ("stored", ref)
          └──► RayBackend: hands args to Ray as they are (Ray packs its own way)

Packing: top-level ObjectRef arguments become `ArgPlaceholder`s that the worker replaces by the
values (resolved by the driver, zero-copy for shared objects); refs nested deeper stay refs;
arguments too large to travel inline are put in the store and passed by ref.

Also `call_here`: a call made in this process instead (core.build's factory in the driver), its
error wrapped as a task's would be.

A leaf module: it imports only the stdlib, `refs`, `objects.serialization` and `core.exceptions`.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple, Protocol

from core._private.objects.serialization import SerializedObject, serialize
from core._private.refs import ObjectRef, return_id
from core.exceptions import TaskError

TaskKind = Literal["task", "actor_create", "actor_method"]


class Shipped(Protocol):
    """A function or class pickled once per process (remote_function._Shipped)."""

    obj: Any

    def blob_and_id(self) -> tuple[bytes, bytes]:
        """(the pickled function or class, the id the driver caches it by)."""
        ...


@dataclass(slots=True, eq=False)
class TaskSpec:
    """One remote call, as the front (remote_function, actor) hands it to a runtime.

    `options` are already checked (remote_function.check_options) and complete for the kind:
    num_cpus, num_gpus, resources, num_returns, max_retries, retry_exceptions (tasks);
    max_restarts, max_task_retries (actor creation); num_returns (actor methods)."""

    kind: TaskKind
    name: str                         # what errors, summaries and process titles call it
    shipped: Shipped | None           # the function or class; None for an actor method
    args: tuple
    kwargs: dict
    options: dict
    actor_id: bytes | None = None     # actor_method: the actor called
    method: str | None = None         # actor_method: the method's name

    @property
    def streaming(self) -> bool:
        return self.options.get("num_returns", 1) == "streaming"

    @property
    def num_returns(self) -> int:
        """How many return objects the task makes (1 for a streaming one: its end marker)."""
        n = self.options.get("num_returns", 1)
        return 1 if n == "streaming" else int(n)


def return_ids(task_id: bytes, num_returns: int) -> list[bytes]:
    """The ids of a task's return objects: the task's own id when it has one."""
    return [return_id(task_id, i) for i in range(num_returns)] if num_returns > 1 else [task_id]


class ArgPlaceholder:
    """Stands for the i-th top-level ObjectRef argument inside the pickled (args, kwargs)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (ArgPlaceholder, (self.index,))


class PackedArgs(NamedTuple):
    args: tuple              # ("inline", bytes) | ("stored", ObjectRef)
    arg_refs: list           # top-level ObjectRef arguments, in placeholder order
    held: list               # every ref the arguments carry: kept alive until the task is done


def pack_args(args: tuple, kwargs: dict, inline_threshold: int,
              put_serialized: Callable[[SerializedObject], ObjectRef]) -> PackedArgs:
    """Pack a task's arguments once; `put_serialized` stores them when they are too large to
    travel inline (more than `inline_threshold` bytes)."""
    arg_refs: list[ObjectRef] = []

    def sub(v: Any) -> Any:
        if isinstance(v, ObjectRef):
            arg_refs.append(v)
            return ArgPlaceholder(len(arg_refs) - 1)
        return v

    packed = (tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()})
    ser = serialize(packed)
    held = list(ser.contained_refs)
    if ser.total_size <= inline_threshold:
        return PackedArgs(("inline", ser.to_bytes()), arg_refs, held)
    ref = put_serialized(ser)
    held.append(ref)
    return PackedArgs(("stored", ref), arg_refs, held)


def function_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def call_here(fn: Callable[..., Any], args: tuple, kwargs: dict, name: str | None = None) -> Any:
    """`fn(*args, **kwargs)` run in this process; its error raised as a task's would be: a
    TaskError naming `fn` that is also an instance of the error's type."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise TaskError.for_cause(name or function_name(fn), exc, traceback.format_exc()) from exc
