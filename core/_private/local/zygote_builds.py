"""The zygote's side of `core.build`: run a factory and keep its value in `worker.BUILT` (the
workers forked afterwards inherit it), write a kept value into a store segment once, drop one;
and errors packed for the reply (pickled apart, so a driver that cannot unpickle one still
reads its text)."""

from __future__ import annotations

import os
import pickle
from typing import Any

from core._private.local import messages as M
from core._private.local import worker
from core._private.local import zygote_imports as imports
from core._private.objects import shm
from core._private.objects.serialization import deserialize, serialize
from core.exceptions import CoreError, ObjectLostError, TaskError


def pack_error(exc: BaseException) -> tuple[bytes | None, str]:
    """An error for a reply: pickled apart from the message (so a driver that cannot unpickle it
    still reads the rest, and its text), and small enough for one packet."""
    text = str(exc)[:8000]
    try:
        blob = pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - the text is what is left
        blob = None
    return (blob if blob is not None and len(blob) < 40000 else None), text


def unpack_error(packed: tuple[bytes | None, str], name: str) -> BaseException:
    blob, text = packed
    if blob is not None:
        try:
            return pickle.loads(blob)
        except Exception:  # noqa: BLE001 - e.g. an exception class this process cannot import
            pass
    return TaskError.for_cause(name, RuntimeError(text), text)


def serve_built(msg: Any, fds: list[int]) -> tuple[Any, bool]:
    """core.build's messages: run a factory and keep its value, copy one into the store, drop one.
    Returns (the reply, or None for a drop; whether a factory left threads running here)."""
    threads = False
    if msg.kind == "drop":
        worker.BUILT.pop(msg.oid, None)
        return None, threads
    if msg.kind == "materialize":
        reply: tuple = M.ZygoteMaterialized("materialized", msg.oid, _write_into(msg.oid, msg.segment, msg.size))
    else:
        before = imports.threads()         # the preload may be importing meanwhile
        size, error = 0, None
        try:
            with open(fds.pop(0), "rb") as f:
                f.seek(0)                       # the driver's writes moved the shared offset
                fn, args, kwargs = deserialize(f.read())
            value = fn(*args, **kwargs)
            size = serialize(value).total_size  # what a copy in the store takes (never written here)
            worker.BUILT[msg.oid] = value
            del value
        except BaseException as exc:  # noqa: BLE001 - the driver raises it
            error = pack_error(worker.error_payload(msg.name, exc))
        threads = bool(imports.started_since(before))
        reply = M.ZygoteBuilt("built", msg.oid, size, error, threads)
    for fd in fds:
        os.close(fd)
    return reply, threads


def _write_into(oid: bytes, segment: str, size: int) -> tuple | None:
    """Serialize a built value straight into a store segment (its one copy there)."""
    try:
        ser = serialize(worker.BUILT[oid])
        if ser.total_size > size:
            raise CoreError(f"its layout takes {ser.total_size} bytes now, {size} when it was built")
        mm = shm.map_segment(segment, "write", size)
        try:
            dest = memoryview(mm)
            ser.write_to(dest[:ser.total_size])
            dest.release()
        finally:
            mm.close()
        return None
    except BaseException as exc:  # noqa: BLE001 - the driver raises it
        how = "it was dropped" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        return pack_error(ObjectLostError(f"object {oid.hex()} (core.build) could not be written into "
                                           f"the store by the zygote: {how}"))
