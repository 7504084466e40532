"""Scheduling decisions as pure functions over plain values; the engine does the I/O.

Policy:
- Tasks start in submission order once their top-level ObjectRef arguments are ready.
- A task needs `{"CPU": num_cpus, "GPU": num_gpus, **resources}`; it starts when that fits in
  what is available. A task that could not fit even in an empty session is refused at submit.
- A worker runs one task at a time. For functions measured to be short (under `FAST_TASK`
  seconds on average), the queue is split across idle workers in batches, so one message and one
  reply carry many tasks: that is what makes thousands of tiny tasks per second possible.
- A worker running a task measured to be short (under `PIPELINE_TASK` on average, but not so
  short that it is batched) gets its next task while it runs this one: it starts it at once
  instead of waiting for a round trip through the driver (~1 ms per task). The next task waits at
  most one short task behind it.
- Admission: a task is sent only when its arguments are in memory or their restores fit in
  room that exists now (`admit`); otherwise it waits at the head of the queue until running
  tasks release their pins, as Ray's pull manager does.
- A worker blocked in `get`/`wait` inside a task gives its CPU back while it waits, and the pool
  may start another worker to use it (up to `max_workers`), so nested tasks cannot deadlock. It
  also hands back the task queued behind the one that blocked, which may be what it waits for.
"""

from __future__ import annotations

import math
from typing import Literal

FAST_TASK = 0.002        # seconds: below this a task is cheap enough to batch
MAX_BATCH = 128          # tasks in one TASKS message
PIPELINE_TASK = 0.1      # seconds: below this a busy worker gets its next task in advance
EPS = 1e-9


def demand(num_cpus: float, num_gpus: float, resources: dict[str, float] | None) -> dict[str, float]:
    """The resource vector a task or actor asks for."""
    need = {"CPU": float(num_cpus), "GPU": float(num_gpus)}
    for name, amount in (resources or {}).items():
        need[name] = need.get(name, 0.0) + float(amount)
    return {k: v for k, v in need.items() if v > 0}


def infeasible(need: dict[str, float], total: dict[str, float]) -> dict[str, tuple[float, float]]:
    """The resources `need` asks for beyond what the session has at all: {name: (asked, total)}."""
    return {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + EPS}


def fits(need: dict[str, float], available: dict[str, float]) -> bool:
    return all(available.get(k, 0.0) + EPS >= v for k, v in need.items())


def batch_size(avg_seconds: float | None, queued: int, idle_workers: int) -> int:
    """How many queued tasks of one function to hand one idle worker at once."""
    if avg_seconds is None or avg_seconds > FAST_TASK or queued <= 1:
        return 1
    share = math.ceil(queued / max(idle_workers, 1))
    return max(1, min(share, MAX_BATCH))


def pipelined(avg_seconds: float | None) -> bool:
    """Hand a busy worker its next task of this function in advance?"""
    return avg_seconds is not None and FAST_TASK < avg_seconds < PIPELINE_TASK


def pick_gpus(count: float, free_ids: list[int]) -> list[int]:
    """GPU ids for a task asking for `count` GPUs (fractions share a whole id)."""
    return free_ids[: max(1, math.ceil(count))] if count > 0 else []


def should_spawn(idle: int, starting: int, live: int, max_workers: int, runnable: int) -> bool:
    """Start another worker when runnable tasks wait with nobody idle or on the way."""
    return runnable > 0 and idle == 0 and starting == 0 and live < max_workers


Admission = Literal["now", "wait", "try"]


def admit(restore_sizes: list[int], room: int, pins_will_free: bool) -> Admission:
    """May a task be sent (or pipelined, or batched) now? Its top-level arguments must be read
    into shared memory first: `restore_sizes` are the segments its spilled ones need, `room` the
    bytes that exist now (free, pooled, or held by unpinned objects that can be spilled).

    - "now": everything is in memory, or the restores fit in that room.
    - "wait": they do not fit, and running tasks hold pins they will release: the task stays
      queued and is looked at again when they do (a task never fails because memory is busy).
    - "try": they do not fit and nothing running will free room (only the caller's own views
      pin it): send it; its restore waits for unpins like a put, and fails with
      ObjectStoreFullError if the arguments can never fit.
    """
    if not restore_sizes or sum(restore_sizes) <= room:
        return "now"
    return "wait" if pins_will_free else "try"
