"""`Summary.stats()` and `Dataset.stats()`: per stage, the figures Ray Data's `ds.stats()` gives,
read off a real small run (workers, an actor pool, the object store) and checked against what
the run must have done: tasks per stage, rows and bytes out per block, CPU time and peak memory
measured in the workers, "n/a" where nothing was measured."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq

import dataflow
from dataflow import Pipeline
from tests.dataflow import helpers
from tests.dataflow.stage_helpers import MeanModel, images

H = "tests.dataflow.helpers"


def _stage(text: str, name: str) -> str:
    """The block of lines of one stage (from its `Stage i name:` line to the blank line)."""
    m = re.search(rf"^Stage \d+ {name}: .*?(?=^\s*$)", text, re.M | re.S)
    assert m, text
    return m.group(0)


def _mean_of(block: str, what: str) -> float:
    m = re.search(rf"\* {what}: ([\d.,]+)s? min, ([\d.,]+)s? max, ([\d.,]+)s? mean", block)
    assert m, block
    return float(m.group(3).replace(",", ""))


def test_dataset_stats_after_write_parquet_per_stage(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=250)
    ds = (dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2})
          .map_batches(images, fn_kwargs={"size": 2})
          .map_batches(MeanModel, fn_constructor_args=[np.ones(1000)], concurrency=2, batch_size=64))
    summary = ds.write_parquet(str(tmp_path / "out"))
    assert summary.rows == 1000
    text = ds.stats()
    assert text == summary.stats()

    decode, model = _stage(text, "images"), _stage(text, "MeanModel")
    # One task per shard and stage, every one produced its block.
    assert decode.startswith("Stage 1 images: 4 tasks executed, 4 blocks produced in ")
    assert model.startswith("Stage 2 MeanModel: 4 tasks executed, 4 blocks produced in ")
    # The summary's own line for the stage is there too.
    assert "* stage MeanModel: pool: 1,000 rows in, 1,000 out, 4 blocks" in model
    assert "* Output num rows per block: 250 min, 250 max, 250 mean, 1,000 total" in decode
    # images: id (int64) + a 3 x 2 x 2 float32 image = 56 bytes a row; MeanModel: id (int64),
    # mean (float32, of float32 images), w (float64) = 20.
    assert "* Output size bytes per block: 14,000 min, 14,000 max, 14,000 mean, 56,000 total" in decode
    assert "* Output size bytes per block: 5,000 min, 5,000 max, 5,000 mean, 20,000 total" in model
    # Measured in the workers: CPU time and the worker's peak RSS (a Python with numpy and
    # pyarrow loaded holds tens of MiB).
    for block in (decode, model):
        assert _mean_of(block, "Remote wall time") >= 0
        assert re.search(r"\* Remote cpu time: [\d.]+s min", block), block
        peak = float(re.search(r"\* Peak heap memory usage \(MiB\): ([\d.]+)", block).group(1))
        assert peak > 20, block
        assert "* Spilled bytes: n/a" in block
        assert "* Attempts: 0 retried, 0 failed, 0 cancelled" in block
    # The actor pool's 4 blocks ran in its (at most 2) actors' processes.
    workers = int(re.search(r"over (\d+) workers", model).group(1))
    assert 1 <= workers <= 2
    # The run's line: rows out of the last stage, peak PSS measured, spilling not measured.
    assert re.search(r"^Run dataset \(.+\): done, 1,000 rows in [\d.]+s", text, re.M), text
    assert re.search(r"\* Peak memory \(PSS, driver \+ workers\): [\d.]+ MiB; spilled: n/a", text), text
    assert summary.peak_memory > 0


def test_dataset_stats_after_iter_batches_and_before_any_run(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=100)
    ds = dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2}).map_batches(
        images, fn_kwargs={"size": 2})
    assert ds.stats().startswith("no run yet")
    assert ds.count() == 300
    block = _stage(ds.stats(), "images")
    assert block.startswith("Stage 1 images: 3 tasks executed, 3 blocks produced")
    assert "* Output num rows per block: 100 min, 100 max, 100 mean, 300 total" in block


def test_summary_stats_of_a_shorthand_run_with_a_retry(tmp_path):
    # Shard 1 has a row the model rejects: two attempts, then skipped (on_error: skip).
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=200, bad={1: [5]})
    pipe = Pipeline(source={"parquet": data},
                    model={"factory": f"{H}:fragile_model", "args": {"payload_mb": 1}},
                    predict={"batch_size": 64, "keep_columns": ["id"]}, sink=str(tmp_path / "out"),
                    runtime={"num_cpus": 2, "max_retries": 1, "on_error": "skip"})
    summary = pipe.run()
    assert summary.status == "partial" and summary.rows == 400
    text = summary.stats()
    block = _stage(text, "predict")
    # 2 shards done + 2 failed attempts of shard 1 (one retried, one failed for good).
    assert block.startswith("Stage 1 predict: 4 tasks executed, 2 blocks produced")
    assert "* Attempts: 1 retried, 1 failed, 0 cancelled" in block
    assert "* Output num rows per block: 200 min, 200 max, 200 mean, 400 total" in block
    written = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "out").glob("part-*.parquet"))
    assert written == 400
    # Bytes out per block: id and y, int64 each, 16 bytes a row, plus Arrow's validity bitmaps
    # (a few bytes per batch of 64 rows).
    m = re.search(r"\* Output size bytes per block: ([\d,]+) min, ([\d,]+) max", block)
    assert m, block
    assert all(3_200 <= int(v.replace(",", "")) < 3_300 for v in m.groups()), block
    assert "Summary" not in summary.to_dict() and "record" not in summary.to_dict()
