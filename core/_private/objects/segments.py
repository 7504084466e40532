"""The segment pool: shared-memory segments, their size classes, their reuse and their accounting.

    take(size) ──► a pooled segment of a similar size class (still mapped: writes run at memcpy
                   speed, no page faults), or None: the store then calls create()
    create(cap) ─► a new /dev/shm segment (its pages populated, unless the value is mostly zeros)
    recycle(seg) ► back into the pool (kept mapped), at most MAX_POOLED_SEGMENTS, the oldest out
    free(short) ─► unlink pooled segments, the oldest first, to give `short` bytes back

Accounting: `used` is the bytes of shared memory actually touched: every live segment's and every
pooled segment's high-water mark (tmpfs allocates pages only when written, so the size-class
padding costs nothing). Pooled bytes count in `used` too, and are the first given back.

Not thread-safe on its own: the store calls it with its lock held (`create` drops that lock while
the kernel populates the pages). Names of segments unlinked for good are queued in `released`,
so the engine can tell workers to drop their cached mappings (which would keep the pages alive).
"""

from __future__ import annotations

import collections
import os
import threading

from core._private.objects import shm

__all__ = ["PAGE", "MAX_POOLED_SEGMENTS", "Segment", "SegmentPool", "size_class", "default_capacity"]

PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_POOLED_SEGMENTS = 128                 # bounds open mappings kept for reuse


def size_class(n: int) -> int:
    """Segment size for an object of `n` bytes: 8 classes per power of two (at most 12.5%
    padding), page-aligned, so freed segments fit later objects of a similar size."""
    n = max(n, PAGE)
    step = max(PAGE, 1 << max(0, n.bit_length() - 4))
    return (n + step - 1) // step * step


def default_capacity() -> int:
    """30% of RAM (as Ray), capped at the free space of /dev/shm."""
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE
    return int(min(0.3 * ram, shm.shm_free_bytes()))


class Segment:
    """One /dev/shm segment, mapped read-write in the driver."""

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


class SegmentPool:
    """Segments not holding an object, kept mapped for the next one, and the count of every
    touched byte of shared memory against `capacity`."""

    def __init__(self, session: shm.Session, capacity: int):
        self.session = session
        self.capacity = capacity
        self.used = 0                     # touched bytes of live + pooled segments
        self.pooled = 0                   # touched bytes of pooled segments
        self.segments: list[Segment] = []   # oldest first
        self.released: collections.deque[str] = collections.deque()

    def __len__(self) -> int:
        return len(self.segments)

    def class_for(self, size: int) -> int:
        """Bytes a new segment for `size` bytes takes: its size class, or just the pages when the
        class would not fit in the capacity."""
        cap = size_class(size)
        return cap if cap <= self.capacity else -(-size // PAGE) * PAGE

    def take(self, size: int) -> Segment | None:
        """Best fit among pooled segments that hold `size` without wasting more than a size
        class doubling; prefers warm pages (a larger high-water mark)."""
        limit = 2 * size_class(size)
        best = None
        for seg in self.segments:
            if size <= seg.capacity <= limit and (
                    best is None or (seg.capacity, -seg.touched) < (best.capacity, -best.touched)):
                best = seg
        if best is not None:
            self.segments.remove(best)
            self.pooled -= best.touched
        return best

    def put_back(self, seg: Segment) -> None:
        """Return a segment just taken (the store is making room and may take it again)."""
        self.segments.append(seg)
        self.pooled += seg.touched

    def recycle(self, seg: Segment) -> None:
        """A segment whose object is gone: pooled, unless it was removed from outside."""
        if not shm.segment_exists(seg.name, seg.ino):
            self.discard(seg, unlink=False)       # lost from outside: do not reuse
            return
        self.put_back(seg)
        if len(self.segments) > MAX_POOLED_SEGMENTS:
            self._unpool(self.segments[0])

    def discard(self, seg: Segment, unlink: bool = True) -> None:
        """Unlink a live segment for good (lost, or its writer may still hold it mapped)."""
        self.used -= seg.touched
        self.released.append(seg.name)
        seg.close(unlink)

    def free(self, short: int, keep: Segment | None = None) -> bool:
        """Unlink pooled segments (the oldest first, `keep` last) until `short` bytes are freed.
        False if there was nothing to free."""
        freed = 0
        for seg in sorted(self.segments, key=lambda s: s is keep):
            if freed >= short:
                break
            freed += seg.touched
            self._unpool(seg)
        return freed > 0

    def _unpool(self, seg: Segment) -> None:
        self.segments.remove(seg)
        self.pooled -= seg.touched
        self.discard(seg)

    def create(self, capacity: int, lock: threading.Condition, populate: bool = True) -> Segment:
        """A new segment of `capacity` bytes, created with `lock` dropped (populating the pages
        takes ~0.2 s for 800 MB); its bytes are counted first so no other thread takes the room."""
        self.used += capacity
        name = self.session.next_segment_name()
        lock.release()
        try:
            mm, ino = shm.create_segment(name, capacity, populate=populate)
        except BaseException:
            lock.acquire()
            self.used -= capacity
            lock.notify_all()
            raise
        lock.acquire()
        seg = Segment(name, capacity, mm, ino)
        seg.touched = capacity
        seg.fresh = True
        return seg

    def clear(self) -> list[Segment]:
        """Forget every pooled segment and every count (shutdown); returns the pooled segments
        for the caller to close outside its lock."""
        segs = list(self.segments)
        self.segments.clear()
        self.used = self.pooled = 0
        return segs
