"""Our hold on Ray objects: one `ray.ObjectRef` per object id, kept alive while any of our refs to
it lives in this process.

    ObjectRef(oid) made ──► add(oid) ─┐                        ┌─► entry.count += ±1
    ObjectRef.__del__  ──► remove(oid)┴─► events (lock-free) ──┤   count 0: the Ray ref is dropped,
                                         applied under the lock └─► Ray's own count decides
                                         by the next call that holds it

Our id of an object is its Ray id (28 bytes; `ObjectRef.hex()` is stable). `__del__` may run
while this thread holds the lock (a ref dropped inside a locked section), so it never blocks: it
appends to a deque, and whoever holds the lock next applies the queued events.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Iterable

from core._private.refs import ObjectRef
from core.exceptions import ObjectLostError

__all__ = ["Entry", "RefTable"]


class Entry:
    """Our hold on one Ray object: the Ray ref, how many of our refs point at it, what made it."""

    __slots__ = ("ray_ref", "count", "name", "kind", "actor_id")

    def __init__(self, ray_ref: Any, name: str, kind: str, actor_id: bytes | None = None) -> None:
        self.ray_ref = ray_ref
        self.count = 0
        self.name = name
        self.kind = kind          # "put", "task", "actor_method", "stream", "borrowed"
        self.actor_id = actor_id


class RefTable:
    """Object id -> Entry, with the reference counts of this process's refs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: deque[tuple[int, bytes]] = deque()
        self._table: dict[bytes, Entry] = {}
        self._freed: set[bytes] = set()
        self.closed = False

    def add(self, oid: bytes) -> None:
        self._events.append((1, oid))
        self._try_apply()

    def remove(self, oid: bytes) -> None:
        if self.closed:
            return
        self._events.append((-1, oid))
        self._try_apply()

    def _try_apply(self) -> None:
        # Never block: this runs from ObjectRef.__del__, possibly while this thread holds the lock.
        if self._lock.acquire(blocking=False):
            try:
                self._apply_events()
            finally:
                self._lock.release()

    def _apply_events(self) -> None:
        events, table = self._events, self._table
        while events:
            delta, oid = events.popleft()
            entry = table.get(oid)
            if entry is not None:
                entry.count += delta
                if entry.count <= 0:
                    del table[oid]   # drops the Ray ref: Ray's own count decides when the object goes

    def adopt(self, ray_ref: Any, name: str, kind: str, actor_id: bytes | None = None) -> ObjectRef:
        """Our ref for a Ray ref, counted at once (no window where the entry has count 0)."""
        oid = ray_ref.binary()
        with self._lock:
            self._apply_events()
            entry = self._table.get(oid)
            if entry is None:
                entry = self._table[oid] = Entry(ray_ref, name, kind, actor_id)
            entry.count += 1
        return ObjectRef(oid, _counted=True)

    def entry(self, oid: bytes) -> Entry:
        """The entry of an object held here; ObjectLostError saying why when there is none."""
        with self._lock:
            self._apply_events()
            entry = self._table.get(oid)
        if entry is None:
            raise self._missing(oid)
        return entry

    def find(self, oid: bytes) -> Entry | None:
        with self._lock:
            self._apply_events()
            return self._table.get(oid)

    def _missing(self, oid: bytes) -> ObjectLostError:
        if oid in self._freed:
            return ObjectLostError(f"object {oid.hex()} was freed with core.free(); it cannot be read again")
        return ObjectLostError(f"object {oid.hex()} is not held in this process (its refs were all dropped, "
                               f"or it belongs to another session)")

    def free(self, oids: Iterable[bytes]) -> None:
        """Drop our hold now, whatever the counts; a later lookup says the object was freed."""
        with self._lock:
            self._apply_events()
            for oid in oids:
                self._freed.add(oid)
                self._table.pop(oid, None)

    def rows(self) -> list[tuple[str, Any, int, str, str]]:
        """(hex id, Ray ref, count, name, kind) of every object held, sorted by id."""
        with self._lock:
            self._apply_events()
            return sorted((oid.hex(), e.ray_ref, e.count, e.name, e.kind) for oid, e in self._table.items())

    def close(self) -> None:
        """Drop every hold; later removals (refs dying after shutdown) are ignored."""
        self.closed = True
        with self._lock:
            self._table.clear()
            self._events.clear()
