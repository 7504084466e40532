"""Remote functions on real worker processes: arguments, returns, errors, retries, cancel."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import core
from core.exceptions import (
    CoreError,
    GetTimeoutError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)


@core.remote
def add(a, b):
    return a + b


@core.remote
def pid():
    return os.getpid()


def test_remote_returns_a_ref_at_once_and_runs_in_another_process(session):
    ref = pid.remote()
    assert isinstance(ref, core.ObjectRef)
    assert core.get(ref) != os.getpid()


def test_kwargs_and_options_override(session):
    assert core.get(add.remote(1, b=2)) == 3
    assert core.get(add.options(num_cpus=0.5, name="adder").remote(2, 3)) == 5


def test_calling_a_remote_function_directly_explains_remote(session):
    with pytest.raises(TypeError, match=r"add.remote\(\.\.\.\)"):
        add(1, 2)


def test_unknown_option_is_named():
    with pytest.raises(CoreError, match="unknown option.*num_cpu\\b"):
        core.remote(num_cpu=1)(lambda: None)


def test_num_returns_gives_several_refs(session):
    @core.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    a, b, c = three.remote()
    assert core.get([a, b, c]) == [1, "two", [3]]


def test_num_returns_mismatch_is_a_task_error(session):
    @core.remote(num_returns=2)
    def one():
        return 1, 2, 3

    a, _ = one.remote()
    with pytest.raises(TaskError, match="num_returns=2 but returned 3 values"):
        core.get(a)


def test_dependency_chain_task_on_task_on_put(session):
    base = core.put(10)
    r1 = add.remote(base, 1)
    r2 = add.remote(r1, 1)
    r3 = add.remote(r2, r1)
    assert core.get(r3) == 23


def test_top_level_refs_are_resolved_nested_refs_pass_through(session):
    @core.remote
    def inspect_args(top, nested):
        inner = nested["ref"]
        return type(top).__name__, type(inner).__name__, core.get(inner)

    r = core.put("hello")
    assert core.get(inspect_args.remote(r, {"ref": r})) == ("str", "ObjectRef", "hello")


def test_large_argument_reaches_worker_zero_copy(session):
    @core.remote
    def describe(a):
        return a.flags.writeable, a.flags.owndata, float(a.sum())

    arr = np.ones(2_000_000)
    ref = core.put(arr)
    writeable, owndata, total = core.get(describe.remote(ref))
    assert (writeable, owndata, total) == (False, False, 2_000_000.0)


def test_large_inline_argument_is_stored_not_piped(session):
    @core.remote
    def size(a):
        return a.nbytes, a.flags.owndata

    arr = np.zeros(1_000_000)  # 8 MB passed by value: put in the store, mapped by the worker
    assert core.get(size.remote(arr)) == (8_000_000, False)


def test_large_result_comes_back_through_shared_memory(session):
    @core.remote
    def make(n):
        return np.arange(n, dtype=np.int64)

    out = core.get(make.remote(3_000_000))
    assert out[-1] == 2_999_999 and not out.flags.writeable


def test_task_error_carries_cause_type_and_remote_traceback(session):
    @core.remote
    def boom():
        raise ValueError("bad value 42")

    with pytest.raises(TaskError) as info:
        core.get(boom.remote())
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err.cause, ValueError) and str(err.cause) == "bad value 42"
    assert "in boom" in err.traceback_str and "bad value 42" in str(err)


def test_error_propagates_to_dependent_tasks(session):
    @core.remote
    def boom():
        raise KeyError("k")

    with pytest.raises(TaskError, match="KeyError"):
        core.get(add.remote(boom.remote(), 1))


def test_application_errors_retry_only_with_retry_exceptions(session, tmp_path):
    marker = tmp_path / "count"

    @core.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        n = int(path.read_text()) if path.exists() else 0
        path.write_text(str(n + 1))
        if n < 2:
            raise RuntimeError("not yet")
        return n

    assert core.get(flaky.remote(marker)) == 2

    marker.unlink()

    @core.remote(max_retries=2)
    def no_retry(path):
        n = int(path.read_text()) if path.exists() else 0
        path.write_text(str(n + 1))
        raise RuntimeError("once")

    with pytest.raises(TaskError):
        core.get(no_retry.remote(marker))
    assert marker.read_text() == "1"


def test_task_that_kills_its_worker_is_retried_then_fails(session, tmp_path):
    log = tmp_path / "attempts"

    @core.remote(max_retries=2)
    def die(path):
        with open(path, "a") as f:
            f.write("x")
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError, match="died"):
        core.get(die.remote(log), timeout=60)
    assert log.read_text() == "xxx"  # first run + 2 retries
    # the pool is replaced: work goes on
    assert core.get(add.remote(1, 1), timeout=30) == 2


def test_worker_crash_then_success_on_retry(session, tmp_path):
    marker = tmp_path / "crashed"

    @core.remote(max_retries=1)
    def crash_once(path):
        if not path.exists():
            path.write_text("1")
            os._exit(3)
        return "survived"

    assert core.get(crash_once.remote(marker), timeout=60) == "survived"


def test_get_timeout_raises_get_timeout_error(session):
    @core.remote
    def slow():
        time.sleep(5)

    ref = slow.remote()
    with pytest.raises(GetTimeoutError):
        core.get(ref, timeout=0.2)
    with pytest.raises(TimeoutError):
        core.get(ref, timeout=0)
    core.cancel(ref, force=True)


def test_cancel_pending_and_running_tasks(session):
    @core.remote
    def sleeper(s):
        time.sleep(s)
        return s

    running = [sleeper.remote(30) for _ in range(2)]
    pending = sleeper.remote(30)
    time.sleep(0.5)
    core.cancel(pending)
    with pytest.raises(TaskCancelledError):
        core.get(pending, timeout=10)
    for r in running:
        core.cancel(r)
    for r in running:
        with pytest.raises(TaskCancelledError):
            core.get(r, timeout=10)
    assert core.get(sleeper.remote(0), timeout=30) == 0


def test_cancel_that_lands_in_a_finalizer_still_cancels_and_prints_nothing(make_session, capfd):
    # The cancel is a KeyboardInterrupt raised by a signal handler; raised inside a __del__,
    # Python can only print it as "Exception ignored" and drop it.
    make_session(num_cpus=1)

    @core.remote
    def finalizing():
        class Slow:
            def __del__(self):
                time.sleep(0.016)  # 80% of the task's time is spent in here
        while True:
            Slow()
            time.sleep(0.004)

    ref = finalizing.remote()
    time.sleep(1.0)
    core.cancel(ref)

    with pytest.raises(TaskCancelledError):
        core.get(ref, timeout=20)
    assert core.get(core.remote(lambda: 1).remote(), timeout=30) == 1  # the worker lived on
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err, err


def test_wait_keeps_order_and_splits_ready(session):
    @core.remote
    def sleeper(s):
        time.sleep(s)
        return s

    refs = [sleeper.remote(3), sleeper.remote(0), core.put(1)]
    ready, not_ready = core.wait(refs, num_returns=2, timeout=10)
    assert ready == [refs[1], refs[2]] and not_ready == [refs[0]]
    ready, not_ready = core.wait(refs, num_returns=3, timeout=0.1)
    assert refs[0] in not_ready
    core.cancel(refs[0], force=True)


def test_tasks_submit_tasks_and_get_without_deadlock(session):
    @core.remote
    def leaf(i):
        return i * 2

    @core.remote
    def parent(n):
        return sum(core.get([leaf.remote(i) for i in range(n)]))

    # more blocked parents than CPUs: each gives its CPU back while it waits
    assert core.get([parent.remote(5) for _ in range(4)], timeout=60) == [20] * 4


def test_put_inside_task_and_return_ref(session):
    @core.remote
    def make():
        return [core.put(np.arange(300_000))]

    [inner] = core.get(make.remote())
    assert core.get(inner)[-1] == 299_999


def test_streaming_generator_yields_refs_while_it_runs(session, tmp_path):
    gate = tmp_path / "gate"

    @core.remote(num_returns="streaming")
    def gen(path):
        yield "first"
        while not path.exists():
            time.sleep(0.01)
        yield "second"

    stream = gen.remote(gate)
    first = next(stream)
    assert core.get(first, timeout=10) == "first"  # available before the generator finishes
    gate.write_text("go")
    assert [core.get(r) for r in stream] == ["second"]


def test_streaming_requires_a_generator():
    with pytest.raises(CoreError, match="generator"):
        core.remote(num_returns="streaming")(lambda: 1).remote()


def test_closure_shipped_once_per_worker(session):
    big = np.random.default_rng(0).random(100 * 2**20 // 8)  # 100 MB captured

    @core.remote
    def uses_big(i):
        return float(big[i])

    out = core.get([uses_big.remote(i) for i in range(20)], timeout=120)
    assert out == [float(big[i]) for i in range(20)]
    rt = core._private.runtime.current()
    sent = rt.function_bytes_sent()
    workers_used = sum(1 for w in rt.worker_stats() if w["functions"])
    assert 0 < workers_used <= 3
    # each worker got the function once: about 100 MB each, not 20 x 100 MB
    assert sent <= workers_used * 110 * 2**20


def test_resources_accounting_and_infeasible_tasks(make_session):
    core = make_session(num_cpus=2, resources={"accel": 1})
    assert core.cluster_resources()["CPU"] == 2.0
    assert core.cluster_resources()["accel"] == 1.0

    @core.remote(resources={"accel": 1})
    def hold(s):
        time.sleep(s)
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    ref = hold.remote(1.0)
    time.sleep(0.4)
    avail = core.available_resources()
    assert avail["accel"] == 0.0 and avail["CPU"] == 1.0
    core.get(ref)
    assert core.available_resources()["accel"] == 1.0

    with pytest.raises(CoreError, match="can never run here.*GPU=1"):
        core.remote(num_gpus=1)(lambda: 1).remote()
    with pytest.raises(CoreError, match="accel=2"):
        hold.options(resources={"accel": 2}).remote(0)


def test_gpu_tasks_get_cuda_visible_devices(make_session):
    core = make_session(num_cpus=2, num_gpus=2)

    @core.remote(num_gpus=1)
    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    ids = core.get([visible.remote() for _ in range(2)])
    assert all(i in ("0", "1") for i in ids)


def test_init_twice_raises_and_session_keeps_working(session):
    with pytest.raises(CoreError, match="already"):
        core.init()
    assert core.get(add.remote(2, 2)) == 4


# ── pipelining: a busy worker running short tasks gets its next one in advance ───────────────
@core.remote
def short(die: bool = False) -> int:
    time.sleep(0.01)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@core.remote
def measure_short_inside() -> None:
    core.get([short.remote() for _ in range(4)], timeout=30)  # known to be short from here on


@core.remote
def outer() -> int:
    # Submitted from inside this task while it holds the session's only CPU, the short task is
    # queued behind it on its worker: blocking on it must hand it back, or this task would wait
    # for itself (the get would time out).
    ref = short.remote()
    time.sleep(0.2)
    return core.get(ref, timeout=30)


def _measured_short(rt) -> None:
    rt.get([short.remote() for _ in range(4)])  # now known to take ~10 ms: pipelined from here on


def test_a_task_that_waits_for_the_task_queued_behind_it_does_not_deadlock(make_session):
    rt = make_session(num_cpus=1)
    rt.get(measure_short_inside.remote(), timeout=60)
    assert isinstance(rt.get(outer.remote(), timeout=60), int)


def test_a_task_queued_behind_one_that_kills_the_worker_never_ran_and_keeps_its_retries(make_session):
    rt = make_session(num_cpus=1)
    _measured_short(rt)
    doomed = short.options(max_retries=0).remote(die=True)
    behind = short.options(max_retries=0).remote()  # handed to the same busy worker
    with pytest.raises(WorkerCrashedError):
        rt.get(doomed, timeout=60)
    assert isinstance(rt.get(behind, timeout=60), int)


def test_short_tasks_run_back_to_back_on_each_worker(make_session):
    rt = make_session(num_cpus=2)
    _measured_short(rt)
    pids = rt.get([short.remote() for _ in range(40)], timeout=60)
    assert len(set(pids)) <= 2 and len(pids) == 40


def test_a_result_held_for_batching_is_sent_while_the_next_task_runs_long(make_session, tmp_path):
    # An actor handed, while its constructor runs, a tiny call and one that waits for a gate:
    # the tiny one ends right after the constructor's result was sent, so its own would be kept
    # for the next frame, which the gated call holds up. It arrives while the gated call still
    # runs (the gate opens only once it is in).
    rt = make_session(num_cpus=1)
    gate = tmp_path / "gate"

    @rt.remote
    class Slow:
        def __init__(self):
            time.sleep(0.3)               # longer than a tiny task: its result is sent at once

        def ping(self, i):
            return i

        def gated(self, path):
            for _ in range(3000):          # until the test opens the gate (30 s at most)
                if os.path.exists(path):
                    return "opened"
                time.sleep(0.01)
            return "never opened"

    actor = Slow.remote()
    ping, gated = actor.ping.remote(7), actor.gated.remote(str(gate))
    assert rt.get(ping, timeout=20) == 7
    gate.touch()
    assert rt.get(gated, timeout=30) == "opened"
