"""What a worker or zygote process sets up about itself: to die with its parent, the driver's
sys.path, and cancellation by SIGINT plus the task id on the control pipe."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import threading
from typing import Any


def die_with_parent(name: str = "core-worker") -> None:
    """Ask the kernel to SIGKILL us when our parent (the driver, or the zygote) dies, so no worker
    outlives a killed driver; and name the process, as `ps` and `top` show it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, name.encode()[:15])  # PR_SET_NAME
    except OSError:
        pass


def extend_sys_path() -> None:
    """Import what the driver can import: its sys.path comes in DDSF_SYS_PATH."""
    extra_path = os.environ.get("DDSF_SYS_PATH")
    if extra_path:
        for p in reversed(extra_path.split(os.pathsep)):
            if p not in sys.path:
                sys.path.insert(0, p)


CANCEL_RETRY_S = 0.02  # a cancel that a finalizer swallowed is signalled again within this


def install_cancel_handler(client: Any, ctl_fd: int) -> None:
    """SIGINT cancels the running task if the control pipe names it (`client`: the worker's
    WorkerClient, its `cancelled` set and `current_task`)."""
    os.set_blocking(ctl_fd, False)
    cancelled = client.cancelled
    interrupted: list[bytes | None] = [None]  # the task the last KeyboardInterrupt was for
    default_hook = sys.unraisablehook

    def on_sigint(signum, frame):
        try:
            data = os.read(ctl_fd, 1 << 16)
        except BlockingIOError:
            data = b""
        for i in range(0, len(data) - len(data) % 20, 20):
            cancelled.add(data[i:i + 20])
        if client.current_task is not None and client.current_task in cancelled:
            cancelled.discard(client.current_task)
            interrupted[0] = client.current_task
            raise KeyboardInterrupt

    def on_unraisable(unraisable) -> None:
        # The interrupt landed in a finalizer (a __del__, a weakref callback), where Python can
        # only print it and drop it: cancel again in a moment, once the finalizer has returned
        # (should that land in a finalizer too, this runs again; the jitter keeps a loop that
        # makes and drops objects from catching every retry in the same place).
        task = interrupted[0]
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and task is not None:
            interrupted[0] = None
            if client.current_task == task:
                cancelled.add(task)
                delay = random.uniform(0.1, 1.0) * CANCEL_RETRY_S
                retry = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
                retry.daemon = True
                retry.start()
            return
        default_hook(unraisable)

    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = on_unraisable
