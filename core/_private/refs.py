"""`ObjectRef`: a handle on an object in the store, and the streaming generator of refs.

A ref counts for its object while it lives: creating one tells the process's runtime (the one
slot of `runtime.py`: the driver's engine, a worker's client, or the Ray backend) to count +1,
and `__del__` tells it to count -1. The runtime decides what that means (a driver-local count,
or a borrow reported to the driver). A ref made while there is no runtime (unpickled outside
any session) counts for nothing.
Pickling a ref records it as "contained" in whatever is being serialized, so the containing
object or the task that carries it keeps it alive.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
from typing import Iterator

from core._private import runtime
from core._private.objects.serialization import note_contained_ref
from core.exceptions import CoreError


class IdSource:
    """Object ids, 20 bytes: 8 random bytes per process, an 8-byte counter, a 4-byte index.
    A task's id is also the id of its first return; its other returns (and the items of a
    streaming generator) differ in the index only."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8)
        self._counter = itertools.count(1)

    def new(self, index: int = 0) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "little") + index.to_bytes(4, "little")


def return_id(task_id: bytes, index: int) -> bytes:
    """The id of return (or streamed item) `index` of the task `task_id`."""
    return task_id[:16] + index.to_bytes(4, "little")


class ObjectRef:
    """A reference to an immutable object: hashable, picklable, awaitable."""

    __slots__ = ("_id", "_rt", "__weakref__")

    def __init__(self, oid: bytes, *, _counted: bool = False) -> None:
        self._id = oid
        rt = runtime._current
        self._rt = rt
        if rt is not None and not _counted:
            rt.add_local_ref(oid)

    def __del__(self) -> None:
        rt = self._rt
        if rt is not None:
            try:
                rt.remove_local_ref(self._id)
            except Exception:  # interpreter shutdown: nothing left to count
                pass

    @property
    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        note_contained_ref(self)
        return (_rebuild_ref, (self._id,))

    def future(self) -> concurrent.futures.Future:
        """A `concurrent.futures.Future` resolved with the value (or the task's error)."""
        return _require_runtime(self).future(self)

    def __await__(self):
        import asyncio  # here, not at the top: it costs every process ~30 ms to import

        return asyncio.wrap_future(self.future()).__await__()


def _rebuild_ref(oid: bytes) -> ObjectRef:
    return ObjectRef(oid)


def _require_runtime(ref: ObjectRef) -> runtime.Runtime:
    rt = ref._rt or runtime._current
    if rt is None:
        raise CoreError(f"{ref!r} belongs to no running session; call core.init() first")
    return rt


class ObjectRefGenerator:
    """What `f.remote()` returns for `num_returns="streaming"`: an iterator of refs, one per item
    the generator yields, each available as soon as the item is yielded."""

    def __init__(self, rt: runtime.Runtime, task_id: bytes) -> None:
        self._rt = rt
        self._task_id = task_id
        self._next = 0

    def __iter__(self) -> Iterator[ObjectRef]:
        return self

    def __next__(self) -> ObjectRef:
        ref = self._rt.next_stream_item(self._task_id, self._next, timeout=None)
        if ref is None:
            raise StopIteration
        self._next += 1
        return ref

    def next_ready(self, timeout: float | None) -> ObjectRef | None:
        """The next ref, waiting at most `timeout` seconds (GetTimeoutError past it)."""
        ref = self._rt.next_stream_item(self._task_id, self._next, timeout=timeout)
        if ref is None:
            raise StopIteration
        self._next += 1
        return ref

    def __del__(self) -> None:
        try:
            self._rt.release_stream(self._task_id)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator(task={self._task_id.hex()})"
