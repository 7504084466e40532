"""The session's resources: what it has, what is free, and the one place that takes and gives back.

    _schedule ── acquire(need) ──► ResourceLedger ◄── release(need) ── task done, worker blocked
                                   total, available         or dead, actor gone

Every change goes through `acquire`/`release`, which check the invariant the rest of the engine
relies on: for every resource, 0 <= available <= total. A violation is a bookkeeping bug (a
release without its acquire, an acquire that did not fit), so it raises at once, naming the
resource and the amounts, instead of being hidden and showing up later as a session that runs
more tasks than it has CPUs, or none at all.
"""

from __future__ import annotations

from core._private.tasks.scheduler import EPS, fits

__all__ = ["ResourceLedger", "ResourceInvariantError"]


class ResourceInvariantError(AssertionError):
    """available < 0 or available > total for some resource: a bookkeeping bug in the engine."""


class ResourceLedger:
    def __init__(self, total: dict[str, float]) -> None:
        self.total = dict(total)
        self.available = dict(total)

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
