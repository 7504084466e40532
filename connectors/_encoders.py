"""Format encoders: write tables of one schema into an open binary file, one class per format.

::

    ENCODERS[format](file, schema, uri) ──► .write(table) ... ──► .close()
        parquet  pyarrow.parquet.ParquetWriter
        csv      pyarrow.csv.CSVWriter (a part with no columns stays empty)
        jsonl    pandas' JSON Lines encoder

Every batch of a part must have the schema the part was started with (a batch whose columns
match by name is cast to it); a mismatch is a `SchemaError` naming both schemas. Each encoder
imports its library when a part of its format is started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

from ._sink_base import describe
from .exceptions import SchemaError
from .storage import redact

if TYPE_CHECKING:
    import pyarrow as pa


class Encoder:
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
        return (f"part {redact(self._uri)}: a batch has columns {describe(found)}, but the part "
                f"was started with {describe(self._schema)}; every batch of a part must have "
                "the same columns and types")


class _ParquetEncoder(Encoder):
    def __init__(self, file: BinaryIO, schema: pa.Schema, uri: str) -> None:
        import pyarrow.parquet as pq

        super().__init__(file, schema, uri)
        self._writer = pq.ParquetWriter(file, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(self._conform(table))

    def close(self) -> None:
        self._writer.close()


class _CsvEncoder(Encoder):
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


class _JsonlEncoder(Encoder):
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


ENCODERS: dict[str, type[Encoder]] = {
    "parquet": _ParquetEncoder,
    "csv": _CsvEncoder,
    "jsonl": _JsonlEncoder,
}
