"""Progress: a tqdm bar (rows, rows/s, shards done, ETA) on a terminal; plain lines otherwise
(CI logs, pipes), one per shard event. The pipeline calls these hooks; they never raise.

A multi-stage run also reports its stages live (`stage_update`, fed from the streaming
executor's StagesUpdate events): on a terminal one tqdm bar per stage under the run's bar (rows
in, blocks queued and in flight, busy time, actors, `[backpressure]` on a stage held back by the
next one's full buffer and `[bottleneck]` on the stage whose input waits), updated in place like
Ray Data's operator bars; otherwise, with --verbose, the same as plain lines every
`stage_every` seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Hooks the pipeline calls as the run moves. `verbose` adds the per-shard report lines."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False, bar: bool | None = None,
                 report: str | None = None, stage_every: float = 5.0):
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.use_bar = _isatty(self.stream) if bar is None else bar
        self.report = report
        self._bar = None
        self.total_rows = 0
        self.total_shards = 0
        self.shards_done = 0
        self.rows = 0
        self._start = time.monotonic()
        self.stage_every = stage_every
        self._stage_bars: dict = {}
        self._stage_printed = 0.0

    # -- hooks ------------------------------------------------------------------------------
    def start(self, name: str, shards: int, rows: int, skipped: int) -> None:
        self.total_shards, self.total_rows = shards, rows
        self.shards_done = skipped
        self._start = time.monotonic()
        if skipped:
            self.line(f"{name}: {skipped} of {shards} shards already committed, resuming")
        if self.use_bar:
            from tqdm import tqdm

            # A terminal that reports no size (some CI ptys, serial consoles) gets a fixed one:
            # tqdm would otherwise hide the bar (it thinks the screen has no room for it).
            sized = _width(self.stream) > 0
            self._bar = tqdm(total=rows, unit="rows", unit_scale=True, file=self.stream, desc=name,
                             dynamic_ncols=sized, ncols=None if sized else 100,
                             nrows=None if sized else 24, smoothing=0.1)
            self._bar.set_postfix_str(self._shards())
        else:
            self.line(f"{name}: {shards - skipped} shards to run, {rows:,} rows")

    def shard_done(self, index: int, rows_in: int, rows_out: int, seconds: float, sums: dict,
                   quarantined: int = 0) -> None:
        self.shards_done += 1
        self.rows += rows_in
        extra = f", {quarantined:,} quarantined" if quarantined else ""
        if self.verbose:
            self.line(self.report_line(index, rows_out, sums, seconds))
        if self._bar is not None:
            self._bar.update(rows_in)
            self._bar.set_postfix_str(self._shards())
        elif not self.verbose:  # verbose: the report line stands for the shard
            self.line(f"shard {index} done: {rows_out:,} rows{extra} in {seconds:.2f} s | "
                      f"{self._shards()} | {self._rate()} | ETA {self._eta()}")

    def shard_retry(self, index: int, attempt: int, error: str) -> None:
        self.line(f"shard {index} failed (attempt {attempt}), retrying: {error}")

    def shard_failed(self, index: int, attempts: int, error: str) -> None:
        self.line(f"shard {index} FAILED after {attempts} attempts: {error}")

    def stage_update(self, stages: list[dict]) -> None:
        """The stages' live figures (streaming.StreamExecutor.live_report): bars on a terminal,
        plain lines with --verbose elsewhere (every `stage_every` seconds)."""
        try:
            if self._bar is not None:
                self._update_stage_bars(stages)
            elif self.verbose and time.monotonic() - self._stage_printed >= self.stage_every:
                self._stage_printed = time.monotonic()
                for st in stages:
                    self.line(f"stage {st['name']}: {live_stage_line(st)}")
        except Exception:  # noqa: BLE001 - progress must never fail the run
            pass

    def _update_stage_bars(self, stages: list[dict]) -> None:
        from tqdm import tqdm

        sized = _width(self.stream) > 0
        for i, st in enumerate(stages):
            bar = self._stage_bars.get(st["name"])
            if bar is None:
                bar = self._stage_bars[st["name"]] = tqdm(
                    total=self.total_rows or None, unit="rows", unit_scale=True, file=self.stream,
                    desc=f"  {st['name']}", position=i + 1, leave=False, dynamic_ncols=sized,
                    ncols=None if sized else 100, nrows=None if sized else 24)
            bar.update(max(0, st["rows_in"] - bar.n))
            # The marks go in the description: a narrow terminal cuts the postfix, not the name.
            bar.set_description_str(f"  {st['name']}{_flags(st)}", refresh=False)
            bar.set_postfix_str(live_stage_line(st, rows=False, flags=False), refresh=True)

    def stages(self, stages: list[dict]) -> None:
        """Per-stage lines at the end of a run (--verbose)."""
        if not self.verbose or not stages:
            return
        from .summary import Summary, stage_line

        bottleneck = Summary("", "done", stages=stages).bottleneck
        for st in stages:
            self.line(f"stage {st['name']}: {stage_line(st, bottleneck)}")

    def close(self) -> None:
        for bar in self._stage_bars.values():
            bar.close()
        self._stage_bars.clear()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- helpers ----------------------------------------------------------------------------
    def report_line(self, index: int, rows: int, sums: dict, seconds: float) -> str:
        if self.report:
            try:
                return self.report.format(shard=index, rows=rows, sum=_Sums(sums), seconds=seconds)
            except (KeyError, IndexError, ValueError, AttributeError):
                pass
        parts = " | ".join(f"sum of {k}: {v:g}" for k, v in sums.items())
        return f"shard {index}: {rows:,} rows" + (f" | {parts}" if parts else "")

    def line(self, text: str) -> None:
        try:
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed pipe must not fail the run
            pass

    def _shards(self) -> str:
        return f"{self.shards_done}/{self.total_shards} shards"

    def _rate(self) -> str:
        elapsed = time.monotonic() - self._start
        return f"{self.rows / elapsed:,.0f} rows/s" if elapsed > 0 else "- rows/s"

    def _eta(self) -> str:
        elapsed = time.monotonic() - self._start
        if not self.rows or elapsed <= 0:
            return "?"
        left = max(0, self.total_rows - self.rows) / (self.rows / elapsed)
        return f"{left:.0f}s"


def live_stage_line(st: dict, rows: bool = True, flags: bool = True) -> str:
    """One stage as the run goes: `tasks: 1,200 rows in, 1,200 out, 3 queued, 2 in flight, busy
    0.52 s, 2 actors [backpressure] [bottleneck]` (rows left out for a bar, which shows them)."""
    parts = [f"{st['rows_in']:,} rows in, {st['rows_out']:,} out"] if rows else [f"{st['rows_out']:,} out"]
    if not st.get("head", True):
        parts.append(f"with {', '.join(st['fused_with'])}")  # its blocks are counted on the segment's first stage
    else:
        parts += [f"{st.get('queued', 0)} queued", f"{st.get('in_flight', 0)} in flight"]
    parts.append(f"busy {st['busy_seconds']:.2f} s")
    if st["kind"] == "pool":
        parts.append(f"{st['actors']} actors")
    return f"{st['kind']}: " + ", ".join(parts) + (_flags(st) if flags else "")


def _flags(st: dict) -> str:
    return (" [backpressure]" if st.get("backpressure") else "") + (" [bottleneck]" if st.get("bottleneck") else "")


class _Sums(dict):
    def __missing__(self, key):
        return 0


class Silent(Progress):
    """No output at all (the Python API's default in scripts; tests)."""

    def line(self, text: str) -> None:
        pass

    def start(self, name, shards, rows, skipped) -> None:
        self.use_bar = False
        super().start(name, shards, rows, skipped)


def _width(stream: TextIO) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
