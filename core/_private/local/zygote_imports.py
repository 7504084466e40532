"""The zygote's preload imports, run by a helper thread so that a `core.build` runs meanwhile.

    zygote main thread                          helper thread "core-imports"
    add(preload) ─────────────────────────────► import each module (gc off, then frozen)
    build ──► the factory runs now               │   (the factory's page faults and the
                                                 │    imports' Python overlap: np.full and
                                                 │    file reads release the GIL)
    spawn ──► waits (deferred) while busy() ◄────┘ done: a byte on the wake-up fd
    busy() False ──► the deferred spawns fork: every worker has the preload imported
                     (only once the helper thread has left the process: _wait_gone)

The zygote's start is the critical path of a short run: its imports (pandas, pyarrow: ~0.4 s)
then the model's factory (800 MB of fresh pages: 0.1-2 s on these VMs) ran one after the other,
while the driver sat waiting for the build. Now they overlap.

A factory that leaves threads running stops the zygote from forking (see zygote.py), and the
imports may start threads of their own meanwhile (numpy's BLAS pool, pyarrow's jemalloc). They
are told apart by name: this thread is named `NAME`, and Linux gives a new thread its creator's
name, so a thread the imports start is named `NAME` too (unless it names itself: such a thread
started during a factory counts as the factory's, which only costs forking, never safety).
"""

from __future__ import annotations

import gc
import importlib
import os
import threading
import time
from typing import Sequence

NAME = "core-imports"  # the helper thread's name (/proc/self/task/<tid>/comm), inherited


def import_modules(modules: Sequence[str]) -> None:
    """Import `modules`, skipping any that fails (the task that needs it reports the error)."""
    # Without the collector: an import allocates hundreds of thousands of objects that live as
    # long as the process, and the collections they trigger (pandas: ~0.1 s of CPU, on the
    # critical path of every run) would find nothing to free. What they leave is frozen here
    # (gc.freeze, as its docs advise for a pre-fork server): left in the young generations, it
    # would make the first allocation after gc.enable() run a full collection (40-60 ms, before
    # the next fork or build).
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - the task that needs it reports the error
                pass
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def threads() -> dict[int, str]:
    """This process's threads: native id -> name."""
    out = {}
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    out[int(tid)] = f.read().strip()
            except OSError:  # it ended meanwhile
                pass
    except OSError:
        pass
    return out


def started_since(before: dict[int, str]) -> list[int]:
    """Threads running now that were not in `before` and that the imports did not start."""
    return [tid for tid, name in threads().items() if tid not in before and name != NAME]


class Imports:
    """The modules asked for, imported by one helper thread at a time; `wake_fd` gets a byte
    when they are all done (the zygote's select loop then forks the spawns it deferred)."""

    def __init__(self, wake_fd: int) -> None:
        self._wake_fd = wake_fd
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._running = False                          # the helper thread has modules to import
        self._thread: threading.Thread | None = None   # the last one started, until joined

    def add(self, modules: Sequence[str]) -> None:
        with self._lock:
            self._pending += modules
            if self._running or not self._pending:
                return
            if self._thread is not None:   # done with its modules, ending: only its wake-up left
                _wait_gone(self._thread)   # so that busy() has only the newest one to wait for
            self._running = True
            self._thread = threading.Thread(target=self._run, name=NAME, daemon=True)
            self._thread.start()

    def busy(self) -> bool:
        """Whether imports are still running. False only once the helper thread has ended, so
        that a fork right after sees no thread of ours in this process."""
        with self._lock:
            if self._running:
                return True
            thread, self._thread = self._thread, None
        if thread is not None:
            _wait_gone(thread)
        return False

    def _run(self) -> None:
        _name_this_thread(NAME)
        while True:
            with self._lock:
                modules, self._pending = self._pending, []
                if not modules:
                    self._running = False
                    break
            import_modules(modules)
        try:
            os.write(self._wake_fd, b"\0")
        except OSError:  # full (the loop wakes anyway) or closed (the zygote is leaving)
            pass


def _wait_gone(thread: threading.Thread) -> None:
    """Until `thread` has left the process. join() returns once its Python part is done; the C
    library then runs its exit handlers, OpenSSL's among them, under OpenSSL's global lock. A
    fork in that window leaves the lock held in the child, whose first SSL context then waits
    forever (a worker's S3 upload hung so in CI; forking right after join() hung 4 times in
    3,000 on a loaded machine here, 0 in 3,000 after this wait)."""
    thread.join()
    task = f"/proc/self/task/{thread.native_id}"
    deadline = time.monotonic() + 10.0          # a bound, should an exit handler never return
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(0.0002)


def _name_this_thread(name: str) -> None:
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name)
    except OSError:  # no /proc: its threads count as a factory's (safe, forks stop)
        pass
