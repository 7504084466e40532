"""The object API end to end: put/get/wait/free, refs, refcounting, lineage, summary."""

from __future__ import annotations

import asyncio
import gc
import pickle
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import core
from core.exceptions import CoreError, GetTimeoutError, ObjectLostError


@pytest.mark.parametrize("value", [
    0, -7, 3.5, "text", b"bytes", None, [1, 2, 3], {"a": {"b": [1, (2, 3)]}}, {1, 2},
])
def test_small_values_round_trip(session, value):
    assert core.get(core.put(value)) == value


def test_numpy_pandas_arrow_round_trip_zero_copy_read_only(session):
    arr = np.arange(1_000_000, dtype=np.float32)
    got = core.get(core.put(arr))
    np.testing.assert_array_equal(got, arr)
    assert not got.flags.writeable and not got.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 1

    df = pd.DataFrame({"x": np.arange(200_000), "s": ["a", "b"] * 100_000,
                       "c": pd.Categorical(["u", "v"] * 100_000)})
    pd.testing.assert_frame_equal(core.get(core.put(df)), df)

    table = pa.table({"x": np.arange(300_000), "y": np.random.default_rng(0).random(300_000)})
    assert core.get(core.put(table)).equals(table)


def test_get_twice_shares_memory(session):
    ref = core.put(np.ones(500_000))
    a, b = core.get(ref), core.get(ref)
    assert np.shares_memory(a, b)


def test_writable_get_is_copy_on_write(session):
    ref = core.put(np.zeros(1_000_000))
    w = core.get(ref, writable=True)
    w[0] = 42.0
    assert w.flags.writeable and w[0] == 42.0
    assert core.get(ref)[0] == 0.0  # the stored object is unchanged


def test_torch_tensor_round_trip(session):
    torch = pytest.importorskip("torch")
    t = torch.arange(1_000_000, dtype=torch.float32)
    got = core.get(core.put(t))
    assert torch.equal(got, t)
    w = core.get(core.put(t), writable=True)
    w.add_(1)  # in-place works on the private copy
    assert float(w[0]) == 1.0


def test_closures_round_trip(session):
    k = 5
    fn = core.get(core.put(lambda x: x * k))
    assert fn(2) == 10


def test_ref_is_hashable_picklable_and_has_hex(session):
    ref = core.put(1)
    assert len(ref.hex()) == 40 and int(ref.hex(), 16) >= 0
    assert {ref: 1}[ref] == 1
    again = pickle.loads(pickle.dumps(ref))
    assert again == ref and core.get(again) == 1


def test_nested_refs_keep_their_objects_alive(session):
    inner = core.put(np.arange(200_000))
    outer = core.put({"inner": inner})
    inner_hex = inner.hex()
    del inner
    gc.collect()
    got = core.get(outer)["inner"]
    assert got.hex() == inner_hex and core.get(got)[-1] == 199_999


def test_get_list_and_timeout(session):
    refs = [core.put(i) for i in range(5)]
    assert core.get(refs) == list(range(5))

    @core.remote
    def slow():
        time.sleep(10)

    r = slow.remote()
    with pytest.raises(GetTimeoutError, match="not ready"):
        core.get(r, timeout=0.1)
    core.cancel(r, force=True)


def test_wait_returns_ready_and_not_ready_in_order(session):
    refs = [core.put(i) for i in range(3)]
    ready, not_ready = core.wait(refs, num_returns=2)
    assert ready == refs[:2] and not_ready == refs[2:]


def test_free_makes_get_fail_at_once_naming_the_object(session):
    ref = core.put(np.ones(300_000))
    core.free(ref)
    with pytest.raises(ObjectLostError, match=f"{ref.hex()}.*freed"):
        core.get(ref, timeout=1)


def test_deleting_the_last_ref_frees_the_segment(session):
    rt = core._private.runtime.current()
    ref = core.put(np.ones(1_000_000))
    assert rt.store.usage()["num_shared"] == 1
    del ref
    gc.collect()
    assert rt.store.usage()["num_shared"] == 0
    # what remains of the session in /dev/shm is only the pool of segments kept for reuse
    assert set(rt.session.segments()) <= {s.name for s in rt.store.pool.segments}


def test_no_leak_over_100k_put_get_del_cycles(session):
    import psutil

    rt = core._private.runtime.current()
    me = psutil.Process()

    def cycles(n_small: int, n_shared: int) -> None:
        for _ in range(n_small):
            ref = core.put([1, 2, 3])
            core.get(ref)
            del ref
        for _ in range(n_shared):
            ref = core.put(np.ones(20_000))  # 160 KB: a shared segment
            core.get(ref)
            del ref

    cycles(5_000, 200)  # warm up allocator caches and the segment pool
    gc.collect()
    rss_before = me.memory_info().rss
    segments_before = set(rt.session.segments())
    cycles(100_000, 2_000)
    gc.collect()
    with rt.locked:
        assert len(rt.objects) == 0
    usage = rt.store.usage()
    assert usage["num_inline"] == 0 and usage["num_shared"] == 0
    assert set(rt.session.segments()) == segments_before  # /dev/shm flat: the pool is reused
    assert me.memory_info().rss - rss_before < 20 * 2**20


def test_future_and_await(session):
    @core.remote
    def double(x):
        return 2 * x

    assert double.remote(4).future().result(timeout=30) == 8

    async def main():
        return await double.remote(5)

    assert asyncio.run(main()) == 10


def test_lineage_rebuilds_a_task_result_whose_spill_file_was_deleted(make_session, tmp_path):
    core = make_session(num_cpus=2, object_store_memory=8 * 2**20,
                        spill={"uri": str(tmp_path / "spill"), "min_spilling_size": 0})

    @core.remote
    def make(i):
        return np.full(2 * 2**20 // 8, i, dtype=np.float64)  # 2 MiB

    refs = [make.remote(i) for i in range(8)]  # 16 MiB through an 8 MiB store: some spill
    core.wait(refs, num_returns=8, timeout=60)
    rt = core._private.runtime.current()
    spilled = [e for e in rt.store.entries() if e.where == "spilled"]
    assert spilled, "expected some objects to be spilled"
    for f in (tmp_path / "spill").rglob("*"):
        if f.is_file():
            f.unlink()
    for i, r in enumerate(refs):
        assert core.get(r, timeout=60)[0] == i


def test_lost_put_object_raises_object_lost_naming_it(make_session, tmp_path):
    core = make_session(num_cpus=1, object_store_memory=4 * 2**20,
                        spill={"uri": str(tmp_path / "spill"), "min_spilling_size": 0})
    refs = [core.put(np.full(2**20 // 8 * 1, i, dtype=np.float64)) for i in range(8)]
    for f in (tmp_path / "spill").rglob("*"):
        if f.is_file():
            f.unlink()
    lost = []
    for r in refs:
        try:
            core.get(r)
        except ObjectLostError as exc:
            assert r.hex() in str(exc) and "core.put" in str(exc)
            lost.append(r)
    assert lost


def test_memory_summary_lists_objects_with_full_ids(session):
    small = core.put("x")
    big = core.put(np.ones(200_000))
    text = core.memory_summary()
    assert small.hex() in text and big.hex() in text
    assert "inline" in text and "shared" in text
    assert "objects: 2" in text


def test_put_of_a_ref_is_refused(session):
    with pytest.raises(TypeError, match="ObjectRef"):
        core.put(core.put(1))


def test_api_before_init_autostarts_like_ray():
    try:
        assert core.get(core.put(5)) == 5
        assert core.is_initialized()
    finally:
        core.shutdown()
    assert not core.is_initialized()


def test_bad_init_arguments_are_clear(make_session):
    with pytest.raises(CoreError, match="object_store_memory"):
        core.init(object_store_memory="lots")
    with pytest.raises(CoreError, match="num_cpus"):
        core.init(num_cpus=-1)
    assert not core.is_initialized()
