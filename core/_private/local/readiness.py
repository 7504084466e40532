"""Waiting for objects to be ready: what `get` and `wait` block on, under the engine's lock.

The io thread wakes every waiter (`cond.notify_all`) once per batch of worker messages, so a
get of a 10k-task flood wakes some 250 times. Each wake-up looks again only at what it has not
seen ready yet: a get scans from the first object still pending (objects mostly become ready in
the order their tasks were submitted), a wait filters the ones still pending. A get of n objects
takes ~n checks in all, where a full scan per wake-up took ~n per wake-up, under the lock the io
thread needs (a no-op flood ran 9% faster without it: benchmarks/RESULTS.md).

An object seen ready can be pending again (lost and being rebuilt, or an actor's restart): a
get or wait that waited looks at all of them once more before it returns.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from core._private.tasks.state import Obj
from core.exceptions import GetTimeoutError


def wait_ready(objects: dict[bytes, Obj], oids: list[bytes], num: int, deadline: float | None,
               cond: threading.Condition, missing: Callable[[bytes], BaseException]) -> None:
    """Block (on `cond`, whose lock the caller holds) until `num` of `oids` are ready (not
    pending), or raise GetTimeoutError at `deadline`, or `missing(oid)` for an unknown object."""
    unknown = next((oid for oid in oids if oid not in objects), None)
    if unknown is not None:
        raise missing(unknown)
    pending, at, waited = oids, 0, False
    while True:
        try:
            if num == len(oids):
                at = first_pending(objects, oids, at)
                enough = at == len(oids)
            else:
                pending = still_pending(objects, pending)
                enough = len(oids) - len(pending) >= num
        except KeyError as gone:   # freed meanwhile
            raise missing(gone.args[0]) from None
        if enough and waited:   # seen ready over several wake-ups: look at all once more
            pending, at, waited = oids, 0, False
            continue
        if enough:
            return
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            late = [oid.hex() for oid in oids if objects[oid].status == "pending"]
            raise GetTimeoutError(
                f"{len(late)} of {len(oids)} objects not ready after the timeout "
                f"(first: {late[0]}); raise `timeout` or check the tasks that make them")
        cond.wait(remaining if remaining is None else min(remaining, 1.0))
        waited = True


def first_pending(objects: dict[bytes, Obj], oids: list[bytes], start: int) -> int:
    """The index of the first of `oids[start:]` still pending (len(oids) if none is)."""
    for i in range(start, len(oids)):
        if objects[oids[i]].status == "pending":
            return i
    return len(oids)


def still_pending(objects: dict[bytes, Obj], oids: list[bytes]) -> list[bytes]:
    """Those of `oids` still pending, in order."""
    return [oid for oid in oids if objects[oid].status == "pending"]
