"""The executor's policy on a fake backend (no processes): bounded in flight, completion order,
retries then give up, fail fast cancels the rest, deadlines; and the batch conversions."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dataflow import PredictError
from dataflow.backends import TaskFailure
from dataflow.batches import add_columns, column_sums, to_format, to_table
from dataflow.executor import (
    Executor,
    RunState,
    ShardDone,
    ShardFailed,
    ShardRetry,
    default_max_in_flight,
    on_failure,
    task_deadline,
    to_submit,
)


@dataclass(frozen=True)
class FakeShard:
    index: int
    path: str = "f.parquet"
    num_rows: int = 10


class FakeBackend:
    """Tasks finish in a random order; `fails` maps shard index -> attempts that fail."""

    def __init__(self, fails=None, seed=0, hang=()):
        self.fails = dict(fails or {})
        self.rng = random.Random(seed)
        self.pending = []
        self.max_pending = 0
        self.cancelled = []
        self.hang = set(hang)
        self.submitted = []

    def submit(self, fn, args, model):
        handle = object()
        self.pending.append((handle, args))
        self.submitted.append(args.index)
        self.max_pending = max(self.max_pending, len(self.pending))
        return handle

    def wait(self, handles, timeout):
        ready = [h for h, a in self.pending if a.index not in self.hang]
        return [self.rng.choice(ready)] if ready else []

    def result(self, handle):
        i = next(n for n, (h, _) in enumerate(self.pending) if h is handle)
        _, shard = self.pending.pop(i)
        if self.fails.get(shard.index, 0) > 0:
            self.fails[shard.index] -= 1
            raise TaskFailure(f"boom {shard.index}", ValueError("boom"))
        return shard.index

    def cancel(self, handle, force=False):
        self.cancelled.append(handle)
        self.pending = [(h, a) for h, a in self.pending if h is not handle]


def run(backend, n=20, max_in_flight=3, retries=2, fail_fast=False, deadline=None):
    ex = Executor(backend=backend, fn=None, make_args=lambda s: s, model_ref=None, max_in_flight=max_in_flight,
                  max_retries=retries, fail_fast=fail_fast, deadline_for=lambda s: deadline, poll=0.01)
    return list(ex.run([FakeShard(i) for i in range(n)]))


def test_in_flight_is_bounded_and_every_shard_finishes_once():
    b = FakeBackend(seed=1)
    events = run(b, n=50, max_in_flight=4)
    assert b.max_pending == 4
    done = [e.result for e in events if isinstance(e, ShardDone)]
    assert sorted(done) == list(range(50)) and done != list(range(50))  # completion order


def test_retry_then_give_up():
    b = FakeBackend(fails={3: 1, 5: 99})
    events = run(b, n=8, retries=2)
    retries = [(e.shard.index, e.attempt) for e in events if isinstance(e, ShardRetry)]
    failed = [(e.shard.index, e.attempts) for e in events if isinstance(e, ShardFailed)]
    assert sorted(retries) == [(3, 1), (5, 1), (5, 2)]
    assert failed == [(5, 3)]
    assert sorted(e.result for e in events if isinstance(e, ShardDone)) == [0, 1, 2, 3, 4, 6, 7]


def test_fail_fast_stops_submitting_and_cancels_in_flight():
    b = FakeBackend(fails={0: 99}, seed=3)
    events = run(b, n=30, max_in_flight=3, retries=0, fail_fast=True)
    assert isinstance(events[-1], ShardFailed) and events[-1].shard.index == 0
    assert len(b.submitted) < 30 and not b.pending


def test_deadline_cancels_a_stuck_task():
    b = FakeBackend(hang={2})
    events = run(b, n=4, retries=0, deadline=0.05)
    failed = [e for e in events if isinstance(e, ShardFailed)]
    assert [e.shard.index for e in failed] == [2] and "deadline" in failed[0].error
    assert b.cancelled


def test_pure_decisions():
    state = RunState(queue=deque(FakeShard(i) for i in range(5)), max_in_flight=2, max_retries=1)
    assert [s.index for s in to_submit(state)] == [0, 1]
    state.in_flight = {"a": 1, "b": 2}
    assert to_submit(state) == []
    state.attempts[7] = 1
    assert on_failure(state, FakeShard(7)) == "retry" and state.queue[0].index == 7
    state.attempts[7] = 2
    assert on_failure(state, FakeShard(7)) == "give_up"
    assert default_max_in_flight(2) == 4 and default_max_in_flight(0) == 2
    assert task_deadline(None, 100, 10, False) is None
    assert task_deadline(2.0, 100, 10, False) == 2.0 * 10 + 30


# -- batches ------------------------------------------------------------------------------------

RB = pa.RecordBatch.from_pydict({"id": [1, 2, 3], "x": [1.0, 2.0, 3.0]})


def test_to_format():
    assert isinstance(to_format(RB, "pandas"), pd.DataFrame)
    assert isinstance(to_format(RB, "pyarrow"), pa.Table)
    arrays = to_format(RB, "numpy")
    assert isinstance(arrays["x"], np.ndarray) and arrays["x"].tolist() == [1.0, 2.0, 3.0]
    torch = pytest.importorskip("torch")
    t = to_format(RB, "torch")
    assert isinstance(t["x"], torch.Tensor) and t["id"].dtype == torch.int64
    with pytest.raises(PredictError, match=r"column 's' has type string, which has no tensor form"):
        to_format(pa.RecordBatch.from_pydict({"s": ["a"]}), "torch")


@pytest.mark.parametrize("output", [
    pd.DataFrame({"prediction": [1, 2, 3]}), pd.Series([1, 2, 3]), np.array([1, 2, 3]),
    {"prediction": [1, 2, 3]}, pa.table({"prediction": [1, 2, 3]}), [1, 2, 3],
])
def test_to_table_accepts_common_outputs(output):
    assert to_table(output, 3).column("prediction").to_pylist() == [1, 2, 3]


def test_to_table_checks_length_and_keep_columns_clash():
    with pytest.raises(PredictError, match=r"predict returned 2 rows for a batch of 3"):
        to_table([1, 2], 3)
    t = add_columns(pa.table({"y": [0, 0, 0]}), RB, ["id"])
    assert t.column_names == ["id", "y"]
    with pytest.raises(PredictError, match=r"keep_columns \['x'\] clash"):
        add_columns(pa.table({"x": [0, 0, 0]}), RB, ["x"])
    assert column_sums(pa.table({"s": [True, False, True], "f": [0.5, 1.0, 1.5], "t": ["a", "b", "c"]})) == {
        "s": 2, "f": 3.0}
