"""MemorySink: the sink contract in memory, for tests, notebooks and in-process consumers.

::

    part = sink.open_part(7); part.write(batch) ...    batches kept by the part writer
    part.commit()      with a callback: each batch to callback(batch), in the committing thread
                       without one:     sink.tables[7] = the part's batches as one table
    part.abort()       dropped; neither the callback nor `tables` ever sees them

Quarantined shards go to `quarantined` (shard index -> table).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._sink_base import QUARANTINE, PartWriter, Sink, as_table, describe, part_name
from .exceptions import SchemaError, SinkError

if TYPE_CHECKING:
    import pyarrow as pa


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
            self.quarantined[shard_index] = as_table(table, name)
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
        table = as_table(data, self.uri)
        if self._tables and not table.schema.equals(self._tables[0].schema,
                                                    check_metadata=False):
            raise SchemaError(
                f"part {self.uri}: a batch has columns {describe(table.schema)}, but the part "
                f"was started with {describe(self._tables[0].schema)}")
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
