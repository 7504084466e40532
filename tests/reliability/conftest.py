"""Helpers and fixtures of the reliability suite: real `python -m dataflow` processes, real
signals, real files, the moto S3 server from tests/conftest.py.

Every test runs under `no_leaks`, which fails it when a process it started, or a shared-memory
segment that no session manifest accounts for, outlives it (the segments of a killed driver's
session are left to the next `init`; the tests that kill drivers check that cleanup themselves).

`@pytest.mark.slow` tests (the soak) run only when asked: `-m slow` or DDSF_SLOW=1.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.connectors.conftest import s3_auth_enforced  # noqa: F401  (moto checking credentials)
from tests.services import descendants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHM = "/dev/shm"
MODELS = "tests.reliability.models"


# ─── slow tests ────────────────────────────────────────────────────────────────────────────────
def pytest_collection_modifyitems(config, items):
    wanted = "slow" in (config.getoption("-m") or "") or os.environ.get("DDSF_SLOW") == "1"
    if wanted:
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or DDSF_SLOW=1")
    for item in items:
        if "slow" in item.keywords and "reliability" in str(item.fspath):
            item.add_marker(skip)


# ─── processes ─────────────────────────────────────────────────────────────────────────────────
def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    for k, v in (extra or {}).items():   # None removes the variable
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def dataflow(*args, cwd, extra_env: dict | None = None, timeout: float = 240
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataflow", *map(str, args)], cwd=cwd,
                          env=env(extra_env), capture_output=True, text=True, timeout=timeout)


def start(*args, cwd, extra_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dataflow", *map(str, args)], cwd=cwd,
                            env=env(extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=60)


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def one_error_line(stderr: str) -> str:
    """The single `dataflow: error: ...` line of a failed run (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("dataflow: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# ─── data and pipelines ────────────────────────────────────────────────────────────────────────
def make_data(dest, shards: int = 4, scale: float = 0.01, **kwargs) -> str:
    from connectors import make_nyc_taxi_shards

    make_nyc_taxi_shards(str(dest), shards=shards, scale=scale, **kwargs)
    return str(dest).rstrip("/") + "/"


BASE = {
    "name": "reliability",
    "source": {"parquet": "data/", "columns": ["passenger_count"]},
    "model": {"factory": f"{MODELS}:tip_model", "args": {"payload_mb": 1, "delay": 0.0}},
    "predict": {"batch_size": 1024, "batch_format": "pandas", "keep_columns": ["trip_distance"]},
    "sink": {"parquet": "out/"},
    "runtime": {"num_cpus": 2, "object_store_memory": "256MB", "spill": "spill/", "max_retries": 3},
}


def write_pipeline(path, **overrides) -> str:
    """BASE with `section__key=value` overrides (a value of None deletes the key)."""
    spec = copy.deepcopy(BASE)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        if not key:
            spec[section] = value
        elif value is None:
            spec[section].pop(key, None)
        else:
            spec.setdefault(section, {})[key] = value
    Path(path).write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def read_parts(folder) -> dict[str, pa.Table]:
    return {os.path.basename(p): pq.read_table(p)
            for p in sorted(glob.glob(f"{folder}/part-*.parquet"))}


def manifest(folder) -> dict:
    """The sink manifest's parts ({shard index: rows}); {} before the first commit."""
    try:
        with open(os.path.join(folder, "_manifest.json")) as f:
            return {e["shard"]: e["rows"] for e in json.load(f)["parts"].values()}
    except (OSError, ValueError, KeyError):
        return {}


def assert_identical(out, reference) -> None:
    """Same part files, each equal row for row to the reference run's."""
    got, want = read_parts(out), read_parts(reference)
    assert list(got) == list(want)
    for name, table in want.items():
        assert got[name].equals(table), name


def leftovers(folder) -> list[str]:
    """Temporary or partial files of a sink: anything but committed parts and the manifest."""
    names = []
    for dirpath, _, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), folder)
            if rel != "_manifest.json" and not (rel.startswith("part-") and "/" not in rel):
                names.append(rel)
    return names


# ─── sessions, segments, leaks ─────────────────────────────────────────────────────────────────
def session_manifests() -> list[dict]:
    from core._private.objects.shm import manifest_dir

    found = []
    for path in manifest_dir().glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["_path"] = str(path)
        found.append(data)
    return found


def session_of(pid: int) -> dict | None:
    return next((m for m in session_manifests() if m.get("pid") == pid), None)


def segments(prefix: str = "ddsf-") -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith(prefix)}


def _known_prefixes() -> set[str]:
    """Prefixes of every session with a manifest: live ones, and dead ones that the next `init`
    will clean (tests that kill a driver check that cleanup themselves)."""
    return {m.get("shm_prefix", "") for m in session_manifests()} - {""}


@pytest.fixture(autouse=True)
def no_leaks():
    """Nothing the test started survives it: child processes, unaccounted segments."""
    before = segments()
    yield
    _, alive = psutil.wait_procs(descendants(), timeout=15)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    known = _known_prefixes()
    leaked = sorted(n for n in segments() - before if not any(n.startswith(p) for p in known))
    assert not leaked, f"segments left in {SHM}: {leaked}"
