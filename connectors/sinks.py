"""Sinks: one part file per shard, committed atomically, recorded in a manifest.

::

    sink = open_sink("s3://bucket/out/", format="parquet", mode="resume")
    sink.committed()                      {3: 142552, ...} from _manifest.json: skip these
    part = sink.open_part(7)
    part.write(batch) ...                 streamed into  out/_tmp-part-00007.parquet.<token>
    part.commit()                         1. close the temp file (on S3: the upload completes)
                                          2. move it to out/part-00007.parquet
                                             (a rename on disk; a server-side copy on S3, which
                                             creates the final object whole or not at all)
                                          3. record {part, shard, rows} in out/_manifest.json,
                                             itself written to a temp name and moved over
    part.abort()                          delete the temp file; nothing appears

A crash at any point leaves at most a temporary file whose name starts with "_", which readers
(ours, pyarrow.dataset, Spark) skip; the final name only ever holds a complete part, and the
manifest only lists parts that were moved into place. A rerun in mode "resume" asks
`committed()` and skips those shards, and `discard_staged()` removes what a crash left.

Parts can be written in one process and committed in another (workers write, the driver
commits, as each part must be recorded once):

    stager = sink.stager(token)           picklable; sent to the workers
    staged = stager.write(7, table)       (worker) out/_tmp-part-00007.parquet.<token>-<id>
    sink.commit_staged(staged)            (driver) steps 2 and 3 above; with defer_manifest=True,
                                          quick commits share one manifest write, made by a
                                          flusher thread within MANIFEST_DELAY_S (or flush/close)
    sink.discard_staged(token)            (driver, its workers gone) remove the token's leftovers

Modes, checked when the sink is opened:
  resume     keep what is there; `committed()` reports finished shards (the default)
  overwrite  delete everything under the destination first
  error      refuse a destination that already holds files
  append     keep what is there and add parts named ``part-00007-<run_id>.parquet`` so they
             never collide with earlier runs; `committed()` reports only this run's parts

Formats are small encoders behind one interface (Parquet via ``pyarrow.parquet.ParquetWriter``,
CSV via ``pyarrow.csv.CSVWriter``, JSON Lines via pandas). Failed shards can be set aside with
`write_quarantine` under ``_quarantine/`` (always Parquet). `MemorySink` keeps the same
contract in memory and hands committed batches to a callback.

The manifest is re-read before each update so that sinks in several processes writing to one
destination merge their entries; two commits racing across processes can still lose a manifest
entry (never a part), which only means a rerun redoes that shard.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from .exceptions import ConnectorError, SchemaError, SinkError
from .storage import fsspec_filesystem, parse_uri, redact, wrap_error

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["FileSink", "MemorySink", "PartStager", "PartWriter", "Sink", "StagedPart", "open_sink",
           "part_name"]

Format = Literal["parquet", "csv", "jsonl"]
Mode = Literal["resume", "overwrite", "append", "error"]

FORMATS: dict[str, str] = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}  # -> extension
MODES = ("resume", "overwrite", "append", "error")
MANIFEST = "_manifest.json"
QUARANTINE = "_quarantine"
TEMP_PREFIX = "_tmp-"
MANIFEST_DELAY_S = 0.25  # commit_staged(defer_manifest=True): the longest a record waits


def part_name(shard_index: int, format: str = "parquet", suffix: str = "") -> str:
    """The deterministic file name of a shard's part: ``part-00007.parquet``."""
    if not isinstance(shard_index, int) or shard_index < 0:
        raise ValueError(f"shard_index must be a non-negative integer, found {shard_index!r}")
    return f"part-{shard_index:05d}{suffix}.{FORMATS[format]}"


def open_sink(uri: str, *, format: Format = "parquet", mode: Mode = "resume",
              storage_options: dict | None = None, run_id: str | None = None) -> Sink:
    """A sink writing one `format` part per shard under `uri` (any fsspec URI or local path).

    `run_id` names this run's parts in mode "append" (default: a random token); pass the same
    value from every process of one run so a retried shard replaces its own part.
    """
    return FileSink(uri, format=format, mode=mode, storage_options=storage_options,
                    run_id=run_id)


# --------------------------------------------------------------------------- interface


class PartWriter(ABC):
    """Writes one part: `write` any number of tables or batches, then `commit` or `abort`.

    Used as a context manager, a part that was not committed is aborted on exit.
    """

    uri: str  # where the part appears once committed
    rows: int = 0

    @abstractmethod
    def write(self, data: pa.Table | pa.RecordBatch) -> None: ...

    @abstractmethod
    def commit(self) -> int:
        """Make the part visible under its final name; returns its row count."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written; nothing appears under the final name."""

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


class Sink(ABC):
    """Destination of a pipeline's output: one committed part per shard."""

    uri: str
    format: str

    @abstractmethod
    def committed(self) -> dict[int, int]:
        """Shard index -> rows of every part committed (in this destination, or this run)."""

    @abstractmethod
    def open_part(self, shard_index: int) -> PartWriter:
        """A writer for the part of `shard_index`; nothing is visible until it commits."""

    @abstractmethod
    def write_quarantine(self, shard_index: int, table: pa.Table) -> str:
        """Set a failed shard's rows aside under ``_quarantine/``; returns where they went."""

    def write_part(self, shard_index: int, table: pa.Table) -> str:
        """Write `table` as the part of `shard_index` and commit it; returns the final URI."""
        return _write_whole(self.open_part(shard_index), table)

    def close(self) -> None:
        """Refuse further writes. Committed parts are durable; the manifest records the last
        deferred ones (`FileSink.commit_staged(defer_manifest=True)`) now."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- file sink

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
                 storage_options: dict | None = None, run_id: str | None = None,
                 _opened: bool = False) -> None:
        # _opened: another sink opened this destination (mode checks, listing); this one only
        # writes parts for it (see PartStager).
        if format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, found {format!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, found {mode!r}")
        self.format, self.mode = format, mode
        self._storage_options = storage_options
        self._location = parse_uri(uri)
        self._fs_instance: Any = None
        self._root = self._location.path.rstrip("/") or self._location.path
        self.uri = self._location.uri(self._root)
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._suffix = f"-{self.run_id}" if mode == "append" else ""
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
        if not _opened:
            self._guard("open the sink at", self._open)

    def __repr__(self) -> str:
        return f"FileSink({redact(self.uri)!r}, format={self.format!r}, mode={self.mode!r})"

    # -- public API

    def committed(self) -> dict[int, int]:
        # Under the manifest lock: a flush (maybe the flusher's) moves records from the pending
        # list to the manifest under it, so each record is seen in one of the two.
        with self._lock:
            manifest = self._guard("read the manifest of", self._read_manifest)
            with self._pending_lock:
                pending = {name: {"shard": i, "rows": rows} for name, i, rows in self._pending}
        present = set(self._guard("list", self._list_names))
        return {entry["shard"]: entry["rows"]
                for name, entry in {**manifest["parts"], **pending}.items()
                if name == self._part_name(entry["shard"]) and name in present}

    def open_part(self, shard_index: int) -> PartWriter:
        self._check_open()
        name = self._part_name(shard_index)
        return _FilePartWriter(self, shard_index, name, self.format, "parts")

    def write_quarantine(self, shard_index: int, table: pa.Table) -> str:
        self._check_open()
        name = f"{QUARANTINE}/{part_name(shard_index, 'parquet', self._suffix)}"
        return _write_whole(_FilePartWriter(self, shard_index, name, "parquet", "quarantine"), table)

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
        # Made on first use: a worker that only writes local parts never imports fsspec (~50 ms).
        if self._fs_instance is None:
            self._fs_instance, _ = fsspec_filesystem(self.uri, self._storage_options)
        return self._fs_instance

    @property
    def local(self) -> bool:
        """True for a folder on this machine's filesystem."""
        return self._location.protocol == "file"

    def stager(self, token: str) -> PartStager:
        """Writes this sink's parts under temporary names tagged `token`, in any process; the
        parts appear when this sink commits them (`commit_staged`)."""
        self._check_open()
        if not token or not token.isalnum():
            raise ValueError(f"token must be a non-empty alphanumeric string, found {token!r}")
        return PartStager(self.uri, self.format, self.mode, self.run_id, token,
                          self._storage_options)

    def commit_staged(self, staged: StagedPart, *, defer_manifest: bool = False) -> str:
        """Move a part a stager wrote into place and record it; returns its final URI.

        With `defer_manifest`, quick commits share manifest writes: a part committed within
        `MANIFEST_DELAY_S` of the last manifest write is recorded by a flusher thread (or
        `flush` / `close`) at most `MANIFEST_DELAY_S` after its commit, together with the parts
        committed meanwhile, whatever follows. A crash before that write loses only the
        records, and a rerun redoes those shards, rewriting the same parts."""
        self._check_open()
        final = self._path(staged.name)
        uri = self._location.uri(final)
        temp = self._path(staged.temp)
        # A local part is one rename (fsspec's mv adds a stat and shutil.move per part).
        move = (lambda: os.replace(temp, final)) if self.local else (lambda: self._fs.mv(temp, final))
        self._guard("commit", move, uri)
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
                self._guard("record in the manifest",
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
        doomed = [n for n in names if _is_temp(n) and (tag is None or tag in n.rsplit("/", 1)[-1])]
        removed = []
        for name in doomed:
            try:
                self._fs.rm(self._path(name))
                removed.append(name)
            except Exception:
                pass
        return removed

    # -- internals used by part writers

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}"

    def _part_name(self, shard_index: int) -> str:
        return part_name(shard_index, self.format, self._suffix)

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError(f"sink {redact(self.uri)} is closed; open a new one to write more")

    def _guard(self, action: str, func: Callable[[], Any], uri: str | None = None) -> Any:
        """Run `func`, turning foreign storage errors into ours naming `uri`."""
        try:
            return func()
        except ConnectorError:
            raise
        except Exception as exc:
            raise wrap_error(exc, uri or self.uri, action, not_found=SinkError,
                             storage_options=self._storage_options) from exc

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
        if self._location.protocol == "file":
            self._fs.makedirs(self._root, exist_ok=True)
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
            found = self._fs.find(self._root)
        except FileNotFoundError:
            return []
        root = self._root.rstrip("/") + "/"
        return [p[len(root):] for p in found if p.startswith(root)]

    def _clear(self) -> None:
        if self._location.protocol == "file":
            self._fs.rm(self._root, recursive=True)
        else:
            self._fs.rm(self._fs.find(self._root))

    def _read_manifest(self) -> dict:
        try:
            raw = self._fs.cat_file(self._path(MANIFEST))
        except FileNotFoundError:
            return {"format": None, "parts": {}, "quarantine": {}}
        try:
            manifest = json.loads(raw)
            manifest.setdefault("parts", {})
            manifest.setdefault("quarantine", {})
            return manifest
        except (ValueError, AttributeError) as exc:
            raise SinkError(
                f"{redact(self._location.uri(self._path(MANIFEST)))} is not a valid manifest "
                f"({exc}); delete it (a rerun then redoes every shard) or use "
                "mode='overwrite'") from exc

    def _record(self, section: str, name: str, shard_index: int, rows: int) -> None:
        """Add one committed part to the manifest."""
        self._record_all(section, [(name, shard_index, rows)])

    def _record_all(self, section: str, parts: list[tuple[str, int, int]]) -> None:
        """Add committed parts to the manifest: read, update, write to a temp name, move."""
        with self._lock:
            self._record_all_locked(section, parts)

    def _record_all_locked(self, section: str, parts: list[tuple[str, int, int]]) -> None:
        """`_record_all`, the destination's manifest lock held by the caller."""
        local = self._location.protocol == "file"
        path = self._path(MANIFEST)
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
        temp = self._path(f"{MANIFEST}.{TEMP_PREFIX}{uuid.uuid4().hex[:12]}")
        self._fs.pipe_file(temp, data)
        self._fs.mv(temp, path)
        if local:
            _manifest_cache[self.uri] = (_stat_key(path), manifest)


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(TEMP_PREFIX) or f".{TEMP_PREFIX}" in base


@dataclass(frozen=True)
class StagedPart:
    """A complete part under its temporary name, waiting for the sink's `commit_staged`."""

    shard_index: int
    name: str  # final name, relative to the destination (part-00007.parquet)
    temp: str  # temporary name, relative to the destination
    rows: int


@dataclass(frozen=True)
class PartStager:
    """Writes parts for a `FileSink` under temporary names, in whatever process holds it
    (`FileSink.stager`). Small and picklable; it carries the sink's storage options."""

    uri: str
    format: str
    mode: str
    run_id: str  # the sink's: names the parts in mode "append"
    token: str  # tags the temporary names, so that its leftovers can be told apart
    storage_options: dict | None = None

    def write(self, shard_index: int, table: pa.Table) -> StagedPart:
        """Write `table` as the part of `shard_index` under a temporary name; nothing appears
        under the final name until the sink commits it."""
        key = (self.uri, self.format, self.mode, self.run_id, repr(self.storage_options))
        sink = _attached.get(key)
        if sink is None:  # one per process: the filesystem object is reused across parts
            sink = _attached[key] = FileSink(
                self.uri, format=self.format, mode=self.mode,  # type: ignore[arg-type]
                storage_options=self.storage_options, run_id=self.run_id, _opened=True)
        writer = _FilePartWriter(sink, shard_index, sink._part_name(shard_index), self.format,
                                 "parts", tag=f"{self.token}-{uuid.uuid4().hex[:8]}")
        try:
            writer.write(table)
            return writer.stage()
        except BaseException:
            writer.abort()
            raise


_attached: dict[tuple, FileSink] = {}


class _FilePartWriter(PartWriter):
    """Streams one part into a temp file; commit moves it into place and records it."""

    def __init__(self, sink: FileSink, shard_index: int, name: str, format: str,
                 section: str, tag: str | None = None) -> None:
        self._sink, self._shard_index, self._name = sink, shard_index, name
        self._format, self._section = format, section
        folder, _, base = name.rpartition("/")
        temp_base = f"{TEMP_PREFIX}{base}.{tag or uuid.uuid4().hex[:12]}"
        self._temp_name = f"{folder}/{temp_base}" if folder else temp_base
        self._temp = sink._path(self._temp_name)
        self._final = sink._path(name)
        self.uri = sink._location.uri(self._final)
        self.rows = 0
        self._file: BinaryIO | None = None
        self._encoder: _Encoder | None = None
        self._done = False

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if self._done:
            raise SinkError(f"part {redact(self.uri)} was already committed or aborted")
        table = _as_table(data, self.uri)
        if self._encoder is None:
            self._sink._guard("write", self._start(table.schema), self.uri)
        self._sink._guard("write", lambda: self._encoder.write(table), self.uri)
        self.rows += table.num_rows

    def _start(self, schema: pa.Schema) -> Callable[[], None]:
        def start() -> None:
            if self._sink.local:  # builtin open: the same file, without fsspec
                os.makedirs(self._temp.rpartition("/")[0], exist_ok=True)
                self._file = open(self._temp, "wb")
            else:
                self._file = self._sink._fs.open(self._temp, "wb")
            self._encoder = _ENCODERS[self._format](self._file, schema, self.uri)
        return start

    def commit(self) -> int:
        self._finish()
        self._sink._guard("commit", lambda: self._sink._fs.mv(self._temp, self._final), self.uri)
        self._done = True
        self._sink._guard("record in the manifest", lambda: self._sink._record(
            self._section, self._name, self._shard_index, self.rows), self._sink.uri)
        return self.rows

    def stage(self) -> StagedPart:
        """Complete the temporary file and leave it for `FileSink.commit_staged`."""
        self._finish()
        self._done = True
        return StagedPart(self._shard_index, self._name, self._temp_name, self.rows)

    def _finish(self) -> None:
        if self._done:
            raise SinkError(f"part {redact(self.uri)} was already committed or aborted")
        if self._encoder is None:  # nothing written: an empty part still marks the shard done
            import pyarrow as pa

            self.write(pa.table({}))

        def close() -> None:
            self._encoder.close()
            self._file.close()  # on S3 this completes the (multipart) upload of the temp object
        self._sink._guard("write", close, self.uri)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._file is None:
            return
        # Best effort throughout: a leftover temp file is invisible to readers.
        encoder_close = self._encoder.close if self._encoder is not None else (lambda: None)
        remove = (lambda: os.remove(self._temp)) if self._sink.local else (
            lambda: self._sink._fs.rm(self._temp))
        for step in (encoder_close, self._file.close, remove):
            try:
                step()
            except Exception:
                pass


def _as_table(data: Any, uri: str) -> pa.Table:
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    raise TypeError(f"part {redact(uri)}: expected a pyarrow Table or RecordBatch, "
                    f"found {type(data).__name__}")


# --------------------------------------------------------------------------- encoders


class _Encoder:
    """Writes tables of one schema into an open binary file."""

    def __init__(self, file: BinaryIO, schema: pa.Schema, uri: str) -> None:
        self._file, self._schema, self._uri = file, schema, uri

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _conform(self, table: pa.Table) -> pa.Table:
        if table.schema.equals(self._schema, check_metadata=False):
            return table
        if table.schema.names == self._schema.names:
            try:
                return table.cast(self._schema)
            except Exception as exc:
                raise SchemaError(self._mismatch(table.schema)) from exc
        raise SchemaError(self._mismatch(table.schema))

    def _mismatch(self, found: pa.Schema) -> str:
        return (f"part {redact(self._uri)}: a batch has columns {_describe(found)}, but the part "
                f"was started with {_describe(self._schema)}; every batch of a part must have "
                "the same columns and types")


def _describe(schema: pa.Schema) -> str:
    return "[" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "]"


class _ParquetEncoder(_Encoder):
    def __init__(self, file: BinaryIO, schema: pa.Schema, uri: str) -> None:
        import pyarrow.parquet as pq

        super().__init__(file, schema, uri)
        self._writer = pq.ParquetWriter(file, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(self._conform(table))

    def close(self) -> None:
        self._writer.close()


class _CsvEncoder(_Encoder):
    def __init__(self, file: BinaryIO, schema: pa.Schema, uri: str) -> None:
        import pyarrow.csv as csv

        super().__init__(file, schema, uri)
        self._writer = csv.CSVWriter(file, schema) if len(schema) else None

    def write(self, table: pa.Table) -> None:
        if self._writer is not None:
            self._writer.write_table(self._conform(table))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _JsonlEncoder(_Encoder):
    # pyarrow has no JSON writer; pandas' encoder is vectorized C and writes ISO timestamps.
    def write(self, table: pa.Table) -> None:
        table = self._conform(table)
        if table.num_rows == 0 or table.num_columns == 0:
            return
        text = table.to_pandas().to_json(orient="records", lines=True, date_format="iso",
                                         date_unit="us")
        if not text.endswith("\n"):
            text += "\n"
        self._file.write(text.encode())


_ENCODERS: dict[str, type[_Encoder]] = {
    "parquet": _ParquetEncoder,
    "csv": _CsvEncoder,
    "jsonl": _JsonlEncoder,
}


# --------------------------------------------------------------------------- memory sink


class MemorySink(Sink):
    """Keeps committed parts in memory, or streams their batches to `callback`.

    With a callback, each committed part's batches are passed to ``callback(batch)`` in the
    committing thread, in order; aborted parts never reach it. Without one, committed parts
    are kept as tables in `tables` (shard index -> table).
    """

    format = "memory"

    def __init__(self, callback: Callable[[pa.RecordBatch], None] | None = None) -> None:
        self.uri = "memory://"
        self._callback = callback
        self._lock = threading.Lock()
        self._committed: dict[int, int] = {}
        self.tables: dict[int, pa.Table] = {}
        self.quarantined: dict[int, pa.Table] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemorySink(parts={len(self._committed)})"

    def committed(self) -> dict[int, int]:
        with self._lock:
            return dict(self._committed)

    def open_part(self, shard_index: int) -> PartWriter:
        if self._closed:
            raise SinkError("MemorySink is closed; open a new one to write more")
        return _MemoryPartWriter(self, shard_index)

    def write_quarantine(self, shard_index: int, table: pa.Table) -> str:
        name = f"{QUARANTINE}/{part_name(shard_index)}"
        with self._lock:
            self.quarantined[shard_index] = _as_table(table, name)
        return f"memory://{name}"

    def close(self) -> None:
        self._closed = True

    def _publish(self, shard_index: int, tables: list[pa.Table], rows: int) -> None:
        import pyarrow as pa

        with self._lock:
            if self._callback is None:
                self.tables[shard_index] = (pa.concat_tables(tables) if tables
                                            else pa.table({}))
            else:
                for table in tables:
                    for batch in table.to_batches():
                        self._callback(batch)
            self._committed[shard_index] = rows


class _MemoryPartWriter(PartWriter):
    def __init__(self, sink: MemorySink, shard_index: int) -> None:
        self._sink, self._shard_index = sink, shard_index
        self.uri = f"memory://{part_name(shard_index)}"
        self.rows = 0
        self._tables: list[pa.Table] = []
        self._done = False

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if self._done:
            raise SinkError(f"part {self.uri} was already committed or aborted")
        table = _as_table(data, self.uri)
        if self._tables and not table.schema.equals(self._tables[0].schema,
                                                    check_metadata=False):
            raise SchemaError(
                f"part {self.uri}: a batch has columns {_describe(table.schema)}, but the part "
                f"was started with {_describe(self._tables[0].schema)}")
        self._tables.append(table)
        self.rows += table.num_rows

    def commit(self) -> int:
        if self._done:
            raise SinkError(f"part {self.uri} was already committed or aborted")
        self._done = True
        self._sink._publish(self._shard_index, self._tables, self.rows)
        return self.rows

    def abort(self) -> None:
        self._done = True
        self._tables = []


def _write_whole(writer: "PartWriter", table: pa.Table) -> str:
    """Write one table through `writer` and commit it, or abort so nothing half-written stays."""
    try:
        writer.write(table)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer.uri
