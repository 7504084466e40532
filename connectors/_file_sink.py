"""FileSink: part files on any fsspec filesystem, recorded in the destination's manifest.

::

    FileSink(uri, format, mode)    checks the destination once, by mode (resume, overwrite,
                                   error, append); the part writers are in _staging
    open_part / write_part         a part's commit moves its temp file into place, then
                                   _record_all adds {part, shard, rows} to _manifest.json:
                                   read (or this process's cached copy), update, write to a
                                   temp name, move over the old one
    commit_staged(staged)          the same for a part a stager wrote in another process;
      defer_manifest=True          records wait in _pending for one shared manifest write:
                                   flush / close, or the flusher thread when MANIFEST_DELAY_S
                                   after the oldest has passed
    committed()                    manifest + pending records, kept only while the part is there
    discard_staged(token)          remove what a stager (or a crash) left under temp names

Writers in one process share the destination's lock (`_manifest_lock`), so their updates of the
manifest never interleave; across processes the manifest is re-read before each update (see
`connectors.sinks` for what a race can cost).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from ._sink_base import FORMATS, QUARANTINE, TEMP_PREFIX, Format, PartWriter, Sink, part_name
from ._sink_base import write_whole
from ._staging import FilePartWriter, Folder, PartStager, StagedPart, is_temp, run_suffix
from .exceptions import SinkError
from .storage import redact

if TYPE_CHECKING:
    import pyarrow as pa

Mode = Literal["resume", "overwrite", "append", "error"]

MODES = ("resume", "overwrite", "append", "error")
MANIFEST = "_manifest.json"
MANIFEST_DELAY_S = 0.25  # commit_staged(defer_manifest=True): the longest a record waits

_manifest_locks: dict[str, threading.Lock] = {}
_manifest_locks_guard = threading.Lock()


def _manifest_lock(uri: str) -> threading.Lock:
    """One lock per destination in this process, shared by every sink writing there."""
    with _manifest_locks_guard:
        return _manifest_locks.setdefault(uri, threading.Lock())


# Local destinations: the manifest this process last wrote, keyed by the file's (inode, size,
# mtime). While the file is still that one, a commit need not read and parse it again: with
# thousands of parts, reading it back was a third of every commit. Used under the destination's
# lock only.
_manifest_cache: dict[str, tuple[tuple, dict]] = {}


def _stat_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileSink(Sink):
    """Part files on any fsspec filesystem, with a `_manifest.json` of committed parts."""

    def __init__(self, uri: str, *, format: Format = "parquet", mode: Mode = "resume",
                 storage_options: dict | None = None, run_id: str | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, found {format!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, found {mode!r}")
        self.format, self.mode = format, mode
        self._folder = Folder(uri, storage_options)
        self.uri = self._folder.uri
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._suffix = run_suffix(mode, self.run_id)
        self._lock = _manifest_lock(self.uri)
        self._closed = False
        # Deferred manifest records (commit_staged(defer_manifest=True), _flush_when_due).
        # Lock order: the destination's manifest lock (self._lock), then this one.
        self._pending: list[tuple[str, int, int]] = []  # committed, not yet in the manifest
        self._pending_lock = threading.Lock()
        self._wake = threading.Condition(self._pending_lock)
        self._flushed_at: float | None = None  # time.monotonic() of our last write; None: never
        self._due_at: float | None = None  # when the oldest pending record must be written
        self._flusher: threading.Thread | None = None  # started by the first deferred record
        self._folder.guard("open the sink at", self._open)

    def __repr__(self) -> str:
        return f"FileSink({redact(self.uri)!r}, format={self.format!r}, mode={self.mode!r})"

    # -- public API

    def committed(self) -> dict[int, int]:
        # Under the manifest lock: a flush (maybe the flusher's) moves records from the pending
        # list to the manifest under it, so each record is seen in one of the two.
        with self._lock:
            manifest = self._folder.guard("read the manifest of", self._read_manifest)
            with self._pending_lock:
                pending = {name: {"shard": i, "rows": rows} for name, i, rows in self._pending}
        present = set(self._folder.guard("list", self._list_names))
        return {entry["shard"]: entry["rows"]
                for name, entry in {**manifest["parts"], **pending}.items()
                if name == self._part_name(entry["shard"]) and name in present}

    def open_part(self, shard_index: int) -> PartWriter:
        self._check_open()
        name = self._part_name(shard_index)
        return FilePartWriter(self._folder, shard_index, name, self.format,
                              functools.partial(self._record, "parts"))

    def write_quarantine(self, shard_index: int, table: pa.Table) -> str:
        self._check_open()
        name = f"{QUARANTINE}/{part_name(shard_index, 'parquet', self._suffix)}"
        writer = FilePartWriter(self._folder, shard_index, name, "parquet",
                                functools.partial(self._record, "quarantine"))
        return write_whole(writer, table)

    def close(self) -> None:
        if self._closed:
            return
        with self._wake:
            self._closed = True
            self._wake.notify_all()  # the flusher stops
            flusher = self._flusher
        if flusher is not None:
            flusher.join()
        try:
            self.flush()
        finally:
            with self._lock:
                _manifest_cache.pop(self.uri, None)

    @property
    def _fs(self) -> Any:
        return self._folder.fs  # made on first use

    @property
    def local(self) -> bool:
        """True for a folder on this machine's filesystem."""
        return self._folder.local

    def stager(self, token: str) -> PartStager:
        """Writes this sink's parts under temporary names tagged `token`, in any process; the
        parts appear when this sink commits them (`commit_staged`)."""
        self._check_open()
        if not token or not token.isalnum():
            raise ValueError(f"token must be a non-empty alphanumeric string, found {token!r}")
        return PartStager(self.uri, self.format, self.mode, self.run_id, token,
                          self._folder.storage_options)

    def commit_staged(self, staged: StagedPart, *, defer_manifest: bool = False) -> str:
        """Move a part a stager wrote into place and record it; returns its final URI.

        With `defer_manifest`, quick commits share manifest writes: a part committed within
        `MANIFEST_DELAY_S` of the last manifest write is recorded by a flusher thread (or
        `flush` / `close`) at most `MANIFEST_DELAY_S` after its commit, together with the parts
        committed meanwhile, whatever follows. A crash before that write loses only the
        records, and a rerun redoes those shards, rewriting the same parts."""
        self._check_open()
        final = self._folder.path(staged.name)
        uri = self._folder.location.uri(final)
        temp = self._folder.path(staged.temp)
        # A local part is one rename (fsspec's mv adds a stat and shutil.move per part).
        move = (lambda: os.replace(temp, final)) if self.local else (lambda: self._fs.mv(temp, final))
        self._folder.guard("commit", move, uri)
        with self._pending_lock:
            self._pending.append((staged.name, staged.shard_index, staged.rows))
            now = time.monotonic()
            quiet = self._flushed_at is None or now - self._flushed_at >= MANIFEST_DELAY_S
            due = not defer_manifest or quiet or self._closed
            if not due and self._due_at is None:
                self._due_at = now + MANIFEST_DELAY_S
                self._start_flusher()
        if due:
            self.flush()
        return uri

    def flush(self) -> None:
        """Record in the manifest every part committed with `defer_manifest` so far."""
        self._write_pending(keep_on_error=False)

    def _write_pending(self, *, keep_on_error: bool) -> None:
        # Under the manifest lock from taking the records to writing them: committed() sees
        # each record either pending or in the manifest.
        with self._lock:
            with self._pending_lock:
                parts, self._pending, self._due_at = self._pending, [], None
                if parts:
                    self._flushed_at = time.monotonic()
            if not parts:
                return
            try:
                self._folder.guard("record in the manifest",
                            lambda: self._record_all_locked("parts", parts))
            except Exception:
                if keep_on_error:  # try again later; close() raises the error if it lasts
                    with self._pending_lock:
                        self._pending[:0] = parts
                        self._due_at = time.monotonic() + MANIFEST_DELAY_S
                raise

    def _start_flusher(self) -> None:
        """Start the flusher thread once (called under the pending lock: at most one)."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_when_due, daemon=True,
                                             name=f"FileSink flusher {redact(self.uri)}")
            self._flusher.start()
        self._wake.notify()

    def _flush_when_due(self) -> None:
        """The flusher thread: writes the pending records when the oldest is due, until close
        (which writes what is left in its own thread). Uses only differences of
        time.monotonic(): its absolute value is arbitrary (on Linux, seconds since boot)."""
        while True:
            with self._wake:
                while not self._closed and (self._due_at is None
                                            or self._due_at > time.monotonic()):
                    left = None if self._due_at is None else self._due_at - time.monotonic()
                    self._wake.wait(left)
                if self._closed:
                    return
            try:
                self._write_pending(keep_on_error=True)
            except Exception:
                pass  # kept pending, retried when due again: nobody to tell in this thread

    def discard_staged(self, token: str | None = None) -> list[str]:
        """Remove temporary files under the destination: those of `token`'s stager, or, with no
        token, every one (what crashed runs left). Best effort; returns the names removed. Call it
        only when nothing is writing them: a stager's workers have exited, or no run is going."""
        try:
            names = self._list_names()
        except Exception:
            return []
        tag = None if token is None else f".{token}-"
        doomed = [n for n in names if is_temp(n) and (tag is None or tag in n.rsplit("/", 1)[-1])]
        removed = []
        for name in doomed:
            try:
                self._fs.rm(self._folder.path(name))
                removed.append(name)
            except Exception:
                pass
        return removed

    # -- internals

    def _part_name(self, shard_index: int) -> str:
        return part_name(shard_index, self.format, self._suffix)

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError(f"sink {redact(self.uri)} is closed; open a new one to write more")

    def _open(self) -> None:
        names = self._list_names()
        if self.mode == "error" and names:
            shown = ", ".join(sorted(names)[:3])
            raise SinkError(
                f"sink {redact(self.uri)} already holds {len(names)} file(s) ({shown}); "
                "mode='error' refuses a non-empty destination: use mode='overwrite' to replace "
                "them, 'resume' to continue, or 'append' to add parts")
        if self.mode == "overwrite" and names:
            self._clear()
        if self.local:
            self._fs.makedirs(self._folder.root, exist_ok=True)
        if self.mode in ("resume", "append"):
            written = self._read_manifest().get("format")
            if written not in (None, self.format):
                raise SinkError(
                    f"sink {redact(self.uri)} holds {written} parts (per {MANIFEST}), but this "
                    f"sink writes {self.format}; use the same format, another destination, or "
                    "mode='overwrite'")

    def _list_names(self) -> list[str]:
        """Every file under the destination, relative to it; [] when it does not exist yet."""
        try:
            found = self._fs.find(self._folder.root)
        except FileNotFoundError:
            return []
        root = self._folder.root.rstrip("/") + "/"
        return [p[len(root):] for p in found if p.startswith(root)]

    def _clear(self) -> None:
        if self.local:
            self._fs.rm(self._folder.root, recursive=True)
        else:
            self._fs.rm(self._fs.find(self._folder.root))

    def _read_manifest(self) -> dict:
        try:
            raw = self._fs.cat_file(self._folder.path(MANIFEST))
        except FileNotFoundError:
            return {"format": None, "parts": {}, "quarantine": {}}
        try:
            manifest = json.loads(raw)
            manifest.setdefault("parts", {})
            manifest.setdefault("quarantine", {})
            return manifest
        except (ValueError, AttributeError) as exc:
            where = self._folder.location.uri(self._folder.path(MANIFEST))
            raise SinkError(
                f"{redact(where)} is not a valid manifest ({exc}); delete it (a rerun then "
                "redoes every shard) or use mode='overwrite'") from exc

    def _record(self, section: str, name: str, shard_index: int, rows: int) -> None:
        """Add one committed part to the manifest."""
        self._record_all(section, [(name, shard_index, rows)])

    def _record_all(self, section: str, parts: list[tuple[str, int, int]]) -> None:
        """Add committed parts to the manifest: read, update, write to a temp name, move."""
        with self._lock:
            self._record_all_locked(section, parts)

    def _record_all_locked(self, section: str, parts: list[tuple[str, int, int]]) -> None:
        """`_record_all`, the destination's manifest lock held by the caller."""
        local = self.local
        path = self._folder.path(MANIFEST)
        cached = _manifest_cache.get(self.uri) if local else None
        if cached is not None and cached[0] == _stat_key(path):
            manifest = cached[1]
        else:
            manifest = self._read_manifest()
        _manifest_cache.pop(self.uri, None)   # back only once the new manifest is in place
        manifest["format"] = self.format
        entries = manifest[section]
        in_order = True
        for name, shard_index, rows in parts:
            in_order = in_order and (not entries or name > next(reversed(entries)))
            entries[name] = {"shard": shard_index, "rows": rows}
        if not in_order:
            manifest[section] = dict(sorted(entries.items()))
        # No indent: json's C encoder only runs without one, and a 10,000-part manifest
        # rewritten at every commit is then 1 ms instead of 80 ms.
        data = json.dumps(manifest).encode()
        temp = self._folder.path(f"{MANIFEST}.{TEMP_PREFIX}{uuid.uuid4().hex[:12]}")
        self._fs.pipe_file(temp, data)
        self._fs.mv(temp, path)
        if local:
            _manifest_cache[self.uri] = (_stat_key(path), manifest)

