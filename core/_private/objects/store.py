"""The driver's object store: where every object's bytes live, and how they move between tiers.

    put(oid, SerializedObject)
      │ total_size <= inline_threshold ──► inline: bytes in this process (never spilled)
      │ larger ──► _allocate(size): a pooled segment of a similar size class (still mapped:
      │            memcpy speed), or a new /dev/shm segment; over capacity: release pooled
      │            segments, then spill LRU unpinned objects, then wait for unpins, then
      ▼            ObjectStoreFullError
    shared: one segment per object ──── spill (batch, one file) ───► spilled (file, offset, crc)
            ▲                                                            │
            └──────────── restore on view/locate (checksum checked) ◄────┘
    delete(oid): its segment goes back to the pool (kept mapped), its spill file is deleted once
                 every object in it is gone. Pinned objects are only released when unpinned.

Accounting: `used` is the bytes of shared memory actually touched: every live segment's and every
pooled segment's high-water mark (tmpfs allocates pages only when written, so the size-class
padding costs nothing). Pooled bytes count, and are released first when room is needed.

Pins: `pin`/`locate` pin an object for a holder (0 = driver, a worker id otherwise); only unpinned
objects are spilled or recycled. `pinned_view` pins for the life of a memoryview (and of every
array built on it); its release is queued without a lock (it runs in GC) and applied at the next
store call.

Concurrency: one condition variable guards the directory. The big byte moves (the copy of a put,
spill writes, restore reads) run outside it; objects being moved are marked busy (`creating`,
`spilling`, `restoring`) so other threads wait or skip them instead of racing.

Restored objects keep their spill location, so spilling them again costs no I/O.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from core._private.objects import shm
from core._private.objects.serialization import SerializedObject
from core._private.objects.spill import SpillFile, SpillLocation, SpillTarget, open_spill_target, parse_spill_config
from core.exceptions import CoreError, ObjectLostError, ObjectStoreFullError

__all__ = ["ObjectStore", "EntryInfo", "NoRoomNow", "default_capacity", "size_class"]

PAGE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_INLINE_THRESHOLD = 100 * 1024
DEFAULT_FULL_WAIT = 3.0                   # seconds a put waits for unpins before giving up
MAX_POOLED_SEGMENTS = 128                 # bounds open mappings kept for reuse


class NoRoomNow(ObjectStoreFullError):
    """A restore asked not to wait does not fit until pinned objects are released."""


def default_capacity() -> int:
    """30% of RAM (as Ray), capped at the free space of /dev/shm."""
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE
    return int(min(0.3 * ram, shm.shm_free_bytes()))


def size_class(n: int) -> int:
    """Segment size for an object of `n` bytes: 8 classes per power of two (at most 12.5%
    padding), page-aligned, so freed segments fit later objects of a similar size."""
    n = max(n, PAGE)
    step = max(PAGE, 1 << max(0, n.bit_length() - 4))
    return (n + step - 1) // step * step


def _hex(oid: bytes) -> str:
    return oid.hex()


@dataclass(frozen=True)
class EntryInfo:
    """One object, for `memory_summary`."""
    object_id: str
    size: int
    where: Literal["inline", "shared", "spilled"]
    spill_url: str | None
    pinned: bool
    pins: dict
    segment: str | None


class _Segment:
    __slots__ = ("name", "capacity", "mm", "ino", "touched", "_ro", "fresh")

    def __init__(self, name: str, capacity: int, mm, ino: int):
        self.name, self.capacity, self.mm, self.ino = name, capacity, mm, ino
        self.touched = 0                  # high-water mark of bytes written (pages allocated)
        self._ro = None
        self.fresh = False                # never written: its pages read as zeros

    def readonly_map(self):
        """A second, read-only mapping for the driver's views, made once and kept (pooled too):
        a write through a view (torch has no read-only tensors) faults instead of silently
        changing a stored object that other readers share."""
        if self._ro is None:
            self._ro = shm.map_segment(self.name, "read", size=self.capacity)
        return self._ro

    def close(self, unlink: bool = True) -> None:
        if unlink:
            shm.unlink_segment(self.name)
        for m in (self.mm, self._ro):
            try:
                if m is not None:
                    m.close()
            except BufferError:
                pass                      # views still exported; unmapped when they die


class _Entry:
    __slots__ = ("oid", "size", "state", "data", "seg", "loc", "pins", "deleted", "lost",
                 "spilling", "remote_writer")

    def __init__(self, oid: bytes, size: int, state: str):
        self.oid, self.size, self.state = oid, size, state
        self.data: bytes | None = None    # inline bytes
        self.seg: _Segment | None = None  # shared: the segment
        self.loc: SpillLocation | None = None   # spilled (or restored with a valid spill copy)
        self.pins: dict[int, int] = {}
        self.deleted = False              # delete() came while pinned or busy
        self.lost: str | None = None      # why the data is gone (the ObjectLostError message)
        self.spilling = False
        self.remote_writer = False        # created for a worker to fill (create/seal)

    @property
    def busy(self) -> bool:
        return self.spilling or self.state in ("creating", "restoring")


class ObjectStore:
    def __init__(self, *, session: shm.Session, capacity: int, inline_threshold: int,
                 spill: SpillTarget, min_spilling_size: int = 100 * 2**20,
                 full_wait: float = DEFAULT_FULL_WAIT, owns_session: bool = False):
        if capacity <= 0:
            raise CoreError(f"object store capacity must be positive, got {capacity}")
        self.session = session
        self.capacity = capacity
        self.inline_threshold = inline_threshold
        self.spill = spill
        self.min_spilling_size = min_spilling_size
        self.full_wait = full_wait
        self._owns_session = owns_session
        self._cond = threading.Condition(threading.Lock())
        self._objects: dict[bytes, _Entry] = {}
        self._lru: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()  # shared, sealed
        self._zombies: set[_Entry] = set()       # deleted while pinned/busy
        self._pool: list[_Segment] = []          # oldest first
        self._used = 0                           # touched bytes of live + pooled segments
        self._pooled = 0
        self._inline_bytes = 0
        self._spill_files: set[SpillFile] = set()
        self._files_to_delete: list[SpillFile] = []
        self._released: collections.deque = collections.deque()   # (entry, holder) from GC
        self._spills_running = 0
        self._closed = False
        # names of segments unlinked for good: the engine tells workers to drop their cached
        # mappings of them (a cached mapping would keep the pages alive)
        self.released_segments: collections.deque[str] = collections.deque()
        self.stats = collections.Counter()

    @classmethod
    def from_config(cls, *, object_store_memory: int | None = None, spill: Any = None,
                    inline_threshold: int = DEFAULT_INLINE_THRESHOLD,
                    session: shm.Session | None = None) -> "ObjectStore":
        """Validate `spill`, start a session if none is given (the store then closes it at
        shutdown), and build the store. Raises ConfigError for a bad spill configuration."""
        config = parse_spill_config(spill)
        owns = session is None
        session = session or shm.Session.start()
        try:
            target = open_spill_target(config, session)
        except BaseException:
            if owns:
                session.close()
            raise
        return cls(session=session, capacity=object_store_memory or default_capacity(),
                   inline_threshold=inline_threshold, spill=target,
                   min_spilling_size=config.min_spilling_size, owns_session=owns)

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
                self._abort_create(entry)
            raise
        with self._cond:
            self._seal_entry(entry)
        self._after()

    def put_inline(self, oid: bytes, data: bytes) -> None:
        with self._cond:
            self._check_open()
            old = self._objects.get(oid)
            if old is not None and not old.lost:
                return
            if old is not None:
                self._drop(old)
            entry = _Entry(oid, len(data), "inline")
            entry.data = data
            self._objects[oid] = entry
            self._inline_bytes += len(data)
            self._cond.notify_all()

    def create(self, oid: bytes, size: int) -> tuple[str, int]:
        """Reserve a segment for a worker to fill; returns (segment name, mapped size). The object
        is invisible until `seal`."""
        with self._cond:
            old = self._objects.get(oid)
            if old is not None and old.state == "creating" and old.remote_writer:
                self._drop(old)                   # a retry of a writer that died before sealing
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
            self._seal_entry(entry)

    def _begin_create(self, oid: bytes, size: int, sparse: bool = False) -> _Entry | None:
        self._check_open()
        old = self._objects.get(oid)
        if old is not None:
            if not old.lost:
                return None
            self._drop(old)
        entry = _Entry(oid, size, "creating")
        self._objects[oid] = entry                # visible as busy, so a second put waits/returns
        try:
            entry.seg = self._allocate(size, oid, sparse=sparse)
        except BaseException:
            if self._objects.get(oid) is entry:
                del self._objects[oid]
            self._zombies.discard(entry)
            raise
        return entry

    def _seal_entry(self, entry: _Entry) -> None:
        entry.state = "shared"
        if entry.deleted:
            self._release_if_idle(entry)
        else:
            self._lru[entry.oid] = entry
        self._cond.notify_all()

    def _abort_create(self, entry: _Entry) -> None:
        entry.state = "shared"                    # no longer busy; then free it
        if self._objects.get(entry.oid) is entry:
            del self._objects[entry.oid]
        self._zombies.discard(entry)
        self._release_storage(entry)
        self._cond.notify_all()

    # ─── reading ────────────────────────────────────────────────────────────────────────────────
    def contains(self, oid: bytes) -> bool:
        entry = self._objects.get(oid)
        return entry is not None and entry.state != "creating"

    def view(self, oid: bytes, *, writable: bool = False) -> memoryview:
        """Zero-copy view of the object's layout (restoring it if spilled). Read-only, or a
        private copy-on-write mapping when `writable`. The caller keeps it pinned while it lives
        (see `pinned_view`)."""
        with self._cond:
            entry = self._ready(oid)
            return self._view_of(entry, writable)

    def pinned_view(self, oid: bytes, *, holder: int = 0, writable: bool = False) -> memoryview:
        """`view` plus a pin for `holder` that lasts as long as the returned memoryview and every
        array deserialized from it."""
        with self._cond:
            entry = self._ready(oid)
            view = self._view_of(entry, writable)
            if entry.state == "inline":
                return view                       # bytes live as long as the view: no pin needed
            self._pin(entry, holder)
        released = self._released

        def on_release(entry=entry, holder=holder):
            released.append((entry, holder))      # no lock here: this runs inside GC

        return shm.pinned_view(view, 0, view.nbytes, on_release, readonly=not writable)

    def locate(self, oid: bytes, holder: int, *, wait_for_room: bool = True) -> tuple:
        """Where a worker finds the object, pinned for `holder`: ("inline", bytes) or
        ("shared", segment name, size). A spilled object is restored first; with
        `wait_for_room=False`, a restore that does not fit now raises `NoRoomNow` at once
        instead of waiting for unpins (the engine then keeps the task queued)."""
        with self._cond:
            entry = self._ready(oid, wait_for_room)
            self._pin(entry, holder)
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
                out.append(self._class_for(entry.size))
        return out

    def room(self) -> int:
        """Bytes that can be made available now without waiting for anyone: free capacity,
        pooled segments, and unpinned objects that can be spilled."""
        with self._cond:
            self._drain()
            spillable = sum(e.seg.touched for e in self._lru.values()
                            if not e.pins and not e.busy and e.seg is not None)
            return self.capacity - self._used + self._pooled + spillable

    def _view_of(self, entry: _Entry, writable: bool) -> memoryview:
        if entry.state == "inline":
            return memoryview(bytearray(entry.data)) if writable else memoryview(entry.data)
        if writable:
            return memoryview(shm.map_segment(entry.seg.name, "copy", size=entry.size))
        return memoryview(entry.seg.readonly_map())[:entry.size]

    def _ready(self, oid: bytes, wait_for_room: bool = True) -> _Entry:
        """The entry, sealed and in shared memory (restored if needed). Lock held."""
        self._drain()
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
            if entry.state == "shared":
                if not shm.segment_exists(entry.seg.name, entry.seg.ino):
                    entry.lost = (f"object {_hex(oid)} is lost: its shared-memory segment "
                                  f"{shm.SHM_DIR}/{entry.seg.name} was removed")
                    raise ObjectLostError(entry.lost)
                self._lru.move_to_end(oid)
            return entry

    # ─── pins ───────────────────────────────────────────────────────────────────────────────────
    def pin(self, oid: bytes, holder: int) -> None:
        with self._cond:
            self._drain()
            entry = self._objects.get(oid)
            if entry is None:
                raise ObjectLostError(f"pin of object {_hex(oid)}: not in the object store")
            self._pin(entry, holder)

    def unpin(self, oid: bytes, holder: int) -> None:
        with self._cond:
            self._drain()
            entry = self._objects.get(oid)
            if entry is None or holder not in entry.pins:
                # a deleted object still pinned by this holder (a live view)
                entry = next((z for z in self._zombies if z.oid == oid and holder in z.pins), entry)
            if entry is not None:
                self._unpin(entry, holder)
        self._after()

    def unpin_all(self, holder: int) -> None:
        """Drop every pin of `holder` (a worker that died)."""
        with self._cond:
            self._drain()
            for entry in [*self._objects.values(), *self._zombies]:
                if holder in entry.pins:
                    entry.pins[holder] = 1
                    self._unpin(entry, holder)
        self._after()

    def _pin(self, entry: _Entry, holder: int) -> None:
        entry.pins[holder] = entry.pins.get(holder, 0) + 1

    def _unpin(self, entry: _Entry, holder: int) -> None:
        n = entry.pins.get(holder, 0)
        if n <= 1:
            entry.pins.pop(holder, None)
        else:
            entry.pins[holder] = n - 1
        if not entry.pins:
            if entry.deleted:
                self._release_if_idle(entry)
            self._cond.notify_all()               # a put may be waiting for room

    def _drain(self) -> None:
        """Apply unpins queued by garbage-collected pinned views. Lock held."""
        released = self._released
        while released:
            entry, holder = released.popleft()
            self._unpin(entry, holder)

    # ─── freeing ────────────────────────────────────────────────────────────────────────────────
    def delete(self, oid: bytes) -> None:
        with self._cond:
            self._drain()
            entry = self._objects.pop(oid, None)
            if entry is not None:
                self._lru.pop(oid, None)
                entry.deleted = True
                if entry.state == "creating" and entry.remote_writer:
                    self._release_storage(entry, recycle=False)   # its writer may still be mapped
                else:
                    self._release_if_idle(entry)
                self._cond.notify_all()
        self._after()

    def _drop(self, entry: _Entry) -> None:
        """Forget a lost or abandoned entry in place of a new one. Lock held."""
        self._objects.pop(entry.oid, None)
        self._lru.pop(entry.oid, None)
        entry.deleted = True
        if entry.state == "creating" and entry.remote_writer:
            self._release_storage(entry, recycle=False)   # its writer died; never reuse
        else:
            self._release_if_idle(entry, recycle=not entry.lost)

    def _release_if_idle(self, entry: _Entry, recycle: bool = True) -> None:
        if entry.pins or entry.busy:
            self._zombies.add(entry)              # finished by the unpin / the end of the move
            return
        self._zombies.discard(entry)
        self._release_storage(entry, recycle)

    def _release_storage(self, entry: _Entry, recycle: bool = True) -> None:
        if entry.data is not None:
            self._inline_bytes -= len(entry.data)
            entry.data = None
        if entry.seg is not None:
            seg, entry.seg = entry.seg, None
            if recycle and not entry.lost:
                self._recycle(seg)
            else:
                self._used -= seg.touched
                self.released_segments.append(seg.name)
                seg.close()
        if entry.loc is not None:
            self._release_spill_copy(entry)

    def _release_spill_copy(self, entry: _Entry) -> None:
        file, entry.loc = entry.loc.file, None
        file.live -= 1
        if file.live == 0:
            self._spill_files.discard(file)
            self._files_to_delete.append(file)

    def _after(self) -> None:
        """Work done after the lock is released: deleting emptied spill files (S3: a request)."""
        while self._files_to_delete:
            try:
                file = self._files_to_delete.pop()
            except IndexError:
                break
            self.spill.delete_file(file)

    # ─── segments and capacity ──────────────────────────────────────────────────────────────────
    def _recycle(self, seg: _Segment) -> None:
        if not shm.segment_exists(seg.name, seg.ino):
            self._used -= seg.touched             # lost from outside: do not reuse
            self.released_segments.append(seg.name)
            seg.close(unlink=False)
            return
        self._pool.append(seg)
        self._pooled += seg.touched
        if len(self._pool) > MAX_POOLED_SEGMENTS:
            self._unpool(self._pool[0])

    def _unpool(self, seg: _Segment) -> None:
        self._pool.remove(seg)
        self._pooled -= seg.touched
        self._used -= seg.touched
        self.released_segments.append(seg.name)
        seg.close()

    def _take_pooled(self, size: int) -> _Segment | None:
        """Best fit among pooled segments that hold `size` without wasting more than a size
        class doubling; prefers warm pages (a larger high-water mark)."""
        limit = 2 * size_class(size)
        best = None
        for seg in self._pool:
            if size <= seg.capacity <= limit and (
                    best is None or (seg.capacity, -seg.touched) < (best.capacity, -best.touched)):
                best = seg
        if best is not None:
            self._pool.remove(best)
            self._pooled -= best.touched
        return best

    def _allocate(self, size: int, oid: bytes, sparse: bool = False, wait: bool = True) -> _Segment:
        """A segment for `size` bytes, making room if needed. Lock held; may drop it while
        spilling or waiting."""
        if size > self.capacity:
            raise ObjectStoreFullError(
                f"object {_hex(oid)} needs {size} bytes but the object store holds at most "
                f"{self.capacity} bytes; raise object_store_memory")
        deadline = None
        while True:
            self._drain()
            self._check_open()
            seg = self._take_pooled(size)
            # shm.create_segment populates a new segment's pages: all of them count at once
            need = max(0, size - seg.touched) if seg else self._class_for(size)
            if self._used + need <= self.capacity:
                if seg is None:
                    try:
                        return self._new_segment(size, need, populate=not sparse)
                    except ObjectStoreFullError:
                        # /dev/shm itself is full (other users): our own memory is what we
                        # can give back
                        if self._free_pool(need, keep=None) or self._spill_lru(need):
                            continue
                        raise
                self._used += need
                seg.touched = max(seg.touched, size)
                return seg
            if seg is not None:                   # give it back while we make room
                self._pool.append(seg)
                self._pooled += seg.touched
            short = self._used + need - self.capacity
            if self._free_pool(short, keep=seg):
                continue
            if self._spill_lru(short):
                continue
            if not wait:
                raise NoRoomNow(f"object {_hex(oid)} of {size} bytes does not fit in the object store "
                                f"until pinned objects are released")
            deadline = deadline or time.monotonic() + self.full_wait
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._spills_running:
                raise self._full_error(oid, size)
            self._cond.wait(min(0.05, max(remaining, 0.001)))

    def _class_for(self, size: int) -> int:
        cap = size_class(size)
        return cap if cap <= self.capacity else -(-size // PAGE) * PAGE

    def _new_segment(self, size: int, capacity: int, populate: bool = True) -> _Segment:
        """Create a segment with the lock dropped (creating populates its pages: ~0.2 s for
        800 MB); its bytes are counted first so no other thread can take the room."""
        self._used += capacity
        name = self.session.next_segment_name()
        self._cond.release()
        try:
            mm, ino = shm.create_segment(name, capacity, populate=populate)
        except BaseException:
            self._cond.acquire()
            self._used -= capacity
            self._cond.notify_all()
            raise
        self._cond.acquire()
        seg = _Segment(name, capacity, mm, ino)
        seg.touched = capacity
        seg.fresh = True
        if self._closed:
            seg.close()
            self._check_open()
        return seg

    def _free_pool(self, short: int, keep: _Segment | None) -> bool:
        """Unlink pooled segments (the oldest first, `keep` last) until `short` bytes are freed."""
        freed = 0
        for seg in sorted(self._pool, key=lambda s: s is keep):
            if freed >= short:
                break
            freed += seg.touched
            self._unpool(seg)
        return freed > 0

    def _full_error(self, oid: bytes, size: int) -> ObjectStoreFullError:
        pinned = sum(e.size for e in self._lru.values() if e.pins)
        busy = sum(e.size for e in self._objects.values() if e.busy)
        return ObjectStoreFullError(
            f"object {_hex(oid)} of {size} bytes does not fit in the object store: {self._used} of "
            f"{self.capacity} bytes used, {pinned} bytes pinned (in use by views or running tasks), "
            f"{busy} bytes being written, nothing left to spill after waiting {self.full_wait:.1f}s "
            f"for unpins; free objects (drop refs, core.free) or raise object_store_memory")

    # ─── spilling ───────────────────────────────────────────────────────────────────────────────
    def _pick_victims(self, short: int) -> list[_Entry]:
        """Least recently used unpinned shared objects adding up to at least `short` bytes and
        `min_spilling_size` (or all there are). Pure choice; no state changes."""
        target = max(short, self.min_spilling_size)
        victims, total = [], 0
        for entry in self._lru.values():
            if entry.pins or entry.busy:
                continue
            victims.append(entry)
            total += entry.size
            if total >= target:
                break
        return victims

    def _spill_lru(self, short: int) -> bool:
        """Spill LRU victims into one file (lock dropped during the I/O). False if nothing can
        be spilled."""
        victims = self._pick_victims(short)
        if not victims:
            return False
        to_write = [v for v in victims if v.loc is None]   # restored objects still have a copy
        for v in victims:
            v.spilling = True
        self._spills_running += 1
        views = [memoryview(v.seg.mm)[:v.size] for v in to_write]
        error = None
        self._cond.release()
        try:
            locations = self.spill.write_batch(views) if views else []
        except BaseException as exc:
            error, locations = exc, []
        finally:
            for mv in views:
                mv.release()
            self._cond.acquire()
            self._spills_running -= 1
        for v, loc in zip(to_write, locations):
            v.loc = loc
        if locations:
            self._spill_files.add(locations[0].file)
            self.stats["spilled_bytes"] += sum(v.size for v in to_write)
            self.stats["spill_files"] += 1
        for v in victims:
            v.spilling = False
            self._finish_spill(v, ok=error is None)
        self._cond.notify_all()
        if error is not None:
            raise ObjectStoreFullError(
                f"spilling {len(to_write)} objects to {self.spill.url} failed: {error}") from error
        return True

    def _finish_spill(self, v: _Entry, ok: bool) -> None:
        if v.deleted:
            self._release_if_idle(v)
        elif ok and not v.pins and v.state == "shared":
            v.state = "spilled"                   # nobody touched it meanwhile: drop the segment
            self._lru.pop(v.oid, None)
            seg, v.seg = v.seg, None
            self._recycle(seg)
            self.stats["spilled_objects"] += 1

    def _restore(self, entry: _Entry, wait_for_room: bool = True) -> None:
        """Bring a spilled object back into a segment. Lock held; dropped during the read."""
        entry.state = "restoring"
        try:
            seg = self._allocate(entry.size, entry.oid, wait=wait_for_room)
        except BaseException:
            entry.state = "spilled"
            if entry.deleted:
                self._release_if_idle(entry)
            self._cond.notify_all()
            raise
        mv = memoryview(seg.mm)
        self._cond.release()
        error = None
        try:
            self.spill.read_into(entry.loc, mv[:entry.size], _hex(entry.oid))
        except BaseException as exc:
            error = exc
        finally:
            mv.release()
            self._cond.acquire()
        entry.seg = seg
        entry.state = "shared"
        if error is not None:
            if isinstance(error, ObjectLostError):
                entry.lost = str(error)
            entry.seg = None
            entry.state = "spilled"
            self._recycle(seg)
            if entry.deleted:
                self._release_if_idle(entry)
            self._cond.notify_all()
            try:
                raise error
            finally:
                error = None   # a local holding its own exception is a cycle that pins callers' views
        self.stats["restored_bytes"] += entry.size
        self.stats["restored_objects"] += 1
        if entry.deleted:
            self._release_if_idle(entry)
        else:
            self._lru[entry.oid] = entry
        self._cond.notify_all()

    # ─── reporting ──────────────────────────────────────────────────────────────────────────────
    def entries(self) -> list[EntryInfo]:
        with self._cond:
            self._drain()
            out = []
            for e in self._objects.values():
                if e.state == "creating":
                    continue
                where = "spilled" if e.state in ("spilled", "restoring") else e.state
                out.append(EntryInfo(
                    object_id=_hex(e.oid), size=e.size, where=where,
                    spill_url=e.loc.url if e.loc is not None else None,
                    pinned=bool(e.pins), pins=dict(e.pins),
                    segment=e.seg.name if e.seg is not None else None))
            return out

    def usage(self) -> dict:
        with self._cond:
            self._drain()
            counts = collections.Counter(e.state for e in self._objects.values())
            spilled = sum(e.size for e in self._objects.values() if e.state == "spilled")
            return {
                "capacity": self.capacity,
                "used": self._used,                       # shared memory touched, incl. pooled
                "pooled": self._pooled,
                "pooled_segments": len(self._pool),
                "shared_bytes": sum(e.size for e in self._lru.values()),
                "inline_bytes": self._inline_bytes,
                "pinned_bytes": sum(e.size for e in self._objects.values() if e.pins),
                "spilled_bytes": spilled,
                "spill_files": len(self._spill_files),
                "spill_url": self.spill.url,
                "num_inline": counts["inline"],
                "num_shared": counts["shared"],
                "num_spilled": counts["spilled"],
                "num_zombies": len(self._zombies),
                "total_spilled_bytes": self.stats["spilled_bytes"],
                "total_restored_bytes": self.stats["restored_bytes"],
            }

    # ─── shutdown ───────────────────────────────────────────────────────────────────────────────
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
            segs = [e.seg for e in [*self._objects.values(), *self._zombies] if e.seg is not None]
            segs += self._pool
            self._objects.clear()
            self._lru.clear()
            self._zombies.clear()
            self._pool.clear()
            self._released.clear()
            self._used = self._pooled = self._inline_bytes = 0
            self._cond.notify_all()
        for seg in segs:
            seg.close()
        self.spill.close()
        if self._owns_session:
            self.session.close()

    def __repr__(self) -> str:
        return (f"ObjectStore(capacity={self.capacity}, used={self._used}, objects={len(self._objects)}, "
                f"spill={self.spill.url})")
