"""The executor: one task per shard, a bounded number in flight, results in completion order.

    shards ─► queue ──submit (while in flight < max_in_flight)──► backend ──► worker: _task.run_shard
                ▲                                                   │
                └── retry (attempt <= max_retries) ◄── TaskFailure ─┤
                                                                    ▼ wait(1)
                               events, in completion order: ShardDone | ShardRetry | ShardFailed

Backpressure: at most `max_in_flight` tasks are pending, so the driver holds at most that many
results and memory stays flat whatever the number of shards. The executor decides and reports;
it writes nothing: the caller (pipeline.py) turns each `ShardDone` into exactly one sink write.

Decisions are small pure functions over `RunState` (what to submit next, whether a failure is
retried; with an `OrderWindow`, only shards close enough to the first one not yet delivered start); the loop around them does the I/O. A task past its deadline (`predict.timeout` times
its number of batches, plus a grace period) is cancelled and counted as a failure, so a batch
stuck outside Python (where the worker's own alarm cannot reach) does not hang the run.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

from .backends import TaskFailure

DEADLINE_GRACE = 30.0  # seconds on top of timeout x batches: reading, start-up, a slow first batch


@dataclass
class ShardDone:
    shard: Any
    result: Any                 # _task.ShardResult
    attempts: int


@dataclass
class ShardRetry:
    shard: Any
    error: str
    attempt: int                # the attempt that failed (1-based)


@dataclass
class ShardFailed:
    shard: Any
    error: str
    attempts: int
    cause: BaseException | None = None


Event = ShardDone | ShardRetry | ShardFailed


@dataclass
class _InFlight:
    shard: Any
    attempt: int
    deadline: float | None


@dataclass
class RunState:
    """The executor's whole state; the decisions below read and change nothing else."""

    queue: deque                                   # shards not yet submitted (retries go first)
    max_in_flight: int
    max_retries: int
    in_flight: dict = field(default_factory=dict)  # handle -> _InFlight
    attempts: dict = field(default_factory=dict)   # shard index -> attempts started
    stopped: bool = False
    order: "OrderWindow | None" = None             # preserve_order: the window of shards started
    positions: dict = field(default_factory=dict)  # shard index -> position in the input (with order)

    @property
    def finished(self) -> bool:
        return self.stopped or (not self.in_flight and not self.queue)


def to_submit(state: RunState) -> list:
    """The shards to submit now: fill the free slots, first in queue order."""
    if state.stopped:
        return []
    free = max(0, state.max_in_flight - len(state.in_flight))
    out = []
    while len(out) < free and state.queue:
        if state.order is not None and not state.order.admits(state.positions[state.queue[0].index]):
            break
        out.append(state.queue.popleft())
    return out


def on_failure(state: RunState, shard: Any) -> Literal["retry", "give_up"]:
    """Retry a failed shard while it has attempts left (first in line, so it finishes early)."""
    if state.attempts.get(shard.index, 0) <= state.max_retries and not state.stopped:
        state.queue.appendleft(shard)
        return "retry"
    return "give_up"


@dataclass
class OrderWindow:
    """Input order with a bound on what waits: a shard at `position` (in the input order) may start
    only while it is fewer than `size` positions past `next`, the first shard not yet delivered.
    So at most `size - 1` finished shards are ever held ahead of the one the consumer waits for;
    `ahead_high` is the most that were."""

    size: int
    next: int = 0
    done: set = field(default_factory=set)        # delivered positions past `next`
    ahead_high: int = 0

    def admits(self, position: int) -> bool:
        return position < self.next + max(1, self.size)

    def delivered(self, position: int) -> None:
        self.done.add(position)
        while self.next in self.done:
            self.done.remove(self.next)
            self.next += 1
        self.ahead_high = max(self.ahead_high, len(self.done))


def default_max_in_flight(workers: int) -> int:
    """Twice the workers: each worker has its next shard queued while the driver writes."""
    return 2 * max(1, workers)


def task_deadline(timeout: float | None, num_rows: int, batch_size: int, quarantine: bool) -> float | None:
    """Seconds a shard may take when each batch is bounded by `timeout`, or None."""
    if timeout is None:
        return None
    batches = max(1, math.ceil(num_rows / batch_size))
    # Bisecting a failing batch calls the model about 2 log2(n) times more.
    factor = 2 * max(1, math.ceil(math.log2(max(batch_size, 2)))) if quarantine else 1
    return timeout * batches * factor + DEADLINE_GRACE


@dataclass
class Executor:
    """Runs `fn(make_args(shard), model_ref, *shared)` for every shard on `backend`, yielding events."""

    backend: Any
    fn: Callable
    make_args: Callable[[Any], Any]
    model_ref: Any
    max_in_flight: int
    max_retries: int
    fail_fast: bool
    deadline_for: Callable[[Any], float | None] = lambda shard: None
    poll: float = 0.5
    shared: tuple = ()              # more arguments after model_ref (each stage's payload ref)
    options: dict | None = None     # the task's resources (num_cpus, num_gpus, resources)
    order_window: int | None = None  # keep input order, at most order_window - 1 shards done ahead
    deadline_of: str = "predict.timeout x batches"  # what the deadline is made of, for its error
    deadline_what: str = ""          # its error's prefix ("stage a+b: ")

    def run(self, shards: list) -> Iterator[Event]:
        state = RunState(queue=deque(shards), max_in_flight=self.max_in_flight, max_retries=self.max_retries)
        if self.order_window is not None:
            state.order = OrderWindow(self.order_window)
            state.positions = {sh.index: i for i, sh in enumerate(shards)}
        self.state = state
        try:
            while not state.finished:
                for shard in to_submit(state):
                    self._submit(state, shard)
                if not state.in_flight:
                    continue
                ready = self.backend.wait(list(state.in_flight), timeout=self.poll)
                for handle in ready:
                    flight = state.in_flight.pop(handle)
                    try:
                        result = self.backend.result(handle)
                    except TaskFailure as exc:
                        yield from self._failed(state, flight, str(exc), exc.cause)
                    else:
                        self._delivered(state, flight.shard)
                        yield ShardDone(flight.shard, result, flight.attempt)
                yield from self._expired(state)
        finally:
            # Stopped early (fail fast, Ctrl-C, the consumer went away): nothing keeps running.
            for handle in list(state.in_flight):
                self.backend.cancel(handle)
            state.in_flight.clear()

    def _submit(self, state: RunState, shard: Any) -> None:
        state.attempts[shard.index] = state.attempts.get(shard.index, 0) + 1
        args = (self.fn, self.make_args(shard), self.model_ref, *self.shared)
        handle = self.backend.submit(*args, options=self.options) if self.options else self.backend.submit(*args)
        limit = self.deadline_for(shard)
        state.in_flight[handle] = _InFlight(shard, state.attempts[shard.index],
                                            time.monotonic() + limit if limit else None)

    def _failed(self, state: RunState, flight: _InFlight, error: str,
                cause: BaseException | None) -> Iterator[Event]:
        if on_failure(state, flight.shard) == "retry":
            yield ShardRetry(flight.shard, error, flight.attempt)
            return
        self._delivered(state, flight.shard)
        yield ShardFailed(flight.shard, error, flight.attempt, cause)
        if self.fail_fast:
            state.stopped = True

    def _delivered(self, state: RunState, shard: Any) -> None:
        if state.order is not None:
            state.order.delivered(state.positions[shard.index])

    def _expired(self, state: RunState) -> Iterator[Event]:
        now = time.monotonic()
        for handle, flight in list(state.in_flight.items()):
            if flight.deadline is not None and now > flight.deadline:
                del state.in_flight[handle]
                self.backend.cancel(handle, force=True)  # stuck outside Python: kill the worker
                yield from self._failed(state, flight, f"{self.deadline_what}the shard ran past its deadline "
                                        f"({self.deadline_of}); its task was cancelled", None)
