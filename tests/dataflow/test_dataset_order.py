"""Dataset.iter_batches(preserve_order=True) on a real run whose first shard is the slowest:
batches come in input order, and no more than `order_buffer` finished shards ever wait ahead of
the one it waits for (the run starts no shard further ahead)."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pytest

import dataflow
from dataflow import Pipeline
from dataflow import plan as P
from dataflow import streaming
from dataflow.dataset import _takes
from dataflow.executor import OrderWindow
from tests.dataflow import helpers
from tests.dataflow.stage_helpers import MeanModel, images


def slow_first(batch: dict) -> dict:
    """Shard 0 (ids below 100) takes long; the others are quick."""
    if int(batch["id"][0]) < 100:
        time.sleep(2.0)
    return batch


def dataset(data):
    return (dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2})
            .map_batches(slow_first)
            .map_batches(images, fn_kwargs={"size": 2}, num_cpus=0.5)  # another segment: streams
            .map_batches(MeanModel, concurrency=1))


def test_order_window_admits_only_shards_close_to_the_one_awaited():
    w = OrderWindow(3)
    assert [w.admits(p) for p in range(5)] == [True, True, True, False, False]
    w.delivered(2)
    w.delivered(1)
    assert w.next == 0 and w.ahead_high == 2 and not w.admits(3)
    w.delivered(0)
    assert w.next == 3 and w.admits(5) and not w.admits(6)


def test_the_streaming_executor_holds_the_first_segment_at_the_window():
    segs = P.segments([P.Stage("a", "m:f", "tasks"), P.Stage("b", "m:g", "tasks", num_cpus=0.5)])
    state = streaming.StreamState([streaming.SegState(segs[0], 8, buffer=8, ready=True),
                                   streaming.SegState(segs[1], 8, buffer=8, ready=True)], 0,
                                  order=OrderWindow(2))
    state.segs[0].queue = deque(streaming.Item(None, position=i) for i in range(6))
    assert streaming.can_submit(state, 0)
    state.segs[0].queue.popleft()
    state.segs[0].queue.popleft()  # positions 0 and 1 started: 2 is past the window
    assert not streaming.can_submit(state, 0)
    state.order.delivered(0)
    assert streaming.can_submit(state, 0)


def test_preserve_order_yields_in_input_order_with_the_slow_first_shard(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=8, rows=100)
    ds = dataset(data)
    firsts = [int(b["id"][0]) for b in ds.iter_batches(batch_size=100, preserve_order=True, order_buffer=2)]
    assert firsts == [i * 100 for i in range(8)]


@pytest.mark.skipif(not _takes(Pipeline.stream, "order_window"),
                    reason="Pipeline.stream does not pass order_window to the executors yet (STAGES report)")
def test_preserve_order_buffers_at_most_order_buffer_shards(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=8, rows=100)
    ds = dataset(data)
    batches = list(ds.iter_batches(batch_size=None, preserve_order=True, order_buffer=2))
    ids = np.concatenate([b["id"] for b in batches])
    assert ids.tolist() == list(range(800))
    assert 0 < ds._last["order_buffer_high"] <= 2
