"""Admission control: a task whose arguments must come back from spill waits in the queue until
they fit, instead of failing because memory is busy for now.

The matrix: arguments spilled to a local folder and to S3 (moto, over HTTP on loopback); tasks
taking one and two such arguments; fast tasks (sent in batches), ~50 ms tasks (pipelined behind
a running one) and actor methods. Every result is right, nothing is raised, and every CPU is
back once idle. A put that can never fit still raises ObjectStoreFullError.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import core
from core._private.tasks import scheduler as S
from core._private.runtime import current as current_runtime
from core.exceptions import ObjectStoreFullError

MB = 10**6
STORE = 32 * 2**20           # 32 MiB: five 6 MB objects fit, ten do not
OBJECT = 6 * MB
COUNT = 10


@pytest.fixture(params=["local", "s3"])
def spill_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "spill")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/spill"


@pytest.fixture
def spilled(make_session, spill_uri):
    """A session whose store holds ten 6 MB objects that do not fit: most are spilled."""
    make_session(num_cpus=2, object_store_memory=STORE, spill={"uri": spill_uri, "min_spilling_size": 0})
    refs = [core.put(np.full(OBJECT // 8, i, dtype=np.int64)) for i in range(COUNT)]
    assert current_runtime().store.usage()["num_spilled"] >= COUNT // 2, "precondition: objects spilled"
    yield refs
    assert_resources_back()


def assert_resources_back() -> None:
    total = {k: v for k, v in core.cluster_resources().items() if k != "object_store_memory"}
    avail = {k: v for k, v in core.available_resources().items() if k != "object_store_memory"}
    assert avail == total


def measured(fn, args_of, ok) -> None:
    """Run `fn` on small in-memory arguments until the engine's measure of it satisfies `ok`
    (batched, or pipelined): the precondition of the case, whatever this machine's speed."""
    fn_id = fn._shipped.blob_and_id()[1]
    rt = current_runtime()
    for _ in range(100):
        core.get([fn.remote(*args_of(i)) for i in range(8)])
        if ok(rt.fn_time.get(fn_id)):
            return
    raise AssertionError(f"{fn} was never measured as wanted: {rt.fn_time.get(fn_id)}")


@core.remote
def first(a, b=None):
    return int(a[0]) * 1000 + (int(b[0]) if b is not None else 0) + a.size // (OBJECT // 8)


@core.remote
def first_slowly(a, b=None):
    time.sleep(0.05)
    return int(a[0]) * 1000 + (int(b[0]) if b is not None else 0) + a.size // (OBJECT // 8)


def expected(i: int, j: int | None = None) -> int:
    return i * 1000 + (j or 0) + 1


def small(i: int) -> tuple:
    return (np.full(OBJECT // 8 // 1000, i, dtype=np.int64)[:1],)


@pytest.mark.parametrize("two_args", [False, True], ids=["one-arg", "two-args"])
def test_fast_tasks_batched_wait_for_room(spilled, two_args):
    measured(first, small, lambda t: t is not None and S.batch_size(t, 8, 1) > 1)
    pairs = [(i, (i + 3) % COUNT) for i in range(COUNT)]
    if two_args:
        refs = [first.remote(spilled[i], spilled[j]) for i, j in pairs]
        assert core.get(refs) == [expected(i, j) for i, j in pairs]
    else:
        refs = [first.remote(r) for r in spilled]
        assert core.get(refs) == [expected(i) for i in range(COUNT)]


@pytest.mark.parametrize("two_args", [False, True], ids=["one-arg", "two-args"])
def test_pipelined_tasks_wait_for_room(spilled, two_args):
    measured(first_slowly, small, S.pipelined)
    pairs = [(i, (i + 5) % COUNT) for i in range(COUNT)]
    if two_args:
        refs = [first_slowly.remote(spilled[i], spilled[j]) for i, j in pairs]
        assert core.get(refs) == [expected(i, j) for i, j in pairs]
    else:
        refs = [first_slowly.remote(r) for r in spilled]
        assert core.get(refs) == [expected(i) for i in range(COUNT)]


@core.remote
class Reader:
    def read(self, a, b=None):
        return int(a[0]) * 1000 + (int(b[0]) if b is not None else 0) + a.size // (OBJECT // 8)


@pytest.mark.parametrize("two_args", [False, True], ids=["one-arg", "two-args"])
def test_actor_methods_wait_for_room(spilled, two_args):
    reader = Reader.remote()
    pairs = [(i, (i + 7) % COUNT) for i in range(COUNT)]
    if two_args:
        refs = [reader.read.remote(spilled[i], spilled[j]) for i, j in pairs]
        assert core.get(refs) == [expected(i, j) for i, j in pairs]
    else:
        refs = [reader.read.remote(r) for r in spilled]
        assert core.get(refs) == [expected(i) for i in range(COUNT)]


def test_the_issue_repro_ten_20mb_puts_then_ten_tasks(make_session, tmp_path):
    make_session(num_cpus=2, object_store_memory=64 * 2**20, spill=str(tmp_path / "spill"))
    refs = [core.put(np.full(20 * MB // 8, i, dtype=np.int64)) for i in range(COUNT)]

    @core.remote
    def head(a):
        return int(a[0])

    assert core.get([head.remote(r) for r in refs]) == list(range(COUNT))
    assert_resources_back()


def test_a_put_that_can_never_fit_still_raises(make_session, tmp_path):
    make_session(num_cpus=1, object_store_memory=8 * 2**20, spill=str(tmp_path / "spill"))
    with pytest.raises(ObjectStoreFullError, match="holds at most"):
        core.put(np.zeros(16 * MB // 8))


def test_admission_decision():
    assert S.admit([], room=0, pins_will_free=True) == "now"                 # all in memory
    assert S.admit([10, 20], room=30, pins_will_free=True) == "now"          # restores fit now
    assert S.admit([10, 21], room=30, pins_will_free=True) == "wait"         # running tasks will unpin
    assert S.admit([10, 21], room=30, pins_will_free=False) == "try"         # nothing will: try, may fail
