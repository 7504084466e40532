"""Parquet sources: plan shards from footers, read a shard into Arrow, stream its batches.

::

    plan_shards(uri | [uri, ...])
      1. list      one listing per URI (a single LIST call per 1,000 keys on S3, parsed by
                   pyarrow's C++ client; globs through fsspec), keeping Parquet files and
                   skipping names that start with "_" or "." (temp files, manifests, _SUCCESS)
      2. footers   read in parallel on a thread pool; only the footer of each file is fetched,
                   with pyarrow.parquet alone (pyarrow.dataset imports pandas: ~0.3 s in the
                   driver), except with filters and for many files on S3: see `_read_footer`.
                   Many files sharded by file, with no filters, read a sample of footers
                   only (see `_sampled_plan`), as Ray Data estimates from a sample
      3. check     every file has the requested columns; all files agree on their schema
      4. split     one shard per file, or per run of row groups of about `target_rows`; row
                   groups whose statistics rule out `filters` are dropped here already
      → [Shard(index, path, row_groups, num_rows, num_bytes, file_size, expect), ...]

    read_shard(shard)  / iter_batches(shard, batch_size)
      a pyarrow.dataset fragment over the shard's row groups: column projection and filter
      push-down (statistics, then rows); pre-buffering coalesces the needed column chunks
      into a few large range requests, so S3 reads fetch only the projected columns.

A `Shard` is small, frozen and picklable, and carries no credentials: a task on another process
reads it with the same `storage_options` (or the same AWS environment) as the planner.
`filters` are a ``pyarrow.compute.Expression`` or the DNF list form of
``pyarrow.parquet.read_table`` (``[("passenger_count", ">", 2)]``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .exceptions import ConnectorError, SchemaError, SourceError
from .storage import (Location, arrow_filesystem, classify, fsspec_filesystem, parse_uri, redact,
                      wrap_error)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

__all__ = ["SchemaCheck", "Shard", "iter_batches", "plan_shards", "read_shard"]

ShardBy = Literal["file", "row_group"]
Filters = Any  # pyarrow.compute.Expression | list[tuple] | list[list[tuple]] | None

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
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

Footers = Literal["auto", "all"]


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


@dataclass(frozen=True)
class _Footer:
    """What planning needs from one file's footer."""

    uri: str
    size: int
    schema: pa.Schema
    rows: tuple[int, ...]  # per row group
    nbytes: tuple[int, ...]  # compressed bytes of the projected columns, per row group
    selected: tuple[int, ...]  # row groups that may hold rows passing the filters


# --------------------------------------------------------------------------- planning


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
    columns = _check_column_names(columns)
    expression = to_expression(filters)

    files: dict[str, int] = {}  # URI -> size, in listing order, without duplicates
    for one in uris:
        for file_uri, size in _list_parquet(one, storage_options):
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
    expect = SchemaCheck(_projected(first.schema, columns),
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


def _check_column_names(columns: Sequence[str] | None) -> list[str] | None:
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


def _list_parquet(uri: str, storage_options: dict | None) -> list[tuple[str, int]]:
    """(URI, size) of each Parquet file at `uri`, sorted within a folder or glob."""
    location = parse_uri(uri)
    try:
        if location.protocol == "s3" and not _is_glob(location.path):
            root, files = _list_arrow(uri, storage_options)  # C++ parses large listings faster
        else:
            root, files = _list_fsspec(uri, storage_options)
    except ConnectorError:
        raise
    except Exception as exc:
        if classify(exc) == "not_found":
            raise SourceError(_missing_message(location, uri, storage_options)) from exc
        raise wrap_error(exc, uri, "list Parquet files at",
                         storage_options=storage_options) from exc
    if files is None:
        raise SourceError(_missing_message(location, uri, storage_options))
    if root is None:  # `uri` is one file: take it whatever its name
        return [(location.uri(name), size) for name, size in files.items()]
    visible = {n: size for n, size in files.items() if not _hidden(n, root)}
    parquet = sorted(n for n in visible if _looks_parquet(n))
    if not parquet:
        found = ", ".join(os.path.basename(n) for n in sorted(visible)[:5]) or "nothing"
        raise SourceError(
            f"no Parquet files under {redact(uri)}: expected files named *.parquet (names "
            f"starting with '_' or '.' are skipped), found {len(visible)} other file(s): {found}")
    return [(location.uri(n), visible[n]) for n in parquet]


# (folder or glob root, or None when the URI is one file; file name -> size, or None if missing)
Listing = tuple[str | None, dict[str, int] | None]


def _list_fsspec(uri: str, storage_options: dict | None) -> Listing:
    fs, location = fsspec_filesystem(uri, storage_options)
    path = location.path
    if _is_glob(path):
        return _glob_root(path), _sizes(fs.glob(path, detail=True))
    if not path.endswith("/"):
        info = fs.info(path)
        if info["type"] == "file":
            return None, {info.get("name") or path: int(info["size"])}
    files = _sizes(fs.find(path, detail=True))
    if not files and not fs.exists(path):
        return path, None
    return path, files


def _sizes(entries: dict[str, dict]) -> dict[str, int]:
    return {name: int(info["size"]) for name, info in entries.items()
            if info.get("type") != "directory"}


def _list_arrow(uri: str, storage_options: dict | None) -> Listing:
    from pyarrow import fs as pafs

    fs, location = arrow_filesystem(uri, storage_options)
    path = location.path
    if not path.endswith("/"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return None, {info.path: info.size}
        if info.type == pafs.FileType.NotFound:
            return path, None
    root = path.rstrip("/")
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return root, {e.path: e.size for e in entries if e.type == pafs.FileType.File}


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _glob_root(path: str) -> str:
    head = path
    while _is_glob(head):
        head = head.rsplit("/", 1)[0] if "/" in head else ""
    return head


def _hidden(name: str, root: str) -> bool:
    relative = name[len(root.rstrip("/")):] if name.startswith(root.rstrip("/")) else name
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def _looks_parquet(name: str) -> bool:
    base = os.path.basename(name)
    return base.lower().endswith(PARQUET_SUFFIXES) or "." not in base


def _exists(fs: Any, path: str) -> bool:
    try:
        return fs.exists(path)
    except Exception:  # an error here only changes the wording of the error we raise
        return False


def _missing_message(location: Location, uri: str, storage_options: dict | None) -> str:
    if location.protocol == "s3" and location.bucket:
        fs, _ = fsspec_filesystem(uri, storage_options)
        if not _exists(fs, location.bucket):
            return (f"Parquet source {redact(uri)} not found: bucket {location.bucket!r} does "
                    "not exist (or is not visible with these credentials)")
    return f"Parquet source {redact(uri)} not found: no such file, folder or prefix"


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
            fragment = _fragment(uri, None, size, storage_options)
            fragment.ensure_complete_metadata()
            metadata, schema = fragment.metadata, fragment.physical_schema
    except Exception as exc:
        raise _read_error(exc, uri, "read the Parquet footer of", storage_options) from exc
    _check_columns(schema, columns, uri)
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
                          f"{_first_line(exc)}; columns in the file: {schema.names}") from exc
    return tuple(rg.id for piece in pieces for rg in piece.row_groups)


def _check_columns(schema: pa.Schema, columns: Sequence[str] | None, uri: str) -> None:
    if not columns:
        return
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise SchemaError(
            f"{redact(uri)} has no column {', '.join(map(repr, missing))}: expected the "
            f"requested columns {list(columns)}, found {schema.names}")


def _check_schemas(footers: list[_Footer], columns: list[str] | None) -> None:
    """All files must agree on the types of the columns that will be read."""
    if len(footers) < 2:
        return
    first = footers[0]
    reference = _projected(first.schema, columns)
    for other in footers[1:]:
        schema = _projected(other.schema, columns)
        # Names and types only: nullability and metadata differ between writers harmlessly.
        if [(f.name, f.type) for f in schema] != [(f.name, f.type) for f in reference]:
            raise SchemaError(
                f"mismatched schemas: {redact(other.uri)} differs from {redact(first.uri)}: "
                f"{_schema_diff(reference, schema)}; every file of a source must have the "
                "same columns and types (or pass columns=[...] that they share)")


def _projected(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    import pyarrow as pa

    if columns is None:
        return schema.remove_metadata()
    return pa.schema([schema.field(c) for c in columns])


def _schema_diff(expected: pa.Schema, found: pa.Schema) -> str:
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


# --------------------------------------------------------------------------- reading


def read_shard(shard: Shard, *, columns: Sequence[str] | None = None, filters: Filters = None,
               storage_options: dict | None = None) -> pa.Table:
    """The shard's rows as one Arrow table, with only `columns` and only rows passing `filters`."""
    fragment, columns, expression = _prepare(shard, columns, filters, storage_options)
    try:
        return fragment.to_table(columns=columns, filter=expression, use_threads=True)
    except Exception as exc:
        raise _read_error(exc, shard.path, "read", storage_options) from exc


def iter_batches(shard: Shard, *, batch_size: int = 65536, columns: Sequence[str] | None = None,
                 filters: Filters = None, storage_options: dict | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """The shard's rows as record batches of exactly `batch_size` rows (the last may be short)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, found {batch_size!r}")
    fragment, columns, expression = _prepare(shard, columns, filters, storage_options)
    try:
        batches = fragment.to_batches(columns=columns, filter=expression, batch_size=batch_size,
                                      use_threads=True)
        yield from rebatch(batches, batch_size)
    except ConnectorError:
        raise
    except Exception as exc:
        raise _read_error(exc, shard.path, "read", storage_options) from exc


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
    columns = _check_column_names(columns)
    expression = to_expression(filters)
    fragment = _fragment(shard.path, shard.row_groups, shard.file_size, storage_options)
    try:
        schema = fragment.physical_schema  # reads the footer once; the scan reuses it
    except Exception as exc:
        raise _read_error(exc, shard.path, "read the Parquet footer of", storage_options) from exc
    if shard.expect is not None:
        _check_expected(schema, shard.expect, shard.path)
    _check_columns(schema, columns, shard.path)
    return fragment, columns, expression


def _check_expected(schema: pa.Schema, expect: SchemaCheck, uri: str) -> None:
    """The planning checks, for a shard whose footer was first read here."""
    columns = None if expect.columns is None else list(expect.columns)
    _check_columns(schema, columns, uri)
    found = _projected(schema, columns)
    if [(f.name, f.type) for f in found] != [(f.name, f.type) for f in expect.schema]:
        raise SchemaError(
            f"mismatched schemas: {redact(uri)} differs from {redact(expect.sampled_from)}: "
            f"{_schema_diff(expect.schema, found)}; every file of a source must have the same "
            "columns and types (or pass columns=[...] that they share)")


def _fragment(uri: str, row_groups: tuple[int, ...] | None, size: int | None,
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


def _read_error(exc: BaseException, uri: str, action: str,
                storage_options: dict | None) -> ConnectorError:
    """A pyarrow/OSError failure while reading `uri`, as the matching connectors error."""
    import pyarrow as pa

    if isinstance(exc, ConnectorError):
        return exc
    text = _first_line(exc)
    if isinstance(exc, pa.ArrowInvalid) and "No match for FieldRef" in text:
        return SchemaError(f"cannot {action} {redact(uri)}: {text}")
    if classify(exc) == "other" and (
            isinstance(exc, (pa.ArrowInvalid, pa.ArrowNotImplementedError))
            or any(word in text for word in ("Parquet", "parquet", "thrift", "magic"))):
        return SourceError(
            f"cannot {action} {redact(uri)}: not a valid Parquet file (corrupt or truncated?): "
            f"{text}")
    return wrap_error(exc, uri, action, not_found=SourceError, storage_options=storage_options)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
