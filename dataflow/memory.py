"""Memory of a run: process-tree PSS, and the one sampler that follows it over a run.

    MemorySampler (a daemon thread, every `interval` s)
        │ RSS of the driver and every process under it (the kernel keeps it ready: µs)
        │ PSS only when the RSS sum moved by `rise` since the last PSS, or `pss_every` s passed
        ▼
      peak (the largest PSS sum)  +  on_sample(pss) for whoever keeps a time series (RunRecorder)

PSS (proportional set size: a shared page counts 1/n in each of the n processes that map it, RSS
where PSS is denied) is the honest figure for a model in shared memory: mapped by two workers it
counts once, not twice. It is dear: the kernel walks every page table, ~4 ms per process with
pandas loaded, CPU taken from the workers. Memory rises at the start of a run (the model put, the
first batches) and stays flat after, since the executor bounds the work in flight; so a run
measures PSS a handful of times however long it is. The process list is refreshed every `relist`
seconds only (listing reads every process in /proc, ~2 ms); workers live for the run.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import psutil


def process_memory(p: psutil.Process) -> int:
    """PSS of one process (RSS where PSS is denied), 0 once it has exited."""
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


def process_tree(pid: int | None = None) -> list[psutil.Process]:
    """A process (this one by default) and all its descendants; [] once it has exited."""
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def tree_memory(pid: int | None = None) -> int:
    """Sum of PSS (or RSS) over a process and all its descendants, in bytes."""
    return sum(process_memory(p) for p in process_tree(pid))


def tree_rss(pid: int | None = None) -> int:
    """Sum of RSS over a process and its descendants: a shared page counts in every process that
    maps it, but the kernel keeps the figure ready (microseconds, where PSS costs milliseconds)."""
    return _rss(process_tree(pid))


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # it exited meanwhile
            pass
    return total


class MemorySampler:
    """PSS of this process and its descendants over a run: `peak`, and `on_sample(pss)` at each
    tick (from the sampler's thread, so it must be quick and thread-safe; what it raises is
    swallowed: a sample never fails a run).

        with MemorySampler() as memory:     # or start() ... stop()
            ...
        memory.peak                         # bytes; stop() takes a last, full measurement
    """

    def __init__(self, interval: float = 0.5, *, rise: float = 0.05, pss_every: float = 10.0,
                 relist: float = 1.0, on_sample: Callable[[int], None] | None = None,
                 name: str = "dataflow-memory"):
        self.interval, self.rise, self.pss_every, self.relist = interval, rise, pss_every, relist
        self.on_sample, self.name = on_sample, name
        self.peak = 0
        self._pss = 0
        self._rss_at = -1.0             # the RSS sum when PSS was last measured
        self._pss_at = float("-inf")    # when (time.monotonic())
        self._root: psutil.Process | None = None
        self._kids: dict[int, psutil.Process] = {}
        self._listed_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "MemorySampler":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True, name=self.name)
            self._thread.start()
        return self

    def stop(self) -> int:
        """Stop the thread and take a last, full measurement (reported to `on_sample` too).
        Returns the peak."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self._tick(force=True)
        return self.peak

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- measuring -------------------------------------------------------------------------
    def measure(self, force: bool = False) -> int:
        """The tree's PSS now: re-measured when the RSS sum moved by `rise`, `pss_every` seconds
        passed, or `force`; else the last PSS measured. Updates `peak`."""
        now = time.monotonic()
        procs = self._tree(now, relist=force)
        rss = _rss(procs)
        if force or abs(rss - self._rss_at) > self.rise * max(self._rss_at, 1) or now - self._pss_at >= self.pss_every:
            self._rss_at, self._pss_at = rss, now
            self._pss = sum(process_memory(p) for p in procs)
            self.peak = max(self.peak, self._pss)
        return self._pss

    def _tree(self, now: float, relist: bool = False) -> list[psutil.Process]:
        if self._root is None:
            self._root = psutil.Process()
        if relist or now - self._listed_at >= self.relist:
            self._listed_at = now
            try:
                kids = self._root.children(recursive=True)
            except psutil.Error:
                kids = []
            # Known processes keep their psutil object (its cached handles make reads cheap).
            self._kids = {k.pid: self._kids.get(k.pid, k) for k in kids}
        return [self._root, *self._kids.values()]

    def _tick(self, force: bool = False) -> None:
        try:
            pss = self.measure(force)
        except Exception:  # the tree changing under psutil, say: a sample never fails the run
            pss = self._pss
        if self.on_sample is not None:
            try:
                self.on_sample(pss)
            except Exception:  # nor does its consumer
                pass

    def _loop(self) -> None:
        self._tick()
        while not self._stop.wait(self.interval):
            self._tick()
