"""What a run did, over time: the `RunRecorder` the executor feeds, and the `RunRecord` it leaves.

    executor / pipeline (driver threads)          sampler thread (owned by the recorder)
      block_started(stage, shard, attempt) ─┐       every `interval` s:
      block(stage, shard, ..., outcome)  ───┤         t, rows done, process-tree PSS,
      backpressure(stage, blocks, seconds) ─┤         store used, bytes spilled  (store stats
      quarantined(shard, row, error) ───────┤         from the `store_stats` callable)
      error(message) ───────────────────────┤                       │
                                            ▼                       ▼
                                RunRecorder (one lock) ──finish(status)──► RunRecord
                                                                             │
                               stats_text(record): per stage, like Ray Data's ds.stats()
                               report.write_report(record, summary, path): the HTML page

Times are seconds since the run started, taken as differences of `time.perf_counter()` in the
driver (`recorder.now()`), never absolute clock values: those are meaningless on another machine
and in a saved record. A worker's own duration (`seconds=`) places its bar as ending when the
driver learnt of it, which is what a user waiting on the run saw.

Recording is cheap: an event is one dataclass appended under a lock. The sampler is
`memory.MemorySampler` (RSS each tick, PSS only when it moved): the run's one memory sampler,
whose peak is also the Summary's.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Callable, Literal

from .memory import MemorySampler

Outcome = Literal["ok", "retried", "failed", "quarantined", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "retried", "failed", "quarantined", "cancelled")
RunStatus = Literal["running", "done", "partial", "failed", "interrupted"]

MAX_QUARANTINED_ROWS = 1000   # kept with their messages; the rest are only counted


@dataclass(frozen=True)
class BlockEvent:
    """One attempt of one shard (or block) in one stage."""

    stage: str
    shard: int
    start: float                 # seconds since the run started
    end: float
    outcome: Outcome = "ok"
    attempt: int = 1
    path: str = ""
    worker: str | None = None    # None: the report packs such bars into "slot" lanes
    pid: int = 0
    rows_in: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    cpu_seconds: float | None = None   # the worker's process CPU time for this block, if measured
    peak_memory: int | None = None     # the worker's peak RSS while it ran, if measured
    error: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class Sample:
    t: float                     # seconds since the run started
    rows_done: int
    pss: int                     # bytes, sum over the driver and its descendants
    store_used: int = 0
    spilled: int = 0


@dataclass(frozen=True)
class QuarantinedRow:
    shard: int
    row: int
    error: str
    path: str = ""


@dataclass
class Backpressure:
    blocks: int = 0              # blocks that had to wait for a free slot in this stage
    seconds: float = 0.0         # how long they waited, summed


@dataclass
class RunRecord:
    """A finished (or interrupted) run, as plain data: JSON-able with `to_dict`/`from_dict`."""

    pipeline: str
    run_id: str
    started_at: float                          # time.time() at start: for display only
    wall: float = 0.0
    status: RunStatus = "running"
    stages: list[str] = field(default_factory=list)            # in pipeline order
    blocks: list[BlockEvent] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    backpressure: dict[str, Backpressure] = field(default_factory=dict)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    quarantined_total: int = 0                 # rows, including those beyond the kept ones
    errors: list[str] = field(default_factory=list)            # run-level errors
    spill_measured: bool = False               # samples carry spilled bytes (store_stats gave them)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        d = dict(d)
        d["blocks"] = [BlockEvent(**b) for b in d.get("blocks", [])]
        d["samples"] = [Sample(**s) for s in d.get("samples", [])]
        d["backpressure"] = {k: Backpressure(**v) for k, v in d.get("backpressure", {}).items()}
        d["quarantined"] = [QuarantinedRow(**q) for q in d.get("quarantined", [])]
        return cls(**d)


class RunRecorder:
    """Thread-safe collector of a run's block events and time series.

        rec = RunRecorder("nyc_taxi", run_id, stages=["predict"], store_stats=fn)
        with rec:                      # starts the clock and the sampler; finish() on the way out
            rec.block("predict", 3, start=t0, end=rec.now(), rows_out=..., ...)
        record = rec.record            # or: record = rec.finish("done")

    `store_stats`, when given, returns {"used": bytes, "spilled": bytes} (missing keys count 0);
    it is called from the sampler thread, so it must be thread-safe and quick. Errors it raises
    are swallowed: a sample must never fail a run.
    """

    def __init__(self, pipeline: str, run_id: str, *, stages: list[str] | None = None,
                 store_stats: Callable[[], dict] | None = None, interval: float = 0.5,
                 sample: bool = True, rise: float = 0.05, pss_every: float = 10.0):
        self.record = RunRecord(pipeline=pipeline, run_id=run_id, started_at=time.time(),
                                stages=list(stages or []))
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int, int], tuple[float, str]] = {}  # (stage, shard, attempt) -> (start, path)
        self._rows_done = 0
        self._store_stats = store_stats
        self._sample_on = sample
        self.memory = MemorySampler(interval, rise=rise, pss_every=pss_every, on_sample=self._sampled,
                                    name="dataflow-recorder")

    # -- clock and life cycle --------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the run started (this recorder was made or `start`ed)."""
        return time.perf_counter() - self._t0

    def at(self, perf_counter: float) -> float:
        """A `time.perf_counter()` value of this process as seconds since the run started."""
        return perf_counter - self._t0

    def start(self) -> "RunRecorder":
        """Restart the clock at zero and start the sampler thread (when `sample`)."""
        self._t0 = time.perf_counter()
        self.record.started_at = time.time()
        if self._sample_on:
            self.memory.start()
        return self

    def finish(self, status: RunStatus = "done") -> RunRecord:
        """Stop the sampler, take a last sample, close the blocks still open as `cancelled`
        (an interrupted run's work in flight), and return the record. Idempotent."""
        if self._sample_on and self.record.status == "running":
            self.memory.stop()  # and a last sample
        end = self.now()
        with self._lock:
            for (stage, shard, attempt), (start, path) in sorted(self._open.items()):
                self._add(BlockEvent(stage, shard, start, end, "cancelled", attempt, path))
            self._open.clear()
            if self.record.status == "running":
                self.record.status = status
                self.record.wall = end
        return self.record

    def __enter__(self) -> "RunRecorder":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("interrupted" if exc_type is KeyboardInterrupt else "failed" if exc_type else "done")

    # -- events from the executor ----------------------------------------------------------
    def block_started(self, stage: str, shard: int, attempt: int = 1, path: str = "",
                      at: float | None = None) -> None:
        """A block was submitted (optional: lets an interrupted run show its work in flight)."""
        with self._lock:
            self._open[(stage, shard, attempt)] = (self.now() if at is None else at, path)

    def block(self, stage: str, shard: int, *, outcome: Outcome = "ok", attempt: int = 1,
              start: float | None = None, end: float | None = None, seconds: float | None = None,
              path: str = "", worker: str | int | None = None, pid: int = 0, rows_in: int = 0,
              rows_out: int = 0, bytes_out: int = 0, cpu_seconds: float | None = None,
              peak_memory: int | None = None, error: str = "") -> BlockEvent:
        """One attempt of a block ended. `end` defaults to now; `start` to `end - seconds`, else
        to when `block_started` was called for it, else to `end`."""
        if outcome not in OUTCOMES:
            raise ValueError(f"block outcome must be one of {OUTCOMES}, got {outcome!r} "
                             f"(stage {stage!r}, shard {shard})")
        end = self.now() if end is None else end
        with self._lock:
            opened = self._open.pop((stage, shard, attempt), None)
            if start is None:
                start = end - seconds if seconds is not None else opened[0] if opened else end
            event = BlockEvent(stage, shard, start, end, outcome, attempt,
                               path or (opened[1] if opened else ""),
                               None if worker is None else str(worker), pid, rows_in, rows_out,
                               bytes_out, cpu_seconds, peak_memory, error)
            self._add(event)
        return event

    def backpressure(self, stage: str, blocks: int = 1, seconds: float = 0.0) -> None:
        """`blocks` of `stage` waited `seconds` (summed) for a free slot: backpressure held them."""
        with self._lock:
            bp = self.record.backpressure.setdefault(stage, Backpressure())
            bp.blocks += blocks
            bp.seconds += seconds

    def quarantined(self, shard: int, row: int, error: str, path: str = "") -> None:
        """One row set aside (quarantine), with the error that made it fail."""
        with self._lock:
            self.record.quarantined_total += 1
            if len(self.record.quarantined) < MAX_QUARANTINED_ROWS:
                self.record.quarantined.append(QuarantinedRow(shard, row, error, path))

    def error(self, message: str) -> None:
        """A run-level error (planning, the sink, the model), shown in the report."""
        with self._lock:
            self.record.errors.append(message)

    @property
    def rows_done(self) -> int:
        return self._rows_done

    # -- internals -------------------------------------------------------------------------
    def _add(self, event: BlockEvent) -> None:
        # Caller holds the lock.
        rec = self.record
        rec.blocks.append(event)
        if event.stage not in rec.stages:
            rec.stages.append(event.stage)
        if event.outcome in ("ok", "quarantined") and event.stage == rec.stages[-1]:
            self._rows_done += event.rows_out   # rows out of the last stage: the run's progress

    def _sampled(self, pss: int) -> None:
        # From the sampler's thread: one point of the memory and object-store series.
        store: dict = {}
        if self._store_stats is not None:
            try:
                store = self._store_stats() or {}
            except Exception:  # a sample must never fail the run
                store = {}
        t = self.now()
        with self._lock:
            self.record.spill_measured = self.record.spill_measured or "spilled" in store
            self.record.samples.append(Sample(t, self._rows_done, pss, int(store.get("used", 0)),
                                              int(store.get("spilled", 0))))


# -- stats: pure functions over a record ----------------------------------------------------
@dataclass(frozen=True)
class StageStats:
    stage: str
    tasks: int                   # attempts, whatever their outcome
    blocks: int                  # blocks produced (ok or quarantined)
    retried: int
    failed: int
    cancelled: int
    wall: tuple[float, float, float, float]          # min, mean, max, total seconds (all attempts)
    cpu: tuple[float, float, float, float] | None    # same, when the workers measured it
    rows_in: int
    rows_out: tuple[int, float, int, int]            # min, mean, max, total (produced blocks)
    bytes_out: tuple[int, float, int, int]
    peak_memory: int | None                          # largest per-block peak, when measured
    span: float                  # first start to last end: the stage's wall time
    busy: float                  # seconds summed over attempts
    workers: int
    waiting_blocks: int
    waiting_seconds: float


def stage_stats(record: RunRecord) -> list[StageStats]:
    """Per stage figures, in pipeline order (stages without a block are left out)."""
    by_stage: dict[str, list[BlockEvent]] = defaultdict(list)
    for b in record.blocks:
        by_stage[b.stage].append(b)
    out = []
    for stage in record.stages + [s for s in by_stage if s not in record.stages]:
        blocks = by_stage.get(stage)
        if not blocks:
            continue
        produced = [b for b in blocks if b.outcome in ("ok", "quarantined")]
        cpus = [b.cpu_seconds for b in blocks if b.cpu_seconds is not None]
        peaks = [b.peak_memory for b in blocks if b.peak_memory is not None]
        count = {o: sum(1 for b in blocks if b.outcome == o) for o in OUTCOMES}
        bp = record.backpressure.get(stage, Backpressure())
        out.append(StageStats(
            stage=stage, tasks=len(blocks), blocks=len(produced), retried=count["retried"],
            failed=count["failed"], cancelled=count["cancelled"],
            wall=_spread([b.seconds for b in blocks]), cpu=_spread(cpus) if cpus else None,
            rows_in=sum(b.rows_in for b in produced),
            rows_out=_spread([b.rows_out for b in produced]),
            bytes_out=_spread([b.bytes_out for b in produced]),
            peak_memory=max(peaks) if peaks else None,
            span=max(b.end for b in blocks) - min(b.start for b in blocks),
            busy=sum(b.seconds for b in blocks),
            workers=len({b.worker for b in blocks if b.worker is not None}),
            waiting_blocks=bp.blocks, waiting_seconds=bp.seconds))
    return out


def stats_text(record: RunRecord, stage_lines: dict[str, str] | None = None) -> str:
    """The per-stage figures as text, shaped like Ray Data's `ds.stats()`; "n/a" where a figure
    was not measured. `stage_lines` (stage -> a line, e.g. the Summary's) are added per stage."""
    lines = []
    for i, s in enumerate(stage_stats(record), 1):
        lines.append(f"Stage {i} {s.stage}: {s.tasks} tasks executed, {s.blocks} blocks produced "
                     f"in {s.span:.2f}s")
        if stage_lines and s.stage in stage_lines:
            lines.append(f"* {stage_lines[s.stage]}")
        lines.append(f"* Remote wall time: {_triple(s.wall, _secs)}")
        lines.append(f"* Remote cpu time: {_triple(s.cpu, _secs) if s.cpu else 'n/a'}")
        lines.append(f"* Output num rows per block: {_triple(s.rows_out, _count)}")
        sizes = _triple(s.bytes_out, _count) if s.bytes_out[3] or not s.rows_out[3] else "n/a"
        lines.append(f"* Output size bytes per block: {sizes}")
        peak = f"{s.peak_memory / 2**20:.1f}" if s.peak_memory is not None else "n/a"
        lines.append(f"* Peak heap memory usage (MiB): {peak}")
        # Spilling is the object store's, not a stage's: core does not say whose blocks it spilled.
        lines.append("* Spilled bytes: n/a (per stage; the run's total is below)")
        lines.append(f"* Rows in: {s.rows_in:,}; busy {s.busy:.2f}s over {s.workers or '?'} workers")
        lines.append(f"* Attempts: {s.retried} retried, {s.failed} failed, {s.cancelled} cancelled")
        lines.append(f"* Backpressure: {s.waiting_blocks} blocks waited {s.waiting_seconds:.2f}s")
        lines.append("")
    peak_pss = max((x.pss for x in record.samples), default=0)
    spilled = max((x.spilled for x in record.samples), default=0)
    done = sum(b.rows_out for b in record.blocks
               if b.outcome in ("ok", "quarantined") and record.stages and b.stage == record.stages[-1])
    rate = done / record.wall if record.wall > 0 else 0.0
    lines.append(f"Run {record.pipeline} ({record.run_id}): {record.status}, {done:,} rows in "
                 f"{record.wall:.2f}s ({rate:,.0f} rows/s)")
    peak = f"{peak_pss / 2**20:.1f} MiB" if record.samples else "n/a"
    spill = f"{spilled / 2**20:.1f} MiB" if record.spill_measured else "n/a"
    lines.append(f"* Peak memory (PSS, driver + workers): {peak}; spilled: {spill}; "
                 f"quarantined rows: {record.quarantined_total:,}")
    return "\n".join(lines)


def _spread(values: list) -> tuple:
    if not values:
        return (0, 0.0, 0, 0)
    return (min(values), fmean(values), max(values), sum(values))


def _secs(x: float) -> str:
    return f"{x:.3f}s" if x < 10 else f"{x:.1f}s"


def _count(x: float) -> str:
    return f"{x:,.0f}"


def _triple(t: tuple, fmt: Callable[[float], str]) -> str:
    lo, mean, hi, total = t
    return f"{fmt(lo)} min, {fmt(hi)} max, {fmt(mean)} mean, {fmt(total)} total"
