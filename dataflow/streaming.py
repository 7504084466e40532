"""The streaming executor: shards through segments of stages, blocks through the object store.

    shards ─► seg 0 (tasks: read + fused stages) ─► block ref ─► seg 1 (actor pool + riders) ─► block ref ─► seg 2 (tasks) ─► ShardDone
                 ▲ at most max_in_flight each          │ queue (bounded)     ▲ 4 calls per actor              │
                 └── held back while seg 1's buffer is full (backpressure) ◄─┘                                 └─► the part, staged
                     (or, while seg 1 is still starting, its blocks' bytes pass the startup budget)

Each segment returns two objects for every shard but the last: a small `BlockMeta` that the
driver reads, and the block itself, whose ref the driver hands to the next segment untouched (a
top-level argument: the worker or actor maps it zero-copy). A shard is done when its last
segment's result is in; its part (and quarantine) are written by the caller, so resume stays
exactly-once at shard level and no intermediate block is ever written.

Bounded memory: a segment submits only while it has a free slot (`max_in_flight`) and the next
segment's buffer (its queue plus what is in flight towards it) is below `buffer`; downstream
segments are served first, so blocks drain before new ones are made. A fast segment with free
slots and room downstream never waits for a slow one.

Decisions (`can_submit`, `pick_actor`, `on_failure`, `block_limit`, `live_bottleneck`, with the
state they read in `_stream_state.py`; `plan.pool_target`) are pure functions over `StreamState`;
the loop here does the I/O. A failed block is retried in the segment that failed, from its input
block, up to `max_retries`; a dead actor is restarted by core and its blocks retried.

Deadlines: when every stage of a segment has a `timeout`, a block in it may run for timeout x
its batches (plus a grace) and no longer. The worker's own alarm interrupts Python code; the
driver's deadline catches the rest (C code, a thread, a signal blocked): a task past it is
cancelled (its worker killed), an actor past it is killed and replaced, and its other blocks go
back to the queue with no attempt spent. The block that ran over fails or is retried as any
failure. An actor runs its calls one after the other, so a call's clock starts when the one
before it on the same actor lands, and the first one's when the actor is up (started, or
restarted by core after a crash): a constructor that loads a model for a minute does not count
against a call's `timeout` (as in Ray Data, the constructor itself has no deadline).

Order: with `order_window` (Dataset.iter_batches(preserve_order=True)), the first segment starts
a shard only while it is fewer than `order_window` shards past the first one not yet yielded, so
at most `order_window - 1` finished shards ever wait ahead of it (`StreamState.ahead_high`).

Live figures: every `tick` seconds the loop yields a `StagesUpdate` (rows in/out, blocks queued
and in flight, busy time, actors, which stage holds the others back) for the progress lines.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

from ._stream_state import (Flight, Item, Pool, SegState, StreamState, actor_starting, block_limit, can_submit,
                            live_bottleneck, on_failure, pick_actor, room_downstream, stage_blocks, startup_budget,
                            task_options)
from ._stream_state import STARTUP_BUDGET, StageBlock, segment_deadline  # noqa: F401 - read here by tests and callers
from .backends import TaskFailure
from .exceptions import RunError
from .executor import DEADLINE_GRACE, OrderWindow, ShardDone, ShardFailed, ShardRetry
from .plan import Segment, gpu_devices, pool_bounds, pool_target

POOL_GRACE = 5.0  # seconds on top of a pool call's timeout x batches: its block is already in the store
# Calls queued on each actor (Ray Data's max_tasks_in_flight_per_actor is 4 too): with quick blocks
# the actor has its next ones at hand while the driver learns of the last one and sends another.
CALLS_PER_ACTOR = 4


class StagesUpdate(NamedTuple):
    """The live per-stage figures (streaming.StreamExecutor.live_report), for progress lines.
    `shard` is None: consumers that read `event.shard` of every event pass it by."""

    stages: list
    shard: Any = None


@dataclass
class StreamExecutor:
    """Runs shards through `segments` on `backend`; yields the executor's events (and, every
    `tick` seconds, a StagesUpdate)."""

    backend: Any
    segments: list[Segment]
    payloads: list                  # per segment: Futures of its stages' payload refs (put by a helper thread)
    make_task: Any                  # (shard, segment) -> _task.SegmentTask
    max_in_flight: int
    max_retries: int
    fail_fast: bool
    run_token: str
    pool_options: Any               # segment -> dict of actor options (num_cpus, num_gpus, resources)
    total_gpus: int = 0
    workers: int = 1
    poll: float = 0.5
    state: StreamState | None = None
    order_window: int | None = None  # keep input order, at most order_window - 1 shards done ahead
    tick: float = 0.5                # seconds between StagesUpdate events; 0: none
    started: float = field(default_factory=time.monotonic)

    def run(self, shards: list) -> Iterator[Any]:
        segs = []
        for seg in self.segments:
            cap = self.max_in_flight
            if seg.kind == "tasks" and isinstance(seg.head.concurrency, int):
                cap = seg.head.concurrency  # on a function, concurrency bounds its tasks in flight
            s = SegState(seg, cap, buffer=max(2, cap),
                         stats={st.name: [0, 0, 0.0, 0.0, 0] for st in seg.stages})
            segs.append(s)
        state = self.state = StreamState(segs, self.max_retries,
                                         startup_budget=startup_budget(self.backend.resources()))
        if self.order_window is not None:
            state.order = OrderWindow(self.order_window)
        state.segs[0].queue.extend(Item(sh, rows=sh.num_rows, position=i) for i, sh in enumerate(shards))
        self.started = last_tick = time.monotonic()
        try:
            while not state.finished:
                self._payloads_landed(state)
                self._scale_pools(state)
                for k in reversed(range(len(state.segs))):
                    self._fill(state, k)
                handles = [h for s in state.segs for h in s.in_flight]
                handles += [r for s in state.segs if s.pool for r in s.pool.ready]
                if not handles:
                    self._wait_payloads(state)
                else:
                    for handle in self.backend.wait(handles, timeout=self.poll):
                        yield from self._landed(state, handle)
                    yield from self._expired(state)
                if self.tick and time.monotonic() - last_tick >= self.tick:
                    last_tick = time.monotonic()
                    yield StagesUpdate(self.live_report())
        finally:
            for s in state.segs:
                for handle in list(s.in_flight):
                    self.backend.cancel(handle)
                s.in_flight.clear()
                if s.pool is not None:
                    for a in s.pool.actors:
                        self.backend.kill(a)
                    s.pool.actors.clear()

    # -- payloads ---------------------------------------------------------------------------
    def _payloads_landed(self, state: StreamState) -> None:
        """Segments whose payloads are now in the store can start (a pool: its actors)."""
        for s in state.segs:
            futures = self.payloads[s.seg.index]
            if s.ready or not all(f.done() for f in futures):
                continue
            for f in futures:
                f.result()  # the model could not be built or put: the run stops with its error
            s.ready = True
            s.ready_at = time.monotonic()
            if s.seg.kind == "pool":
                self._start_pool(s)

    def _wait_payloads(self, state: StreamState) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        pending = [f for s in state.segs if not s.ready for f in self.payloads[s.seg.index] if not f.done()]
        if pending:
            wait(pending, timeout=self.poll, return_when=FIRST_COMPLETED)

    # -- pools ------------------------------------------------------------------------------
    def _start_pool(self, s: SegState) -> None:
        lo, hi = pool_bounds(s.seg.head, self.workers)
        s.pool = Pool(lo=lo, hi=hi, per_actor=CALLS_PER_ACTOR)
        for _ in range(lo):
            self._add_actor(s)

    def _add_actor(self, s: SegState) -> None:
        from ._task import StageActor

        pool = s.pool
        stage = s.seg.head
        devices = gpu_devices(pool.started, stage.num_gpus, self.total_gpus) if stage.num_gpus else None
        opts = dict(self.pool_options(s.seg))
        opts.setdefault("max_restarts", -1)  # a dead actor comes back; its blocks are retried
        payloads = tuple(f.result() for f in self.payloads[s.seg.index])
        actor = self.backend.start_actor(StageActor, (s.seg.stages, self.run_token, devices, *payloads), opts)
        pool.started += 1
        pool.actors.append(actor)
        pool.load[id(actor)] = 0
        pool.calls[id(actor)] = deque()
        self._ask_ready(pool, actor)

    def _ask_ready(self, pool: Pool, actor: Any) -> None:
        pool.ready[self.backend.call(actor, "ready")] = (actor, time.monotonic())

    def _remove_actor(self, s: SegState, actor: Any) -> None:
        pool = s.pool
        pool.actors.remove(actor)
        pool.load.pop(id(actor), None)
        pool.calls.pop(id(actor), None)
        for ref in [r for r, (a, _) in pool.ready.items() if a is actor]:
            pool.ready.pop(ref)
        self.backend.kill(actor)

    def _scale_pools(self, state: StreamState) -> None:
        upstream_done = True
        for s in state.segs:
            pool = s.pool
            if pool is not None:
                busy = sum(1 for a in pool.actors if pool.load.get(id(a), 0))
                want = pool_target(len(pool.actors), pool.lo, pool.hi, len(s.queue), busy, upstream_done)
                while len(pool.actors) < want:
                    self._add_actor(s)
                if len(pool.actors) > want:
                    for a in [a for a in pool.actors if not pool.load.get(id(a), 0)][:len(pool.actors) - want]:
                        self._remove_actor(s, a)
            upstream_done = upstream_done and not s.queue and not s.in_flight

    # -- submitting -------------------------------------------------------------------------
    def _fill(self, state: StreamState, k: int) -> None:
        s = state.segs[k]
        while can_submit(state, k):
            item = s.queue.popleft()
            s.queued_bytes -= item.nbytes
            item.attempts[k] = item.attempts.get(k, 0) + 1
            task = self.make_task(item.shard, s.seg)
            n = 1 if task.last else 2
            actor = None
            now = time.monotonic()
            if s.pool is not None:
                actor = pick_actor(s.pool)
                s.pool.load[id(actor)] += 1
                out = self.backend.call(actor, "run", task, self.backend.as_arg(item.block), num_returns=n)
            else:
                from ._task import run_segment

                opts = task_options(s.seg)
                if n == 2:
                    opts["num_returns"] = 2
                payloads = [f.result() for f in self.payloads[k]]
                out = self.backend.submit(run_segment, task, self.backend.as_arg(item.block), *payloads,
                                          options=opts)
            meta, block = (out, None) if n == 1 else (out[0], out[1])
            flight = s.in_flight[meta] = Flight(item, actor, block, submitted=now)
            if actor is not None:
                calls = s.pool.calls[id(actor)]
                calls.append(meta)
                if len(calls) == 1 and not actor_starting(s.pool, actor):  # idle and up: this call starts now
                    flight.deadline = self._deadline(s, flight, now)
            else:
                flight.deadline = self._deadline(s, flight, now)
        s.holding = bool(s.queue) and len(s.in_flight) < s.slots and not room_downstream(state, k)
        if s.holding:
            s.held_back += 1

    def _deadline(self, s: SegState, flight: Flight, start: float) -> float | None:
        if any(st.timeout is None for st in s.seg.stages):
            return None  # unbounded (see block_limit): no task to make
        task = self.make_task(flight.item.shard, s.seg)
        limit = block_limit(s.seg, flight.item.rows, (task.read or {}).get("batch_size"),
                            task.on_error == "quarantine")
        if limit is None:
            return None
        # A task may wait for a worker and read its shard first; a pool call's block is in the store.
        return start + limit[0] + (POOL_GRACE if flight.actor is not None else DEADLINE_GRACE)

    # -- results ----------------------------------------------------------------------------
    def _landed(self, state: StreamState, handle: Any) -> Iterator[Any]:
        for s in state.segs:
            if s.pool is not None and handle in s.pool.ready:
                actor, _ = s.pool.ready.pop(handle)
                try:
                    info = self.backend.result(handle)
                    s.pids.add(info["pid"])
                    s.up_at = s.up_at or time.monotonic()
                except TaskFailure as exc:
                    if _constructor_failed(exc):
                        raise RunError(f"stage {s.seg.head.name}: its actor pool cannot start: {exc}") from exc
                    # it died (core restarts it): its calls in flight fail and are retried
                self._start_clock(s, actor)
                return
            if handle in s.in_flight:
                break
        else:
            return
        flight = s.in_flight.pop(handle)
        item, actor, block = flight.item, flight.actor, flight.block
        try:
            result, failure = self.backend.result(handle), None
        except TaskFailure as exc:
            result, failure = None, exc
        if actor is not None and id(actor) in s.pool.load:
            s.pool.load[id(actor)] -= 1
            if failure is not None and failure.died:
                self._await_restart(s, actor, flight.submitted)
            self._next_call(s, actor, handle)
        if failure is not None:
            if s.pool is not None and _constructor_failed(failure):
                raise RunError(f"stage {s.seg.head.name}: its actor pool cannot start: {failure}") from failure
            yield from self._failed(state, item, str(failure), failure.cause)
            return
        last = item.seg == len(state.segs) - 1
        meta = result  # a BlockMeta, or the last segment's ShardResult (the same fields)
        s.blocks += 1
        s.pids.add(meta.pid)
        for name, v in meta.stage_stats.items():
            s.stats[name] = [a + b for a, b in zip(s.stats[name], v)]
        item.blocks += stage_blocks(meta.stage_stats, meta.pid, meta.peak_memory, time.perf_counter())
        if item.seg == 0:
            item.rows_in = meta.rows_in
        if meta.quarantine is not None and meta.quarantine.num_rows:
            item.quarantine.append(meta.quarantine)
        item.first_error = item.first_error or meta.first_error
        if last:
            self._delivered(state, item)
            yield ShardDone(item.shard, _merge(result, item), item.attempts.get(item.seg, 1))
            return
        item.block = block
        item.rows = meta.rows_out
        item.nbytes = list(meta.stage_stats.values())[-1][4] if meta.stage_stats else 0
        s.bytes_out += item.nbytes
        item.seg += 1
        state.segs[item.seg].queue.append(item)
        state.segs[item.seg].queued_bytes += item.nbytes

    def _next_call(self, s: SegState, actor: Any, handle: Any) -> None:
        """A call of `actor` landed: the next one queued on it starts now (its clock too)."""
        calls = s.pool.calls.get(id(actor))
        if calls and handle in calls:
            calls.remove(handle)
        self._start_clock(s, actor)

    def _await_restart(self, s: SegState, actor: Any, sent: float) -> None:
        """`actor` died under a call sent at `sent`, and core restarts it: the calls sent to it
        wait for its constructor again, so their clocks start when it is up (a new ready call
        tells), as a new actor's do. One ready per crash: the other calls it failed were sent
        before that ready."""
        if not actor_starting(s.pool, actor, since=sent):
            self._ask_ready(s.pool, actor)

    def _start_clock(self, s: SegState, actor: Any) -> None:
        """The first call queued on `actor` runs from now: its deadline counts from here, not from
        its submission (which may have waited on the actor's constructor or on calls before it)."""
        if actor_starting(s.pool, actor):
            return                     # its clock starts when the actor is up
        calls = s.pool.calls.get(id(actor))
        if calls:
            first = s.in_flight.get(calls[0])
            if first is not None and first.deadline is None:
                first.deadline = self._deadline(s, first, time.monotonic())

    def _delivered(self, state: StreamState, item: Item) -> None:
        if state.order is not None:
            state.order.delivered(item.position)

    def _failed(self, state: StreamState, item: Item, error: str, cause: Any) -> Iterator[Any]:
        attempt = item.attempts.get(item.seg, 1)
        if on_failure(state, item) == "retry":
            yield ShardRetry(item.shard, error, attempt)
            return
        self._delivered(state, item)
        yield ShardFailed(item.shard, error, attempt, cause)
        if self.fail_fast:
            state.stopped = True

    def _expired(self, state: StreamState) -> Iterator[Any]:
        """Blocks past their deadline: a task is cancelled (its worker killed); an actor is killed
        and replaced, its other blocks queued again with no attempt spent."""
        now = time.monotonic()
        for s in state.segs:
            for handle, flight in list(s.in_flight.items()):
                if flight.deadline is None or now <= flight.deadline or handle not in s.in_flight:
                    continue
                st, item = s.seg.head, flight.item
                limit = block_limit(s.seg, item.rows, None, False)
                what = f"timeout {st.timeout:g} s x {limit[1] if limit else 1} batches"
                del s.in_flight[handle]
                if flight.actor is None:
                    self.backend.cancel(handle, force=True)  # stuck outside Python: kill the worker
                    done = "its task was cancelled"
                else:
                    self._replace_actor(state, s, flight.actor)
                    done = "its actor was killed and replaced"
                yield from self._failed(state, item, f"stage {s.seg.name}: shard {item.shard.index}: a block ran "
                                        f"past its deadline ({what}, plus grace); {done}", None)

    def _replace_actor(self, state: StreamState, s: SegState, actor: Any) -> None:
        others = [h for h in s.pool.calls.get(id(actor), ()) if h in s.in_flight]
        for h in reversed(others):  # queued behind the stuck call: not their fault
            flight = s.in_flight.pop(h)
            flight.item.attempts[s.seg.index] -= 1
            s.queue.appendleft(flight.item)
            s.queued_bytes += flight.item.nbytes
        self._remove_actor(s, actor)
        if not state.stopped and len(s.pool.actors) < s.pool.lo:
            self._add_actor(s)

    # -- reporting --------------------------------------------------------------------------
    def live_report(self) -> list[dict]:
        """stage_report() as the run goes, with each stage's blocks queued and in flight, its
        actors now, and `bottleneck`: the stage whose input waits the longest for a slot."""
        if self.state is None:
            return []
        out = self.stage_report()
        hot = live_bottleneck(self.state)
        by_name = {}
        for k, s in enumerate(self.state.segs):
            for st in s.seg.stages:
                by_name[st.name] = (k, s)
        for entry in out:
            k, s = by_name[entry["name"]]
            # A segment's blocks wait for and run through its stages together: its first stage
            # carries the queue, the in-flight blocks and the marks.
            head = entry["name"] == s.seg.head.name
            entry.update(queued=len(s.queue) if head else 0, in_flight=len(s.in_flight) if head else 0,
                         backpressure=s.holding and head, bottleneck=k == hot and head, head=head,
                         actors=len(s.pool.actors) if s.pool is not None else 0,
                         elapsed=round(time.monotonic() - self.started, 3))
        return out

    def stage_report(self) -> list[dict]:
        """One entry per stage: rows in/out, blocks, busy seconds, actors, and which stage holds
        the others back."""
        if self.state is None:
            return []
        out = []
        for s in self.state.segs:
            for st in s.seg.stages:
                rows_in, rows_out, busy = s.stats[st.name][:3]
                out.append({"name": st.name, "kind": s.seg.kind, "segment": s.seg.index,
                            "fused_with": [x.name for x in s.seg.stages if x is not st],
                            "rows_in": rows_in, "rows_out": rows_out, "blocks": s.blocks,
                            "busy_seconds": round(busy, 3),
                            "actors": len(s.pids) if s.seg.kind == "pool" else 0,
                            "workers": len(s.pids), "backpressure": s.held_back > 0,
                            # seconds from the executor's start: payloads in the store, first actor up
                            "ready_at": _since(s.ready_at, self.started), "up_at": _since(s.up_at, self.started)})
        return out


def _since(t: float | None, start: float) -> float | None:
    return None if t is None else round(t - start, 3)


def _constructor_failed(exc: TaskFailure) -> bool:
    """A call failed because the pool's constructor raised (not a crash: that one is retried)."""
    from ._task import StageInitError

    return isinstance(exc.cause, StageInitError)


def _merge(result: Any, item: Item) -> Any:
    """The last segment's ShardResult with what the earlier segments reported."""
    import pyarrow as pa

    if item.quarantine:  # every segment's, the last one's included (added as it landed)
        q = pa.concat_tables(item.quarantine, promote_options="permissive")
        result.quarantine, result.rows_quarantined = q, q.num_rows
    result.rows_in = item.rows_in or result.rows_in
    result.first_error = result.first_error or item.first_error
    result.stage_blocks = item.blocks
    return result
