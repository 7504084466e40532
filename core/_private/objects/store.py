"""The store proper: where every object lives (inline, shared, spilled), its pins, and the
capacity rule that moves objects between those tiers.

    put(oid, SerializedObject)
      │ total_size <= inline_threshold ──► inline: bytes in this process (never spilled)
      │ larger ──► _allocate(size): a pooled segment of a similar size class (segments.py), or a
      │            new /dev/shm segment; over capacity: give back pooled segments, then spill
      ▼            LRU unpinned objects (spiller.py), then wait for unpins, then ObjectStoreFullError
    shared: one segment per object ──── spill (batch, one file) ───► spilled (file, offset, crc)
            ▲                                                            │
            └──────────── restore on view/locate (checksum checked) ◄────┘
    delete(oid): its segment goes back to the pool (kept mapped), its spill file is deleted once
                 every object in it is gone. Pinned objects are only released when unpinned.

The entries, their pins and the release rules are in table.py; this module holds the lock, the
public operations, the capacity rule (`_allocate`) and the moves between tiers.

Pins: `pin`/`locate` pin an object for a holder (0 = driver, a worker id otherwise); only unpinned
objects are spilled or recycled. `pinned_view` pins for the life of a memoryview (and of every
array built on it); its release is queued without a lock (it runs in GC) and applied at the next
store call.

Concurrency: one condition variable guards the table. The big byte moves (the copy of a put,
spill writes, restore reads, populating a new segment) run outside it; objects being moved are
marked busy (`creating`, `spilling`, `restoring`) so other threads wait or skip them instead of
racing.

Restored objects keep their spill location, so spilling them again costs no I/O.

Inherited objects (`core.build` on the local engine): the value lives in the zygote, and the
workers forked after the build have it in their own memory. The store keeps an entry of its size
(`put_inherited`), never spilled or evicted: `locate` answers ("inherited", oid, size) to a
holder that has it (`heirs`), and for anyone else (a driver `get`, a worker forked before the build) asks the
zygote to write it into a segment once (`materializer`, like a restore from spill), after which
it is read as a shared object. `delete` tells whoever holds it (`inherited_dropped`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from core._private.objects import shm
from core._private.objects.segments import Segment, SegmentPool, default_capacity, size_class
from core._private.objects.serialization import SerializedObject
from core._private.objects.spill import open_spill_target, parse_spill_config
from core._private.objects.inherited import InheritedObjects
from core._private.objects.spiller import Spiller, pick_victims
from core._private.objects.table import Entry, EntryInfo, ObjectTable
from core.exceptions import CoreError, ObjectLostError, ObjectStoreFullError

__all__ = ["ObjectStore", "EntryInfo", "NoRoomNow", "size_class", "DEFAULT_INLINE_THRESHOLD"]

DEFAULT_INLINE_THRESHOLD = 100 * 1024
DEFAULT_FULL_WAIT = 3.0                   # seconds a put waits for unpins before giving up


class NoRoomNow(ObjectStoreFullError):
    """A restore asked not to wait does not fit until pinned objects are released."""


def _hex(oid: bytes) -> str:
    return oid.hex()


class ObjectStore(InheritedObjects):
    """The driver's objects. Built one way: `ObjectStore(capacity=..., spill=...)`."""

    def __init__(self, *, capacity: int | None = None, spill: Any = None,
                 inline_threshold: int = DEFAULT_INLINE_THRESHOLD, session: shm.Session | None = None,
                 full_wait: float = DEFAULT_FULL_WAIT):
        """`capacity`: bytes of shared memory (None: 30% of RAM, at most /dev/shm's free space);
        `spill`: None, a folder or URI, or a dict (spill.py; ConfigError if invalid); `session`:
        whose segments these are (None: the store starts one and closes it at shutdown)."""
        if capacity is not None and capacity <= 0:
            raise CoreError(f"object store capacity must be positive, got {capacity}")
        config = parse_spill_config(spill)
        self._owns_session = session is None
        self.session = session or shm.Session.start()
        try:
            self.spill = open_spill_target(config, self.session)
        except BaseException:
            if self._owns_session:
                self.session.close()
            raise
        self.capacity = capacity or default_capacity()
        self.inline_threshold = inline_threshold
        self.full_wait = full_wait
        self._cond = threading.Condition(threading.Lock())
        self.pool = SegmentPool(self.session, self.capacity)
        self.spiller = Spiller(self.spill, config.min_spilling_size)
        self.table = ObjectTable(self.pool, self.spiller, self._cond)
        # the table's containers, bound here once: the get/put paths skip an attribute lookup
        self._objects = self.table.objects
        self._lru = self.table.lru
        self._released = self.table.released
        self._spills_running = 0
        self._closed = False
        # segments unlinked for good: the engine tells workers to drop their cached mappings
        self.released_segments = self.pool.released
        self.stats = self.spiller.stats

    # ─── writing ────────────────────────────────────────────────────────────────────────────────
    def put(self, oid: bytes, obj: SerializedObject) -> None:
        """Store a serialized value: inline bytes if small, else one copy into a segment."""
        size = obj.total_size
        if size <= self.inline_threshold:
            self.put_inline(oid, obj.to_bytes())
            return
        sparse = obj.zero_heavy()
        with self._cond:
            entry = self._begin_create(oid, size, sparse=sparse)
            if entry is None:
                return                            # already stored: objects are immutable
        try:
            mv = memoryview(entry.seg.mm)
            try:
                # the one copy, outside the lock
                obj.write_to(mv[:size], dest_is_zero=sparse and entry.seg.fresh)
                entry.seg.fresh = False
            finally:
                mv.release()
        except BaseException:
            with self._cond:
                self.table.abort_create(entry)
            raise
        with self._cond:
            self.table.sealed(entry)
        if self.spiller.emptied:
            self.spiller.delete_emptied()

    def put_inline(self, oid: bytes, data: bytes) -> None:
        with self._cond:
            self._check_open()
            old = self._objects.get(oid)
            if old is not None and not old.lost:
                return
            if old is not None:
                self.table.drop(old)
            entry = Entry(oid, len(data), "inline")
            entry.data = data
            self._objects[oid] = entry
            self.table.inline_bytes += len(data)
            self._cond.notify_all()

    def create(self, oid: bytes, size: int) -> tuple[str, int]:
        """Reserve a segment for a worker to fill; returns (segment name, mapped size). The object
        is invisible until `seal`."""
        with self._cond:
            old = self._objects.get(oid)
            if old is not None and old.state == "creating" and old.remote_writer:
                self.table.drop(old)              # a retry of a writer that died before sealing
            elif old is not None and not old.lost:
                raise CoreError(f"object {_hex(oid)} already exists; objects are written once")
            entry = self._begin_create(oid, size)
            entry.remote_writer = True
            return entry.seg.name, entry.seg.capacity

    def seal(self, oid: bytes) -> None:
        with self._cond:
            entry = self._objects.get(oid)
            if entry is None or entry.state != "creating":
                raise CoreError(f"seal of object {_hex(oid)}: expected an object being created, "
                                f"found {entry.state if entry else 'nothing'}")
            self.table.sealed(entry)

    def _begin_create(self, oid: bytes, size: int, sparse: bool = False) -> Entry | None:
        self._check_open()
        old = self._objects.get(oid)
        if old is not None:
            if not old.lost:
                return None
            self.table.drop(old)
        entry = Entry(oid, size, "creating")
        self._objects[oid] = entry                # visible as busy, so a second put waits/returns
        try:
            entry.seg = self._allocate(size, oid, sparse=sparse)
        except BaseException:
            if self._objects.get(oid) is entry:
                del self._objects[oid]
            self.table.zombies.discard(entry)
            raise
        return entry

    # ─── reading ────────────────────────────────────────────────────────────────────────────────
    def contains(self, oid: bytes) -> bool:
        entry = self._objects.get(oid)
        return entry is not None and entry.state != "creating"

    def view(self, oid: bytes, *, writable: bool = False) -> memoryview:
        """Zero-copy view of the object's layout (restoring it if spilled). Read-only, or a
        private copy-on-write mapping when `writable`. The caller keeps it pinned while it lives
        (see `pinned_view`)."""
        with self._cond:
            return self._ready(oid).view(writable)

    def pinned_view(self, oid: bytes, *, holder: int = 0, writable: bool = False) -> memoryview:
        """`view` plus a pin for `holder` that lasts as long as the returned memoryview and every
        array deserialized from it."""
        with self._cond:
            entry = self._ready(oid)
            view = entry.view(writable)
            if entry.state == "inline":
                return view                       # bytes live as long as the view: no pin needed
            self.table.pin(entry, holder)
        released = self._released

        def on_release(entry=entry, holder=holder):
            released.append((entry, holder))      # no lock here: this runs inside GC

        return shm.pinned_view(view, 0, view.nbytes, on_release, readonly=not writable)

    def locate(self, oid: bytes, holder: int, *, wait_for_room: bool = True, copy: bool = False) -> tuple:
        """Where a worker finds the object, pinned for `holder`: ("inline", bytes), ("shared",
        segment name, size), or, not pinned, ("inherited", oid, size) while the store has no copy
        or the holder has the value itself (`copy`: it found it had not: a copy is made, once).
        Spilled or inherited objects are written into a segment first; with `wait_for_room=False`
        one that does not fit now raises `NoRoomNow` at once (the engine keeps the task queued)."""
        with self._cond:
            entry = self._objects.get(oid)
            if entry is not None and entry.inherited and not entry.lost and not copy and (
                    entry.seg is None or self.heirs(oid, holder)):
                # No copy in the store yet: a holder without the value asks for one (`copy`),
                # so the zygote's write never runs under the caller's (the engine's) lock.
                return ("inherited", oid, entry.size)
            entry = self._ready(oid, wait_for_room)
            self.table.pin(entry, holder)
            if entry.state == "inline":
                return ("inline", entry.data)
            return ("shared", entry.seg.name, entry.size)

    def restore_sizes(self, oids: list[bytes]) -> list[int]:
        """Bytes of shared memory that reading `oids` would take now: a segment for each that is
        spilled (nothing for those in memory, or being restored by someone else)."""
        entries = self._objects
        out = []
        for oid in oids:
            entry = entries.get(oid)
            if entry is not None and entry.state == "spilled" and not entry.lost:
                out.append(self.pool.class_for(entry.size))
        return out

    def room(self) -> int:
        """Bytes that can be made available now without waiting for anyone: free capacity,
        pooled segments, and unpinned objects that can be spilled."""
        with self._cond:
            self.table.drain()
            return self.capacity - self.pool.used + self.pool.pooled + self.table.spillable_bytes()

    def _ready(self, oid: bytes, wait_for_room: bool = True) -> Entry:
        """The entry, sealed and in shared memory (restored if needed). Lock held."""
        if self._released:
            self.table.drain()
        while True:
            self._check_open()
            entry = self._objects.get(oid)
            if entry is None:
                raise ObjectLostError(f"object {_hex(oid)} is not in the object store (freed, or never stored)")
            if entry.lost:
                raise ObjectLostError(entry.lost)
            if entry.state in ("creating", "restoring"):
                self._cond.wait(0.05)
                continue
            if entry.state == "spilled":
                self._restore(entry, wait_for_room)
                continue
            if entry.state == "inherited":
                self._materialize(entry, wait_for_room)
                continue
            if entry.state == "shared":
                if not shm.segment_exists(entry.seg.name, entry.seg.ino):
                    entry.lost = (f"object {_hex(oid)} is lost: its shared-memory segment "
                                  f"{shm.SHM_DIR}/{entry.seg.name} was removed")
                    raise ObjectLostError(entry.lost)
                self._lru.move_to_end(oid)
            return entry

    # ─── pins and freeing ───────────────────────────────────────────────────────────────────────
    def pin(self, oid: bytes, holder: int) -> None:
        with self._cond:
            self.table.drain()
            entry = self._objects.get(oid)
            if entry is None:
                raise ObjectLostError(f"pin of object {_hex(oid)}: not in the object store")
            self.table.pin(entry, holder)

    def unpin(self, oid: bytes, holder: int) -> None:
        with self._cond:
            if self._released:
                self.table.drain()
            entry = self.table.pinned_by(oid, holder)
            if entry is not None:
                self.table.unpin(entry, holder)
        if self.spiller.emptied:
            self.spiller.delete_emptied()

    def unpin_all(self, holder: int) -> None:
        """Drop every pin of `holder` (a worker that died)."""
        with self._cond:
            self.table.drain()
            self.table.unpin_all(holder)
        if self.spiller.emptied:
            self.spiller.delete_emptied()

    def delete(self, oid: bytes) -> None:
        inherited = False
        with self._cond:
            if self._released:
                self.table.drain()
            entry = self._objects.get(oid)
            if entry is not None:
                inherited = entry.inherited
                self.table.drop(entry)
                self._cond.notify_all()
        if inherited and self.inherited_dropped is not None:
            self.inherited_dropped(oid)           # later forks do not carry it
        if self.spiller.emptied:                  # deleted outside the lock (S3: a request)
            self.spiller.delete_emptied()

    # ─── capacity ───────────────────────────────────────────────────────────────────────────────
    def _allocate(self, size: int, oid: bytes, sparse: bool = False, wait: bool = True) -> Segment:
        """A segment for `size` bytes, making room if needed. Lock held; may drop it while
        spilling or waiting."""
        if size > self.capacity:
            raise ObjectStoreFullError(
                f"object {_hex(oid)} needs {size} bytes but the object store holds at most "
                f"{self.capacity} bytes; raise object_store_memory")
        pool = self.pool
        deadline = None
        while True:
            self.table.drain()
            self._check_open()
            seg = pool.take(size)
            # shm.create_segment populates a new segment's pages: all of them count at once
            need = max(0, size - seg.touched) if seg else pool.class_for(size)
            if pool.used + need <= self.capacity:
                if seg is None:
                    try:
                        return self._new_segment(need, populate=not sparse)
                    except ObjectStoreFullError:
                        # /dev/shm itself is full (other users): our own memory is what we
                        # can give back
                        if pool.free(need) or self._spill_lru(need):
                            continue
                        raise
                pool.used += need
                seg.touched = max(seg.touched, size)
                return seg
            if seg is not None:
                pool.put_back(seg)                # given back while we make room
            short = pool.used + need - self.capacity
            if pool.free(short, keep=seg) or self._spill_lru(short):
                continue
            if not wait:
                raise NoRoomNow(f"object {_hex(oid)} of {size} bytes does not fit in the object store "
                                f"until pinned objects are released")
            deadline = deadline or time.monotonic() + self.full_wait
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._spills_running:
                raise self._full_error(oid, size)
            self._cond.wait(min(0.05, max(remaining, 0.001)))

    def _new_segment(self, capacity: int, populate: bool) -> Segment:
        seg = self.pool.create(capacity, self._cond, populate=populate)   # lock dropped meanwhile
        if self._closed:
            seg.close()
            self._check_open()
        return seg

    def _full_error(self, oid: bytes, size: int) -> ObjectStoreFullError:
        pinned, busy = self.table.held_bytes()
        return ObjectStoreFullError(
            f"object {_hex(oid)} of {size} bytes does not fit in the object store: {self.pool.used} of "
            f"{self.capacity} bytes used, {pinned} bytes pinned (in use by views or running tasks), "
            f"{busy} bytes being written, nothing left to spill after waiting {self.full_wait:.1f}s "
            f"for unpins; free objects (drop refs, core.free) or raise object_store_memory")

    # ─── moves between tiers ────────────────────────────────────────────────────────────────────
    def _spill_lru(self, short: int) -> bool:
        """Spill LRU victims into one file (lock dropped during the I/O). False if nothing can
        be spilled."""
        victims = pick_victims(self.table.spill_candidates(), short, self.spiller.min_spilling_size)
        if not victims:
            return False
        to_write = [v for v in victims if v.loc is None]   # restored objects still have a copy
        for v in victims:
            v.spilling = True
        self._spills_running += 1
        try:
            locations, error = self.spiller.write(to_write, self._cond)
        finally:
            self._spills_running -= 1
        for v, loc in zip(to_write, locations):
            v.loc = loc
        self.spiller.add_file(locations, sum(v.size for v in to_write))
        self.table.spilled(victims, ok=error is None)
        if error is not None:
            raise ObjectStoreFullError(
                f"spilling {len(to_write)} objects to {self.spiller.url} failed: {error}") from error
        return True

    def _restore(self, entry: Entry, wait_for_room: bool = True) -> None:
        """Bring a spilled object back into a segment. Lock held; dropped during the read."""
        entry.state = "restoring"
        try:
            seg = self._allocate(entry.size, entry.oid, wait=wait_for_room)
        except BaseException:
            self.table.restore_failed(entry)
            raise
        try:
            self.spiller.read(entry, seg, self._cond)
        except BaseException as error:
            if isinstance(error, ObjectLostError):
                entry.lost = str(error)
            self.pool.recycle(seg)
            self.table.restore_failed(entry)
            raise
        entry.seg = seg
        self.stats["restored_bytes"] += entry.size
        self.stats["restored_objects"] += 1
        self.table.sealed(entry)

    # ─── reporting and shutdown ─────────────────────────────────────────────────────────────────
    def entries(self) -> list[EntryInfo]:
        with self._cond:
            self.table.drain()
            return self.table.infos()

    def usage(self) -> dict:
        with self._cond:
            self.table.drain()
            return {
                "capacity": self.capacity,
                "used": self.pool.used,                   # shared memory touched, incl. pooled
                "pooled": self.pool.pooled,
                "pooled_segments": len(self.pool),
                **self.table.usage(),
                "spill_files": len(self.spiller.files),
                "spill_url": self.spiller.url,
                "total_spilled_bytes": self.stats["spilled_bytes"],
                "total_restored_bytes": self.stats["restored_bytes"],
            }

    def _check_open(self) -> None:
        if self._closed:
            raise CoreError("the object store is shut down; call core.init() to start a new session")

    def shutdown(self) -> None:
        """Unlink every segment, delete every spill file; views still alive keep their pages
        until they die, but nothing is left in /dev/shm or the spill folder."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            segs = self.table.clear() + self.pool.clear()
            self._cond.notify_all()
        for seg in segs:
            seg.close()
        self.spiller.close()
        if self._owns_session:
            self.session.close()

    def __repr__(self) -> str:
        return (f"ObjectStore(capacity={self.capacity}, used={self.pool.used}, "
                f"objects={len(self._objects)}, spill={self.spiller.url})")
