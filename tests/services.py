"""Long-lived helper processes the test process starts for many tests (the moto S3 server).

They are children of the test process, so leak checks that walk its process tree must leave
them out: `descendants()` is that tree without them.
"""

from __future__ import annotations

import psutil

SERVICE_PIDS: set[int] = set()


def descendants() -> list[psutil.Process]:
    """This process's descendants, less the shared services and their own children."""
    found = []
    for proc in psutil.Process().children(recursive=False):
        if proc.pid in SERVICE_PIDS:
            continue
        found.append(proc)
        try:
            found.extend(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return found
