"""Part files: a part streamed into a temporary file of its destination, then moved into place.

::

    FilePartWriter(folder, shard, name)   (FileSink.open_part, write_quarantine, PartStager)
      .write(batch) ...      encoded (see _encoders) into  out/_tmp-part-00007.parquet.<tag>
      .commit()              close the temp file, move it to out/part-00007.parquet, record it
      .stage() -> StagedPart close the temp file and leave it for FileSink.commit_staged
      .abort()               delete the temp file; nothing appears

    PartStager(uri, format, mode, run_id, token)      picklable; made by FileSink.stager
      .write(7, table) -> StagedPart   in a worker: out/_tmp-part-00007.parquet.<token>-<id>

A `Folder` is what a writer needs of its destination: paths and URIs under it, its filesystem
(made on first use) and storage errors wrapped naming it. A `FileSink` has one; a stager makes
one per process, without the sink's opening checks and manifest, which stay with the driver.
Temporary names start with "_" (or hold ``._tmp-``), so readers skip them and
`FileSink.discard_staged` can find what a crash left.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from ._encoders import ENCODERS, Encoder
from ._sink_base import TEMP_PREFIX, PartWriter, as_table, part_name
from .exceptions import ConnectorError, SinkError
from .storage import fsspec_filesystem, parse_uri, redact, wrap_error

if TYPE_CHECKING:
    import pyarrow as pa


class Folder:
    """A sink's destination on any fsspec filesystem: the paths and URIs of names under it."""

    def __init__(self, uri: str, storage_options: dict | None = None) -> None:
        self.storage_options = storage_options
        self.location = parse_uri(uri)
        self.root = self.location.path.rstrip("/") or self.location.path
        self.uri = self.location.uri(self.root)
        self._fs: Any = None

    @property
    def fs(self) -> Any:
        # Made on first use: a worker that only writes local parts never imports fsspec (~50 ms).
        if self._fs is None:
            self._fs, _ = fsspec_filesystem(self.uri, self.storage_options)
        return self._fs

    @property
    def local(self) -> bool:
        """True for a folder on this machine's filesystem."""
        return self.location.protocol == "file"

    def path(self, name: str) -> str:
        """The filesystem path of `name`, relative to the folder."""
        return f"{self.root}/{name}"

    def guard(self, action: str, func: Callable[[], Any], uri: str | None = None) -> Any:
        """Run `func`, turning foreign storage errors into ours naming `uri`."""
        try:
            return func()
        except ConnectorError:
            raise
        except Exception as exc:
            raise wrap_error(exc, uri or self.uri, action, not_found=SinkError,
                             storage_options=self.storage_options) from exc


def run_suffix(mode: str, run_id: str) -> str:
    """What part names end with: in mode "append", the run's id, so runs never collide."""
    return f"-{run_id}" if mode == "append" else ""


def is_temp(name: str) -> bool:
    """True for a temporary file a writer (or the manifest's update) left under `name`."""
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
        key = (self.uri, repr(self.storage_options))
        folder = _attached.get(key)
        if folder is None:  # one per process: the filesystem object is reused across parts
            folder = _attached[key] = Folder(self.uri, self.storage_options)
        name = part_name(shard_index, self.format, run_suffix(self.mode, self.run_id))
        writer = FilePartWriter(folder, shard_index, name, self.format,
                                tag=f"{self.token}-{uuid.uuid4().hex[:8]}")
        try:
            writer.write(table)
            return writer.stage()
        except BaseException:
            writer.abort()
            raise


_attached: dict[tuple, Folder] = {}


class FilePartWriter(PartWriter):
    """Streams one part into a temp file; commit moves it into place and records it.

    `record(name, shard_index, rows)` adds the committed part to the sink's manifest; a writer
    without one (a stager's) can only `stage` its part.
    """

    def __init__(self, folder: Folder, shard_index: int, name: str, format: str,
                 record: Callable[[str, int, int], None] | None = None,
                 tag: str | None = None) -> None:
        self._folder, self._shard_index, self._name = folder, shard_index, name
        self._format, self._record = format, record
        parent, _, base = name.rpartition("/")
        temp_base = f"{TEMP_PREFIX}{base}.{tag or uuid.uuid4().hex[:12]}"
        self._temp_name = f"{parent}/{temp_base}" if parent else temp_base
        self._temp = folder.path(self._temp_name)
        self._final = folder.path(name)
        self.uri = folder.location.uri(self._final)
        self.rows = 0
        self._file: BinaryIO | None = None
        self._encoder: Encoder | None = None
        self._done = False

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if self._done:
            raise SinkError(f"part {redact(self.uri)} was already committed or aborted")
        table = as_table(data, self.uri)
        if self._encoder is None:
            self._folder.guard("write", self._start(table.schema), self.uri)
        self._folder.guard("write", lambda: self._encoder.write(table), self.uri)
        self.rows += table.num_rows

    def _start(self, schema: pa.Schema) -> Callable[[], None]:
        def start() -> None:
            if self._folder.local:  # builtin open: the same file, without fsspec
                os.makedirs(self._temp.rpartition("/")[0], exist_ok=True)
                self._file = open(self._temp, "wb")
            else:
                self._file = self._folder.fs.open(self._temp, "wb")
            self._encoder = ENCODERS[self._format](self._file, schema, self.uri)
        return start

    def commit(self) -> int:
        record = self._record
        if record is None:
            raise SinkError(f"part {redact(self.uri)} is staged: its sink commits it "
                            "(FileSink.commit_staged)")
        self._finish()
        self._folder.guard("commit", lambda: self._folder.fs.mv(self._temp, self._final),
                           self.uri)
        self._done = True
        self._folder.guard("record in the manifest",
                           lambda: record(self._name, self._shard_index, self.rows))
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
        self._folder.guard("write", close, self.uri)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._file is None:
            return
        # Best effort throughout: a leftover temp file is invisible to readers.
        encoder_close = self._encoder.close if self._encoder is not None else (lambda: None)
        remove = (lambda: os.remove(self._temp)) if self._folder.local else (
            lambda: self._folder.fs.rm(self._temp))
        for step in (encoder_close, self._file.close, remove):
            try:
                step()
            except Exception:
                pass
