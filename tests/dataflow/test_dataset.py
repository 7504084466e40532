"""The Ray-Data-shaped Python API: a lazy Dataset compiles to the same plan as YAML, runs to a
sink (resumable) or streams; take/take_batch/count/to_pandas/schema/stats; to_yaml."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dataflow
from dataflow import spec as S
from tests.dataflow import helpers
from tests.dataflow.stage_helpers import MeanModel, add_one, images


def dataset(data):
    return (dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2})
            .map_batches(images, fn_kwargs={"size": 2})
            .map_batches(MeanModel, fn_constructor_args=[np.ones(1000)], concurrency=2, batch_size=64)
            .map_batches(add_one_to_mean))


def add_one_to_mean(batch):
    return {"id": batch["id"], "y": batch["mean"] + 1, "w": batch["w"]}


def test_nothing_runs_until_asked_and_each_call_returns_a_new_dataset(tmp_path):
    ds = dataflow.read_parquet(tmp_path / "missing")
    ds2 = ds.map_batches(add_one)
    assert ds.stages == () and len(ds2.stages) == 1 and ds2.stages[0]["name"] == "add_one"
    assert ds2.map_batches(add_one).stages[1]["name"] == "add_one_2"


def test_write_parquet_runs_resumably_and_returns_the_summary(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=250)
    ds = dataset(data)
    s = ds.write_parquet(str(tmp_path / "out"))
    assert s.status == "done" and s.rows == 1000 and [st["name"] for st in s.stages] == [
        "images", "MeanModel", "add_one_to_mean"]
    out = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "out").glob("part-*"))]).sort_by("id")
    np.testing.assert_allclose(out["y"].to_numpy(), np.arange(1000) % 7 + 1)
    np.testing.assert_allclose(out["w"].to_numpy(), 1000.0)  # the constructor's array, shared
    assert "stage MeanModel: pool: 1,000 rows in" in ds.stats()
    again = ds.write_parquet(str(tmp_path / "out"))
    assert again.shards_skipped == 4 and again.shards_done == 0


def test_consuming_methods(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=100)
    ds = dataset(data)
    assert ds.count() == 300
    rows = ds.take(3)
    assert [r["id"] for r in rows] == [0, 1, 2] and rows[1]["y"] == 2.0
    batch = ds.take_batch(5)
    assert isinstance(batch["y"], np.ndarray) and batch["id"].tolist() == [0, 1, 2, 3, 4]
    df = ds.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 300 and df["id"].tolist() == list(range(300))
    assert ds.schema().names == ["id", "y", "w"]
    sizes = [len(b) for b in ds.iter_batches(batch_size=70, batch_format="pandas")]
    assert sum(sizes) == 300 and sizes[:4] == [70] * 4
    ordered = [b["id"][0] for b in ds.iter_batches(batch_size=100, preserve_order=True)]
    assert ordered == [0, 100, 200]


def test_count_without_stages_reads_only_footers(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=123)
    assert dataflow.read_parquet(data).count() == 246


def test_dataset_and_its_yaml_compile_to_the_same_plan(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=50)
    ds = (dataflow.read_parquet(data, columns=["id", "x"])
          .map_batches(images, fn_kwargs={"size": 2})
          .map_batches(MeanModel, model={"factory": "tests.dataflow.stage_helpers:weights", "args": {"mb": 1}},
                       concurrency=[1, 2], num_cpus=1)
          .map_batches(add_one_to_mean))
    text = ds.to_yaml(sink=str(tmp_path / "out"))
    path = tmp_path / "p.yaml"
    path.write_text(text)
    from_yaml = dataflow.Pipeline.from_yaml(str(path))
    assert from_yaml.stages() == ds.pipeline().stages()
    assert from_yaml.run().rows == 100


def test_to_yaml_refuses_a_function_without_a_name(tmp_path):
    ds = dataflow.read_parquet("data/").map_batches(lambda b: b)
    with pytest.raises(ValueError, match=r"to_yaml: stage <lambda>: .* cannot be imported by name"):
        ds.to_yaml()


def test_a_running_core_session_provides_the_runtime(tmp_path):
    import core

    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=50)
    core.init(num_cpus=2, num_gpus=1)
    try:
        ds = dataflow.read_parquet(data, columns=["id", "x"]).map_batches(add_one, num_gpus=1)
        assert ds.count() == 100
        assert core.is_initialized()  # the Dataset used the session and left it running
    finally:
        core.shutdown()


def test_bad_map_batches_arguments_are_spec_errors(tmp_path):
    ds = dataflow.read_parquet("data/").map_batches(MeanModel, concurrency=(3, 1))
    with pytest.raises(dataflow.SpecError, match=r"stages\[0\]\.concurrency: \[min, max\] with min \(3\) > max \(1\)"):
        ds.pipeline()
    assert isinstance(S.PipelineSpec, type)


def test_write_csv_and_write_json(tmp_path):
    import json

    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=10)
    ds = dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2}).map_batches(add_one)
    assert ds.write_csv(str(tmp_path / "csv")).rows == 20
    assert ds.write_json(str(tmp_path / "json")).rows == 20
    csv = pd.concat(pd.read_csv(p) for p in sorted((tmp_path / "csv").glob("part-*.csv")))
    assert csv["x"].tolist() == [(i % 7) + 1 for i in range(20)]
    lines = [json.loads(line) for p in sorted((tmp_path / "json").glob("part-*")) for line in p.read_text().splitlines()]
    assert [r["id"] for r in lines] == list(range(20))


BAR = re.compile(r'<rect class="bar outcome-(\w+)" data-shard="(\d+)" data-stage="([^"]*)" data-attempt="(\d+)"')


def test_write_parquet_and_write_csv_write_the_html_report(tmp_path, monkeypatch):
    """The same page as `dataflow run --html-report`: at the default path under the working
    folder (True) or where asked, one timeline bar per stage of each shard, the stats text."""
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=100)
    ds = dataset(data)
    monkeypatch.chdir(tmp_path)
    s = ds.write_parquet(str(tmp_path / "out"), html_report=True)
    assert s.status == "done" and s.rows == 300
    path = ds.last_report
    assert path is not None and path.parent == tmp_path / ".dataflow" / "reports"
    assert re.fullmatch(r"dataset-.+\.html", path.name) and os.listdir(path.parent) == [path.name]
    page = path.read_text(encoding="utf-8")
    timeline = page[page.index('<svg id="timeline"'):]
    bars = BAR.findall(timeline[:timeline.index("</svg>")])
    assert sorted((st, int(sh)) for _, sh, st, _ in bars) == sorted(
        (st, sh) for st in ("images", "MeanModel", "add_one_to_mean") for sh in range(3))
    assert {o for o, _, _, _ in bars} == {"ok"}
    assert 'id="status"' in page and ">done<" in page
    assert "Stage 2 MeanModel: 3 tasks executed, 3 blocks produced" in page

    target = tmp_path / "reports" / "csv.html"
    s = ds.write_csv(str(tmp_path / "out_csv"), html_report=target)
    assert s.rows == 300 and ds.last_report == target and target.read_text().startswith("<!DOCTYPE html>")
    assert os.listdir(tmp_path / ".dataflow" / "reports") == [path.name]   # nothing more there
    ds.write_json(str(tmp_path / "out_json"))
    assert ds.last_report is None                                          # not asked: none written
