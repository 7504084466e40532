"""core.object_store_stats(): the store's figures as numbers, spilled bytes included."""

from __future__ import annotations

import numpy as np
import pytest

import core
from core.exceptions import TaskError

MiB = 2**20


def test_the_figures_follow_puts_and_spills(make_session, tmp_path):
    make_session(num_cpus=1, object_store_memory=64 * MiB, spill=str(tmp_path / "spill"))
    before = core.object_store_stats()
    assert before["capacity"] == 64 * MiB and before["spilled_bytes"] == 0 and before["restored_bytes"] == 0
    refs = [core.put(np.full(16 * MiB // 8, i, dtype=np.float64)) for i in range(6)]  # 96 MiB > 64
    stats = core.object_store_stats()
    assert 0 < stats["used"] <= stats["capacity"]
    assert stats["spilled_bytes"] >= 32 * MiB        # what did not fit went to the spill folder
    assert [float(core.get(r)[0]) for r in refs] == [float(i) for i in range(6)]
    assert core.object_store_stats()["restored_bytes"] > 0


def test_object_store_stats_belongs_to_the_driver(session):
    @core.remote
    def inside():
        return core.object_store_stats()

    with pytest.raises(TaskError, match=r"core\.object_store_stats\(\) belongs to the driver"):
        core.get(inside.remote())
