"""Synthetic product reviews, generated deterministically by seed: `shards` Parquet files with
review_id (unique), text (a few words from a small vocabulary) and stars (1-5)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = np.array(["good", "bad", "great", "awful", "fine", "broken", "love", "hate", "cheap", "solid",
                  "slow", "fast", "nice", "poor", "ok", "excellent", "terrible", "works", "fails", "meh"])


def make_reviews(path: str, shards: int = 8, rows: int = 2000, seed: int = 0) -> str:
    """Write the shards under `path` (created); returns it."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s in range(shards):
        n_words = rng.integers(3, 12, size=rows)
        picks = rng.integers(0, len(WORDS), size=int(n_words.sum()))
        cuts = np.cumsum(n_words)[:-1]
        text = [" ".join(w) for w in np.split(WORDS[picks], cuts)]
        ids = np.arange(s * rows, (s + 1) * rows, dtype=np.int64)
        table = pa.table({"review_id": ids, "text": text,
                          "stars": rng.integers(1, 6, size=rows).astype(np.int8)})
        tmp = os.path.join(path, f".part-{s:05d}.parquet.tmp")
        pq.write_table(table, tmp, row_group_size=max(1, rows // 2))
        os.replace(tmp, os.path.join(path, f"part-{s:05d}.parquet"))
    return path
