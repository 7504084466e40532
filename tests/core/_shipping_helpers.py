"""Remote functions and an actor in an importable module, for tests/core/test_contract.py:
they are shipped to workers by name, and their tracebacks point into this file."""

from __future__ import annotations

import core


@core.remote(max_retries=0)
def divide(a: int, b: int) -> float:
    return a / b  # the failing line, checked by the tests


@core.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def fail(self) -> None:
        raise KeyError("counter-failure")  # the failing method line
