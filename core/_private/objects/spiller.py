"""The spiller: which objects leave shared memory, and the I/O that moves them out and back.

    pick_victims(candidates, short, min_spilling_size)      pure: the choice, over plain tuples
        least recently used first; skips pinned and busy objects; stops once the victims add up
        to `short` bytes and `min_spilling_size` (one spill file per batch, so a batch is big)
    Spiller.write(entries) ─► one spill file (the target's write_batch), the store's lock dropped
    Spiller.read(entry, seg) ─► bytes back into a new segment, checksum checked, lock dropped
    Spiller.add_file / drop_copy / delete_emptied: which spill files still hold live objects;
        a file is deleted once every object in it is gone (after the store's lock is released:
        on S3 a delete is a request)

The store decides when to spill (a put or a restore that does not fit) and moves each object
between its tiers; the spiller knows nothing of pins, waiting or segments.
"""

from __future__ import annotations

import collections
import threading
from typing import Hashable, Iterable, Sequence, TypeVar

from core._private.objects.segments import Segment
from core._private.objects.spill import SpillFile, SpillLocation, SpillTarget

__all__ = ["pick_victims", "Spiller"]

K = TypeVar("K", bound=Hashable)


def pick_victims(candidates: Iterable[tuple[K, int, bool]], short: int, min_spilling_size: int) -> list[K]:
    """The objects to spill: `candidates` are (key, size, spillable) from least to most recently
    used; the first spillable ones adding up to at least `short` bytes and `min_spilling_size`
    (or all there are). No state changes."""
    target = max(short, min_spilling_size)
    victims, total = [], 0
    for key, size, spillable in candidates:
        if not spillable:
            continue
        victims.append(key)
        total += size
        if total >= target:
            break
    return victims


class Spiller:
    """A spill target plus the bookkeeping of its files: which still hold live objects, which
    are to be deleted, and the totals moved. Called with the store's lock held; `write` and
    `read` drop it during their I/O, `delete_emptied` runs after the store has released it."""

    def __init__(self, target: SpillTarget, min_spilling_size: int):
        self.target = target
        self.min_spilling_size = min_spilling_size
        self.files: set[SpillFile] = set()
        self.emptied: list[SpillFile] = []       # files to delete once the lock is released
        self.stats: collections.Counter = collections.Counter()

    @property
    def url(self) -> str:
        return self.target.url

    # ─── I/O (the store's lock dropped meanwhile) ───────────────────────────────────────────────
    def write(self, entries: Sequence, lock: threading.Condition) -> tuple[list[SpillLocation], BaseException | None]:
        """Write the entries' segments into one new spill file, `lock` (held on entry, the
        entries marked busy by the caller) dropped during the I/O. Returns where each one now
        is, or the error (the caller first puts its entries back in order, then raises)."""
        views = [memoryview(e.seg.mm)[:e.size] for e in entries]
        if not views:
            return [], None
        lock.release()
        try:
            return self.target.write_batch(views), None
        except BaseException as exc:
            return [], exc
        finally:
            for mv in views:
                mv.release()
            lock.acquire()

    def read(self, entry, seg: Segment, lock: threading.Condition) -> None:
        """Read `entry`'s spilled bytes into `seg`, `lock` (held on entry) dropped during the
        I/O; ObjectLostError if the spill file is missing, short or corrupt."""
        mv = memoryview(seg.mm)
        lock.release()
        try:
            self.target.read_into(entry.loc, mv[:entry.size], entry.oid.hex())
        finally:
            mv.release()
            lock.acquire()

    def delete_emptied(self) -> None:
        """Delete the spill files whose objects are all gone."""
        while self.emptied:
            try:
                file = self.emptied.pop()
            except IndexError:
                break                              # another thread took the last one
            self.target.delete_file(file)

    # ─── bookkeeping (lock held) ────────────────────────────────────────────────────────────────
    def add_file(self, locations: list[SpillLocation], nbytes: int) -> None:
        """A batch was written: its file holds `len(locations)` live objects."""
        if locations:
            self.files.add(locations[0].file)
            self.stats["spilled_bytes"] += nbytes
            self.stats["spill_files"] += 1

    def drop_copy(self, loc: SpillLocation) -> None:
        """An object's spilled copy is no longer needed; its file goes when it holds no other."""
        file = loc.file
        file.live -= 1
        if file.live == 0:
            self.files.discard(file)
            self.emptied.append(file)

    def close(self) -> None:
        """Remove everything this session spilled."""
        self.files.clear()
        self.emptied.clear()
        self.target.close()
