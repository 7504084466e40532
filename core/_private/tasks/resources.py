"""The session's resources: what it has, what is free, and the one place that takes and gives back.

    scheduler.plan ── hold(worker, need) ──► ResourceLedger ◄── unhold(worker) ── batch done,
    actor start  ──── acquire(need) ───────►  total, available,    release ────── worker blocked
    plan (GPU tasks) ─ take_gpus(n) ───────►  free GPU ids    ◄─── give_gpus ──── or dead, actor gone

Every change goes through `acquire`/`release`, which check the invariant the rest of the engine
relies on: for every resource, 0 <= available <= total. A violation is a bookkeeping bug (a
release without its acquire, an acquire that did not fit), so it raises at once, naming the
resource and the amounts, instead of being hidden and showing up later as a session that runs
more tasks than it has CPUs, or none at all.
"""

from __future__ import annotations

import math
from typing import Any

EPS = 1e-9

__all__ = ["ResourceLedger", "ResourceInvariantError", "fits", "hold", "unhold", "retake_shares"]


def fits(need: dict[str, float], available: dict[str, float]) -> bool:
    return all(available.get(k, 0.0) + EPS >= v for k, v in need.items())


class ResourceInvariantError(AssertionError):
    """available < 0 or available > total for some resource: a bookkeeping bug in the engine."""


class ResourceLedger:
    def __init__(self, total: dict[str, float]) -> None:
        self.total = dict(total)
        self.available = dict(total)
        self.free_gpus = list(range(int(total.get("GPU", 0))))   # device ids not handed out

    def fits(self, need: dict[str, float]) -> bool:
        return fits(need, self.available)

    def acquire(self, need: dict[str, float], what: str) -> None:
        """Take `need` for `what` (a task or actor, named in the error); it must fit."""
        if not fits(need, self.available):
            raise ResourceInvariantError(
                f"{what} takes {need} but only {self.available} is available (of {self.total})")
        for k, v in need.items():
            self.available[k] = self.available.get(k, 0.0) - v

    def release(self, need: dict[str, float], what: str) -> None:
        """Give back what `what` took; more than the total means it was given back twice."""
        for k, v in need.items():
            if self.available.get(k, 0.0) + v > self.total.get(k, 0.0) + EPS:
                raise ResourceInvariantError(
                    f"{what} gives back {k}={v:g} but {self.available.get(k, 0.0):g} of "
                    f"{self.total.get(k, 0.0):g} are already available: released twice")
        for k, v in need.items():
            self.available[k] = self.available.get(k, 0.0) + v

    def snapshot(self) -> dict[str, float]:
        return dict(self.available)

    def take_gpus(self, count: float) -> list[int]:
        """Device ids for a task asking for `count` GPUs (a fraction takes a whole id: the
        devices, unlike the GPU amount, are not shared). Returns [] when none is free."""
        if count <= 0:
            return []
        ids = self.free_gpus[: max(1, math.ceil(count))]
        del self.free_gpus[: len(ids)]
        return ids

    def give_gpus(self, ids: list[int]) -> None:
        self.free_gpus.extend(ids)


# ─── the share a task worker holds while it runs a batch ───────────────────────────────────────
# A worker record (local.worker_pool.WorkerProc) carries `held_need` (what its batch needs) and
# `holding` (that share is taken from the ledger now; not while it is blocked in a nested get).

def hold(ledger: ResourceLedger, worker: Any, need: dict[str, float], what: str) -> None:
    ledger.acquire(need, what)
    worker.held_need = need
    worker.holding = True


def unhold(ledger: ResourceLedger, worker: Any, owing: set, keep_need: bool = False) -> None:
    """Give back the worker's share if it holds it (once: a blocked worker already did)."""
    owing.discard(worker)
    if worker.holding:
        ledger.release(worker.held_need, f"worker {worker.wid}")
        worker.holding = False
    if not keep_need:
        worker.held_need = {}


def retake_shares(ledger: ResourceLedger, owing: set) -> None:
    """Workers back from a nested get/wait run again: they take their share back before any
    new task starts, each as soon as it fits (the CPU may have gone to a nested task)."""
    for worker in list(owing):
        if not worker.alive or worker.blocked or not worker.inflight or worker.holding:
            owing.discard(worker)
        elif ledger.fits(worker.held_need):
            owing.discard(worker)
            hold(ledger, worker, worker.held_need, f"worker {worker.wid}")
