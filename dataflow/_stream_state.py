"""The streaming executor's state and the pure decisions over it (streaming.py's loop does the
I/O; its docstring tells the policy).

    StreamState ─ segs: [SegState] ─ queue of Items (shards on their way, with their input block)
                                    ─ in_flight: meta handle -> Flight (deadline, actor)
                                    ─ pool: Pool (actors, calls per actor, load)
    decisions:  can_submit / room_downstream / starting (bounded memory, startup budget, order
                window) · block_limit / segment_deadline (deadlines) · pick_actor · actor_starting ·
                on_failure · live_bottleneck · task_options
    StageBlock: one stage's work on one block, as the run's record keeps it (stage_blocks)

Every function here reads or changes only the state it is given: tests build a StreamState by
hand and ask what the executor would do.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from .executor import DEADLINE_GRACE, OrderWindow
from .plan import Segment


class StageBlock(NamedTuple):
    """One stage's work on one shard's block, as the run's record keeps it (RunRecorder.block)."""

    stage: str
    pid: int
    end: float                        # the driver's time.perf_counter() when it ended (see stage_blocks)
    rows_in: int
    rows_out: int
    seconds: float
    cpu_seconds: float
    bytes_out: int
    peak_memory: int                  # the worker's peak RSS after the block


def stage_blocks(stage_stats: dict, pid: int, peak_memory: int, landed: float) -> list[StageBlock]:
    """A segment's per-stage figures (stage -> _task.STAT_FIELDS, in stage order) as StageBlocks.
    The segment's result landed at `landed`; its stages ran one after the other, so each ends
    where the next one's seconds begin."""
    out = []
    end = landed
    for name, (rows_in, rows_out, seconds, cpu, nbytes) in reversed(list(stage_stats.items())):
        out.append(StageBlock(name, pid, end, rows_in, rows_out, seconds, cpu, nbytes, peak_memory))
        end -= seconds
    return out[::-1]


# A segment whose model is still being built (or whose actors are starting) lets the segment
# before it run ahead by this many bytes of blocks (at most a quarter of the store), not only
# `buffer` blocks: the stages before a big model do their work while it loads (the parse of
# every shard, when blocks are small).
STARTUP_BUDGET = 256 * 2**20


@dataclass
class Item:
    """One shard on its way through the segments."""

    shard: Any
    seg: int = 0
    block: Any = None                 # the input block's ref (None for the first segment)
    attempts: dict = field(default_factory=dict)  # segment -> attempts started
    rows_in: int = 0
    quarantine: list = field(default_factory=list)
    first_error: str = ""
    blocks: list = field(default_factory=list)    # StageBlocks of the segments done
    rows: int = 0                                   # rows of the input block (the shard's, at first)
    nbytes: int = 0                                 # bytes of the input block (0 for the shard)
    position: int = 0                               # in the input order


@dataclass
class Flight:
    """One block in flight in a segment."""

    item: Item
    actor: Any = None                 # the pool's actor running it (None: a task)
    block: Any = None                 # the ref of the block it makes (None for the last segment)
    submitted: float = 0.0            # time.monotonic()
    deadline: float | None = None     # time.monotonic() past which it is given up; None: unbounded or not started


@dataclass
class Pool:
    actors: list = field(default_factory=list)      # handles
    load: dict = field(default_factory=dict)        # id(handle) -> calls in flight
    ready: dict = field(default_factory=dict)       # ready ref -> (handle, time.monotonic() it was sent):
                                                    # its constructor not done yet
    calls: dict = field(default_factory=dict)       # id(handle) -> deque of its calls' meta handles, in order
    lo: int = 1
    hi: int = 1
    started: int = 0                                # actors started (for device assignment)
    per_actor: int = 2                              # calls in flight per actor: one running, the rest queued on it


@dataclass
class SegState:
    seg: Segment
    max_in_flight: int
    buffer: int                                     # blocks allowed between the previous segment and this one
    queue: deque = field(default_factory=deque)
    in_flight: dict = field(default_factory=dict)   # meta handle -> Flight
    pool: Pool | None = None
    ready: bool = False                             # its stages' payloads are in the store
    held_back: int = 0                              # loop turns with work and a slot, but no room downstream
    queued_bytes: int = 0                           # bytes of the blocks in `queue`
    bytes_out: int = 0                              # bytes of the blocks it made (intermediate segments)
    holding: bool = False                           # held back at the last turn
    ready_at: float | None = None                   # time.monotonic() its payloads were in the store
    up_at: float | None = None                      # ... its first actor was up (pools)
    blocks: int = 0
    stats: dict = field(default_factory=dict)       # stage -> _task.STAT_FIELDS, summed
    pids: set = field(default_factory=set)

    @property
    def slots(self) -> int:
        if self.pool is not None:
            return self.pool.per_actor * len(self.pool.actors)
        return self.max_in_flight


@dataclass
class StreamState:
    segs: list[SegState]
    max_retries: int
    stopped: bool = False
    order: OrderWindow | None = None                # preserve_order: the window of shards started
    startup_budget: int = STARTUP_BUDGET            # bytes that may wait for a segment still starting

    @property
    def finished(self) -> bool:
        return self.stopped or all(not s.queue and not s.in_flight for s in self.segs)


def room_downstream(state: StreamState, k: int) -> bool:
    """May segment k start one more block? Only if the next segment's buffer has room; or, while
    the next segment is still starting (its model being built and put, its actors starting), if
    the blocks waiting for it stay within `state.startup_budget` bytes (measured blocks of k)."""
    if k + 1 >= len(state.segs):
        return True
    s, nxt = state.segs[k], state.segs[k + 1]
    if len(nxt.queue) + len(nxt.in_flight) + len(s.in_flight) < nxt.buffer + nxt.slots:
        return True
    if starting(nxt) and s.blocks:
        per_block = s.bytes_out / s.blocks
        return nxt.queued_bytes + (len(s.in_flight) + 1) * per_block <= state.startup_budget
    return False


def startup_budget(resources: dict) -> int:
    """Bytes of blocks that may wait for a segment still starting: STARTUP_BUDGET, and never more
    than a quarter of the object store (the blocks must not make it spill)."""
    store = resources.get("object_store_memory") or 0
    return int(min(STARTUP_BUDGET, store / 4)) if store else STARTUP_BUDGET


def starting(s: SegState) -> bool:
    """The segment cannot run blocks yet: its payloads are not in the store, or no actor of its
    pool has started."""
    return not s.ready or (s.pool is not None and not s.pids)


def can_submit(state: StreamState, k: int) -> bool:
    s = state.segs[k]
    if k == 0 and state.order is not None and s.queue and not state.order.admits(s.queue[0].position):
        return False
    return (not state.stopped and s.ready and bool(s.queue) and len(s.in_flight) < s.slots
            and room_downstream(state, k))


def block_limit(seg: Segment, rows: int, read_batch: int | None, quarantine: bool) -> tuple[float, int] | None:
    """(seconds, batches) a block of `rows` rows may take in `seg` by its stages' timeouts, grace
    not included; None when a stage of the segment has no timeout (its time is unbounded)."""
    if any(st.timeout is None for st in seg.stages):
        return None
    total, batches = 0.0, 0
    # The first segment reads the shard in `read_batch`-row pieces, each through every stage.
    piece = max(1, min(read_batch, rows) if read_batch else rows)
    pieces = max(1, math.ceil(rows / piece))
    for st in seg.stages:
        size = min(st.batch_size or piece, piece)
        n = pieces * math.ceil(piece / size)
        # Bisecting a failing batch calls the stage about 2 log2(n) times more.
        factor = 2 * max(1, math.ceil(math.log2(max(size, 2)))) if quarantine else 1
        total += st.timeout * n * factor
        batches += n
    return total, batches


def segment_deadline(seg: Segment, rows: int, read_batch: int | None, quarantine: bool) -> float | None:
    """Seconds a task running `seg` over a shard of `rows` rows may take (its stages' timeout x
    batches, plus DEADLINE_GRACE), or None: the one-segment plan's Executor.deadline_for."""
    limit = block_limit(seg, rows, read_batch, quarantine)
    return None if limit is None else limit[0] + DEADLINE_GRACE


def live_bottleneck(state: StreamState) -> int | None:
    """The segment holding the others back now: the one whose input waits longest for a slot
    (queue per slot, past the first segment); None when no block waits between segments."""
    waiting = [(len(s.queue) / max(1, s.slots), k) for k, s in enumerate(state.segs) if k and s.queue]
    return max(waiting)[1] if waiting else None


def pick_actor(pool: Pool) -> Any:
    """The least loaded live actor (ties: the first started)."""
    return min(pool.actors, key=lambda a: pool.load.get(id(a), 0))


def actor_starting(pool: Pool, actor: Any, since: float | None = None) -> bool:
    """`actor`'s constructor has not finished (a ready call is out): a call sent to it waits,
    and its clock starts when the actor is up. `since`: only ready calls sent after then count
    (after a crash, the one sent before it says nothing of the restart)."""
    return any(a is actor and (since is None or sent > since) for a, sent in pool.ready.values())


def on_failure(state: StreamState, item: Item) -> Literal["retry", "give_up"]:
    if not state.stopped and item.attempts.get(item.seg, 0) <= state.max_retries:
        state.segs[item.seg].queue.appendleft(item)
        state.segs[item.seg].queued_bytes += item.nbytes
        return "retry"
    return "give_up"


def task_options(seg: Segment) -> dict:
    """The options of a task running `seg`: its head stage's CPUs (1 by default), GPUs and resources."""
    st = seg.head
    opts: dict = {"num_cpus": 1 if st.num_cpus is None else st.num_cpus}
    if st.num_gpus:
        opts["num_gpus"] = st.num_gpus
    if st.resources:
        opts["resources"] = dict(st.resources)
    return opts
