"""Results a worker holds back for batching are sent if the task after them runs long.

    worker main loop ── starting(task id) ──► HeldResults' thread: waits FLUSH_INTERVAL, then
                                              client.flush_during(task id) if it still runs
"""

from __future__ import annotations

import threading
import time
from typing import Any

FLUSH_INTERVAL = 0.002    # seconds: never sit on finished results longer than this


class HeldResults:
    """Results held back for batching are sent if the task after them runs long.

    Between tiny tasks the main loop keeps results for one frame (throughput); the task that
    follows may run for minutes, and the driver must not wait that long to learn the earlier
    ones are done (a caller waits for them; a deadline counts from them). When a task starts
    with results held, this thread wakes, waits FLUSH_INTERVAL, and sends them if that same
    task is still running."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.task: bytes | None = None
        self.wake = threading.Event()
        threading.Thread(target=self._loop, name="held-results", daemon=True).start()

    def starting(self, task_id: bytes) -> None:
        """The main thread starts `task_id` (cheap when nothing is held)."""
        if self.client.outbox:
            self.task = task_id
            if not self.wake.is_set():
                self.wake.set()

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            time.sleep(FLUSH_INTERVAL)
            task = self.task
            if task is not None:
                try:
                    self.client.flush_during(task)
                except OSError:  # the driver is gone: the main loop finds out and exits
                    return
