"""Values to bytes and back: pickle protocol 5 with out-of-band buffers, laid out for zero-copy.

How data moves:

    serialize(value)                      write_to(dest) / to_bytes()          deserialize(view)
    ────────────────                      ───────────────────────────          ─────────────────
    pickler ──► pickled (in-band bytes)   header │ table │ pickle │ pad │ buf0 │ pad │ buf1 ...
            └─► buffers (PickleBuffer of  one memcpy per buffer, straight      slices of `view`
                numpy/Arrow/pandas data,  from the caller's array into the     (no copy) handed to
                not copied)               destination (a shared segment)      pickle.loads(buffers=)

Layout (little endian):
    header   magic b"DDSF", version u16, flags u16, buffer count u32, pickle length u64   (20 bytes)
    table    per buffer: offset u64, length u64 (offsets from the start of the layout)
    pickle   the protocol-5 stream
    buffers  each at a 64-byte aligned offset, so numpy/Arrow/torch see aligned data when the
             layout starts page-aligned (a shared segment); a large buffer also at its source's
             offset within a page (rounded down to 64), which keeps its memcpy fast

`deserialize` returns objects whose arrays are views of `view`: numpy keeps the memoryview as its
`.base`, Arrow's `py_buffer` and pandas blocks keep theirs, so whatever exports `view` (a mapping,
a pin token) lives as long as any array built on it. Buffers are handed out read-only unless the
caller asks for `writable=True` and `view` is writable (a private copy-on-write mapping).

Pickler choice: values made only of builtin scalars, strings and small lists/tuples/dicts of them
(and plain numpy arrays) go through the C pickler (`pickle.dumps`, ~0.25 us for [1, 2, 3]);
everything else through cloudpickle's Pickler (~1.3 us of set-up), which pickles lambdas,
closures and `__main__` functions/classes by value so spawned workers can load them. torch CPU
tensors are reduced to a numpy byte array plus dtype/shape so their data also travels out of band
(torch's own reduce pickles a copy through `torch.save`). torch has no read-only tensors: a tensor
from a read-only view is writable as far as torch knows, so readers map segments read-only (an
in-place write faults instead of changing a shared object); ask for `writable=True` to modify.

Nested `ObjectRef`s: `ObjectRef.__reduce__` calls `note_contained_ref(ref)`; while `serialize`
runs, those refs are collected (per thread) into `SerializedObject.contained_refs`.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from core._private.objects.untouched import untouched_blocks
from core.exceptions import CoreError

__all__ = ["SerializedObject", "serialize", "deserialize", "note_contained_ref", "copy_into", "ALIGNMENT"]

MAGIC = b"DDSF"
VERSION = 1
ALIGNMENT = 64
_HEADER = struct.Struct("<4sHHIQ")          # magic, version, flags, buffer count, pickle length
_ENTRY = struct.Struct("<QQ")               # buffer offset, buffer length
_HEADER_SIZE = _HEADER.size

# Copies at least this big are split across two threads: numpy's copyto releases the GIL, and one
# core alone does not saturate memory bandwidth on these VMs.
PARALLEL_COPY_MIN = 32 * 2**20
SPARSE_MIN = 8 * 2**20        # buffers this big are checked for zero blocks (see zero_heavy)
ZERO_BLOCK = 2**20            # granularity of the zero-block skipping
_COPY_THREADS = 2
PAGE_MATCH_MIN = 2**20        # buffers this big are placed at their source's page offset
_ALIASING_SPAN = 4096         # a load and a store alias when their addresses agree mod 4 KiB


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def _page_matched(pos: int, buf: memoryview) -> int:
    """The first 64-byte aligned offset from `pos` at the same place within a page as `buf`'s
    data (rounded down to 64 bytes). A copy whose destination sits a little *above* its source
    within a 4 KiB page runs into 4K aliasing (each store looks like it may feed a load a few
    lines ahead): an 800 MB memcpy into a segment ran at 6 GB/s at offset 192 from a numpy array
    16 bytes into its page, 15-16 GB/s with the offsets matched. Costs under 4 KiB of padding."""
    import numpy as np  # only for large buffers, which come from numpy/Arrow/torch anyway

    want = (np.frombuffer(buf, dtype=np.uint8).ctypes.data % _ALIASING_SPAN) & ~(ALIGNMENT - 1)
    return pos + (want - pos) % _ALIASING_SPAN


# ─── nested refs ────────────────────────────────────────────────────────────────────────────────
_collect = threading.local()


def note_contained_ref(ref: Any) -> None:
    """Called by `ObjectRef.__reduce__`: remember `ref` if a `serialize` is running in this
    thread. Pickling a ref outside `serialize` (e.g. into a socket message) records nothing."""
    refs = getattr(_collect, "refs", None)
    if refs is not None:
        refs.append(ref)


# ─── the serialized form ────────────────────────────────────────────────────────────────────────
class SerializedObject:
    """A value pickled but not yet copied anywhere: the in-band pickle plus the out-of-band
    buffers, which still point at the caller's arrays. `write_to` does the only copy."""

    __slots__ = ("pickled", "buffers", "contained_refs", "total_size", "_offsets")

    def __init__(self, pickled: bytes, buffers: list[memoryview], contained_refs: list):
        self.pickled = pickled
        self.buffers = buffers
        self.contained_refs = contained_refs
        if not buffers:
            self._offsets: list[int] = []
            self.total_size = _HEADER_SIZE + len(pickled)
            return
        pos = _align(_HEADER_SIZE + _ENTRY.size * len(buffers) + len(pickled))
        offsets = []
        for buf in buffers:
            pos = _page_matched(pos, buf) if buf.nbytes >= PAGE_MATCH_MIN else pos
            offsets.append(pos)
            pos = _align(pos + buf.nbytes)
        self._offsets = offsets
        # The last buffer ends the layout: no trailing padding.
        self.total_size = offsets[-1] + buffers[-1].nbytes

    def _head(self) -> bytes:
        """Header, buffer table and pickle: everything before the first buffer."""
        header = _HEADER.pack(MAGIC, VERSION, 0, len(self.buffers), len(self.pickled))
        if not self.buffers:
            return header + self.pickled
        table = b"".join(_ENTRY.pack(off, buf.nbytes) for off, buf in zip(self._offsets, self.buffers))
        return header + table + self.pickled

    def zero_heavy(self) -> bool:
        """Do the large buffers look all zeros (sampled)? Such a value is best written into a
        fresh, unpopulated segment skipping its zero blocks: tmpfs pages never written read as
        zeros and cost no memory (an `np.zeros` payload then costs neither time nor RAM)."""
        big = [b for b in self.buffers if b.nbytes >= SPARSE_MIN]
        if not big or sum(b.nbytes for b in big) < self.total_size // 2:
            return False
        import numpy as np  # lazy: numpy costs ~0.1 s to import; only large buffers need it

        for buf in big:
            src = np.frombuffer(buf, dtype=np.uint8)
            step = max(ZERO_BLOCK, src.size // 16)
            for start in range(0, src.size, step):
                if src[start:start + 4096].any():
                    return False
        return True

    def write_to(self, dest: memoryview, *, dest_is_zero: bool = False) -> None:
        """Write the layout into `dest` (at least `total_size` bytes, writable). Each buffer is
        copied once, directly from its source array; padding bytes are left as they are. When
        `dest_is_zero` (a fresh segment), all-zero blocks of large buffers are not written."""
        if dest.nbytes < self.total_size:
            raise CoreError(
                f"destination of {dest.nbytes} bytes is too small for a serialized object of "
                f"{self.total_size} bytes; allocate at least total_size bytes")
        dest = dest.cast("B") if dest.format != "B" or dest.ndim != 1 else dest
        head = self._head()
        dest[:len(head)] = head
        for off, buf in zip(self._offsets, self.buffers):
            if dest_is_zero and buf.nbytes >= SPARSE_MIN:
                copy_skipping_zeros(dest[off:off + buf.nbytes], buf)
            else:
                copy_into(dest[off:off + buf.nbytes], buf)

    def to_bytes(self) -> bytes:
        if not self.buffers:
            return _HEADER.pack(MAGIC, VERSION, 0, 0, len(self.pickled)) + self.pickled
        out = bytearray(self.total_size)
        self.write_to(memoryview(out))
        return bytes(out)

    def __repr__(self) -> str:
        return (f"SerializedObject(total_size={self.total_size}, pickle={len(self.pickled)}, "
                f"buffers={[b.nbytes for b in self.buffers]}, refs={len(self.contained_refs)})")


# ─── copying ────────────────────────────────────────────────────────────────────────────────────
_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _copy_pool
    if _copy_pool is None:
        with _copy_pool_lock:
            if _copy_pool is None:
                _copy_pool = ThreadPoolExecutor(_COPY_THREADS - 1, thread_name_prefix="ddsf-copy")
    return _copy_pool


def copy_into(dest: memoryview, src: memoryview) -> None:
    """memcpy `src` into `dest` (same length, 1-D bytes). Big copies run as two halves in two
    threads (numpy's copyto releases the GIL); small ones are one slice assignment.
    Halves, not many small chunks: glibc's memcpy switches to non-temporal stores only above a
    size threshold (a fraction of the L3 size), and below it a copy runs ~40% slower here."""
    n = src.nbytes
    if n < PARALLEL_COPY_MIN:
        dest[:n] = src
        return
    import numpy as np  # numpy is a dependency; imported lazily to keep small puts import-free

    d = np.frombuffer(dest, dtype=np.uint8, count=n)
    s = np.frombuffer(src, dtype=np.uint8, count=n)
    half = (n // 2) & ~4095                 # page-aligned split
    fut = _pool().submit(np.copyto, d[half:], s[half:])
    np.copyto(d[:half], s[:half])
    fut.result()


def copy_skipping_zeros(dest: memoryview, src: memoryview) -> None:
    """Copy `src` into an all-zero `dest`, leaving out blocks of `src` that are all zeros, in
    two threads. Not writing zeros leaves tmpfs pages unallocated; blocks the kernel says were
    never written are not even read."""
    import numpy as np  # lazy, as in copy_into

    n = src.nbytes
    d = np.frombuffer(dest, dtype=np.uint8, count=n)
    s = np.frombuffer(src, dtype=np.uint8, count=n)
    never_written = untouched_blocks(src, ZERO_BLOCK)  # zeros we need not even read

    def run(lo: int, hi: int) -> None:
        for start in range(lo, hi, ZERO_BLOCK):
            if never_written is not None and never_written[start // ZERO_BLOCK]:
                continue
            block = s[start:min(start + ZERO_BLOCK, hi)]
            if block.any():
                np.copyto(d[start:start + block.size], block)

    half = (n // 2) // ZERO_BLOCK * ZERO_BLOCK
    if half == 0:
        run(0, n)
        return
    fut = _pool().submit(run, half, n)
    run(0, half)
    fut.result()


def _reset_after_fork() -> None:
    # A forked child must not reuse the parent's executor (its thread does not exist there).
    global _copy_pool
    _copy_pool = None


os.register_at_fork(after_in_child=_reset_after_fork)


# ─── torch tensors ──────────────────────────────────────────────────────────────────────────────
def _reduce_tensor(t):
    """Reduce a dense CPU tensor to its raw bytes as a numpy uint8 array (an out-of-band buffer)
    plus dtype and shape. Tensors that do not fit that mould use torch's own reduce."""
    torch = sys.modules["torch"]
    if t.device.type != "cpu" or t.layout != torch.strided or t.is_quantized or t.is_conj() or t.is_neg():
        return t.__reduce_ex__(5)
    flat = t.detach().contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy()
    return _rebuild_tensor, (data, str(t.dtype).removeprefix("torch."), tuple(t.shape), t.requires_grad)


def _rebuild_tensor(data, dtype_name: str, shape: tuple, requires_grad: bool):
    import torch  # heavy and optional: only values that held a tensor need it

    with warnings.catch_warnings():
        # torch warns that it cannot mark tensors read-only; the bytes stay shared regardless.
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(data)
    t = flat.view(getattr(torch, dtype_name)).reshape(shape)
    if requires_grad:
        t.requires_grad_(True)
    return t


# ─── numpy datetime64 / timedelta64 ─────────────────────────────────────────────────────────────
def _reduce_datetime_array(a):
    """numpy pickles datetime64/timedelta64 arrays in band (a copy inside the pickle); their
    int64 view pickles out of band, and viewing back costs nothing."""
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        return a.__reduce_ex__(5)
    return _view_as, (a.view(f"i{a.dtype.itemsize}"), a.dtype)


def _view_as(a, dtype):
    return a.view(dtype)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle (functions and classes by value) plus reducers that keep torch tensors and
    numpy datetime arrays out of band."""

    def reducer_override(self, obj):
        t = type(obj)
        np = sys.modules.get("numpy")
        if np is not None and t is np.ndarray and obj.dtype.kind in "mM":
            return _reduce_datetime_array(obj)
        torch = sys.modules.get("torch")
        if torch is not None and t is torch.Tensor:
            return _reduce_tensor(obj)
        return super().reducer_override(obj)


# ─── serialize / deserialize ────────────────────────────────────────────────────────────────────
_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
_PLAIN_SCAN_LIMIT = 64


def _is_plain(value: Any, depth: int = 2) -> bool:
    """True when the C pickler gives the same result as cloudpickle: builtin scalars and small
    containers of them. A cheap shallow scan; anything unknown goes to cloudpickle."""
    t = type(value)
    if t in _ATOMS:
        return True
    if depth == 0:
        return False
    if t is list or t is tuple:
        return len(value) <= _PLAIN_SCAN_LIMIT and all(_is_plain(v, depth - 1) for v in value)
    if t is dict:
        return len(value) <= _PLAIN_SCAN_LIMIT and all(
            type(k) in _ATOMS and _is_plain(v, depth - 1) for k, v in value.items())
    np = sys.modules.get("numpy")
    # datetime64/timedelta64 need _Pickler's reducer to stay out of band
    return np is not None and t is np.ndarray and value.dtype.kind not in "OmM" and not value.dtype.hasobject


def serialize(value: Any) -> SerializedObject:
    """Pickle `value` with protocol 5; large contiguous buffers stay out of band (not copied)."""
    buffers: list[memoryview] = []

    def keep(buf: pickle.PickleBuffer) -> None:
        buffers.append(buf.raw())

    refs: list = []
    saved = getattr(_collect, "refs", None)
    _collect.refs = refs
    try:
        if _is_plain(value):
            pickled = pickle.dumps(value, protocol=5, buffer_callback=keep)
        else:
            pickled = _dumps_cloud(value, keep)
    except Exception as exc:
        raise CoreError(
            f"could not serialize a value of type {type(value).__qualname__}: {exc}; objects "
            f"passed to put/tasks must be picklable (cloudpickle); wrap open files, locks or "
            f"sockets in a class that re-creates them in __setstate__") from exc
    finally:
        _collect.refs = saved
    return SerializedObject(pickled, buffers, refs)


def _dumps_cloud(value: Any, keep) -> bytes:
    f = io.BytesIO()
    _Pickler(f, protocol=5, buffer_callback=keep).dump(value)
    return f.getvalue()


def deserialize(view: memoryview | bytes | bytearray, *, writable: bool = False) -> Any:
    """Rebuild a value from its layout. Buffers are slices of `view` (zero-copy), read-only
    unless `writable=True`; a read-only `view` asked for writable is copied once first."""
    mv = view if type(view) is memoryview else memoryview(view)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if mv.nbytes < _HEADER_SIZE:
        raise CoreError(f"serialized object is {mv.nbytes} bytes, shorter than its {_HEADER_SIZE}-byte header")
    magic, version, _flags, nbuf, plen = _HEADER.unpack_from(mv, 0)
    if magic != MAGIC or version != VERSION:
        raise CoreError(
            f"not a serialized object of this version: found magic {bytes(magic)!r} version "
            f"{version}, expected {MAGIC!r} version {VERSION}; the data is corrupt or was "
            f"written by another release")
    if writable:
        if mv.readonly:
            mv = memoryview(bytearray(mv))     # the caller wants its own copy
    elif not mv.readonly:
        mv = mv.toreadonly()
    if nbuf == 0:
        return pickle.loads(mv[_HEADER_SIZE:_HEADER_SIZE + plen])
    table_end = _HEADER_SIZE + _ENTRY.size * nbuf
    bufs = []
    for i in range(nbuf):
        off, length = _ENTRY.unpack_from(mv, _HEADER_SIZE + _ENTRY.size * i)
        if off + length > mv.nbytes:
            raise CoreError(
                f"serialized object is truncated: buffer {i} ends at {off + length}, the data "
                f"has {mv.nbytes} bytes")
        bufs.append(mv[off:off + length])
    return pickle.loads(mv[table_end:table_end + plen], buffers=bufs)
