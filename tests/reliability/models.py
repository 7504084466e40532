"""Models for the reliability suite, importable by the workers as `tests.reliability.models`.

The good model is the NYC taxi tip model (score = passenger_count >= 2) with an optional delay
per batch, so that a run lasts long enough to be killed in the middle of a shard. The others are
the broken models a user might write: each one fails in one specific way.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd


class TipModel:
    def __init__(self, payload_mb: float = 1, delay: float = 0.0):
        self.payload = np.zeros(int(payload_mb * 1_000_000) // 8)
        self.delay = delay

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self.delay:
            time.sleep(self.delay)
        return pd.DataFrame({"score": batch["passenger_count"] >= 2})


def tip_model(payload_mb: float = 1, delay: float = 0.0, leave_thread: bool = False) -> TipModel:
    """`leave_thread`: the factory leaves a thread running where it ran, as a BLAS or OpenMP
    pool would. core.build then stores the model in shared memory instead of letting the workers
    inherit it: the suite's tests that inspect a session's segments ask for this."""
    if leave_thread:
        threading.Thread(target=threading.Event().wait, daemon=True, name="pool-like").start()
    return TipModel(payload_mb, delay)


def raising_factory(**_args):
    raise RuntimeError("weights file /models/tip.bin is missing")


class WrongRows:
    """Returns one row whatever the batch size."""

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": [True]})


def wrong_rows_model(**_args) -> WrongRows:
    return WrongRows()


class PandasOnly:
    """Written for pandas batches: uses DataFrame.iloc, which an Arrow table does not have."""

    def __call__(self, batch):
        return pd.DataFrame({"score": batch.iloc[:, 0] >= 2})


def pandas_only_model(**_args) -> PandasOnly:
    return PandasOnly()


def lock_closure_model(**_args):
    """A closure over a lock: cannot be pickled to the workers."""
    guard = threading.Lock()

    def model(batch):
        with guard:
            return pd.DataFrame({"score": batch["passenger_count"] >= 2})
    return model


class HoldsAConnection:
    """A model object with an attribute that does not pickle (a thread lock standing in for a
    database connection)."""

    def __init__(self):
        self.connection = threading.RLock()

    def __call__(self, batch):
        return pd.DataFrame({"score": batch["passenger_count"] >= 2})


def connection_model(**_args) -> HoldsAConnection:
    return HoldsAConnection()
