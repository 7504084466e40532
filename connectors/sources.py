"""Parquet sources: plan shards from footers, read a shard into Arrow, stream its batches.

::

    plan_shards(uri | [uri, ...])
      1. list      one listing per URI (a single LIST call per 1,000 keys on S3, parsed by
                   pyarrow's C++ client; globs through fsspec), keeping Parquet files and
                   skipping names that start with "_" or "." (temp files, manifests, _SUCCESS)
      2. footers   read in parallel on a thread pool; only the footer of each file is fetched,
                   with pyarrow.parquet alone (pyarrow.dataset imports pandas: ~0.3 s in the
                   driver), except with filters and for many files on S3 (see
                   `_planning._read_footer`). Many files sharded by file, with no filters,
                   read a sample of footers only (`_planning._sampled_plan`), as Ray Data
                   estimates from a sample
      3. check     every file has the requested columns; all files agree on their schema
      4. split     one shard per file, or per run of row groups of about `target_rows`; row
                   groups whose statistics rule out `filters` are dropped here already
      → [Shard(index, path, row_groups, num_rows, num_bytes, file_size, expect), ...]

    read_shard(shard)  / iter_batches(shard, batch_size)
      a pyarrow.dataset fragment over the shard's row groups: column projection and filter
      push-down (statistics, then rows); pre-buffering coalesces the needed column chunks
      into a few large range requests, so S3 reads fetch only the projected columns.
      iter_batches of a local file without filters reads it with pyarrow.parquet's reader
      alone (`_reads_directly`): the same batches for half the CPU (the dataset scanner's
      set-up is ~1 ms a shard, as much as decoding a column of 140,000 rows).

A `Shard` is small, frozen and picklable, and carries no credentials: a task on another process
reads it with the same `storage_options` (or the same AWS environment) as the planner.
`filters` are a ``pyarrow.compute.Expression`` or the DNF list form of
``pyarrow.parquet.read_table`` (``[("passenger_count", ">", 2)]``).

This module reads shards (`read_shard`, `iter_batches`) and is the public front of the rest:
  _planning   plan_shards: footers, schema checks across files, splitting into shards
  _listing    which Parquet files a URI names, with their sizes
  _parquet    Shard, SchemaCheck, the argument and schema checks, fragments, read errors
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

# Besides __all__, the types and helpers this module has always offered stay importable here.
from ._listing import PARQUET_SUFFIXES, Listing  # noqa: F401
from ._parquet import (Filters, SchemaCheck, Shard, check_column_names, check_columns,
                       open_fragment, projected, read_error, schema_diff, to_expression)
from ._planning import Footers, ShardBy, plan_shards  # noqa: F401
from .exceptions import ConnectorError, SchemaError
from .storage import arrow_filesystem, parse_uri, redact

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

__all__ = ["SchemaCheck", "Shard", "iter_batches", "plan_shards", "read_shard"]


def read_shard(shard: Shard, *, columns: Sequence[str] | None = None, filters: Filters = None,
               storage_options: dict | None = None) -> pa.Table:
    """The shard's rows as one Arrow table, with only `columns` and only rows passing `filters`."""
    fragment, columns, expression = _prepare(shard, columns, filters, storage_options)
    try:
        return fragment.to_table(columns=columns, filter=expression, use_threads=True)
    except Exception as exc:
        raise read_error(exc, shard.path, "read", storage_options) from exc


def iter_batches(shard: Shard, *, batch_size: int = 65536, columns: Sequence[str] | None = None,
                 filters: Filters = None, storage_options: dict | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """The shard's rows as record batches of exactly `batch_size` rows (the last may be short)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, found {batch_size!r}")
    if _reads_directly(shard, columns, filters):
        yield from _direct_batches(shard, check_column_names(columns), batch_size, storage_options)
        return
    fragment, columns, expression = _prepare(shard, columns, filters, storage_options)
    try:
        batches = fragment.to_batches(columns=columns, filter=expression, batch_size=batch_size,
                                      use_threads=True)
        yield from rebatch(batches, batch_size)
    except ConnectorError:
        raise
    except Exception as exc:
        raise read_error(exc, shard.path, "read", storage_options) from exc


def _reads_directly(shard: Shard, columns: Sequence[str] | None, filters: Filters) -> bool:
    """True when pyarrow.parquet's reader gives what the dataset scan would: no filters (it
    has no row filter), no column asked twice (it would return it once), and a local file
    (opening a remote one costs a HEAD request that the fragment saves with `file_size`)."""
    return (filters is None and isinstance(shard, Shard)
            and (columns is None or (isinstance(columns, (list, tuple))
                                     and len(set(columns)) == len(columns)))
            and parse_uri(shard.path).protocol == "file")


def _direct_batches(shard: Shard, columns: list[str] | None, batch_size: int,
                    storage_options: dict | None) -> Iterator[pa.RecordBatch]:
    """A local shard's batches through pq.ParquetFile: the footer read once, the same checks
    and errors as the fragment's (`_prepare`)."""
    import pyarrow.parquet as pq

    fs, location = arrow_filesystem(shard.path, storage_options)
    try:
        source = fs.open_input_file(location.path)
        try:
            # A local read has nothing to coalesce: no pre-buffering (a hand-off to the I/O pool).
            reader = pq.ParquetFile(source, pre_buffer=False)
        except BaseException:
            source.close()
            raise
    except Exception as exc:
        raise read_error(exc, shard.path, "read the Parquet footer of", storage_options) from exc
    with source:
        schema = reader.schema_arrow
        if shard.expect is not None:
            _check_expected(schema, shard.expect, shard.path)
        check_columns(schema, columns, shard.path)
        row_groups = None if shard.row_groups is None else list(shard.row_groups)
        # pyarrow decodes columns in parallel: a single column has nothing to share out, and
        # the pool's hand-offs would only cost (~0.2 ms a shard).
        threads = len(schema.names if columns is None else columns) > 1
        try:
            yield from rebatch(reader.iter_batches(batch_size=batch_size, row_groups=row_groups,
                                                   columns=columns, use_threads=threads), batch_size)
        except ConnectorError:
            raise
        except Exception as exc:
            raise read_error(exc, shard.path, "read", storage_options) from exc


def rebatch(batches: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Re-cut a stream of batches into batches of exactly `batch_size` rows (last may be short).

    Slices are zero-copy; rows are copied only to join the pieces of a batch that spans two
    input batches (a row group boundary, or rows removed by a filter).
    """
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            take = min(batch_size - pending_rows, batch.num_rows - offset)
            pending.append(batch.slice(offset, take))
            pending_rows += take
            offset += take
            if pending_rows == batch_size:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, pending_rows = [], 0
    if pending_rows:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def _prepare(shard: Shard, columns: Sequence[str] | None, filters: Filters,
             storage_options: dict | None
             ) -> tuple[ds.ParquetFileFragment, list[str] | None, pc.Expression | None]:
    if not isinstance(shard, Shard):
        raise TypeError(f"expected a Shard from plan_shards, found {type(shard).__name__}")
    columns = check_column_names(columns)
    expression = to_expression(filters)
    fragment = open_fragment(shard.path, shard.row_groups, shard.file_size, storage_options)
    try:
        schema = fragment.physical_schema  # reads the footer once; the scan reuses it
    except Exception as exc:
        raise read_error(exc, shard.path, "read the Parquet footer of", storage_options) from exc
    if shard.expect is not None:
        _check_expected(schema, shard.expect, shard.path)
    check_columns(schema, columns, shard.path)
    return fragment, columns, expression


def _check_expected(schema: pa.Schema, expect: SchemaCheck, uri: str) -> None:
    """The planning checks, for a shard whose footer was first read here."""
    columns = None if expect.columns is None else list(expect.columns)
    check_columns(schema, columns, uri)
    found = projected(schema, columns)
    if [(f.name, f.type) for f in found] != [(f.name, f.type) for f in expect.schema]:
        raise SchemaError(
            f"mismatched schemas: {redact(uri)} differs from {redact(expect.sampled_from)}: "
            f"{schema_diff(expect.schema, found)}; every file of a source must have the same "
            "columns and types (or pass columns=[...] that they share)")
