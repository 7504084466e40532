"""What a run reports: the `Summary` (the table at the end of a CLI run, `--json`), and its
per-stage stats text (`Summary.stats()`, shaped like Ray Data's `ds.stats()`).

Peak memory is the largest sum of PSS over the driver and every process under it (the workers),
measured by `memory.MemorySampler` (see there why PSS, and how it stays cheap).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from .memory import tree_memory  # noqa: F401 - benchmarks/ import it from here
from .recorder import RunRecord, stats_text

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
    # What the run did block by block (the recorder's record): stats() reads it; not in to_dict().
    record: RunRecord | None = field(default=None, repr=False, compare=False)

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
        d = asdict(replace(self, record=None))
        del d["record"]
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

    def stats(self) -> str:
        """Per stage, as text, what Ray Data's `ds.stats()` gives: tasks, wall and CPU time
        min/mean/max, rows and bytes out, peak memory, spilled bytes ("n/a" where not known)."""
        return run_stats(self.record, self.stages)

    @property
    def bottleneck(self) -> str | None:
        """The stage with the most busy time per worker: the one the others wait for."""
        if not self.stages:
            return None
        return max(self.stages, key=lambda st: st["busy_seconds"] / max(1, st["workers"]))["name"]


def run_stats(record: RunRecord | None, stages: list[dict]) -> str:
    """The stats text of a run: its record's per-stage figures, each stage with its summary line
    (`stages`: Summary.stages, or a stream's `Pipeline.last_stages`)."""
    bottleneck = Summary("", "done", stages=stages).bottleneck if stages else None
    lines = {st["name"]: f"stage {st['name']}: {stage_line(st, bottleneck)}" for st in stages}
    if record is None or not record.blocks:
        return "\n".join(lines.values()) or "no stats: no block ran"
    return stats_text(record, lines)


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
