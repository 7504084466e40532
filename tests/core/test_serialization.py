"""Round trips, zero-copy and read-only guarantees of `core._private.objects.serialization`."""

from __future__ import annotations

import datetime
import decimal
import gc
import mmap
import pickle
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from core._private.objects import serialization as ser
from core._private.objects.serialization import deserialize, note_contained_ref, serialize
from core.exceptions import CoreError


def roundtrip(value, **kw):
    return deserialize(serialize(value).to_bytes(), **kw)


def in_page_buffer(value) -> tuple[mmap.mmap, memoryview]:
    """Serialize into a page-aligned anonymous mapping, like a shared segment."""
    so = serialize(value)
    m = mmap.mmap(-1, max(so.total_size, 1))
    so.write_to(memoryview(m))
    return m, memoryview(m)[:so.total_size]


def addr_range(m: mmap.mmap) -> tuple[int, int]:
    arr = np.frombuffer(m, dtype=np.uint8)
    start = arr.__array_interface__["data"][0]
    return start, start + len(m)


# ─── round trips ────────────────────────────────────────────────────────────────────────────────
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


@pytest.mark.parametrize("value", [
    0, -1, 2**100, 3.5, float("inf"), 1 + 2j, True, None, "", "héllo", b"\x00\xff", bytearray(b"ab"),
    [1, 2, 3], (1, "a", None), {"a": 1, 2: [3, 4]}, {1, 2}, frozenset({3}), [[[[1]]]],
    {"nested": {"deep": [1, {"x": (2, 3)}]}}, list(range(1000)), {i: str(i) for i in range(200)},
    datetime.datetime(2024, 1, 2, 3, 4, 5), decimal.Decimal("1.5"), Point(1, 2), range(5),
])
def test_roundtrip_python_values(value):
    assert roundtrip(value) == value


NUMPY_DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.clongdouble,
    "datetime64[ns]", "datetime64[D]", "timedelta64[s]", "S5", "U3", "V4",
    np.dtype([("a", np.int32), ("b", np.float64, (2,)), ("c", "S3")]),
]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=str)
def test_numpy_every_dtype_zero_copy(dtype):
    rng = np.random.default_rng(0)
    a = np.frombuffer(rng.bytes(np.dtype(dtype).itemsize * 60), dtype=dtype).reshape(3, 4, 5)
    m, view = in_page_buffer(a)
    b = deserialize(view)
    assert b.dtype == a.dtype and b.shape == a.shape
    assert a.tobytes() == b.tobytes()
    assert np.shares_memory(b, np.frombuffer(m, np.uint8))
    assert b.__array_interface__["data"][0] % 64 == 0
    assert not b.flags.writeable
    del b, view
    m.close()


def test_numpy_object_dtype_and_views():
    a = np.array([1, "x", None], dtype=object)
    assert list(roundtrip(a)) == list(a)
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    assert np.array_equal(roundtrip(f), f)
    strided = np.arange(20)[::3]                   # not contiguous: pickled in band
    assert np.array_equal(roundtrip(strided), strided)
    assert roundtrip(np.float64(2.5)) == 2.5
    empty = np.empty((0, 3))
    assert roundtrip(empty).shape == (0, 3)


def test_readonly_write_raises():
    m, view = in_page_buffer(np.arange(100.0))
    b = deserialize(view)
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        b[0] = 1.0
    del b, view
    m.close()


def test_writable_view_gives_writable_arrays_in_place():
    m, view = in_page_buffer(np.zeros(100))
    b = deserialize(view, writable=True)
    b[3] = 7.0
    assert np.shares_memory(b, np.frombuffer(m, np.uint8))
    assert deserialize(view)[3] == 7.0            # it wrote into the (private) buffer given
    del b, view
    m.close()


def test_writable_from_readonly_bytes_copies():
    data = serialize(np.zeros(10)).to_bytes()
    b = deserialize(data, writable=True)
    b[0] = 1
    assert deserialize(data)[0] == 0


def _check_frame(df, m, view):
    # In its own frame so that pytest's assertion temporaries die before the mapping is closed.
    out = deserialize(view)
    pd.testing.assert_frame_equal(out, df)
    lo, hi = addr_range(m)
    # numeric block and categorical codes are views of the buffer
    assert np.shares_memory(out["i"].to_numpy(), np.frombuffer(m, np.uint8))
    assert np.shares_memory(out["c"].array.codes, np.frombuffer(m, np.uint8))
    assert np.shares_memory(out["t"].array._ndarray, np.frombuffer(m, np.uint8))
    if isinstance(out["s"].array, pd.arrays.ArrowStringArray):
        chunk = out["s"].array._pa_array.chunk(0)
        data_addr = chunk.buffers()[-1].address
        assert lo <= data_addr < hi
    with pytest.raises(ValueError, match="read-only"):
        out["i"].to_numpy()[0] = 5


def test_pandas_strings_categoricals_zero_copy():
    n = 10_000
    df = pd.DataFrame({
        "i": np.arange(n),
        "f": np.linspace(0, 1, n),
        "s": [f"row{i}" for i in range(n)],
        "c": pd.Categorical(np.array(["red", "green", "blue"])[np.arange(n) % 3]),
        "t": pd.date_range("2024-01-01", periods=n, freq="s"),
    })
    m, view = in_page_buffer(df)
    _check_frame(df, m, view)
    del view
    gc.collect()                                  # pandas keeps reference cycles to its blocks
    m.close()


def test_arrow_table_and_record_batch_zero_copy():
    t = pa.table({"x": pa.array(np.arange(1000)), "s": pa.array([str(i) for i in range(1000)]),
                  "l": pa.array([[i, i] for i in range(1000)])})
    for value in (t, t.to_batches()[0]):
        m, view = in_page_buffer(value)
        out = deserialize(view)
        assert out.equals(value)
        lo, hi = addr_range(m)
        col = out.column(0)
        arr = col.chunk(0) if isinstance(col, pa.ChunkedArray) else col
        assert lo <= arr.buffers()[1].address < hi
        del out, col, arr, view
        m.close()


def test_torch_tensors_zero_copy():
    torch = pytest.importorskip("torch")
    for t in (torch.arange(24, dtype=torch.float32).reshape(2, 3, 4), torch.ones(5, dtype=torch.bfloat16),
              torch.tensor([True, False]), torch.tensor(3.0), torch.empty(0, 4),
              torch.arange(10)[2:7], torch.randn(3, 4).t()):
        m, view = in_page_buffer(t)
        out = deserialize(view)
        assert out.dtype == t.dtype and out.shape == t.shape and torch.equal(out, t)
        if t.numel():
            lo, hi = addr_range(m)
            assert lo <= out.data_ptr() < hi
        del out, view
        m.close()
    g = torch.ones(3, requires_grad=True)
    assert roundtrip(g).requires_grad


def test_torch_writable_tensor():
    torch = pytest.importorskip("torch")
    m, view = in_page_buffer(torch.zeros(8))
    out = deserialize(view, writable=True)
    out += 1
    assert float(out.sum()) == 8
    del out, view
    m.close()


def test_closures_lambdas_local_functions():
    k = 10

    def local(x):
        return x * k

    assert roundtrip(local)(3) == 30
    assert roundtrip(lambda x: x + k)(1) == 11
    assert roundtrip([local, {"f": lambda: k}])[1]["f"]() == 10

    class Local:
        def m(self):
            return k

    assert roundtrip(Local)().m() == 10


# ─── layout ─────────────────────────────────────────────────────────────────────────────────────
def test_layout_alignment_and_sizes():
    a, b = np.arange(3, dtype=np.int8), np.arange(1000, dtype=np.float64)
    so = serialize({"a": a, "b": b})
    assert len(so.buffers) == 2
    assert all(off % ser.ALIGNMENT == 0 for off in so._offsets)
    data = so.to_bytes()
    assert len(data) == so.total_size
    out = deserialize(data)
    assert np.array_equal(out["a"], a) and np.array_equal(out["b"], b)


@pytest.mark.parametrize("start", [0, 16, 64, 200, 4032, 4090])
def test_large_buffers_sit_at_their_sources_page_offset(start):
    """A large buffer is placed where its copy does not run into 4K aliasing: at the source's
    offset within a page, rounded down to the 64-byte alignment; the value still round-trips
    from a page-aligned destination with aligned arrays."""
    backing = np.arange(2**21 + 8192, dtype=np.uint8)
    shift = (start - backing.ctypes.data) % 4096
    big = backing[shift:shift + 2**21]
    assert big.ctypes.data % 4096 == start
    so = serialize({"small": np.arange(5), "big": big})
    (small_off, big_off) = so._offsets
    assert small_off % ser.ALIGNMENT == 0 and big_off % ser.ALIGNMENT == 0
    assert big_off % 4096 == start & ~(ser.ALIGNMENT - 1)
    dest = mmap.mmap(-1, so.total_size)
    so.write_to(memoryview(dest))
    out = deserialize(memoryview(dest))
    assert np.array_equal(out["big"], big) and np.array_equal(out["small"], np.arange(5))
    assert out["big"].ctypes.data % ser.ALIGNMENT == 0
    del out
    dest.close()


def test_small_values_have_no_buffers():
    so = serialize([1, 2, 3])
    assert so.buffers == [] and so.total_size == len(so.to_bytes())
    assert deserialize(so.to_bytes()) == [1, 2, 3]


def test_write_to_makes_no_intermediate_copy():
    a = np.ones(64 * 2**20 // 8)                 # 64 MiB, above the parallel-copy threshold
    so = serialize(a)
    dest = mmap.mmap(-1, so.total_size)
    tracemalloc.start()
    so.write_to(memoryview(dest))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 * 2**20, f"write_to allocated {peak} bytes"
    out = deserialize(memoryview(dest))
    assert np.array_equal(out, a)
    del out
    dest.close()


def test_write_to_too_small_destination():
    so = serialize(np.arange(100))
    with pytest.raises(CoreError, match="too small"):
        so.write_to(memoryview(bytearray(10)))


def test_corrupt_header_is_a_clear_error():
    with pytest.raises(CoreError, match="magic"):
        deserialize(b"X" * 40)
    with pytest.raises(CoreError, match="header"):
        deserialize(b"DD")


def test_unpicklable_value_names_the_type():
    import threading

    with pytest.raises(CoreError, match="lock"):
        serialize(threading.Lock())


# ─── nested refs ────────────────────────────────────────────────────────────────────────────────
class FakeRef:
    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        note_contained_ref(self)
        return (FakeRef, (self.name,))


def test_contained_refs_collected_only_inside_serialize():
    r1, r2 = FakeRef("a"), FakeRef("b")
    so = serialize({"x": [r1, (r2,)], "y": 3})
    assert so.contained_refs == [r1, r2]
    assert serialize([1]).contained_refs == []
    pickle.dumps(r1)                              # outside serialize: nothing recorded, no error
    assert serialize([np.arange(3), r1]).contained_refs == [r1]
