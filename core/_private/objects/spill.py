"""Spill targets: where the object store writes objects that do not fit in shared memory.

How data moves:

    ObjectStore picks LRU victims ──► SpillTarget.write_batch([seg views]) ──► one spill file
        (segments, no copy)              per object: offset, length, crc32s     (many objects)
    ObjectStore.view(spilled) ──► SpillTarget.read_into(location, segment view) ── checksum checked
                                     bytes land directly in the new segment

Targets are picked by URL scheme from `_TARGETS` (fsspec-style registry): a local folder (a path
or file://) or S3 (s3://bucket/prefix, through smart_open with ONE boto3 client reused for every
file, multipart writes with `buffer_size` parts). Every target writes into a folder/prefix of its
own per session (`.../ddsf-<token>/`), owner-only locally (0700 folder, 0600 files), removed at
`close()`; the session manifest lists it so a dead driver's files are cleaned by the next session.

Configuration (`spill=` of `core.init`) is validated here, before anything runs: None, a path or
URI string, or {"uri", "buffer_size", "min_spilling_size"}. Unknown keys, bad URIs, and targets
that cannot be written (probed by writing and deleting a small file) raise `ConfigError` naming
the key or URI.

A spill file is a plain concatenation of object layouts; the index (offset, length, checksum) is
kept in memory by the store, because spill files die with the session. Checksums are crc32 (zlib,
~2.3 GB/s per core here, releasing the GIL) of each 16 MiB chunk, computed by two helper threads
while the caller writes or reads the next chunks: one crc32 over a whole object would be
sequential and, at page-cache speeds (4 GB/s), the slowest step. A mismatch, a short read or a
missing file raise `ObjectLostError`.
"""

from __future__ import annotations

import abc
import os
import re
import shutil
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core._private.objects import shm
from core.exceptions import ConfigError, CoreError, ObjectLostError
from core.units import parse_size

__all__ = [
    "SpillConfig", "SpillTarget", "SpillFile", "SpillLocation", "LocalSpillTarget", "S3SpillTarget",
    "parse_spill_config", "open_spill_target",
]

MiB = 2**20
DEFAULT_BUFFER_SIZE = 16 * MiB
DEFAULT_MIN_SPILLING_SIZE = 100 * MiB
S3_MIN_PART_SIZE = 5 * MiB                 # S3 rejects smaller multipart parts
_IO_CHUNK = 16 * MiB                       # unit of I/O and of checksumming
_CRC_THREADS = 2
_CONFIG_KEYS = ("uri", "buffer_size", "min_spilling_size")


# ─── configuration ──────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class SpillConfig:
    uri: str | None = None                 # None: a session folder under the temp dir
    buffer_size: int = DEFAULT_BUFFER_SIZE
    min_spilling_size: int = DEFAULT_MIN_SPILLING_SIZE

    @property
    def scheme(self) -> str:
        return _scheme(self.uri)


def _scheme(uri: str | None) -> str:
    if uri is None:
        return "file"
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return m.group(1).lower() if m else "file"


def parse_spill_config(spill: Any) -> SpillConfig:
    """Validate `spill` (None, a path/URI string, or a dict); no I/O. Raises ConfigError."""
    if spill is None:
        return SpillConfig()
    if isinstance(spill, SpillConfig):
        return spill
    if isinstance(spill, os.PathLike):
        spill = os.fspath(spill)
    if isinstance(spill, str):
        spill = {"uri": spill}
    if not isinstance(spill, dict):
        raise ConfigError(
            f"spill: expected None, a folder path, a URI such as 's3://bucket/prefix', or a dict "
            f"with keys {list(_CONFIG_KEYS)}; got {type(spill).__name__}")
    unknown = sorted(set(spill) - set(_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"spill: unknown key(s) {unknown}; allowed keys are {list(_CONFIG_KEYS)}")
    uri = spill.get("uri")
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if uri is not None and (not isinstance(uri, str) or not uri.strip()):
        raise ConfigError(f"spill.uri: expected a folder path or a URI string, got {uri!r}")
    buffer_size = parse_size(spill.get("buffer_size", DEFAULT_BUFFER_SIZE), "spill.buffer_size")
    min_spilling = parse_size(spill.get("min_spilling_size", DEFAULT_MIN_SPILLING_SIZE), "spill.min_spilling_size")
    scheme = _scheme(uri)
    if scheme not in _TARGETS:
        raise ConfigError(
            f"spill.uri {uri!r}: unsupported scheme {scheme!r}; use a local folder, file://..., "
            f"or {', '.join(s + '://...' for s in _TARGETS if s != 'file')}")
    _TARGETS[scheme].validate_uri(uri, buffer_size)
    return SpillConfig(uri=uri, buffer_size=buffer_size, min_spilling_size=min_spilling)


def open_spill_target(spill: Any, session) -> "SpillTarget":
    """Validate the configuration, create the target's session folder/prefix, probe that it
    can be written, and record it in the session manifest. Raises ConfigError."""
    config = parse_spill_config(spill)
    return _TARGETS[config.scheme](config, session)


# ─── spill files and locations ──────────────────────────────────────────────────────────────────
class SpillFile:
    """One spill file. `live` counts its objects not yet freed or restored-and-dropped; the store
    deletes the file when it reaches zero."""

    __slots__ = ("url", "size", "live")

    def __init__(self, url: str, size: int, live: int):
        self.url, self.size, self.live = url, size, live

    def __repr__(self) -> str:
        return f"SpillFile({self.url}, {self.size} bytes, {self.live} live)"


@dataclass(frozen=True, slots=True)
class SpillLocation:
    file: SpillFile
    offset: int
    length: int
    crcs: tuple[int, ...]                  # crc32 of each _IO_CHUNK of the object

    @property
    def url(self) -> str:
        return f"{self.file.url}#offset={self.offset}&length={self.length}"


# ─── checksum pipelining ────────────────────────────────────────────────────────────────────────
_crc_pool: ThreadPoolExecutor | None = None
_crc_pool_lock = threading.Lock()


def _crc_executor() -> ThreadPoolExecutor:
    global _crc_pool
    with _crc_pool_lock:
        if _crc_pool is None:
            _crc_pool = ThreadPoolExecutor(_CRC_THREADS, thread_name_prefix="ddsf-crc")
        return _crc_pool


def _reset_after_fork() -> None:
    global _crc_pool
    _crc_pool = None


os.register_at_fork(after_in_child=_reset_after_fork)


class _ChunkCrcs:
    """crc32 of each chunk fed, computed in the helper threads (zlib releases the GIL) while
    the caller does the I/O of the next chunk."""

    def __init__(self):
        self._futures: list[Future] = []

    def feed(self, chunk: memoryview) -> None:
        self._futures.append(_crc_executor().submit(zlib.crc32, chunk))

    def result(self) -> tuple[int, ...]:
        return tuple(f.result() for f in self._futures)


def _write_all(f, chunk: memoryview) -> None:
    """Write every byte: an unbuffered file's write may write fewer (a disk filling up), and the
    next write then raises the real error (ENOSPC) instead of leaving a short spill file."""
    while chunk.nbytes:
        n = f.write(chunk)
        if n is None or n >= chunk.nbytes:
            return
        chunk = chunk[n:]


def _chunks(mv: memoryview, size: int = _IO_CHUNK):
    for start in range(0, mv.nbytes, size):
        yield mv[start:start + size]


# ─── the interface ──────────────────────────────────────────────────────────────────────────────
class SpillTarget(abc.ABC):
    """Where spilled objects go. Subclasses implement four byte-level operations; batching,
    checksums and error wrapping live here."""

    scheme: str = ""

    def __init__(self, config: SpillConfig, session):
        self.config = config
        self.session = session
        self.buffer_size = config.buffer_size
        self._counter = 0
        self._lock = threading.Lock()
        self.url = ""                       # the session's folder/prefix, set by subclasses

    # -- subclass hooks --
    @classmethod
    def validate_uri(cls, uri: str | None, buffer_size: int) -> None:
        """Static checks of the URI (no I/O)."""

    @abc.abstractmethod
    def _open_write(self, url: str): ...            # a binary file object

    @abc.abstractmethod
    def _read_into(self, url: str, offset: int, dest: memoryview) -> int: ...   # bytes read

    @abc.abstractmethod
    def _delete(self, url: str) -> None: ...

    @abc.abstractmethod
    def _delete_all(self) -> None: ...

    # -- used by the store --
    def _next_url(self) -> str:
        with self._lock:
            self._counter += 1
            return f"{self.url}/spill-{self._counter:06d}.bin"

    def write_batch(self, items: Sequence[memoryview]) -> list[SpillLocation]:
        """Write the objects into one new file; return where each one is."""
        url = self._next_url()
        offsets, crcs, pos = [], [], 0
        try:
            with self._open_write(url) as f:
                for mv in items:
                    crc = _ChunkCrcs()
                    for chunk in _chunks(mv):
                        crc.feed(chunk)
                        _write_all(f, chunk)
                    offsets.append(pos)
                    crcs.append(crc.result())
                    pos += mv.nbytes
        except CoreError:
            raise
        except Exception as exc:
            self._delete_quietly(url)
            raise CoreError(f"spilling {len(items)} objects ({pos} bytes) to {url} failed: {exc}") from exc
        file = SpillFile(url, pos, len(items))
        return [SpillLocation(file, off, mv.nbytes, crc) for off, mv, crc in zip(offsets, items, crcs)]

    def read_into(self, loc: SpillLocation, dest: memoryview, oid_hex: str = "?") -> None:
        """Read one object back into `dest` and verify its checksum. ObjectLostError if the file
        is gone, short, or the bytes do not match what was written."""
        if dest.nbytes < loc.length:
            raise CoreError(f"object {oid_hex}: restore buffer of {dest.nbytes} bytes < {loc.length}")
        try:
            n = self._read_into(loc.file.url, loc.offset, dest[:loc.length])
        except ObjectLostError:
            raise
        except FileNotFoundError as exc:
            raise ObjectLostError(
                f"object {oid_hex} was spilled to {loc.file.url}, which no longer exists") from exc
        except Exception as exc:
            raise ObjectLostError(f"object {oid_hex}: reading spill file {loc.url} failed: {exc}") from exc
        if n != loc.length:
            raise ObjectLostError(
                f"object {oid_hex}: spill file {loc.file.url} is truncated: expected {loc.length} "
                f"bytes at offset {loc.offset}, read {n}")

    def _verify(self, crcs: tuple[int, ...], loc: SpillLocation, oid_hex: str) -> None:
        if crcs != loc.crcs:
            bad = next((i for i, (a, b) in enumerate(zip(crcs, loc.crcs)) if a != b), 0)
            raise ObjectLostError(
                f"object {oid_hex}: spill file {loc.url} is corrupt (crc32 mismatch in bytes "
                f"{bad * _IO_CHUNK}..{min((bad + 1) * _IO_CHUNK, loc.length)} of the object); "
                f"the object cannot be restored")

    def delete_file(self, file: SpillFile) -> None:
        self._delete_quietly(file.url)

    def _delete_quietly(self, url: str) -> None:
        try:
            self._delete(url)
        except Exception:
            pass                              # already gone; close() sweeps the rest

    def close(self) -> None:
        """Remove everything this session spilled."""
        try:
            self._delete_all()
        except Exception:
            pass

    def _probe(self) -> None:
        """Write, read back and delete a small file: fail at init, not at the first spill."""
        url = f"{self.url}/.probe"
        try:
            with self._open_write(url) as f:
                f.write(b"ddsf-probe")
            buf = bytearray(10)
            if self._read_into(url, 0, memoryview(buf)) != 10 or bytes(buf) != b"ddsf-probe":
                raise OSError("read back different bytes")
            self._delete(url)
        except Exception as exc:
            raise ConfigError(
                f"spill target {self.config.uri or self.url!r} is not writable: {exc}; check the "
                f"path/bucket exists and that you have write permission") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"


# ─── local folder ───────────────────────────────────────────────────────────────────────────────
class LocalSpillTarget(SpillTarget):
    """Files in `<folder>/ddsf-<token>/` (0700), each 0600. Reads use preadv straight into the
    destination segment."""

    scheme = "file"

    def __init__(self, config: SpillConfig, session):
        super().__init__(config, session)
        try:
            root = (Path(config.uri.removeprefix("file://")).expanduser() if config.uri
                    else shm.default_spill_root())
            root.mkdir(parents=True, exist_ok=True)
            folder = root.resolve() / f"ddsf-{session.token}"
            folder.mkdir(mode=0o700)
            os.chmod(folder, 0o700)
        except OSError as exc:
            raise ConfigError(f"spill.uri {config.uri!r}: cannot create a spill folder: {exc}") from exc
        self.url = str(folder)
        session.add_spill_location(self.url)
        self._probe()

    def _open_write(self, url: str):
        fd = os.open(url, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        return open(fd, "wb", buffering=0)

    def _read_into(self, url: str, offset: int, dest: memoryview) -> int:
        fd = os.open(url, os.O_RDONLY | os.O_CLOEXEC)
        try:
            total = 0
            while total < dest.nbytes:
                n = os.preadv(fd, [dest[total:total + _IO_CHUNK]], offset + total)
                if n == 0:
                    break
                total += n
            return total
        finally:
            os.close(fd)

    def read_into(self, loc: SpillLocation, dest: memoryview, oid_hex: str = "?") -> None:
        # Pipelined: read chunk i+1 while the helper thread sums chunk i.
        if dest.nbytes < loc.length:
            raise CoreError(f"object {oid_hex}: restore buffer of {dest.nbytes} bytes < {loc.length}")
        try:
            fd = os.open(loc.file.url, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ObjectLostError(
                f"object {oid_hex} was spilled to {loc.file.url}, which no longer exists") from exc
        crc = _ChunkCrcs()
        try:
            total = 0
            for chunk in _chunks(dest[:loc.length]):
                got = 0
                while got < chunk.nbytes:
                    n = os.preadv(fd, [chunk[got:]], loc.offset + total + got)
                    if n == 0:
                        raise ObjectLostError(
                            f"object {oid_hex}: spill file {loc.file.url} is truncated: expected "
                            f"{loc.length} bytes at offset {loc.offset}, read {total + got}")
                    got += n
                crc.feed(chunk)
                total += got
        except OSError as exc:
            raise ObjectLostError(f"object {oid_hex}: reading spill file {loc.url} failed: {exc}") from exc
        finally:
            os.close(fd)
        self._verify(crc.result(), loc, oid_hex)

    def _delete(self, url: str) -> None:
        os.unlink(url)

    def _delete_all(self) -> None:
        shutil.rmtree(self.url, ignore_errors=True)


# ─── S3 through smart_open ──────────────────────────────────────────────────────────────────────
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


class S3SpillTarget(SpillTarget):
    """Objects under `s3://bucket/prefix/ddsf-<token>/`, written by smart_open as multipart
    uploads of `buffer_size` parts, all through one boto3 client (connection pool reused)."""

    scheme = "s3"

    @classmethod
    def validate_uri(cls, uri: str | None, buffer_size: int) -> None:
        bucket, _ = _split_s3(uri)
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(f"spill.uri {uri!r}: expected s3://<bucket>[/prefix] with a valid bucket name, "
                              f"got bucket {bucket!r}")
        if buffer_size < S3_MIN_PART_SIZE:
            raise ConfigError(f"spill.buffer_size: S3 multipart parts must be at least {S3_MIN_PART_SIZE} "
                              f"bytes (5 MiB), got {buffer_size}")

    def __init__(self, config: SpillConfig, session):
        super().__init__(config, session)
        bucket, prefix = _split_s3(config.uri)
        self.bucket = bucket
        self.prefix = f"{prefix}/ddsf-{session.token}".lstrip("/")
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client = _make_s3_client()
        session.add_spill_location(self.url)
        self._probe()

    def _key(self, url: str) -> str:
        return _split_s3(url)[1]

    def _probe(self) -> None:
        # A direct head_bucket first: smart_open retries connection errors for a long time,
        # and its errors do not say whether the bucket, the endpoint or the credentials are wrong.
        endpoint = self.client.meta.endpoint_url
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            why = {"404": "the bucket does not exist", "NoSuchBucket": "the bucket does not exist",
                   "403": "access denied (check the AWS credentials)"}.get(
                code, f"cannot reach {endpoint} ({type(exc).__name__}: {exc})")
            raise ConfigError(
                f"spill target {self.config.uri!r} is not writable: {why}; set AWS_ENDPOINT_URL / "
                f"AWS credentials or pick another bucket") from exc
        super()._probe()

    def _open_write(self, url: str):
        import smart_open  # heavy and optional (S3 only): loaded at the first S3 spill

        return smart_open.open(url, "wb", compression="disable", transport_params={
            "client": self.client, "min_part_size": self.buffer_size})

    def _read_into(self, url: str, offset: int, dest: memoryview) -> int:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(url),
                                          Range=f"bytes={offset}-{offset + dest.nbytes - 1}")
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(url) from exc
            raise
        body, total = resp["Body"], 0
        while total < dest.nbytes:
            data = body.read(min(self.buffer_size, dest.nbytes - total))
            if not data:
                break
            dest[total:total + len(data)] = data
            total += len(data)
        body.close()
        return total

    def read_into(self, loc: SpillLocation, dest: memoryview, oid_hex: str = "?") -> None:
        super().read_into(loc, dest, oid_hex)
        crc = _ChunkCrcs()
        for chunk in _chunks(dest[:loc.length]):
            crc.feed(chunk)
        self._verify(crc.result(), loc, oid_hex)

    def _delete(self, url: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(url))

    def _delete_all(self) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound")


def _make_s3_client():
    """One client for the session, from the standard AWS environment (credentials, profile,
    region, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3)."""
    try:  # heavy and optional (S3 only): loaded when an S3 target is opened
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError("spilling to s3:// needs boto3: pip install 'smart_open[s3]'") from exc
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint,
        config=Config(max_pool_connections=16, connect_timeout=5, read_timeout=120,
                      retries={"max_attempts": 3, "mode": "standard"}))


_TARGETS: dict[str, Callable[..., SpillTarget]] = {"file": LocalSpillTarget, "s3": S3SpillTarget}
