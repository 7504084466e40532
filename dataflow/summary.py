"""What a run reports: the `Summary`, and the sampler that measures peak memory.

Peak memory is the largest sum, over the driver and every process under it (the workers), of
PSS (proportional set size: a shared page counts 1/n in each of the n processes that map it), or
RSS where PSS is not available. PSS is the honest figure for a model in shared memory: mapped by
two workers it counts once, not twice.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["done", "partial", "failed", "interrupted"]


@dataclass
class FailedShard:
    index: int
    path: str
    error: str
    attempts: int


@dataclass
class Summary:
    name: str
    status: Status
    rows: int = 0                       # prediction rows written (or streamed)
    rows_quarantined: int = 0
    shards: int = 0                     # shards in the plan
    shards_done: int = 0                # finished in this run
    shards_skipped: int = 0             # already committed by an earlier run (resume)
    failed: list[FailedShard] = field(default_factory=list)
    quarantined_shards: list[int] = field(default_factory=list)
    wall_time: float = 0.0
    peak_memory: int = 0                # bytes, sum of PSS over driver + workers
    output: str | None = None
    # One entry per stage (rows_in, rows_out, blocks, busy_seconds, actors, backpressure, ...).
    stages: list[dict] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def failed_shards(self) -> list[int]:
        return [f.index for f in self.failed]

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "done" else 130 if self.status == "interrupted" else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows_per_second"] = round(self.rows_per_second, 1)
        d["wall_time"] = round(self.wall_time, 3)
        return d

    def table(self) -> str:
        """The summary as aligned lines, for the end of a CLI run."""
        rows = [
            ("pipeline", self.name),
            ("status", self.status),
            ("shards", f"{self.shards_done} done, {self.shards_skipped} already committed, "
                       f"{len(self.failed)} failed (of {self.shards})"),
            ("rows", f"{self.rows:,}" + (f" ({self.rows_quarantined:,} quarantined)" if self.rows_quarantined else "")),
            ("wall time", f"{self.wall_time:.2f} s"),
            ("rows/s", f"{self.rows_per_second:,.0f}"),
            ("peak memory", f"{format_bytes(self.peak_memory)} (PSS, driver + workers)"),
        ]
        if self.output:
            rows.append(("output", self.output))
        if len(self.stages) > 1 or any(st["kind"] == "pool" for st in self.stages):
            rows += [(f"stage {st['name']}", stage_line(st, self.bottleneck)) for st in self.stages]
        for f in self.failed:
            rows.append((f"failed shard {f.index}", f"{f.path}: {f.error} (after {f.attempts} attempts)"))
        if self.quarantined_shards:
            rows.append(("quarantine", f"shards {', '.join(map(str, self.quarantined_shards))} -> "
                                       f"{(self.output or '').rstrip('/')}/_quarantine/"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


    @property
    def bottleneck(self) -> str | None:
        """The stage with the most busy time per worker: the one the others wait for."""
        if not self.stages:
            return None
        return max(self.stages, key=lambda st: st["busy_seconds"] / max(1, st["workers"]))["name"]


def stage_line(st: dict, bottleneck: str | None = None) -> str:
    """`rows in/out, blocks, busy time, actors` for one stage, and its flags."""
    who = f"{st['actors']} actors" if st["kind"] == "pool" else f"{st['workers']} workers"
    fused = f", fused with {', '.join(st['fused_with'])}" if st.get("fused_with") else ""
    flags = (" [backpressure]" if st.get("backpressure") else "") + (" [bottleneck]" if st["name"] == bottleneck else "")
    return (f"{st['kind']}: {st['rows_in']:,} rows in, {st['rows_out']:,} out, {st['blocks']} blocks, "
            f"busy {st['busy_seconds']:.2f} s, {who}{fused}{flags}")


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def tree_memory(pid: int | None = None) -> int:
    """Sum of PSS (or RSS) over a process and all its descendants, in bytes."""
    return sum(process_memory(p) for p in _tree(pid))


def tree_rss(pid: int | None = None) -> int:
    """Sum of RSS over a process and its descendants: a shared page counts in every process that
    maps it, but the kernel keeps the figure ready (microseconds, where PSS costs milliseconds)."""
    import psutil

    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:  # it exited meanwhile
            pass
    return total


def _tree(pid: int | None) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def process_memory(p) -> int:
    """PSS of one psutil.Process (RSS where PSS is denied), 0 once it has exited."""
    import psutil

    try:
        info = p.memory_full_info()
        return getattr(info, "pss", 0) or info.rss
    except psutil.AccessDenied:
        try:
            return p.memory_info().rss
        except psutil.Error:
            return 0
    except psutil.Error:
        return 0


class MemorySampler:
    """Keeps the peak of `tree_memory` (PSS) over a run, from a daemon thread.

    PSS is dear: the kernel walks every page table of every process for it, ~4 ms per process
    with pandas loaded, and that CPU is taken from the workers (and, early on, from the workers'
    imports). RSS is nearly free. So each tick reads the RSS sum and measures PSS only when the
    RSS sum has grown by `rise` since the last PSS measurement: memory rises at the start (the
    model put, the workers' first batches) and stays flat after, as the executor bounds the work
    in flight, so a run measures PSS a few times however long it is. Ticks thin out from
    `interval` to `max_interval`."""

    def __init__(self, interval: float = 0.2, max_interval: float = 1.0, rise: float = 0.05):
        self.interval, self.max_interval, self.rise = interval, max_interval, rise
        self.peak = 0
        self._rss_measured = 0  # the RSS sum when PSS was last measured
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dataflow-memory")
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss = tree_rss()
        if rss > self._rss_measured * (1 + self.rise):
            self._rss_measured = rss
            self.peak = max(self.peak, tree_memory())

    def _loop(self) -> None:
        wait = self.interval
        self._sample()
        while not self._stop.wait(wait):
            self._sample()
            wait = min(self.max_interval, 2 * wait)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, tree_memory())
