"""Planning: Parquet files into shards, from their footers alone.

::

    plan_shards(uri | [uri, ...])
      1. list      list_parquet (see _listing), duplicates dropped, in listing order
      2. footers   read in parallel on a thread pool: see `_read_footer` for which reader; many
                   files sharded by file, with no filters, read a sample only (`_sampled_plan`)
      3. check     every file has the requested columns; all files agree on their schema
      4. split     one shard per file, or per run of row groups of about `target_rows`; row
                   groups whose statistics rule out `filters` are dropped here already
      → [Shard(index, path, row_groups, num_rows, num_bytes, file_size, expect), ...]

`_split` and `_group_row_groups` are pure; the I/O is in the listing and the footers.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._listing import list_parquet
from ._parquet import (Filters, SchemaCheck, Shard, check_column_names, check_columns,
                       first_line, open_fragment, projected, read_error, schema_diff,
                       to_expression)
from .exceptions import SchemaError, SourceError
from .storage import arrow_filesystem, parse_uri, redact

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

ShardBy = Literal["file", "row_group"]
Footers = Literal["auto", "all"]

_LOCAL_FOOTER_THREADS = 8
_REMOTE_FOOTER_THREADS = 32  # footers are small: latency-bound, so many in flight
# From this many S3 files on, footers are read through fragments (one GET each, after a one-off
# import of pyarrow.dataset and pandas, ~0.3 s of CPU); below it through pyarrow.parquet (a HEAD
# and a GET each, no import). Local moto serves a request in ~5 ms: 64 HEADs cost about the import.
_S3_FRAGMENT_FOOTERS_FROM = 64
# From this many files on, a plan by file without filters reads the footers of a sample of
# `_FOOTER_SAMPLE` files spread over the listing and estimates the rest from the listed sizes;
# each estimated shard checks its own footer against the sample's schema when it is read. On S3
# a footer is a request; on a local disk it is still ~1 ms of CPU (open, read, parse), which
# for 144 files is the longest step before the first task.
_SAMPLE_FOOTERS_FROM = 64
_FOOTER_SAMPLE = 16


@dataclass(frozen=True)
class _Footer:
    """What planning needs from one file's footer."""

    uri: str
    size: int
    schema: pa.Schema
    rows: tuple[int, ...]  # per row group
    nbytes: tuple[int, ...]  # compressed bytes of the projected columns, per row group
    selected: tuple[int, ...]  # row groups that may hold rows passing the filters


def plan_shards(uri: str | Sequence[str], *, columns: Sequence[str] | None = None,
                filters: Filters = None, shard_by: ShardBy = "file",
                target_rows: int | None = None, storage_options: dict | None = None,
                footers: Footers = "auto") -> list[Shard]:
    """Split Parquet files into shards, reading only their footers.

    `uri` is a file, a folder or prefix (read recursively), a glob, or a list of those.
    `shard_by="file"` gives one shard per file; `"row_group"` one per row group, or per run of
    consecutive row groups of about `target_rows` rows when it is given (`target_rows` is
    ignored with `shard_by="file"`). `columns` and
    `filters` are checked against every file and used to estimate bytes and drop row groups
    early; pass them to `read_shard` / `iter_batches` too.

    With `footers="auto"`, a plan by file, without filters, of 64 or more files reads the
    footers of 16 files spread over the listing, checks their schemas, and estimates the other
    shards' rows and bytes from their sizes (`Shard.estimated`); such a shard checks its own
    schema when it is read and raises `SchemaError` there. `footers="all"` reads every footer.
    """
    if shard_by not in ("file", "row_group"):
        raise ValueError(f"shard_by must be 'file' or 'row_group', found {shard_by!r}")
    if target_rows is not None and (not isinstance(target_rows, int) or target_rows < 1):
        raise ValueError(f"target_rows must be a positive integer or None, found {target_rows!r}")
    if footers not in ("auto", "all"):
        raise ValueError(f"footers must be 'auto' or 'all', found {footers!r}")
    uris = [uri] if isinstance(uri, str) else list(uri)
    if not uris:
        raise SourceError("plan_shards: expected a URI or a non-empty list of URIs, found []")
    columns = check_column_names(columns)
    expression = to_expression(filters)

    files: dict[str, int] = {}  # URI -> size, in listing order, without duplicates
    for one in uris:
        for file_uri, size in list_parquet(one, storage_options):
            files.setdefault(file_uri, size)
    if footers == "auto" and shard_by == "file" and expression is None \
            and len(files) >= _SAMPLE_FOOTERS_FROM:
        return _sampled_plan(files, columns, storage_options)
    read = _read_footers(files, columns, expression, storage_options)
    _check_schemas(read, columns)
    return _split(read, shard_by, target_rows, expression is not None)


def _sampled_plan(files: dict[str, int], columns: list[str] | None,
                  storage_options: dict | None) -> list[Shard]:
    """One shard per file, from the footers of a sample spread evenly over the listing.

    A footer costs one request, so 1,000 files cost 1,000 requests: seconds on a server that
    spends a few ms on each. Sizes come with the listing; rows and projected bytes per listed byte
    come from the sample; the sample's schema goes with every other shard, to be checked against
    its own footer when a task reads it (so a stray file fails its shard, naming itself).
    """
    uris = list(files)
    last = len(uris) - 1
    picked = sorted({round(i * last / (_FOOTER_SAMPLE - 1)) for i in range(_FOOTER_SAMPLE)})
    sample = {uris[i]: files[uris[i]] for i in picked}
    read = {f.uri: f for f in _read_footers(sample, columns, None, storage_options)}
    _check_schemas(list(read.values()), columns)
    first = read[uris[0]]
    expect = SchemaCheck(projected(first.schema, columns),
                         None if columns is None else tuple(columns), first.uri)
    listed = sum(f.size for f in read.values()) or 1
    rows_per_byte = sum(sum(f.rows) for f in read.values()) / listed
    bytes_per_byte = sum(sum(f.nbytes) for f in read.values()) / listed
    shards = []
    for index, uri in enumerate(uris):
        footer = read.get(uri)
        if footer is not None:
            shards.append(_shard(index, footer, None))
        else:
            size = files[uri]
            shards.append(Shard(index=index, path=uri, row_groups=None,
                                num_rows=round(size * rows_per_byte),
                                num_bytes=round(size * bytes_per_byte), file_size=size,
                                expect=expect))
    return shards


def _read_footers(files: dict[str, int], columns: list[str] | None,
                  expression: pc.Expression | None, storage_options: dict | None
                  ) -> list[_Footer]:
    if not files:
        return []
    remote = not next(iter(files)).startswith("/")
    threads = min(len(files), _REMOTE_FOOTER_THREADS if remote else _LOCAL_FOOTER_THREADS)

    on_s3 = {uri for uri in files if parse_uri(uri).protocol == "s3"}
    many_on_s3 = len(on_s3) >= _S3_FRAGMENT_FOOTERS_FROM

    def read(item: tuple[str, int]) -> _Footer:
        fragment = expression is not None or (many_on_s3 and item[0] in on_s3)
        return _read_footer(item[0], item[1], columns, expression, storage_options, fragment)

    if threads <= 1:
        return [read(item) for item in files.items()]
    with ThreadPoolExecutor(threads, thread_name_prefix="connectors-footer") as pool:
        return list(pool.map(read, files.items()))


def _read_footer(uri: str, size: int, columns: list[str] | None,
                 expression: pc.Expression | None, storage_options: dict | None,
                 use_fragment: bool) -> _Footer:
    """One file's footer, through pyarrow.parquet or, with `use_fragment`, a fragment.

    Importing pyarrow.dataset also imports pandas (~0.3 s of CPU, on the critical path of
    every run's driver), so files are opened with pyarrow.parquet unless a fragment is needed
    or pays. Pruning row groups by `filters` needs one. Many files on S3 pay for one:
    pyarrow.parquet can only open a file by path, which costs a HEAD request for its size
    before the footer's ranged GET (planning 1,000 small objects on moto: 1.8 s -> 3.9 s),
    while a fragment is handed the listed size and sends the GET alone.
    """
    fragment = None
    try:
        if not use_fragment:
            metadata, schema = _parquet_footer(uri, storage_options)
        else:
            fragment = open_fragment(uri, None, size, storage_options)
            fragment.ensure_complete_metadata()
            metadata, schema = fragment.metadata, fragment.physical_schema
    except Exception as exc:
        raise read_error(exc, uri, "read the Parquet footer of", storage_options) from exc
    check_columns(schema, columns, uri)
    rows = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    nbytes = tuple(_row_group_bytes(metadata.row_group(i), columns) for i in range(len(rows)))
    selected = tuple(range(len(rows)))
    if fragment is not None and expression is not None and rows:
        selected = _prune(fragment, expression, schema, uri)
    return _Footer(uri, size, schema, rows, nbytes, selected)


def _parquet_footer(uri: str, storage_options: dict | None
                    ) -> tuple[pq.FileMetaData, pa.Schema]:
    import pyarrow.parquet as pq

    fs, location = arrow_filesystem(uri, storage_options)
    # Extension types off, as in the fragments that read the shards: a UUID or JSON column
    # written without an Arrow schema is then fixed_size_binary / string in both.
    with fs.open_input_file(location.path) as source, \
            pq.ParquetFile(source, arrow_extensions_enabled=False) as file:
        return file.metadata, file.schema_arrow


def _row_group_bytes(row_group: Any, columns: list[str] | None) -> int:
    wanted = None if columns is None else set(columns)
    total = 0
    for j in range(row_group.num_columns):
        chunk = row_group.column(j)
        if wanted is None or chunk.path_in_schema.split(".", 1)[0] in wanted:
            total += chunk.total_compressed_size
    return total


def _prune(fragment: ds.ParquetFileFragment, expression: pc.Expression, schema: pa.Schema,
           uri: str) -> tuple[int, ...]:
    try:
        pieces = fragment.split_by_row_group(expression, schema=schema)
    except Exception as exc:
        raise SchemaError(f"cannot apply filters {expression} to {redact(uri)}: "
                          f"{first_line(exc)}; columns in the file: {schema.names}") from exc
    return tuple(rg.id for piece in pieces for rg in piece.row_groups)


def _check_schemas(footers: list[_Footer], columns: list[str] | None) -> None:
    """All files must agree on the types of the columns that will be read."""
    if len(footers) < 2:
        return
    first = footers[0]
    reference = projected(first.schema, columns)
    for other in footers[1:]:
        schema = projected(other.schema, columns)
        # Names and types only: nullability and metadata differ between writers harmlessly.
        if [(f.name, f.type) for f in schema] != [(f.name, f.type) for f in reference]:
            raise SchemaError(
                f"mismatched schemas: {redact(other.uri)} differs from {redact(first.uri)}: "
                f"{schema_diff(reference, schema)}; every file of a source must have the "
                "same columns and types (or pass columns=[...] that they share)")


def _split(footers: list[_Footer], shard_by: ShardBy, target_rows: int | None,
           filtered: bool) -> list[Shard]:
    """Pure: footers to shards, numbered in order."""
    pieces: list[tuple[_Footer, tuple[int, ...] | None]] = []
    for footer in footers:
        if filtered and not footer.selected:
            continue  # statistics prove no row passes the filters
        if shard_by == "file":
            whole = footer.selected == tuple(range(len(footer.rows)))
            pieces.append((footer, None if whole else footer.selected))
        else:
            pieces.extend((footer, group) for group in
                          _group_row_groups(footer.selected, footer.rows, target_rows))
    return [_shard(index, footer, groups) for index, (footer, groups) in enumerate(pieces)]


def _group_row_groups(selected: tuple[int, ...], rows: tuple[int, ...],
                      target_rows: int | None) -> list[tuple[int, ...]]:
    """Consecutive runs of row groups, each closed before it would pass `target_rows`."""
    if target_rows is None:
        return [(i,) for i in selected]
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    current_rows = 0
    for i in selected:
        if current and current_rows + rows[i] > target_rows:
            groups.append(tuple(current))
            current, current_rows = [], 0
        current.append(i)
        current_rows += rows[i]
    if current:
        groups.append(tuple(current))
    return groups


def _shard(index: int, footer: _Footer, groups: tuple[int, ...] | None) -> Shard:
    chosen = range(len(footer.rows)) if groups is None else groups
    return Shard(index=index, path=footer.uri, row_groups=groups,
                 num_rows=sum(footer.rows[i] for i in chosen),
                 num_bytes=sum(footer.nbytes[i] for i in chosen), file_size=footer.size)
