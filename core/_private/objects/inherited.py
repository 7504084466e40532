"""Inherited objects (`core.build` on the local engine): the store's entries whose value lives in
the zygote, and in the memory of every worker forked after the build.

    put_inherited ──► Entry(state "inherited", no segment) ── locate: ("inherited", oid, size)
                                 │ a reader without the value (driver get, older worker)
                                 ▼ _materialize: the zygote writes it into a segment, once
                      Entry(state "shared") ── read as any shared object
    zygote died ──► lose_inherited: only-inherited entries become lost; store copies stay

A part of `ObjectStore` (a base class over its state: `_cond`, `_objects`, `table`, `pool`,
`stats`), kept apart so the store proper reads as puts, reads, spilling and restores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from core._private.objects.table import Entry
from core.exceptions import CoreError, ObjectLostError

if TYPE_CHECKING:  # types only
    import threading

    from core._private.objects.segments import SegmentPool
    from core._private.objects.table import ObjectTable


def _hex(oid: bytes) -> str:
    return oid.hex()


class InheritedObjects:
    """What the store does with inherited objects; the engine wires the three callbacks."""

    _cond: threading.Condition
    _objects: dict
    table: ObjectTable
    pool: SegmentPool
    stats: dict
    # who has an object in its own memory; how to get a copy written into a segment; whom to
    # tell when one is deleted (later forks do not carry it)
    heirs: Callable[[bytes, int], bool] = staticmethod(lambda oid, holder: False)
    materializer: Callable[[bytes, str, int], None] | None = None
    inherited_dropped: Callable[[bytes], None] | None = None
    # and the store's own _check_open() and _allocate(size, oid, wait=...)

    def put_inherited(self, oid: bytes, size: int) -> None:
        """An object whose value lives in the zygote (`size`: its serialized size, what a copy
        into the store would take). No shared memory is used until someone needs a copy."""
        with self._cond:
            self._check_open()
            if oid in self._objects:
                raise CoreError(f"object {_hex(oid)} already exists; objects are written once")
            entry = Entry(oid, size, "inherited")
            entry.inherited = True
            self._objects[oid] = entry
            self._cond.notify_all()

    def lose_inherited(self, reason: str) -> None:
        """The zygote died: what only it held is lost (`reason`, with the object's id for {}),
        store copies stay valid."""
        with self._cond:
            for entry in self._objects.values():
                if not entry.inherited:
                    continue
                entry.inherited = False
                if entry.state in ("inherited", "restoring") and entry.seg is None:
                    entry.lost = reason.format(_hex(entry.oid))
            self._cond.notify_all()

    def disown(self, oid: bytes) -> None:
        """The zygote no longer holds `oid`: its copy in the store is the object from now on."""
        with self._cond:
            entry = self._objects.get(oid)
            if entry is not None and entry.seg is not None:
                entry.inherited = False

    def _materialize(self, entry: Entry, wait_for_room: bool = True) -> None:
        """Have the zygote write an inherited object into a segment, once (a driver `get`, a
        worker without it). Lock held; dropped while the zygote writes."""
        if self.materializer is None:
            entry.lost = f"object {_hex(entry.oid)} is lost: no process holds its value any more"
            raise ObjectLostError(entry.lost)
        entry.state = "restoring"                 # busy: other readers wait for this copy
        try:
            seg = self._allocate(entry.size, entry.oid, wait=wait_for_room)
        except BaseException:
            entry.state = "inherited"
            self._cond.notify_all()
            raise
        error: BaseException | None = None
        self._cond.release()
        try:
            self.materializer(entry.oid, seg.name, entry.size)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, the lock taken again
            error = exc
        finally:
            self._cond.acquire()
        if error is not None:
            self.pool.recycle(seg)
            entry.state = "inherited"
            if isinstance(error, ObjectLostError):
                entry.lost = str(error)
            if entry.deleted:
                self.table.release_if_idle(entry)
            self._cond.notify_all()
            raise error
        seg.fresh = False
        entry.seg = seg
        self.stats["materialized_objects"] = self.stats.get("materialized_objects", 0) + 1
        self.table.sealed(entry)
