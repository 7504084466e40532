"""The sink contract: `Sink` and `PartWriter`, and what every sink shares with them.

::

    Sink.open_part(i) ──► PartWriter.write(batch) ... ──► commit() -> rows  |  abort()
    Sink.write_part(i, table)            the same, for one table (write_whole)
    Sink.write_quarantine(i, table)      a failed shard's rows, set aside under _quarantine/

Also here: the deterministic part names (`part_name`), the formats a sink may write, and the
names a destination reserves (``_quarantine/``, temporary files starting with ``_tmp-``).
The sinks themselves live in `_file_sink` (`FileSink`) and `_memory_sink` (`MemorySink`);
`connectors.sinks` is their public front.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal

from .storage import redact

if TYPE_CHECKING:
    import pyarrow as pa

Format = Literal["parquet", "csv", "jsonl"]

FORMATS: dict[str, str] = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}  # -> extension
QUARANTINE = "_quarantine"
TEMP_PREFIX = "_tmp-"


def part_name(shard_index: int, format: str = "parquet", suffix: str = "") -> str:
    """The deterministic file name of a shard's part: ``part-00007.parquet``."""
    if not isinstance(shard_index, int) or shard_index < 0:
        raise ValueError(f"shard_index must be a non-negative integer, found {shard_index!r}")
    return f"part-{shard_index:05d}{suffix}.{FORMATS[format]}"


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
        return write_whole(self.open_part(shard_index), table)

    def close(self) -> None:
        """Refuse further writes. Committed parts are durable; the manifest records the last
        deferred ones (`FileSink.commit_staged(defer_manifest=True)`) now."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_whole(writer: PartWriter, table: pa.Table) -> str:
    """Write one table through `writer` and commit it, or abort so nothing half-written stays."""
    try:
        writer.write(table)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer.uri


def as_table(data: Any, uri: str) -> pa.Table:
    """`data` as a pyarrow Table (a RecordBatch is wrapped); anything else is a TypeError."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    raise TypeError(f"part {redact(uri)}: expected a pyarrow Table or RecordBatch, "
                    f"found {type(data).__name__}")


def describe(schema: pa.Schema) -> str:
    """A schema as one line for error messages: ``[id: int64, name: string]``."""
    return "[" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "]"
