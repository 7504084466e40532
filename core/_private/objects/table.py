"""The object table: every object of the store, which tier it is in, who pins it, and how its
storage is given back.

    Entry.state:  inline ─────────────────────────────────────────────────────► (deleted)
                  creating ──► shared ──(spilling)──► spilled ──► restoring ──► shared ...
                  inherited ──(materialized: a copy asked for)──► restoring ──► shared ...
                  (inherited: the value lives in the zygote, made by core.build; workers forked
                  after it have it. `Entry.inherited` stays set while the zygote holds it, so
                  the store copy of one that was materialized may be spilled: it is a copy)
    pins:         holder -> count (0 = the driver, a worker id otherwise); pinned or busy
                  objects are neither spilled nor recycled; deleted while pinned or busy, they
                  wait among the zombies until the last unpin or the end of their move
    release:      inline bytes dropped, the segment back to the pool (or unlinked if lost or a
                  dead writer may still map it), the spill copy dropped (its file deleted once
                  empty)

`lru` holds the sealed shared objects, least recently used first: the spiller's candidates.
Not thread-safe on its own: the store calls it with its lock held, and the table notifies the
store's condition when an object stops being pinned (a put may be waiting for room).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Literal

from core._private.objects import shm
from core._private.objects.segments import Segment, SegmentPool
from core._private.objects.spill import SpillLocation
from core._private.objects.spiller import Spiller

__all__ = ["State", "Entry", "EntryInfo", "ObjectTable"]

State = Literal["inline", "creating", "shared", "spilled", "restoring", "inherited"]


@dataclass(frozen=True)
class EntryInfo:
    """One object, for `memory_summary`."""
    object_id: str
    size: int
    where: Literal["inline", "shared", "spilled", "inherited"]
    spill_url: str | None
    pinned: bool
    pins: dict
    segment: str | None


class Entry:
    __slots__ = ("oid", "size", "state", "data", "seg", "loc", "pins", "deleted", "lost",
                 "spilling", "remote_writer", "inherited")

    def __init__(self, oid: bytes, size: int, state: State):
        self.oid, self.size, self.state = oid, size, state
        self.data: bytes | None = None    # inline bytes
        self.seg: Segment | None = None   # shared: the segment
        self.loc: SpillLocation | None = None   # spilled (or restored with a valid spill copy)
        self.pins: dict[int, int] = {}
        self.deleted = False              # delete() came while pinned or busy
        self.lost: str | None = None      # why the data is gone (the ObjectLostError message)
        self.spilling = False
        self.remote_writer = False        # created for a worker to fill (create/seal)
        self.inherited = False            # held by the zygote (core.build): never spilled or evicted

    @property
    def busy(self) -> bool:
        return self.spilling or self.state in ("creating", "restoring")

    def view(self, writable: bool) -> memoryview:
        """The bytes of an inline or shared object: read-only (the segment's read-only mapping),
        or a private copy (inline) / copy-on-write mapping (shared) when `writable`."""
        if self.state == "inline":
            return memoryview(bytearray(self.data)) if writable else memoryview(self.data)
        if writable:
            return memoryview(shm.map_segment(self.seg.name, "copy", size=self.size))
        return memoryview(self.seg.readonly_map())[:self.size]


class ObjectTable:
    """The entries, by id and in LRU order, with the pins and the release rules."""

    def __init__(self, pool: SegmentPool, spiller: Spiller, cond: threading.Condition):
        self.pool = pool
        self.spiller = spiller
        self._cond = cond
        self.objects: dict[bytes, Entry] = {}
        self.lru: collections.OrderedDict[bytes, Entry] = collections.OrderedDict()  # shared, sealed
        self.zombies: set[Entry] = set()         # deleted while pinned/busy
        self.inline_bytes = 0
        self.released: collections.deque = collections.deque()   # (entry, holder) from GC

    # ─── sealing ────────────────────────────────────────────────────────────────────────────────
    def sealed(self, entry: Entry) -> None:
        """A created (or restored) object is now in shared memory."""
        entry.state = "shared"
        if entry.deleted:
            self.release_if_idle(entry)
        else:
            self.lru[entry.oid] = entry
        self._cond.notify_all()

    def abort_create(self, entry: Entry) -> None:
        entry.state = "shared"                    # no longer busy; then free it
        if self.objects.get(entry.oid) is entry:
            del self.objects[entry.oid]
        self.zombies.discard(entry)
        self.release_storage(entry)
        self._cond.notify_all()

    # ─── pins ───────────────────────────────────────────────────────────────────────────────────
    def pin(self, entry: Entry, holder: int) -> None:
        entry.pins[holder] = entry.pins.get(holder, 0) + 1

    def unpin(self, entry: Entry, holder: int) -> None:
        n = entry.pins.get(holder, 0)
        if n <= 1:
            entry.pins.pop(holder, None)
        else:
            entry.pins[holder] = n - 1
        if not entry.pins:
            if entry.deleted:
                self.release_if_idle(entry)
            self._cond.notify_all()               # a put may be waiting for room

    def pinned_by(self, oid: bytes, holder: int) -> Entry | None:
        """The entry of `oid` that `holder` pins, live or deleted (a view still alive)."""
        entry = self.objects.get(oid)
        if entry is None or holder not in entry.pins:
            entry = next((z for z in self.zombies if z.oid == oid and holder in z.pins), entry)
        return entry

    def unpin_all(self, holder: int) -> None:
        for entry in [*self.objects.values(), *self.zombies]:
            if holder in entry.pins:
                entry.pins[holder] = 1
                self.unpin(entry, holder)

    def drain(self) -> None:
        """Apply unpins queued by garbage-collected pinned views."""
        released = self.released
        while released:
            entry, holder = released.popleft()
            self.unpin(entry, holder)

    # ─── freeing ────────────────────────────────────────────────────────────────────────────────
    def drop(self, entry: Entry) -> None:
        """Forget an entry (deleted, or lost/abandoned and replaced by a new one)."""
        self.objects.pop(entry.oid, None)
        self.lru.pop(entry.oid, None)
        entry.deleted = True
        if entry.state == "creating" and entry.remote_writer:
            self.release_storage(entry, recycle=False)   # its writer may still have it mapped
        else:
            self.release_if_idle(entry, recycle=not entry.lost)

    def release_if_idle(self, entry: Entry, recycle: bool = True) -> None:
        if entry.pins or entry.busy:
            self.zombies.add(entry)               # finished by the unpin / the end of the move
            return
        self.zombies.discard(entry)
        self.release_storage(entry, recycle)

    def release_storage(self, entry: Entry, recycle: bool = True) -> None:
        if entry.data is not None:
            self.inline_bytes -= len(entry.data)
            entry.data = None
        if entry.seg is not None:
            seg, entry.seg = entry.seg, None
            if recycle and not entry.lost:
                self.pool.recycle(seg)
            else:
                self.pool.discard(seg)
        if entry.loc is not None:
            loc, entry.loc = entry.loc, None
            self.spiller.drop_copy(loc)

    # ─── moves between tiers ────────────────────────────────────────────────────────────────────
    def spill_candidates(self):
        """(entry, size, spillable) from least to most recently used, for `pick_victims`."""
        return ((e, e.size, not (e.pins or e.busy)) for e in self.lru.values())

    def spilled(self, victims: list[Entry], ok: bool) -> None:
        """A spill batch ended: objects nobody touched meanwhile give their segments back."""
        for v in victims:
            v.spilling = False
            if v.deleted:
                self.release_if_idle(v)
            elif ok and not v.pins and v.state == "shared":
                v.state = "spilled"
                self.lru.pop(v.oid, None)
                seg, v.seg = v.seg, None
                self.pool.recycle(seg)
                self.spiller.stats["spilled_objects"] += 1
        self._cond.notify_all()

    def restore_failed(self, entry: Entry) -> None:
        entry.state = "spilled"
        if entry.deleted:
            self.release_if_idle(entry)
        self._cond.notify_all()

    # ─── reporting ──────────────────────────────────────────────────────────────────────────────
    def infos(self) -> list[EntryInfo]:
        return [EntryInfo(
            object_id=e.oid.hex(), size=e.size,
            where="inherited" if e.inherited else "spilled" if e.state in ("spilled", "restoring") else e.state,
            spill_url=e.loc.url if e.loc is not None else None,
            pinned=bool(e.pins), pins=dict(e.pins),
            segment=e.seg.name if e.seg is not None else None)
            for e in self.objects.values() if e.state != "creating"]

    def usage(self) -> dict:
        counts = collections.Counter(e.state for e in self.objects.values())
        return {
            "shared_bytes": sum(e.size for e in self.lru.values()),
            "inline_bytes": self.inline_bytes,
            "pinned_bytes": sum(e.size for e in self.objects.values() if e.pins),
            "spilled_bytes": sum(e.size for e in self.objects.values() if e.state == "spilled"),
            # held by the zygote, counted as its memory (a store copy, if any, is in shared_bytes)
            "inherited_bytes": sum(e.size for e in self.objects.values() if e.inherited),
            "num_inherited": sum(1 for e in self.objects.values() if e.inherited),
            "num_inline": counts["inline"],
            "num_shared": counts["shared"],
            "num_spilled": counts["spilled"],
            "num_zombies": len(self.zombies),
        }

    def held_bytes(self) -> tuple[int, int]:
        """(bytes pinned, bytes being written or moved): what a full store is waiting for."""
        return (sum(e.size for e in self.lru.values() if e.pins),
                sum(e.size for e in self.objects.values() if e.busy))

    def spillable_bytes(self) -> int:
        return sum(e.seg.touched for e in self.lru.values()
                   if not e.pins and not e.busy and e.seg is not None)

    def clear(self) -> list[Segment]:
        """Forget every entry (shutdown); returns their segments for the caller to close."""
        segs = [e.seg for e in [*self.objects.values(), *self.zombies] if e.seg is not None]
        self.objects.clear()
        self.lru.clear()
        self.zombies.clear()
        self.released.clear()
        self.inline_bytes = 0
        return segs
