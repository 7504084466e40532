"""Shared-memory segments and the session that owns them (Linux only: /dev/shm and /proc).

How data moves:

    driver (ObjectStore)                       /dev/shm                        worker
    create_segment(name, size) ──► ddsf-<token>-<n>  (0600, O_EXCL) ◄── map_segment(name, "read")
      mmap read-write, kept mapped                                          zero-copy, read-only
      while the segment lives or is pooled                               map_segment(name, "copy")
                                                                            private copy-on-write

A `Session` is one driver's lifetime. Its random token is in every segment name, so names cannot
be guessed or collide across sessions. The session writes a manifest (driver pid, the pid's start
time, segment prefix, spill locations) into an owner-only directory; `cleanup_stale_sessions`
reads the manifests and removes the segments and local spill folders of sessions whose driver is
dead (pid gone, a zombie, or reused by another process: the start time differs). A live session is
never touched. The driver removes its own files at `close()` and, as a fallback, at exit (atexit,
only in the driver's pid: forked children and spawned workers never clean).

We create segments with os.open(O_CREAT | O_EXCL, 0o600) + mmap instead of
multiprocessing.shared_memory: its resource tracker unlinks segments when any process that
attached them exits and warns about "leaked" ones, which fights a store that outlives its users.
"""

from __future__ import annotations

import atexit
import errno
import json
import mmap
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Literal

from core.exceptions import CoreError, ObjectLostError, ObjectStoreFullError

__all__ = [
    "SHM_DIR", "Session", "create_segment", "map_segment", "unlink_segment", "segment_exists",
    "cleanup_stale_sessions", "manifest_dir", "pinned_view", "process_start_time", "shm_free_bytes",
]

SHM_DIR = "/dev/shm"
NAME_PREFIX = "ddsf-"
Access = Literal["read", "write", "copy"]


# ─── segments ───────────────────────────────────────────────────────────────────────────────────
def _path(name: str) -> str:
    if "/" in name or not name.startswith(NAME_PREFIX):
        raise CoreError(f"bad segment name {name!r}: expected '{NAME_PREFIX}<token>-<n>' without '/'")
    return os.path.join(SHM_DIR, name)


def create_segment(name: str, size: int, *, populate: bool = True) -> tuple[mmap.mmap, int]:
    """Create /dev/shm/<name> (exclusive, 0600) of `size` bytes and map it read-write.
    Returns the mapping and the file's inode (to tell a lost-and-recreated file apart).
    The pages are reserved (fallocate) and mapped in (populate) up front: they are about to be
    written, and a full /dev/shm then raises ObjectStoreFullError here instead of killing the
    process with SIGBUS at the first write to a page tmpfs cannot supply. `populate=False`
    leaves the file sparse, for a value that is mostly zeros and will be written sparsely."""
    if size <= 0:
        raise CoreError(f"segment {name}: size must be positive, got {size}")
    fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)                       # independent of the umask
        os.ftruncate(fd, size)
        if populate:
            _reserve(fd, name, size)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if populate:
            _populate(mm, size)
        ino = os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        unlink_segment(name)
        raise
    os.close(fd)                                   # the mapping keeps the memory alive
    return mm, ino


def _reserve(fd: int, name: str, size: int) -> None:
    """Allocate the segment's pages now (costs nothing extra: populate then only maps them)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            raise ObjectStoreFullError(
                f"{SHM_DIR} is full: cannot allocate {size} bytes for segment {name} "
                f"({shm_free_bytes()} bytes free); free space in {SHM_DIR}, or lower "
                f"object_store_memory so objects spill instead") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


_MADV_POPULATE_WRITE = 23          # Linux 5.14+; Python 3.11's mmap module does not name it
_POPULATE_SPLIT = 64 * 2**20         # above this, two threads fault the pages in


def _populate(mm: mmap.mmap, size: int) -> None:
    """Allocate a new segment's pages before they are written. The pages are about to be
    written anyway; faulting them in from the kernel, in two threads for large segments, is
    about 3-4x faster on these VMs than taking one fault per page during the copy."""
    def populate(offset: int, length: int) -> None:
        try:
            mm.madvise(_MADV_POPULATE_WRITE, offset, length)
        except (OSError, ValueError):   # older kernel: pages fault in during the copy instead
            pass

    if size < _POPULATE_SPLIT:
        populate(0, size)
        return
    half = (size // 2) & ~(mmap.PAGESIZE - 1)
    other = threading.Thread(target=populate, args=(half, size - half))
    other.start()
    populate(0, half)
    other.join()


def map_segment(name: str, access: Access = "read", size: int | None = None) -> mmap.mmap:
    """Map an existing segment: "read" (shared, read-only: writes fault, numpy refuses them),
    "write" (shared, read-write: a worker filling a created object), or "copy" (private
    copy-on-write: writable, pages copied only when written; the segment is never changed).
    Raises ObjectLostError when the segment does not exist any more."""
    flags = os.O_RDWR if access == "write" else os.O_RDONLY
    try:
        fd = os.open(_path(name), flags | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ObjectLostError(
            f"shared-memory segment {name} is gone from {SHM_DIR} (freed, or removed from outside "
            f"the session)") from None
    try:
        length = size if size is not None else os.fstat(fd).st_size
        if access == "read":
            return mmap.mmap(fd, length, access=mmap.ACCESS_READ)
        if access == "write":
            return mmap.mmap(fd, length, access=mmap.ACCESS_WRITE)
        if access == "copy":
            return mmap.mmap(fd, length, access=mmap.ACCESS_COPY)
        raise CoreError(f"segment {name}: access must be 'read', 'write' or 'copy', got {access!r}")
    finally:
        os.close(fd)


def unlink_segment(name: str) -> bool:
    """Remove the segment's name; memory goes when the last mapping closes. False if absent."""
    try:
        os.unlink(_path(name))
        return True
    except FileNotFoundError:
        return False


def segment_exists(name: str, inode: int | None = None) -> bool:
    """Is /dev/shm/<name> still there (and the same file, when `inode` is given)?"""
    try:
        st = os.stat(_path(name))
    except FileNotFoundError:
        return False
    return inode is None or st.st_ino == inode


def shm_free_bytes() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


# ─── pinned views ───────────────────────────────────────────────────────────────────────────────
class _Release:
    """Calls `fn` once when garbage-collected. Lives in a `_PinnedArray.__dict__`."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def __del__(self):
        fn, self.fn = self.fn, None
        if fn is not None:
            try:
                fn()
            except Exception:                      # never raise from a finalizer
                pass


_PinnedArray = None


def _pinned_array_type():
    # numpy is imported lazily: shm is imported by workers that may never see a pinned view.
    global _PinnedArray
    if _PinnedArray is None:
        import numpy as np

        class PinnedArray(np.ndarray):
            """A byte array whose death releases a pin. Every numpy, Arrow, pandas or torch object
            built on a memoryview of it keeps it (through the memoryview) alive."""

        _PinnedArray = PinnedArray
    return _PinnedArray


def pinned_view(buffer, offset: int, size: int, on_release: Callable[[], None],
                readonly: bool = True) -> memoryview:
    """A memoryview of `buffer[offset:offset+size]` that calls `on_release()` once, when the
    memoryview and everything built on it are garbage. `on_release` runs in whichever thread
    drops the last reference (a GC pass, even inside another lock): it must not block or take
    locks; queue the work instead (ObjectStore does)."""
    import numpy as np  # lazy, as in _pinned_array_type

    arr = np.frombuffer(buffer, dtype=np.uint8, count=size, offset=offset).view(_pinned_array_type())
    arr._ddsf_release = _Release(on_release)
    if readonly:
        arr.flags.writeable = False
    return memoryview(arr)


# ─── processes ──────────────────────────────────────────────────────────────────────────────────
def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None
    when the process is gone or a zombie (killed but not yet reaped: as good as dead).
    Hand-written: psutil.Process(pid).create_time() reads the same field, but a float in
    seconds loses the exactness we compare on, and shm stays importable without psutil."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and ')': split after its last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


# ─── session manifest ───────────────────────────────────────────────────────────────────────────
def _ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents we need) 0700, and refuse a directory someone else owns or can
    write: a shared /tmp lets another user pre-create our directory."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise CoreError(
            f"{path} must be a directory owned by uid {os.getuid()} with mode 0700; found "
            f"uid {st.st_uid} mode {oct(st.st_mode & 0o777)}{' (symlink)' if stat.S_ISLNK(st.st_mode) else ''}; "
            f"remove it or fix its permissions")
    return path


def _base_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "ddsf"
    return Path(tempfile.gettempdir()) / f"ddsf-{os.getuid()}"


def manifest_dir() -> Path:
    """Owner-only directory of session manifests."""
    base = _base_dir()
    _ensure_private_dir(base)
    return _ensure_private_dir(base / "sessions")


def default_spill_root() -> Path:
    """Parent of per-session spill folders when no spill target is configured. On disk (the
    temp dir), not under XDG_RUNTIME_DIR, which is RAM."""
    base = _ensure_private_dir(Path(tempfile.gettempdir()) / f"ddsf-{os.getuid()}")
    return _ensure_private_dir(base / "spill")


class Session:
    """One driver's set of segments and spill locations, with its manifest on disk.

    `Session.start()` in the driver; workers never create one (they map segments by name)."""

    def __init__(self, token: str, manifest_path: Path, driver_pid: int):
        self.token = token
        self.prefix = f"{NAME_PREFIX}{token}-"
        self.manifest_path = manifest_path
        self.driver_pid = driver_pid
        self.spill_locations: list[str] = []
        self._counter = 0
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def start(cls, *, cleanup_stale: bool = True) -> "Session":
        """New session for this process as driver: removes dead sessions' leftovers first
        (`cleanup_stale`), writes the manifest, and registers the exit-time cleanup."""
        if cleanup_stale:
            cleanup_stale_sessions()
        token = secrets.token_hex(8)
        session = cls(token, manifest_dir() / f"{token}.json", os.getpid())
        session._write_manifest()
        atexit.register(session._atexit)
        return session

    def next_segment_name(self) -> str:
        with self._lock:
            self._counter += 1
            return f"{self.prefix}{self._counter}"

    def add_spill_location(self, location: str) -> None:
        """Record a spill folder (local path) or URI prefix this session writes, so a later
        cleanup can find it if the driver dies."""
        with self._lock:
            if location not in self.spill_locations:
                self.spill_locations.append(location)
                self._write_manifest()

    def segments(self) -> list[str]:
        """Names of this session's segments currently in /dev/shm."""
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(self.prefix))

    def _write_manifest(self) -> None:
        data = {
            "version": 1,
            "token": self.token,
            "pid": self.driver_pid,
            "start_time": process_start_time(self.driver_pid),
            "shm_prefix": self.prefix,
            "spill": list(self.spill_locations),
            "created": time.time(),
        }
        tmp = self.manifest_path.with_name(f".{self.manifest_path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.manifest_path)        # atomic: a reader never sees half a manifest

    def close(self) -> None:
        """Unlink every segment of the session, remove its local spill folders and manifest.
        Idempotent; does nothing outside the driver process (a forked child inherits the
        object but must not clean the driver's files)."""
        if self._closed or os.getpid() != self.driver_pid:
            return
        self._closed = True
        _remove_session_files(self.prefix, self.spill_locations)
        try:
            self.manifest_path.unlink()
        except FileNotFoundError:
            pass
        atexit.unregister(self._atexit)

    def _atexit(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Session(token={self.token}, pid={self.driver_pid}, spill={self.spill_locations})"


def _remove_session_files(prefix: str, spill_locations: list[str]) -> None:
    for name in os.listdir(SHM_DIR):
        if name.startswith(prefix):
            unlink_segment(name)
    token = prefix[len(NAME_PREFIX):].rstrip("-")
    for loc in spill_locations:
        # Only local folders made for this session (their name carries the token); remote
        # prefixes are deleted object by object by the spill target while the driver lives.
        if "://" in loc and not loc.startswith("file://"):
            continue
        path = Path(loc.removeprefix("file://"))
        if token in path.name and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _session_alive(manifest: dict) -> bool:
    pid, start = manifest.get("pid"), manifest.get("start_time")
    if not isinstance(pid, int):
        return False
    now = process_start_time(pid)
    return now is not None and (start is None or now == start)


def cleanup_stale_sessions(directory: Path | None = None) -> list[str]:
    """Remove segments, local spill folders and manifests of sessions whose driver is dead.
    Returns the tokens of the sessions removed. Live sessions (driver pid running with the
    recorded start time) are never touched."""
    directory = directory or manifest_dir()
    removed = []
    for path in directory.glob("*.json"):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue                               # being replaced right now, or not ours
        if _session_alive(manifest):
            continue
        prefix = manifest.get("shm_prefix", "")
        if not prefix.startswith(NAME_PREFIX) or len(prefix) < len(NAME_PREFIX) + 8:
            continue                               # never match a broad prefix
        _remove_session_files(prefix, [str(s) for s in manifest.get("spill", [])])
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        removed.append(manifest.get("token", prefix))
    return removed
