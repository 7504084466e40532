"""Test models and data for the dataflow tests. Importable by the workers (as
`tests.dataflow.helpers`), so every model here travels by reference."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BAD = -1        # x == BAD makes FragileModel raise
STUCK = -2      # x == STUCK makes FragileModel hang


def make_dataset(root, shards: int = 4, rows: int = 1000, bad: dict | None = None,
                 stuck: dict | None = None) -> str:
    """`shards` Parquet files with columns id (unique) and x (= id % 7); rows listed in
    `bad`/`stuck` ({shard: [row, ...]}) get x = BAD / STUCK. Returns the folder."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    for s in range(shards):
        ids = np.arange(s * rows, (s + 1) * rows, dtype=np.int64)
        x = (ids % 7).astype(np.int64)
        for r in (bad or {}).get(s, []):
            x[r] = BAD
        for r in (stuck or {}).get(s, []):
            x[r] = STUCK
        pq.write_table(pa.table({"id": ids, "x": x}), os.path.join(root, f"part-{s:05d}.parquet"),
                       row_group_size=max(1, rows // 2))
    return root


class FragileModel:
    """y = 2x; raises on x == BAD, sleeps forever-ish on x == STUCK. Carries a payload."""

    def __init__(self, payload_mb: float = 1):
        self.payload = np.zeros(int(payload_mb * 1_000_000) // 8)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if (batch["x"] == STUCK).any():
            time.sleep(60)
        if (batch["x"] == BAD).any():
            raise ValueError(f"bad x in rows {batch.index[batch['x'] == BAD].tolist()}")
        return pd.DataFrame({"y": batch["x"] * 2})


def fragile_model(payload_mb: float = 1) -> FragileModel:
    return FragileModel(payload_mb)


def double(batch: pd.DataFrame) -> pd.Series:
    """A predict function taking just the batch."""
    return (batch["x"] * 2).rename("y")


def with_model(model, batch):
    """A predict function taking (model, batch)."""
    return model(batch)


class CountingPredictor:
    """A callable class: records each construction (pid) in $COUNT_FILE."""

    def __init__(self, model):
        self.model = model
        with open(os.environ["COUNT_FILE"], "a") as f:
            f.write(f"{os.getpid()}\n")

    def __call__(self, batch):
        return self.model(batch)


def numpy_predict(batch: dict) -> dict:
    assert isinstance(batch["x"], np.ndarray)
    return {"y": batch["x"] * 2}


def arrow_predict(batch: pa.Table) -> pa.Table:
    assert isinstance(batch, pa.Table)
    import pyarrow.compute as pc

    return pa.table({"y": pc.multiply(batch["x"], 2)})


def torch_predict(batch: dict):
    import torch

    assert isinstance(batch["x"], torch.Tensor)
    return batch["x"] * 2


def lock_setup(payload_mb: float = 0):
    """A `setup` model holding an unpicklable lock: built in each worker, never pickled."""
    import threading

    lock = threading.Lock()

    def model(batch):
        with lock:
            return pd.DataFrame({"y": batch["x"] * 2})
    return model


class SlowTipModel:
    """The NYC taxi tip model (score = passenger_count >= 2), `delay` seconds per batch: slow
    enough to interrupt a run in the middle."""

    def __init__(self, payload_mb: float = 1, delay: float = 0.2):
        self.payload = np.zeros(int(payload_mb * 1_000_000) // 8)
        self.delay = delay

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        time.sleep(self.delay)
        return pd.DataFrame({"score": batch["passenger_count"] >= 2})


def slow_tip_model(payload_mb: float = 1, delay: float = 0.2) -> SlowTipModel:
    return SlowTipModel(payload_mb, delay)


class CrashOnce:
    """Kills its worker (os._exit) the first time it sees shard data, then behaves."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(17)
        return pd.DataFrame({"y": batch["x"] * 2})


def crash_once(marker: str) -> CrashOnce:
    return CrashOnce(marker)
