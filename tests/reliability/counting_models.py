"""A model that counts its calls, for the resume tests: importable by the workers as
`tests.reliability.counting_models`.

Each call appends one line to the `calls` file, the fingerprint of its batch, before doing
anything else, so that a call cut short by a kill is counted too. With one batch per shard, the
lines of a run are the shards it computed. The fingerprint also goes into the output (column
`batch`), so a part file tells which line is its own.

The first `together` calls of a run wait for each other before they sleep: on two workers the
first two shards then finish together (their parts are committed within milliseconds), which
is the moment the manifest's deferred write must not leave a part unrecorded.
"""

from __future__ import annotations

import hashlib
import os
import time

import pandas as pd


def fingerprint(batch: pd.DataFrame) -> str:
    rows = pd.util.hash_pandas_object(batch, index=False).to_numpy()
    return hashlib.sha1(rows.tobytes()).hexdigest()[:16]


def read_calls(path: str | os.PathLike) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


class CountingModel:
    def __init__(self, calls: str, seconds: float = 0.0, together: int = 2):
        self.calls, self.seconds, self.together = calls, seconds, together

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        fp = fingerprint(batch)
        with open(self.calls, "a") as f:  # O_APPEND: one short line is written whole
            f.write(fp + "\n")
        lines = read_calls(self.calls)
        if lines.index(fp) < self.together:
            while len(read_calls(self.calls)) < self.together:  # the rendezvous of the first calls
                time.sleep(0.005)
        if self.seconds:
            time.sleep(self.seconds)  # the workload: a slow model
        return pd.DataFrame({"score": batch["passenger_count"] >= 2, "batch": fp})


def counting_model(calls: str, seconds: float = 0.0, together: int = 2) -> CountingModel:
    return CountingModel(calls, seconds, together)
