"""Starting a local Ray instance does not depend on who imported `ray` first: a program that
imported it itself (Ray's auth mode then read without our setting) still starts "local-ray"."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed: install the extra with `pip install 'ddsf[ray]'` to run the Ray backend tests")]

_PROGRAM = """
import ray  # before core: Ray reads RAY_AUTH_MODE now, without ours
import core
core.init(address="local-ray", num_cpus=1)
try:
    print(core.get(core.put(41)) + 1)
finally:
    core.shutdown()
"""


def test_local_ray_starts_when_ray_was_imported_first():
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_AUTH_MODE", None)
    done = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "42"
