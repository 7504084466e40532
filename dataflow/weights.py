"""Weights from files, memory-mapped: every worker maps the same page-cache pages, none copies them.

    driver (load_model)                                    each worker (once per run)
    ───────────────────                                    ──────────────────────────
    model.path ─► local_copy ─► sniff ─► map once (check) ─► MappedWeights(path, format, ...)
                  │  a local file: itself                    │  put: only this small recipe
                  │  s3://, gs://...: downloaded once to     ▼
                  │  the cache (size + ETag checked)         map_weights(path, format)
                  ▼                                          torch.save   torch.load(mmap=True)
             ~/.cache/dataflow/weights/<key>/<name>          safetensors  safe_open (torch), np.memmap
                                                             .npy         np.load(mmap_mode="r")
                                                             .npz         np.memmap at each member's
                                                                          offset (stored members)

A mapped file is read from disk once into the page cache; each worker's mapping points at those
same pages, so a 1 GB file held by two workers costs 1 GB (PSS 0.5 GB in each), and nothing is
written to fresh memory. The pages are private mappings (MAP_PRIVATE, or read-only): a worker
that writes to a tensor gets its own copy of that page, the file and the other workers are
untouched.

`.npz` archives: numpy cannot memory-map their members (`np.load(mmap_mode=...)` ignores the
mode for archives), but a member stored without compression (`np.savez`, not
`np.savez_compressed`) is a plain `.npy` inside the zip at a fixed offset, so it is mapped there
with `np.memmap`. Compressed members are expanded once into `.npy` files in the cache and mapped
from there.

A remote file lands in the cache once: a later run whose file has the same size and ETag maps the
cached copy again; a changed file is downloaded again. A lock file keeps two processes (two runs,
or workers of another machine fetching for themselves) from downloading it twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .exceptions import ModelError

MAPPED_FORMATS = ("torch", "safetensors", "numpy")  # what map_weights maps from the page cache

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local header: 30 bytes
# safetensors dtype names -> numpy (BF16 and FP8 have no numpy type: those files need torch)
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2",
                       "U8": "u1", "BOOL": "?"}


# ---------------------------------------------------------------------------------------------
# the recipe that travels to the workers


@dataclass(frozen=True)
class MappedWeights:
    """Maps a weights file in the worker that calls it; only this recipe is pickled.

    `path` is the local file (the driver's cache copy for a remote `source`). On a machine where
    it is missing (a Ray cluster's other nodes), a remote source is fetched into that machine's
    own cache the same way."""

    path: str
    format: str
    source: str
    storage_options: dict = field(default_factory=dict)
    size: int = -1

    def __call__(self) -> Any:
        path = self.path
        if not _same_size(path, self.size):
            if not _is_remote(self.source):
                found = "a file of another size" if os.path.exists(path) else "no such file"
                raise ModelError(f"model.path {self.source}: {found} on this machine "
                                 f"({os.uname().nodename}), {self.size} bytes when the run started; "
                                 f"give a path every worker can reach (a shared file system, or "
                                 f"s3://...), and leave the file alone while the pipeline runs")
            path = local_copy(self.source, self.storage_options)
        return map_weights(path, self.format, self.source)


# ---------------------------------------------------------------------------------------------
# format detection


def sniff(head: bytes, uri: str = "", zip_names: list[str] | None = None) -> str:
    """The format of a weights file from its first bytes (16 are enough), its name, and for a
    zip archive the names of its members: torch, torchscript, safetensors, numpy or pickle."""
    if head.startswith(_NPY_MAGIC):
        return "numpy"
    if head.startswith(_ZIP_MAGIC):
        names = zip_names or []
        if names and all(n.endswith(".npy") for n in names):
            return "numpy"  # .npz
        # TorchScript archives carry the compiled code; torch.save archives only data.pkl + data/.
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "numpy" if uri.endswith(".npz") else "torch"
    if _looks_like_safetensors(head) or (uri.endswith(".safetensors") and len(head) >= 8):
        return "safetensors"
    if uri.endswith((".pt", ".pth")) and head[:1] == b"\x80":
        return "torch"  # the legacy (non-zip) torch.save format
    return "pickle"


def _looks_like_safetensors(head: bytes) -> bool:
    # 8 bytes: the JSON header's length (little-endian), then the header itself, opening with '{'.
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n < 100 * 2**20 and head[8:9] == b"{"


def sniff_file(path: str, uri: str = "") -> str:
    """`sniff` for a local file: reads its first bytes, and a zip archive's member names."""
    with open(path, "rb") as f:
        head = f.read(16)
    names = None
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            names = []
    return sniff(head, uri or path, names)


def is_legacy_torch(path: str) -> bool:
    """A torch.save file in the pre-1.6 format (not a zip archive): it cannot be mapped."""
    with open(path, "rb") as f:
        return not f.read(4).startswith(_ZIP_MAGIC)


# ---------------------------------------------------------------------------------------------
# checking (in the driver, before any task: cheap, imports neither torch nor safetensors)


def check_weights(path: str, fmt: str, source: str = "") -> None:
    """Raise ModelError, naming the file, unless `path` looks like a sound `fmt` file: a torch.save
    archive with its data.pkl, a safetensors header whose tensors lie inside the file, readable
    .npy headers. Reads headers only, so the driver pays neither torch's import nor the weights."""
    what = source or path
    try:
        if fmt == "torch":
            with zipfile.ZipFile(path) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    raise ValueError("a zip archive without data.pkl: not written by torch.save")
        elif fmt == "safetensors":
            base, header = _safetensors_header(path)
            size = os.path.getsize(path)
            for name, info in header.items():
                if name != "__metadata__" and base + info["data_offsets"][1] > size:
                    raise ValueError(f"tensor {name!r} ends past the end of the file")
        elif fmt == "numpy":
            map_weights(path, fmt, source)  # np.memmap reads the headers only
        else:
            raise ValueError(f"format {fmt!r} is not one of {', '.join(MAPPED_FORMATS)}")
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model.path: {what} is not a valid {fmt} file: {type(exc).__name__}: {exc}") from exc


def _safetensors_header(path: str) -> tuple[int, dict]:
    """(offset of the data, {name: {dtype, shape, data_offsets}}): the format's own layout is an
    8-byte little-endian header length, then that many bytes of JSON, then the data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return 8 + n, header


# ---------------------------------------------------------------------------------------------
# mapping


def map_weights(path: str, fmt: str, source: str = "") -> Any:
    """The weights in the local file `path`, backed by the page cache (nothing is copied).

    torch: what torch.save saved (a module, a state dict...); safetensors: {name: tensor}, torch
    tensors when torch is installed, numpy arrays otherwise; numpy: an array (.npy) or
    {name: array} (.npz). Raises ModelError naming the file."""
    what = source or path
    try:
        if fmt == "torch":
            return _map_torch(path)
        if fmt == "safetensors":
            return _map_safetensors(path)
        if fmt == "numpy":
            return _map_npz(path, what) if zipfile.is_zipfile(path) else np.load(path, mmap_mode="r")
    except ModelError:
        raise
    except ModuleNotFoundError as exc:
        raise ModelError(f"model.path {what} ({fmt}) needs module {exc.name!r}: "
                         f"pip install {_PIP_NAMES.get(exc.name, exc.name)}") from exc
    except Exception as exc:
        raise ModelError(f"model.path: cannot map {what} as {fmt}: {type(exc).__name__}: {exc}") from exc
    raise ModelError(f"model.path {what}: format {fmt!r} cannot be memory-mapped; "
                     f"one of {', '.join(MAPPED_FORMATS)} can")


_PIP_NAMES = {"torch": "torch", "safetensors": "'ddsf[vision]' (or safetensors)"}


def _map_torch(path: str) -> Any:
    import torch

    # mmap=True: tensors' storages are views of the file (MAP_PRIVATE), read on first touch.
    # weights_only=False: a whole module may be saved, as `torch.save(model)` does; the file is
    # the pipeline author's own (the same trust as a pickle model.path).
    model = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    if hasattr(model, "eval"):
        model.eval()
    return model


def _map_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "safetensors"):
            raise
        return _map_safetensors_numpy(path)
    # safetensors maps the file (backend="mmap") and each tensor is a view of that mapping.
    return load_file(path, device="cpu")


def _map_safetensors_numpy(path: str) -> dict:
    """{name: read-only np.memmap} at the offsets the header gives. (safetensors.numpy reads the
    bytes into memory: a copy per worker.)"""
    base, header = _safetensors_header(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelError(f"model.path {path}: tensor {name!r} is {info['dtype']}, which numpy "
                             f"cannot hold; install torch to load it")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:
            out[name] = np.empty(shape, dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)
    return out


def _map_npz(path: str, what: str) -> dict:
    """{member name without .npy: array}; stored members mapped in place, compressed ones
    expanded once into the cache (see the module docstring)."""
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_STORED:
                out[name] = _map_npy_at(path, f, _member_offset(f, info))
            else:
                out[name] = np.load(_expand_member(path, z, info), mmap_mode="r")
    return out


def _member_offset(f, info: zipfile.ZipInfo) -> int:
    # The local header's name and extra field may differ in length from the central directory's.
    f.seek(info.header_offset)
    fields = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len


def _map_npy_at(path: str, f, offset: int) -> np.ndarray:
    """The .npy file that starts at `offset` of `path`, mapped."""
    f.seek(offset)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:  # 2.0 (headers over 64 KiB); 3.0 (utf-8 field names) has no public reader
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)
    if dtype.hasobject:
        raise ModelError(f"model.path {path}: an array of Python objects cannot be mapped")
    if not shape or 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                     order="F" if fortran else "C")


def _expand_member(path: str, z: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """A compressed .npz member decompressed (streamed, never whole in memory) into the cache,
    once per version of the archive."""
    st = os.stat(path)
    key = _key(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{info.filename}")
    dest = os.path.join(cache_dir(), key, os.path.basename(info.filename))
    with _locked(dest):
        if not _same_size(dest, info.file_size):
            tmp = f"{dest}.tmp-{os.getpid()}"
            with z.open(info) as src, open(tmp, "wb") as out:
                _copy(src, out)
            os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# remote files: one download into the cache


def cache_dir() -> str:
    """Where remote weights are kept: $DATAFLOW_CACHE_DIR, else ~/.cache/dataflow/weights."""
    base = os.environ.get("DATAFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "dataflow", "weights")
    return base


def local_copy(uri: str, storage_options: dict | None = None) -> str:
    """A local path holding the file `uri`: the file itself when it is local, else the cache's copy,
    downloaded now unless the cached one has the remote file's size and ETag."""
    if not _is_remote(uri):
        return uri[len("file://"):] if uri.startswith("file://") else uri
    import fsspec

    storage_options = dict(storage_options or {})
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options)
        info = fs.info(path)
    except Exception as exc:  # fsspec raises whatever the backend raises
        raise ModelError(f"model.path: cannot read {uri}: {type(exc).__name__}: {exc}") from exc
    size, etag = int(info.get("size") or 0), _etag(info)
    dest = os.path.join(cache_dir(), _key(uri), os.path.basename(path.rstrip("/")) or "weights")
    stamp = {"uri": uri, "size": size, "etag": etag}
    with _locked(dest):
        if _same_size(dest, size) and _read_stamp(dest) == stamp and etag:
            return dest
        tmp = f"{dest}.tmp-{os.getpid()}"
        try:
            fs.get_file(path, tmp)
        except Exception as exc:
            _remove(tmp)
            raise ModelError(f"model.path: cannot download {uri}: {type(exc).__name__}: {exc}") from exc
        if not _same_size(tmp, size):
            got = os.path.getsize(tmp)
            _remove(tmp)
            raise ModelError(f"model.path: downloaded {got} bytes of {uri}, expected {size} "
                             f"(the file changed during the download?); run again")
        os.replace(tmp, dest)
        _write_stamp(dest, stamp)
    return dest


def _etag(info: dict) -> str:
    for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified"):
        if info.get(k):
            return str(info[k]).strip('"')
    return ""


def _read_stamp(dest: str) -> dict | None:
    try:
        with open(dest + ".json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_stamp(dest: str, stamp: dict) -> None:
    tmp = f"{dest}.json.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(stamp, f)
    os.replace(tmp, dest + ".json")


@contextlib.contextmanager
def _locked(dest: str) -> Iterator[None]:
    """Holds `dest`.lock (flock) while the block runs: one process downloads, the others then
    find the file there. 0700/0600: weights may be private."""
    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    fd = os.open(dest + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _copy(src, dst, chunk: int = 8 * 2**20) -> None:
    while block := src.read(chunk):
        dst.write(block)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _same_size(path: str, size: int) -> bool:
    try:
        return size < 0 and os.path.exists(path) or os.path.getsize(path) == size
    except OSError:
        return False


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")
