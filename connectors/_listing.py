"""Listing: which Parquet files a URI names, with their sizes, in one listing call.

::

    list_parquet("s3://bucket/data/")   ──► [("s3://bucket/data/a.parquet", 1234), ...]
      a file            itself, whatever its name
      a folder, prefix  every file below, recursively, sorted; on S3 one LIST per 1,000 keys
                        parsed by pyarrow's C++ client (faster for large listings)
      a glob            through fsspec
    names starting with "_" or "." below the root are skipped (temp files, manifests, _SUCCESS);
    a missing source or bucket, or a folder without Parquet files, is a SourceError saying so.
"""

from __future__ import annotations

import os
from typing import Any

from .exceptions import ConnectorError, SourceError
from .storage import (Location, arrow_filesystem, classify, fsspec_filesystem, parse_uri, redact,
                      wrap_error)

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def list_parquet(uri: str, storage_options: dict | None) -> list[tuple[str, int]]:
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
