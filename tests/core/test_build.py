"""core.build(fn, *args): a value made once and stored as an object (a model's weights).

With a zygote (init(worker_preload=...)) the factory runs there and the workers forked after it
find the value in their own memory (pages shared with the zygote and each other); everyone else
reads one copy in the store, written once by the zygote. Without one, it runs in the driver and
is put once."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

import core
from core._private.runtime import current as current_runtime
from core.exceptions import CoreError, ObjectLostError, TaskError
from tests.services import descendants

MB = 1 << 20


def make_weights(n: int, fill: float) -> dict:
    return {"w": np.full(n, fill), "name": "tiny"}


def failing_factory(n: int) -> None:
    raise ValueError(f"no weights for n={n}")


_keep_running = threading.Event()


def factory_leaving_a_thread(n: int) -> np.ndarray:
    threading.Thread(target=_keep_running.wait, daemon=True).start()  # as torch's OpenMP pool
    return np.full(n, 3.0)


@core.remote
def total(weights: dict) -> float:
    return float(weights["w"].sum())


@core.remote
def inherited(weights: dict) -> bool:
    """The argument is the very object the zygote built (found in memory, not read from the store)."""
    from core._private.local import worker

    return any(v is weights for v in worker.BUILT.values())


@core.remote
def built_here() -> int:
    from core._private.local import worker

    return len(worker.BUILT)


@core.remote
def pid() -> int:
    return os.getpid()


@core.remote
class Holder:
    def total(self, weights: dict) -> float:
        return float(weights["w"].sum())

    def built_here(self) -> int:
        from core._private.local import worker

        return len(worker.BUILT)


@pytest.fixture
def session():
    core.init(num_cpus=2)
    yield
    core.shutdown()


@pytest.fixture
def forked(make_session):
    """A session whose workers are forked from a zygote; nothing left behind afterwards."""
    make_session(num_cpus=2, worker_preload=["numpy"])
    yield current_runtime()
    core.shutdown()
    assert not descendants()


def _store_used() -> int:
    return current_runtime().store.usage()["used"]


def _materialized() -> int:
    return current_runtime().store.stats.get("materialized_objects", 0)


# ── without a zygote: made in the driver, put once ──────────────────────────────────────────────
def test_build_gives_a_ref_to_the_value(session):
    ref = core.build(make_weights, 1000, fill=0.5)
    value = core.get(ref)
    assert value["name"] == "tiny" and value["w"].shape == (1000,) and float(value["w"].sum()) == 500.0


def test_tasks_read_a_built_value(session):
    ref = core.build(make_weights, 100, fill=2.0)
    assert core.get([total.remote(ref) for _ in range(4)]) == [200.0] * 4


def test_build_belongs_to_the_driver(session):
    @core.remote
    def inside() -> None:
        core.build(make_weights, 1, fill=1.0)

    with pytest.raises(CoreError, match=r"core.build\(\) belongs to the driver"):
        core.get(inside.remote())


def test_build_takes_a_callable(session):
    with pytest.raises(TypeError, match="takes a callable"):
        core.build(42)


def test_a_factory_error_in_the_driver_names_the_factory(session):
    with pytest.raises(ValueError, match="no weights for n=3") as info:
        core.build(failing_factory, 3)
    assert isinstance(info.value, TaskError) and "failing_factory" in str(info.value)


# ── with a zygote: made where the workers fork from ─────────────────────────────────────────────
def test_tasks_and_an_actor_find_the_value_in_their_own_memory(forked):
    ref = core.build(make_weights, 100_000, fill=2.0)
    assert core.get([total.remote(ref) for _ in range(6)]) == [200_000.0] * 6
    assert all(core.get([inherited.remote(ref) for _ in range(6)]))
    actor = Holder.remote()                   # forked after the build
    assert core.get(actor.total.remote(ref)) == 200_000.0
    assert core.get(actor.built_here.remote()) == 1
    assert _store_used() == 0 and _materialized() == 0, "nobody needed a copy in the store"
    summary = core.memory_summary()
    assert f"{ref.hex()}" in summary and "inherited" in summary.splitlines()[1]
    assert " build " in summary.splitlines()[1]
    assert "1 inherited" in summary


def test_workers_forked_before_the_build_are_replaced_or_read_one_copy(forked):
    actor = Holder.remote()                   # forked before the build: it cannot be replaced
    before = set(core.get([pid.remote() for _ in range(4)]))
    assert core.get(actor.built_here.remote()) == 0
    ref = core.build(make_weights, 100_000, fill=1.0)
    after = set(core.get([pid.remote() for _ in range(4)]))
    assert not before & after, "idle task workers were replaced by forks made after the build"
    assert all(core.get([inherited.remote(ref) for _ in range(4)]))
    assert [core.get(actor.total.remote(ref)) for _ in range(3)] == [100_000.0] * 3
    assert _materialized() == 1, "the actor reads the copy the zygote wrote into the store, once"


def test_a_nested_get_finds_the_value_and_a_writable_one_is_a_copy(forked):
    @core.remote
    def nested(refs: list) -> tuple:
        from core._private.local import worker

        mine = core.get(refs[0])
        private = core.get(refs[0], writable=True)
        private["w"][0] = -1.0                # a copy: the inherited value is untouched
        return (any(v is mine for v in worker.BUILT.values()), float(mine["w"][0]),
                any(v is private for v in worker.BUILT.values()))

    ref = core.build(make_weights, 1000, fill=2.0)
    assert core.get(nested.remote([ref])) == (True, 2.0, False)


def test_the_drivers_get_reads_one_copy_written_by_the_zygote(forked):
    ref = core.build(make_weights, 100_000, fill=0.5)
    assert _store_used() == 0
    for _ in range(3):
        assert float(core.get(ref)["w"].sum()) == 50_000.0
    assert _materialized() == 1
    assert "inherited" in core.memory_summary().splitlines()[1]   # still the zygote's too


def test_free_drops_it_from_the_zygote(forked):
    ref = core.build(make_weights, 1000, fill=1.0)
    assert core.get(total.remote(ref)) == 1000.0
    core.free([ref])
    assert ref.hex() not in core.memory_summary()
    with pytest.raises(ObjectLostError, match="freed"):
        core.get(ref)
    actor = Holder.remote()                   # forked after the free: it does not carry it
    assert core.get(actor.built_here.remote()) == 0


def test_dropping_the_last_ref_drops_it_from_the_zygote(forked):
    ref = core.build(make_weights, 1000, fill=1.0)
    core.get(total.remote(ref))
    del ref
    deadline = time.monotonic() + 10
    while forked.pool.zygote.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not forked.pool.zygote.held
    assert core.get(Holder.remote().built_here.remote()) == 0


def test_the_factorys_error_reaches_the_caller(forked):
    with pytest.raises(ValueError, match="no weights for n=7") as info:
        core.build(failing_factory, 7)
    assert isinstance(info.value, TaskError) and "failing_factory" in str(info.value)
    ref = core.build(make_weights, 10, fill=1.0)   # the zygote carries on
    assert core.get(total.remote(ref)) == 10.0


def test_an_unpicklable_factory_is_named(forked):
    lock = threading.Lock()

    def with_a_lock() -> object:
        return lock

    with pytest.raises(CoreError, match=r"core.build\(.*with_a_lock\).*cannot be pickled"):
        core.build(with_a_lock)


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + 60          # a safety net: the order is what is asserted
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def _log(folder: str, line: str) -> None:
    with open(os.path.join(folder, "log"), "a") as f:
        f.write(line + "\n")


def factory_marking(folder: str) -> dict:
    _log(folder, "factory starts")
    open(os.path.join(folder, "factory-started"), "w").close()
    _wait_for(os.path.join(folder, "preload-thread-started"))   # (the second test's preload)
    _log(folder, "factory ends")
    return {"w": np.full(1000, 2.0)}


def _preload_module(tmp_path, monkeypatch, name: str, body: str) -> None:
    """A module for worker_preload that waits for the factory to start, then runs `body`."""
    folder = str(tmp_path)
    (tmp_path / f"{name}.py").write_text(
        "import os\n"
        f"from tests.core.test_build import _log, _wait_for\n"
        f"_wait_for(os.path.join({folder!r}, 'factory-started'))\n"
        f"{body}\n"
        f"_log({folder!r}, 'preload imported')\n")
    monkeypatch.syspath_prepend(folder)


def test_a_factory_runs_while_the_preload_is_still_importing(make_session, tmp_path, monkeypatch):
    """The zygote's imports (pandas: ~0.4 s) and a model's factory overlap (zygote_imports);
    the workers are forked once both are done, with the module imported and the value inherited."""
    _preload_module(tmp_path, monkeypatch, "preload_waits_for_the_factory",
                    f"open(os.path.join({str(tmp_path)!r}, 'preload-thread-started'), 'w').close()")
    make_session(num_cpus=1, worker_preload=["preload_waits_for_the_factory"])
    ref = core.build(factory_marking, str(tmp_path))
    assert core.get(inherited.remote(ref)) and core.get(total.remote(ref)) == 2000.0
    assert core.get(import_state.remote("preload_waits_for_the_factory")), "imported before the fork"
    first, *then = (tmp_path / "log").read_text().splitlines()
    assert first == "factory starts", "the factory started while the preload was importing"
    assert sorted(then) == ["factory ends", "preload imported"]
    assert current_runtime().pool.zygote.forks


def test_threads_the_preload_starts_during_a_factory_do_not_stop_forking(make_session, tmp_path,
                                                                         monkeypatch):
    """A thread started by an import (numpy's BLAS pool, pyarrow's jemalloc) while a factory runs
    is the imports' (it inherits their thread's name), not the factory's: forking goes on."""
    _preload_module(tmp_path, monkeypatch, "preload_starting_a_thread",
                    "import threading\n"
                    "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
                    f"open(os.path.join({str(tmp_path)!r}, 'preload-thread-started'), 'w').close()")
    make_session(num_cpus=1, worker_preload=["preload_starting_a_thread"])
    ref = core.build(factory_marking, str(tmp_path))
    assert current_runtime().pool.zygote.forks
    assert core.get(inherited.remote(ref))
    assert _materialized() == 0, "inherited by the forked worker, never written to the store"


@core.remote
def import_state(name: str) -> bool:
    import sys

    return name in sys.modules


def test_a_factory_leaving_threads_is_put_once_and_forks_stop(forked):
    ref = core.build(factory_leaving_a_thread, 1_000_000)
    assert _materialized() == 1 and _store_used() >= 8_000_000, "in the store, written by the zygote"
    assert not forked.pool.zygote.forks
    assert [v for v, _ in core.get([touch.remote(ref) for _ in range(4)])] == [3_000_000.0] * 4
    assert float(core.get(ref).sum()) == 3_000_000.0
    assert _materialized() == 1
    assert "inherited" not in core.memory_summary()
    # workers started from now on are fresh interpreters (still the zygote's children)
    actor = Holder.remote()
    assert core.get(actor.built_here.remote()) == 0
    again = core.build(make_weights, 10, fill=2.0)  # built in the driver, put once
    assert core.get(total.remote(again)) == 20.0


def test_a_task_retried_after_its_worker_was_killed_still_sees_the_value(forked, tmp_path):
    marker = tmp_path / "first-try"

    @core.remote(max_retries=1)
    def dies_once(weights: dict, path: str) -> float:
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return float(weights["w"].sum())

    ref = core.build(make_weights, 1000, fill=4.0)
    assert core.get(dies_once.remote(ref, str(marker))) == 4000.0
    assert all(core.get([inherited.remote(ref) for _ in range(4)]))


def test_objects_the_zygote_held_are_lost_with_it(forked):
    ref = core.build(make_weights, 1000, fill=1.0)
    zygote = forked.pool.zygote
    os.kill(zygote.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while zygote.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ObjectLostError, match=ref.hex()):
        core.get(ref)
    again = core.build(make_weights, 10, fill=1.0)   # no zygote now: made in the driver
    assert core.get(total.remote(again)) == 10.0


def crashing_factory() -> None:
    os._exit(3)


def test_a_factory_that_kills_the_zygote_is_an_error_not_a_hang(forked):
    with pytest.raises(CoreError, match=r"core.build\(crashing_factory\): the zygote died while running it"):
        core.build(crashing_factory)
    again = core.build(make_weights, 10, fill=3.0)   # made in the driver from now on
    assert core.get(total.remote(again)) == 30.0     # by fresh workers


def test_a_value_that_cannot_be_stored_is_an_error_naming_the_factory(forked):
    with pytest.raises(CoreError, match=r"could not serialize a value of type lock") as info:
        core.build(threading.Lock)
    assert "task allocate_lock failed" in str(info.value)   # threading.Lock's own name


def _pss(pids: list[int]) -> int:
    return sum(psutil.Process(p).memory_full_info().pss for p in pids)


@core.remote
def touch(weights: np.ndarray) -> tuple[float, int]:
    return float(weights.sum()), os.getpid()   # reads every page


def test_one_copy_of_the_weights_across_the_zygote_and_its_workers(forked):
    size = 200 * MB
    zygote_pid = forked.pool.zygote.proc.pid
    before = _pss([zygote_pid, *core.get([pid.remote() for _ in range(2)])])
    ref = core.build(np.full, size // 8, 0.5)
    touched: set[int] = set()
    for _ in range(100):                      # until both workers have read every page
        touched |= {p for _, p in core.get([touch.remote(ref) for _ in range(4)])}
        pids = {w.proc.pid for w in forked.pool.workers.values() if w.alive}
        if len(pids) == 2 and pids <= touched:
            break
    assert len(pids) == 2 and pids <= touched
    grown = _pss([zygote_pid, *pids]) - before
    assert grown < 1.5 * size, f"{grown / MB:.0f} MB for a {size / MB:.0f} MB value in 3 processes"
    assert _store_used() == 0
