"""Pages never written are found from /proc/self/pagemap, and a put skips them without reading."""

from __future__ import annotations

import numpy as np

from core._private.objects.untouched import untouched_blocks

MB = 2**20


def test_fresh_zeros_are_untouched_until_written():
    a = np.zeros(64 * MB // 8)
    blocks = untouched_blocks(memoryview(a).cast("B"), MB)
    assert blocks is not None and blocks.size == 64
    assert blocks[1:-1].all()  # the first page may hold the allocator's header
    a[20 * MB // 8] = 1.0
    a[-1] = 2.0
    blocks = untouched_blocks(memoryview(a).cast("B"), MB)
    assert not blocks[20] and not blocks[-1]
    assert blocks[5:15].all()  # far from the writes: still untouched


def test_unknown_where_pages_are_not_anonymous_private_memory(tmp_path):
    path = tmp_path / "zeros.bin"
    np.zeros(2 * MB // 8).tofile(path)
    mapped = np.memmap(path, dtype=np.float64, mode="r")  # absent pages hold the file, not zeros
    assert untouched_blocks(memoryview(mapped).cast("B"), MB) is None
    del mapped


def test_a_mostly_zero_array_round_trips_exactly(session):
    a = np.zeros(200 * MB // 8)
    rng = np.random.default_rng(1)
    where = rng.integers(0, a.size, 50)
    a[where] = rng.random(50) + 1
    a[0], a[-1] = 3.0, 4.0
    back = session.get(session.put(a))
    assert np.array_equal(back, a)
    assert np.array_equal(session.get(session.put(np.zeros(100 * MB // 8))), np.zeros(100 * MB // 8))
