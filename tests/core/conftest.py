"""Fixtures for core tests: a running session that is always shut down, and leak checks."""

from __future__ import annotations

import os

import pytest

import core
from core._private.runtime import current as current_runtime


def _started(**kwargs):
    core.init(**kwargs)
    return current_runtime().session.prefix


def _assert_nothing_left(prefix: str) -> None:
    leaked = sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    assert not leaked, f"segments left in /dev/shm: {leaked}"


@pytest.fixture
def session():
    """A local session with 2 CPUs; shut down after the test, leaving no segment behind."""
    prefix = _started(num_cpus=2)
    try:
        yield core
    finally:
        core.shutdown()
    _assert_nothing_left(prefix)


@pytest.fixture
def make_session():
    """Start a session with custom arguments: `make_session(num_cpus=1, ...)`."""
    prefixes = []

    def start(**kwargs):
        prefixes.append(_started(**kwargs))
        return core

    try:
        yield start
    finally:
        core.shutdown()
    for prefix in prefixes:
        _assert_nothing_left(prefix)
