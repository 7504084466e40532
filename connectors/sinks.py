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

This module is the public front (`open_sink`, and every name below); the pieces live in
  _sink_base     Sink and PartWriter, part names, formats, reserved names
  _file_sink     FileSink: modes, commits, the manifest and its deferred writes
  _staging       part files: Folder, FilePartWriter, PartStager, StagedPart
  _encoders      one encoder per format
  _memory_sink   MemorySink
"""

from __future__ import annotations

# Besides __all__, the constants stay importable from here, each read where it is defined (to
# change MANIFEST_DELAY_S, a test patches connectors._file_sink, whose FileSink reads it).
from ._file_sink import MANIFEST, MANIFEST_DELAY_S, MODES, FileSink, Mode  # noqa: F401
from ._memory_sink import MemorySink
from ._sink_base import (FORMATS, QUARANTINE, TEMP_PREFIX, Format, PartWriter,  # noqa: F401
                         Sink, part_name)
from ._staging import PartStager, StagedPart

__all__ = ["FileSink", "MemorySink", "PartStager", "PartWriter", "Sink", "StagedPart", "open_sink",
           "part_name"]


def open_sink(uri: str, *, format: Format = "parquet", mode: Mode = "resume",
              storage_options: dict | None = None, run_id: str | None = None) -> Sink:
    """A sink writing one `format` part per shard under `uri` (any fsspec URI or local path).

    `run_id` names this run's parts in mode "append" (default: a random token); pass the same
    value from every process of one run so a retried shard replaces its own part.
    """
    return FileSink(uri, format=format, mode=mode, storage_options=storage_options,
                    run_id=run_id)
