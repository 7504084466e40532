"""ObjectStore: tiers, zero-copy views, pins, pool, capacity, spilling, loss, leaks, cleanup."""

from __future__ import annotations

import gc
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core._private.objects import shm
from core._private.objects.store import ObjectStore, size_class
from core._private.objects.serialization import deserialize, serialize
from core.exceptions import ObjectLostError, ObjectStoreFullError

MiB = 2**20
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_store(tmp_path):
    """Factory of stores (own session each); every store is shut down and checked clean."""
    stores = []

    def make(capacity=64 * MiB, spill=None, min_spilling_size=1 * MiB, full_wait=0.3, inline=100 * 1024):
        if spill is None:
            spill = str(tmp_path / "spill")
        if isinstance(spill, str):
            spill = {"uri": spill, "min_spilling_size": min_spilling_size}
        st = ObjectStore(capacity=capacity, spill=spill, inline_threshold=inline, full_wait=full_wait)
        stores.append(st)
        return st

    yield make
    for st in stores:
        spill_url = st.spill.url
        st.shutdown()
        assert st.session.segments() == [], "segments left in /dev/shm"
        if "://" not in spill_url:
            assert not os.path.exists(spill_url), "spill folder left behind"


def oid(i: int) -> bytes:
    return i.to_bytes(20, "little")


def get(store, i, **kw):
    return deserialize(store.view(oid(i), **kw), **kw)


def seg_range(store, i) -> tuple[int, int]:
    seg = store._objects[oid(i)].seg
    a = np.frombuffer(seg.readonly_map(), np.uint8)   # the mapping driver views come from
    return a.__array_interface__["data"][0], a.__array_interface__["data"][0] + seg.capacity


# ─── tiers and views ────────────────────────────────────────────────────────────────────────────
def test_inline_and_shared_placement(make_store):
    st = make_store()
    st.put(oid(1), serialize([1, 2, 3]))
    st.put(oid(2), serialize(np.arange(1_000_000)))
    where = {e.object_id: e.where for e in st.entries()}
    assert where == {oid(1).hex(): "inline", oid(2).hex(): "shared"}
    assert get(st, 1) == [1, 2, 3]
    assert st.contains(oid(1)) and st.contains(oid(2)) and not st.contains(oid(3))
    loc = st.locate(oid(1), holder=5)
    assert loc[0] == "inline" and deserialize(loc[1]) == [1, 2, 3]
    u = st.usage()
    assert u["num_inline"] == 1 and u["num_shared"] == 1 and u["used"] >= 8_000_000


def test_shared_view_zero_copy_read_only(make_store):
    st = make_store()
    a = np.random.default_rng(0).random(500_000)
    st.put(oid(1), serialize(a))
    b = get(st, 1)
    lo, hi = seg_range(st, 1)
    assert lo <= b.__array_interface__["data"][0] < hi
    assert b.__array_interface__["data"][0] % 64 == 0
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        b[0] = 1.0


def test_writable_view_is_private_copy_on_write(make_store):
    st = make_store()
    st.put(oid(1), serialize(np.zeros(1_000_000)))
    w = get(st, 1, writable=True)
    w[:10] = 7.0                                   # works, in place
    assert w[0] == 7.0
    assert get(st, 1)[0] == 0.0                    # the stored object is unchanged
    lo, hi = seg_range(st, 1)
    assert not lo <= w.__array_interface__["data"][0] < hi   # its own mapping, not a copy made up front
    torch = pytest.importorskip("torch")
    st.put(oid(2), serialize(torch.zeros(1_000_000)))
    t = deserialize(st.view(oid(2), writable=True), writable=True)
    t += 1
    assert float(t.sum()) == 1_000_000
    assert float(deserialize(st.view(oid(2))).sum()) == 0


def test_pinned_view_pins_until_arrays_die(make_store):
    st = make_store()
    st.put(oid(1), serialize(np.arange(1_000_000)))
    arr = deserialize(st.pinned_view(oid(1)))
    tail = arr[-10:]
    del arr
    gc.collect()
    assert st.usage()["pinned_bytes"] > 0
    st.delete(oid(1))                              # the ref died, the array lives on
    assert not st.contains(oid(1))
    st.put(oid(2), serialize(np.full(1_000_000, -1)))   # must not reuse the pinned segment
    assert list(tail) == list(range(999_990, 1_000_000))
    assert st.usage()["num_zombies"] == 1
    del tail
    gc.collect()
    u = st.usage()
    assert u["num_zombies"] == 0 and u["pinned_bytes"] == 0 and u["pooled_segments"] == 1


def test_pool_reuses_segments(make_store):
    st = make_store(capacity=256 * MiB)
    names = set()
    for i in range(10):
        n = 4_000_000 + i * 10_000                 # similar sizes share a size class
        st.put(oid(i), serialize(np.ones(n // 8)))
        names.add(st._objects[oid(i)].seg.name)
        st.delete(oid(i))
    assert len(names) == 1
    assert st.usage()["used"] <= size_class(4_100_000)
    assert len(st.session.segments()) == 1


def test_locate_pins_per_holder_and_unpin_all(make_store):
    st = make_store()
    st.put(oid(1), serialize(np.arange(100_000)))
    kind, name, size = st.locate(oid(1), holder=3)
    assert kind == "shared" and name.startswith(st.session.prefix) and size > 800_000
    st.locate(oid(1), holder=3)
    st.pin(oid(1), 4)
    assert [e.pins for e in st.entries()] == [{3: 2, 4: 1}]
    st.unpin_all(3)
    assert [e.pins for e in st.entries()] == [{4: 1}]
    st.unpin(oid(1), 4)
    assert [e.pinned for e in st.entries()] == [False]


def test_create_seal_by_worker_process(make_store):
    """A worker fills a segment it maps by name; the driver then reads it zero-copy."""
    st = make_store()
    # Under 1 MiB: a larger buffer is laid out at its source's page offset, so its size would
    # depend on where each process's array happens to sit (a worker sizes and writes one
    # serialization, never two).
    value = serialize(np.arange(200_000, dtype=np.int32))
    name, mapped = st.create(oid(1), value.total_size)
    assert mapped >= value.total_size and not st.contains(oid(1))
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from core._private.objects import shm
        from core._private.objects.serialization import serialize
        so = serialize(np.arange(200_000, dtype=np.int32))
        mm = shm.map_segment({name!r}, "write")
        so.write_to(memoryview(mm))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    st.seal(oid(1))
    assert np.array_equal(get(st, 1), np.arange(200_000, dtype=np.int32))


def test_value_read_zero_copy_in_another_process(make_store):
    st = make_store()
    a = np.arange(2_000_000, dtype=np.float64)
    st.put(oid(1), serialize(a))
    _, name, size = st.locate(oid(1), holder=1)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from core._private.objects import shm
        from core._private.objects.serialization import deserialize
        mm = shm.map_segment({name!r}, "read")
        arr = deserialize(memoryview(mm)[:{size}])
        base = np.frombuffer(mm, np.uint8).__array_interface__["data"][0]
        addr = arr.__array_interface__["data"][0]
        assert base <= addr < base + len(mm), "not zero-copy"
        try:
            arr[0] = 1
        except ValueError:
            pass
        else:
            raise SystemExit("writable")
        print(float(arr.sum()))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True)
    assert float(out.stdout) == float(a.sum())
    st.unpin(oid(1), 1)


# ─── capacity, spilling, loss ───────────────────────────────────────────────────────────────────
def test_store_full_when_everything_pinned(make_store):
    st = make_store(capacity=8 * MiB, full_wait=0.3)
    st.put(oid(1), serialize(np.ones(5 * MiB // 8)))
    st.pin(oid(1), 0)
    t0 = time.monotonic()
    with pytest.raises(ObjectStoreFullError) as info:
        st.put(oid(2), serialize(np.ones(5 * MiB // 8)))
    assert time.monotonic() - t0 >= 0.25           # waited for unpins first
    msg = str(info.value)
    assert oid(2).hex() in msg and str(8 * MiB) in msg and "pinned" in msg
    assert isinstance(info.value, MemoryError)
    with pytest.raises(ObjectStoreFullError, match="raise object_store_memory"):
        st.put(oid(3), serialize(np.ones(9 * MiB // 8)))
    st.unpin(oid(1), 0)
    st.put(oid(2), serialize(np.ones(5 * MiB // 8)))  # now oid(1) can be spilled
    assert {e.object_id: e.where for e in st.entries()}[oid(1).hex()] == "spilled"


def test_put_waits_for_an_unpin_from_another_thread(make_store):
    st = make_store(capacity=8 * MiB, full_wait=5)
    st.put(oid(1), serialize(np.ones(5 * MiB // 8)))
    st.pin(oid(1), 0)
    threading.Timer(0.3, st.unpin, (oid(1), 0)).start()
    st.put(oid(2), serialize(np.ones(5 * MiB // 8)))
    assert np.all(get(st, 1) == 1) and np.all(get(st, 2) == 1)


def spill_and_restore(st, n=12, size=1 * MiB):
    values = {i: np.full(size // 8, i, dtype=np.int64) for i in range(n)}
    for i, v in values.items():
        st.put(oid(i), serialize(v))
    u = st.usage()
    assert u["num_spilled"] > 0 and u["used"] <= st.capacity
    spilled = [e for e in st.entries() if e.where == "spilled"]
    assert all(e.spill_url.startswith(st.spill.url) for e in spilled)
    for i in reversed(range(n)):                   # restores, spilling others to make room
        assert np.array_equal(get(st, i), values[i]), i
    return values


def test_spill_and_restore_local(make_store, tmp_path):
    st = make_store(capacity=4 * MiB, spill=str(tmp_path / "s"), min_spilling_size=2 * MiB)
    spill_and_restore(st)
    folder = Path(st.spill.url)
    assert folder.parent == tmp_path / "s" and stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.glob("spill-*.bin"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    # batching: fewer files than objects spilled
    assert st.stats["spill_files"] < st.stats["spilled_objects"]
    for i in range(12):
        st.delete(oid(i))
    assert list(folder.glob("spill-*.bin")) == []   # files go with their last object
    assert st.usage()["spill_files"] == 0


def test_spill_and_restore_s3(make_store, s3_bucket):
    import boto3

    st = make_store(capacity=4 * MiB, spill={"uri": f"s3://{s3_bucket}/spill", "buffer_size": "5MiB",
                                               "min_spilling_size": 2 * MiB})
    spill_and_restore(st, n=8)
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys and all(k.startswith(f"spill/ddsf-{st.session.token}/") for k in keys)
    for i in range(8):
        st.delete(oid(i))
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_s3_spill_files_removed_at_shutdown(s3_bucket):
    import boto3

    st = ObjectStore(capacity=3 * MiB, inline_threshold=1024,
                     spill={"uri": f"s3://{s3_bucket}/p", "min_spilling_size": 0})
    try:
        for i in range(4):
            st.put(oid(i), serialize(np.ones(MiB // 8)))
        assert st.usage()["num_spilled"] > 0
    finally:
        st.shutdown()
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def spilled_entry(st):
    for i in range(3):
        st.put(oid(i), serialize(np.full(MiB // 8, i)))
    e = next(e for e in st.entries() if e.where == "spilled")
    return e, st._objects[bytes.fromhex(e.object_id)].loc


def test_deleted_spill_file_is_object_lost(make_store):
    st = make_store(capacity=2 * MiB + 4096, min_spilling_size=0)
    e, loc = spilled_entry(st)
    os.unlink(loc.file.url)
    with pytest.raises(ObjectLostError, match=e.object_id):
        st.view(bytes.fromhex(e.object_id))
    with pytest.raises(ObjectLostError, match=e.object_id):
        st.locate(bytes.fromhex(e.object_id), 1)   # stays lost
    st.delete(bytes.fromhex(e.object_id))
    st.put(bytes.fromhex(e.object_id), serialize(np.zeros(MiB // 8)))   # rebuilt by lineage
    assert get(st, int.from_bytes(bytes.fromhex(e.object_id), "little")).sum() == 0


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_spill_file_is_object_lost(make_store, damage):
    st = make_store(capacity=2 * MiB + 4096, min_spilling_size=0)
    e, loc = spilled_entry(st)
    with open(loc.file.url, "r+b") as f:
        if damage == "flip":
            f.seek(loc.offset + loc.length // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
        else:
            f.truncate(loc.offset + loc.length - 10)
    with pytest.raises(ObjectLostError, match=e.object_id):
        st.view(bytes.fromhex(e.object_id))


def test_lost_segment_is_object_lost(make_store):
    st = make_store()
    st.put(oid(1), serialize(np.ones(200_000)))
    name = st._objects[oid(1)].seg.name
    os.unlink(f"/dev/shm/{name}")
    with pytest.raises(ObjectLostError, match=oid(1).hex()):
        st.view(oid(1))
    with pytest.raises(ObjectLostError, match=name):
        st.locate(oid(1), 2)
    st.delete(oid(1))
    st.put(oid(1), serialize(np.ones(200_000)))
    assert get(st, 1).sum() == 200_000


def test_concurrent_threads_with_spilling(make_store):
    st = make_store(capacity=6 * MiB, min_spilling_size=MiB, full_wait=5)
    errors = []

    def worker(t):
        try:
            for k in range(30):
                i = t * 1000 + k
                v = np.full(300_000 // 8, i, dtype=np.int64)
                st.put(oid(i), serialize(v))
                back = get(st, i)
                assert back[0] == i and back[-1] == i
                del back
                if k % 3 == 0:
                    st.delete(oid(i))
            for k in range(30):
                if k % 3:
                    assert get(st, t * 1000 + k)[5] == t * 1000 + k
        except Exception as exc:                   # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert st.usage()["used"] <= st.capacity


def test_no_leak_over_many_cycles(make_store):
    psutil = pytest.importorskip("psutil")
    st = make_store(capacity=64 * MiB)
    big = np.ones(300_000)
    proc = psutil.Process()

    def cycle(n):
        for i in range(n):
            st.put(oid(i), serialize([1, 2, 3]))
            st.put(oid(i + 1), serialize(big))
            get(st, i)
            get(st, i + 1)
            st.delete(oid(i))
            st.delete(oid(i + 1))

    cycle(2000)
    gc.collect()
    rss0, shm0 = proc.memory_info().rss, len(os.listdir("/dev/shm"))
    cycle(10_000)
    gc.collect()
    assert len(st.session.segments()) <= 2
    assert len(os.listdir("/dev/shm")) <= shm0 + 2
    assert proc.memory_info().rss - rss0 < 20 * MiB
    u = st.usage()
    assert u["num_inline"] == u["num_shared"] == 0 and u["inline_bytes"] == 0


def test_shutdown_removes_everything_even_with_live_views(tmp_path):
    st = ObjectStore(capacity=3 * MiB, inline_threshold=1024,
                     spill={"uri": str(tmp_path), "min_spilling_size": 0})
    for i in range(5):
        st.put(oid(i), serialize(np.full(MiB // 8, i)))
    alive = get(st, 4)
    st.shutdown()
    assert st.session.segments() == [] and list(tmp_path.iterdir()) == []
    assert alive[0] == 4                           # its pages live until the view dies
    assert not st.session.manifest_path.exists()
    with pytest.raises(Exception, match="shut down"):
        st.put(oid(9), serialize(np.ones(10_000)))


def test_driver_views_come_from_a_read_only_mapping(tmp_path):
    """torch cannot mark tensors read-only; an in-place write on a stored tensor must not
    change the stored object. The driver's views map the segment read-only, so it faults."""
    pytest.importorskip("torch")
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import torch
        from core._private.objects.store import ObjectStore
        from core._private.objects.serialization import deserialize, serialize
        st = ObjectStore(capacity=64 << 20, spill={str(tmp_path)!r})
        st.put(b"x" * 20, serialize(torch.zeros(100_000)))
        t = deserialize(st.view(b"x" * 20))
        print(st.session.prefix, flush=True)
        t.add_(1)
        print("wrote", flush=True)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    prefix = p.stdout.split()[0]
    assert "wrote" not in p.stdout and p.returncode == -11          # SIGSEGV, not a silent change
    assert shm.cleanup_stale_sessions() is not None
    assert [n for n in os.listdir("/dev/shm") if n.startswith(prefix)] == []


def test_size_classes_bound_padding():
    prev = 0
    for n in [1, 4095, 4096, 4097, 100_000, 2**20, 2**20 + 1, 5 * 10**6, 800 * 10**6]:
        c = size_class(n)
        assert c >= n and c % os.sysconf("SC_PAGE_SIZE") == 0 and c >= prev
        assert n < 65536 or c <= n * 1.125 + 4096
        prev = c


def test_restore_when_everything_else_is_pinned(make_store):
    st = make_store(capacity=3 * MiB, min_spilling_size=0, full_wait=0.2)
    st.put(oid(1), serialize(np.full(MiB // 8, 1)))
    st.put(oid(2), serialize(np.full(MiB // 8, 2)))
    st.put(oid(3), serialize(np.full(MiB // 8, 3)))      # spills 1
    assert {e.object_id: e.where for e in st.entries()}[oid(1).hex()] == "spilled"
    st.pin(oid(2), 0)
    st.pin(oid(3), 0)
    with pytest.raises(ObjectStoreFullError, match=oid(1).hex()):
        st.view(oid(1))
    assert {e.object_id: e.where for e in st.entries()}[oid(1).hex()] == "spilled"
    st.unpin(oid(3), 0)
    assert get(st, 1)[0] == 1                           # restored, 3 spilled in its place
    w = get(st, 3, writable=True)                       # restore + private copy-on-write
    w[0] = 99
    assert get(st, 3)[0] == 3


def test_entries_report_spill_urls_and_pins(make_store, tmp_path):
    st = make_store(capacity=3 * MiB, min_spilling_size=0)
    for i in range(4):
        st.put(oid(i), serialize(np.full(MiB // 8, i)))
    st.pin(oid(3), 7)
    info = {e.object_id: e for e in st.entries()}
    spilled = [e for e in info.values() if e.where == "spilled"]
    assert spilled and all(e.spill_url.startswith(str(tmp_path / "spill")) and "#offset=" in e.spill_url
                           for e in spilled)
    assert info[oid(3).hex()].pinned and info[oid(3).hex()].pins == {7: 1}
    assert info[oid(3).hex()].where == "shared" and info[oid(3).hex()].segment.startswith(st.session.prefix)
    u = st.usage()
    assert u["num_spilled"] == len(spilled) and u["spill_files"] >= 1 and u["spilled_bytes"] > 0


def test_create_retried_after_writer_died_and_delete_before_seal(make_store):
    st = make_store()
    name1, _ = st.create(oid(1), 500_000)
    name2, _ = st.create(oid(1), 500_000)          # the writer died; the retry gets a fresh segment
    assert name1 != name2 and not os.path.exists(f"/dev/shm/{name1}")
    st.delete(oid(1))                              # abandoned before seal
    assert not os.path.exists(f"/dev/shm/{name2}")
    u = st.usage()
    assert u["used"] == 0 and u["num_zombies"] == 0 and u["pooled_segments"] == 0


def test_random_concurrent_operations_keep_invariants(make_store):
    """Threads put, read (holding views for a while), pin, unpin and delete at random over a
    store that must spill; values always read back right and the accounting ends balanced."""
    import random

    st = make_store(capacity=6 * MiB, min_spilling_size=MiB, full_wait=5)
    live: dict[int, int] = {}                      # oid -> value, only for sealed puts
    lock = threading.Lock()
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        held = []
        try:
            for step in range(400):
                op = rng.random()
                if op < 0.35:
                    i = seed * 10_000 + step
                    size = rng.choice([1000, 200_000, 600_000])
                    st.put(oid(i), serialize(np.full(size // 8, i, dtype=np.int64)))
                    with lock:
                        live[i] = i
                    continue
                with lock:
                    if not live:
                        continue
                    i = rng.choice(list(live))
                if op < 0.75:
                    try:
                        arr = deserialize(st.pinned_view(oid(i)))
                    except ObjectLostError:
                        continue                   # deleted by another thread meanwhile
                    assert arr[0] == i and arr[-1] == i
                    if rng.random() < 0.3:
                        held.append(arr)
                    if len(held) > 1:              # 4 threads x 2 views < capacity
                        held.pop(0)
                elif op < 0.85:
                    with lock:
                        if live.pop(i, None) is None:
                            continue
                    st.delete(oid(i))
                else:
                    try:
                        st.pin(oid(i), seed)
                    except ObjectLostError:
                        continue
                    st.unpin(oid(i), seed)
        except Exception as exc:
            errors.append(exc)
        finally:
            held.clear()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], [str(e) for e in errors[:3]]
    assert st.stats["spilled_objects"] > 0 and st.stats["restored_objects"] > 0
    for i in list(live):
        assert get(st, i)[0] == i
        st.delete(oid(i))
    gc.collect()
    u = st.usage()
    assert u["num_zombies"] == 0 and u["pinned_bytes"] == 0 and u["spill_files"] == 0
    assert u["used"] == u["pooled"] <= st.capacity
    assert list(Path(st.spill.url).glob("spill-*")) == []


def test_full_dev_shm_spills_or_raises_instead_of_sigbus(tmp_path):
    """/dev/shm smaller than object_store_memory (other users filled it): a put spills our own
    objects to make room, and when nothing can go it raises ObjectStoreFullError; writing to
    pages tmpfs cannot supply would kill the process with SIGBUS instead. Runs in a private
    mount namespace with a 4 MiB /dev/shm."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from core._private.objects.store import ObjectStore
        from core._private.objects.serialization import serialize
        from core.exceptions import ObjectStoreFullError
        st = ObjectStore(capacity=64 << 20, inline_threshold=1024, full_wait=0.2,
                         spill={{"uri": {str(tmp_path)!r}, "min_spilling_size": 0}})
        st.put(b"a" * 20, serialize(np.ones(3 << 17)))          # 3 MiB
        st.put(b"b" * 20, serialize(np.ones(3 << 17)))          # /dev/shm full: a is spilled
        print("spilled", st.usage()["num_spilled"], flush=True)
        st.pin(b"b" * 20, 0)
        try:
            st.put(b"c" * 20, serialize(np.ones(3 << 17)))
        except ObjectStoreFullError as exc:
            print("full", "/dev/shm is full" in str(exc) or "does not fit" in str(exc), flush=True)
        st.shutdown()
    """)
    cmd = ["unshare", "-m", "sh", "-c",
           f"mount -t tmpfs -o size=4m,mode=1777 tmpfs /dev/shm && exec {sys.executable} -c \"$0\"", code]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if "mount" in p.stderr and p.returncode != 0 and "spilled" not in p.stdout:
        pytest.skip(f"cannot make a private /dev/shm here: {p.stderr.strip()[:200]}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["spilled", "1", "full", "True"]
