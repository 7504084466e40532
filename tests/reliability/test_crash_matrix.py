"""A crash matrix, after loky's tests/test_reusable_executor.py: a worker SIGKILLed at each stage
of a task's life, each case with the outcome it must have.

    stage of the task                       killed by                    outcome
    ─────────────────────────────────────   ──────────────────────────   ─────────────────────────────
    unpickling its arguments                the argument's reconstructor retried and right; or
                                                                         WorkerCrashedError (no retries)
    running                                 the test, on a marker        same
    pickling its result                     the result's __reduce__      same
    blocked in a nested get                 the test, once the nested    same; the CPU it gave back
                                            task runs (1 CPU: it can     while blocked is not given
                                            only run once the outer      back twice
                                            task gave its CPU back)
    pipelined behind a running task         the test, on a marker        the running task as above; the
                                                                         queued one never started: right,
                                                                         even with no retries
    writing its part (dataflow run)         an audit hook on the open    the shard is retried; the output
                                            of the part's temp file      is identical to a clean run
    actor mid-method                        the test, on a marker        ActorDiedError for the calls sent
                                                                         to it; later calls: ActorDiedError,
                                                                         or right on the restarted actor

Every kill happens at a precise moment: the process touches a marker file (or kills itself) at
the stage under test; nothing waits on a clock. After each case: the pool still runs tasks,
`available_resources()` equals `cluster_resources()` once idle and was never negative nor above
it in between (sampled all along), and nothing is left in /dev/shm (the `session` fixture and
the suite's `no_leaks`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import core
from core._private.tasks.scheduler import pipelined
from core.exceptions import ActorDiedError, WorkerCrashedError
from tests.reliability.conftest import assert_identical, dataflow, leftovers, make_data, write_pipeline
from tests.reliability.models import TipModel

MARKER_WAIT_S = 120.0     # an upper bound for a marker to appear, never a timing assumption


# ─── helpers ───────────────────────────────────────────────────────────────────────────────────
def _touch(path: str, text: str = "") -> None:
    """Write `path` atomically: a reader sees all of `text` or no file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_file(path: str | Path) -> str:
    deadline = time.monotonic() + MARKER_WAIT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.005)
    return Path(path).read_text()


def _kill_pid_in(path: str | Path) -> int:
    pid = int(_wait_for_file(path))
    os.kill(pid, signal.SIGKILL)
    return pid


def _wait_until_reaped(pid: int) -> None:
    """Until the engine has handled the death of worker `pid` (it is gone from its table)."""
    rt = core._private.runtime.current()
    deadline = time.monotonic() + MARKER_WAIT_S
    while any(w["pid"] == pid for w in rt.worker_stats()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine did not notice that worker {pid} died")
        time.sleep(0.005)


def _park(release: str) -> None:
    """Block (in a task) until `release` exists; the test kills the process meanwhile."""
    _wait_for_file(release)


class _Sampler(threading.Thread):
    """Samples available_resources() all along a case: never negative, never above the total."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.total = {k: v for k, v in core.cluster_resources().items() if k != "object_store_memory"}
        self.bad: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.002):
            try:
                avail = core.available_resources()
            except Exception:  # noqa: BLE001 - the session is shutting down
                return
            if any(avail.get(k, 0.0) < -1e-9 or avail.get(k, 0.0) > v + 1e-9 for k, v in self.total.items()):
                self.bad.append(avail)


@pytest.fixture
def session(tmp_path):
    """`start(num_cpus=...)`: a session checked after the case; stopped, leaving no segment."""
    samplers = []

    def start(**kwargs):
        core.init(**kwargs)
        sampler = _Sampler()
        sampler.start()
        samplers.append(sampler)
        return core._private.runtime.current()

    try:
        yield start
        for s in samplers:
            _check_healthy(s)
    finally:
        for s in samplers:
            s.stop.set()
            s.join()
        prefix = None
        rt = core._private.runtime.current()
        if rt is not None:
            prefix = rt.session.prefix
        core.shutdown()
        if prefix:
            left = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
            assert not left, f"segments left in /dev/shm: {left}"


def _check_healthy(sampler: _Sampler) -> None:
    """The pool runs tasks; resources all back once idle; never out of bounds in between."""
    assert core.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]
    total = {k: v for k, v in core.cluster_resources().items() if k != "object_store_memory"}
    deadline = time.monotonic() + MARKER_WAIT_S
    while True:
        avail = {k: v for k, v in core.available_resources().items() if k != "object_store_memory"}
        if avail == total or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert avail == total, f"idle session: available {avail} != cluster {total}"
    assert not sampler.bad, f"available resources out of [0, total] at times: {sampler.bad[:3]}"


@core.remote
def square(x: int) -> int:
    return x * x


# ─── killed while unpickling its arguments ──────────────────────────────────────────────────────
class DieOnLoad:
    """An argument whose reconstruction in the worker kills the worker, the first time."""

    def __init__(self, marker: str, value: int) -> None:
        self.marker, self.value = marker, value

    def __reduce__(self):
        return (_load_or_die, (self.marker, self.value))


def _load_or_die(marker: str, value: int) -> int:
    if not os.path.exists(marker):
        _touch(marker, str(os.getpid()))
        _die()
    return value


@core.remote
def add_one(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("retries", [3, 0])
def test_killed_while_unpickling_its_arguments(session, tmp_path, retries):
    session(num_cpus=2)
    ref = add_one.options(max_retries=retries).remote(DieOnLoad(str(tmp_path / "loaded"), 41))
    if retries:
        assert core.get(ref) == 42                      # retried and right
    else:
        with pytest.raises(WorkerCrashedError, match="add_one"):
            core.get(ref)
    assert os.path.exists(tmp_path / "loaded")


# ─── killed while running ───────────────────────────────────────────────────────────────────────
@core.remote
def hold(marker: str, release: str, value: int) -> int:
    if not os.path.exists(marker):                      # first attempt: say where we are, wait
        _touch(marker, str(os.getpid()))
        _park(release)
    return value


@pytest.mark.parametrize("retries", [3, 0])
def test_killed_while_running(session, tmp_path, retries):
    session(num_cpus=2)
    marker, release = str(tmp_path / "running"), str(tmp_path / "never")
    ref = hold.options(max_retries=retries).remote(marker, release, 7)
    _kill_pid_in(marker)
    if retries:
        assert core.get(ref) == 7
    else:
        with pytest.raises(WorkerCrashedError, match="hold"):
            core.get(ref)


# ─── killed while pickling its result ───────────────────────────────────────────────────────────
class DieOnPickle:
    """A result whose pickling in the worker kills the worker, the first time."""

    def __init__(self, marker: str, value: int) -> None:
        self.marker, self.value = marker, value

    def __reduce__(self):
        if not os.path.exists(self.marker):
            _touch(self.marker, str(os.getpid()))
            _die()
        return (int, (self.value,))


@core.remote
def make_result(marker: str, value: int) -> DieOnPickle:
    return DieOnPickle(marker, value)


@pytest.mark.parametrize("retries", [3, 0])
def test_killed_while_pickling_its_result(session, tmp_path, retries):
    session(num_cpus=2)
    ref = make_result.options(max_retries=retries).remote(str(tmp_path / "pickled"), 5)
    if retries:
        assert core.get(ref) == 5
    else:
        with pytest.raises(WorkerCrashedError, match="make_result"):
            core.get(ref)


# ─── killed while blocked in a nested get ───────────────────────────────────────────────────────
@core.remote
def inner(folder: str) -> int:
    if not os.path.exists(f"{folder}/outer-killed"):
        _touch(f"{folder}/inner-running", str(os.getpid()))
        _park(f"{folder}/outer-killed")
    return 1


@core.remote
def outer(folder: str) -> int:
    if not os.path.exists(f"{folder}/outer"):
        _touch(f"{folder}/outer", str(os.getpid()))
    return core.get(inner.remote(folder)) + 1


@pytest.mark.parametrize("retries", [3, 0])
def test_killed_while_blocked_in_a_nested_get(session, tmp_path, retries):
    # One CPU: `inner` can only start once `outer` has blocked in core.get and given its CPU
    # back, so "inner-running" marks the moment outer is blocked.
    session(num_cpus=1)
    folder = str(tmp_path)
    ref = outer.options(max_retries=retries).remote(folder)
    _wait_for_file(f"{folder}/inner-running")
    pid = _kill_pid_in(f"{folder}/outer")
    _wait_until_reaped(pid)               # the engine handled the death while outer was blocked
    _touch(f"{folder}/outer-killed")
    if retries:
        assert core.get(ref) == 2
    else:
        with pytest.raises(WorkerCrashedError, match="outer"):
            core.get(ref)


# ─── killed while holding a pipelined task behind the running one ──────────────────────────────
@core.remote
def step(marker: str | None, release: str, value: int) -> int:
    if marker is not None and not os.path.exists(marker):
        _touch(marker, str(os.getpid()))
        _park(release)
    time.sleep(0.05)                                   # a ~50 ms task: the kind that is pipelined
    return value


@pytest.mark.parametrize("retries", [3, 0])
def test_killed_holding_a_pipelined_task_behind_a_running_one(session, tmp_path, retries):
    rt = session(num_cpus=1)
    release = str(tmp_path / "never")
    fn_id = step._shipped.blob_and_id()[1]
    for _ in range(50):     # until the engine has measured it short enough to pipeline
        assert core.get([step.remote(None, release, i) for i in range(3)]) == [0, 1, 2]
        if pipelined(rt.fn_time.get(fn_id)):
            break
    marker = str(tmp_path / "running")
    running = step.options(max_retries=retries).remote(marker, release, 10)
    queued = step.options(max_retries=retries).remote(None, release, 11)
    _wait_for_file(marker)
    task = rt.by_return[queued.binary]
    assert task.pipelined and task.worker is rt.by_return[running.binary].worker, \
        f"precondition: the second task is queued on the worker running the first ({rt.fn_time})"
    _kill_pid_in(marker)
    if retries:
        assert core.get(running) == 10
    else:
        with pytest.raises(WorkerCrashedError, match="step"):
            core.get(running)
    assert core.get(queued) == 11     # it never started: it is run again, and keeps its retries


# ─── an actor killed mid-method ─────────────────────────────────────────────────────────────────
@core.remote
class Tally:
    def __init__(self) -> None:
        self.total = 0

    def add(self, k: int) -> int:
        self.total += k
        return self.total

    def add_slowly(self, marker: str, release: str, k: int) -> int:
        _touch(marker, str(os.getpid()))
        _park(release)
        return self.add(k)


@pytest.mark.parametrize("restarts", [0, 1])
def test_actor_killed_mid_method(session, tmp_path, restarts):
    session(num_cpus=2)
    tally = Tally.options(max_restarts=restarts, num_cpus=1).remote()
    assert core.get(tally.add.remote(1)) == 1
    marker, release = str(tmp_path / "in-method"), str(tmp_path / "never")
    in_flight = tally.add_slowly.remote(marker, release, 10)
    queued = tally.add.remote(100)        # sent to the actor behind it: dies with it
    _kill_pid_in(marker)
    for ref in (in_flight, queued):       # no max_task_retries: calls in flight are not retried
        with pytest.raises(ActorDiedError, match="Tally died"):
            core.get(ref)
    if restarts:
        assert core.get(tally.add.remote(1)) == 1     # the restarted actor, with fresh state
        core.kill(tally)                              # a live actor holds its CPU: give it back
    else:
        with pytest.raises(ActorDiedError, match="max_restarts is used up"):
            core.get(tally.add.remote(1))


# ─── killed while writing its part (a dataflow run) ─────────────────────────────────────────────
class KillWhileWriting(TipModel):
    """The tip model; in a worker, it SIGKILLs the process as it opens a part's temporary file
    for writing (after writing half a part there), the first time in the run."""

    def __init__(self, marker: str, payload_mb: float = 1) -> None:
        super().__init__(payload_mb)
        self.marker = marker

    def __call__(self, batch):                           # runs in a worker
        if self.marker not in _HOOKED:                   # once per process (hooks stay for good)
            _HOOKED.append(self.marker)
            sys.addaudithook(_part_opened_hook(self.marker))
        return super().__call__(batch)


_HOOKED: list[str] = []     # markers with a hook installed in this process


def _part_opened_hook(marker: str):
    def hook(event: str, args: tuple) -> None:
        if event != "open" or not isinstance(args[0], str) or "w" not in str(args[1] or ""):
            return
        if "hooked" in _HOOKED:                          # our own opens, below
            return
        name = os.path.basename(args[0])
        if not (name.startswith("_tmp-part-") and "/out/" in args[0]) or os.path.exists(marker):
            return
        _HOOKED.append("hooked")
        with open(args[0], "wb") as f:                  # half a part, as a killed writer leaves it
            f.write(b"PAR1" + b"\0" * 100)
        _touch(marker, str(os.getpid()))
        _die()
    return hook


def part_killer_model(marker: str, payload_mb: float = 1) -> KillWhileWriting:
    return KillWhileWriting(marker, payload_mb)


def test_killed_while_writing_its_part(tmp_path):
    make_data(tmp_path / "data", shards=4, scale=0.01)
    clean = write_pipeline(tmp_path / "clean.yaml", sink__parquet="clean/")
    r = dataflow("run", clean, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    marker = str(tmp_path / "killed-writing")
    killing = write_pipeline(tmp_path / "p.yaml", model={
        "factory": "tests.reliability.test_crash_matrix:part_killer_model",
        "args": {"marker": marker}})
    r = dataflow("run", killing, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(marker), "precondition: a worker was killed while writing a part"
    assert "retrying" in r.stderr, r.stderr
    assert_identical(tmp_path / "out", tmp_path / "clean")
    assert leftovers(tmp_path / "out") == []
