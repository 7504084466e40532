"""What planning and reading share: the `Shard`, the checks both make, the fragment both open.

::

    plan_shards ──► Shard(index, path, row_groups, ..., expect: SchemaCheck | None)
                    (frozen, picklable, no credentials)  ──► read_shard / iter_batches

    check_column_names, to_expression      the arguments `columns` and `filters`, checked once
    check_columns, projected, schema_diff  a file's schema against the columns asked for, or
                                           another file's, with messages naming both
    open_fragment                          a pyarrow.dataset fragment over some row groups of
                                           a file (pyarrow.dataset loads on first use)
    read_error                             a pyarrow or OSError failure as our error
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .exceptions import ConnectorError, SchemaError, SourceError
from .storage import arrow_filesystem, classify, redact, wrap_error

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

Filters = Any  # pyarrow.compute.Expression | list[tuple] | list[list[tuple]] | None


@dataclass(frozen=True)
class Shard:
    """One unit of work: some or all row groups of one Parquet file."""

    index: int  # position in the plan, 0-based; names the part file
    path: str  # URI of one Parquet file
    row_groups: tuple[int, ...] | None  # None = the whole file
    num_rows: int  # rows in those row groups (before row-level filtering)
    num_bytes: int  # compressed bytes of the projected columns in those row groups
    file_size: int | None = None  # size of the whole file; saves a HEAD request when reading
    expect: SchemaCheck | None = None  # set when the footer was not read at planning

    @property
    def estimated(self) -> bool:
        """True when `num_rows` and `num_bytes` are estimated from the file's size."""
        return self.expect is not None


@dataclass(frozen=True)
class SchemaCheck:
    """The schema a shard planned from a sample must have, checked when the shard is read."""

    schema: pa.Schema  # names and types of the checked columns
    columns: tuple[str, ...] | None  # the planned columns; None: the file's whole schema
    sampled_from: str  # URI of the sampled file the schema was taken from

    def __reduce__(self) -> tuple:
        # Every task of a sampled plan carries this: the schema travels as Arrow IPC bytes
        # (~1 us, where pickling its fields one by one cost ~20 us a task) and each process
        # rebuilds it once (`_schema_check`).
        return _schema_check, (self.schema.serialize().to_pybytes(), self.columns, self.sampled_from)


@functools.lru_cache(maxsize=64)
def _schema_check(schema_ipc: bytes, columns: tuple[str, ...] | None, sampled_from: str) -> SchemaCheck:
    import pyarrow as pa

    return SchemaCheck(pa.ipc.read_schema(pa.py_buffer(schema_ipc)), columns, sampled_from)


def check_column_names(columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"columns must be a list of column names, found {columns!r}")
    return list(columns)


def to_expression(filters: Filters) -> pc.Expression | None:
    """`filters` as a pyarrow Expression (accepts an Expression or the DNF list form)."""
    if filters is None:
        return None
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if isinstance(filters, pc.Expression):
        return filters
    try:
        return pq.filters_to_expression(filters)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(
            "filters must be a pyarrow.compute.Expression or a list of (column, op, value) "
            f"tuples such as [('passenger_count', '>', 2)], found {filters!r} ({exc})") from exc


def check_columns(schema: pa.Schema, columns: Sequence[str] | None, uri: str) -> None:
    if not columns:
        return
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise SchemaError(
            f"{redact(uri)} has no column {', '.join(map(repr, missing))}: expected the "
            f"requested columns {list(columns)}, found {schema.names}")


def projected(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    import pyarrow as pa

    if columns is None:
        return schema.remove_metadata()
    return pa.schema([schema.field(c) for c in columns])


def schema_diff(expected: pa.Schema, found: pa.Schema) -> str:
    notes = []
    missing = [n for n in expected.names if n not in found.names]
    extra = [n for n in found.names if n not in expected.names]
    if missing:
        notes.append(f"missing columns {missing}")
    if extra:
        notes.append(f"extra columns {extra}")
    for field in expected:
        if field.name in found.names and found.field(field.name).type != field.type:
            notes.append(f"column {field.name!r} is {found.field(field.name).type}, "
                         f"expected {field.type}")
    if not notes and expected.names != found.names:
        notes.append(f"column order {found.names}, expected {expected.names}")
    return "; ".join(notes) or f"found {found}, expected {expected}"


def open_fragment(uri: str, row_groups: tuple[int, ...] | None, size: int | None,
              storage_options: dict | None) -> ds.ParquetFileFragment:
    fs, location = arrow_filesystem(uri, storage_options)
    return _parquet_format().make_fragment(
        location.path, filesystem=fs, row_groups=None if row_groups is None else list(row_groups),
        file_size=size)


@functools.cache
def _parquet_format() -> ds.ParquetFileFormat:
    import pyarrow.dataset as ds

    # The same defaults as pyarrow.parquet.read_table: pre-buffering coalesces the column
    # chunks a scan needs into few large reads, which is what makes S3 fast.
    return ds.ParquetFileFormat(
        default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True))


def read_error(exc: BaseException, uri: str, action: str,
                storage_options: dict | None) -> ConnectorError:
    """A pyarrow/OSError failure while reading `uri`, as the matching connectors error."""
    import pyarrow as pa

    if isinstance(exc, ConnectorError):
        return exc
    text = first_line(exc)
    if isinstance(exc, pa.ArrowInvalid) and "No match for FieldRef" in text:
        return SchemaError(f"cannot {action} {redact(uri)}: {text}")
    if classify(exc) == "other" and (
            isinstance(exc, (pa.ArrowInvalid, pa.ArrowNotImplementedError))
            or any(word in text for word in ("Parquet", "parquet", "thrift", "magic"))):
        return SourceError(
            f"cannot {action} {redact(uri)}: not a valid Parquet file (corrupt or truncated?): "
            f"{text}")
    return wrap_error(exc, uri, action, not_found=SourceError, storage_options=storage_options)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
