"""The Python API on a real `core` session: run, stream, failures (fail / skip / quarantine),
timeouts, resume, per-worker construction, the model forms and batch formats."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dataflow import (
    BatchTimeoutError,
    ModelError,
    Pipeline,
    PredictError,
    RunError,
    Summary,
    UnpicklableModelError,
)
from tests.dataflow import helpers

H = "tests.dataflow.helpers"


def runtime(tmp_path, **extra):
    return {"num_cpus": 2, "object_store_memory": "256MB", "spill": str(tmp_path / "spill"),
            "max_retries": 1, **extra}


def pipeline(tmp_path, data, model=None, predict=None, **rt):
    return Pipeline(source={"parquet": data},
                    model=model or {"factory": f"{H}:fragile_model", "args": {"payload_mb": 4}},
                    predict=predict or {"batch_size": 256, "keep_columns": ["id"]},
                    sink=str(tmp_path / "out"), runtime=runtime(tmp_path, **rt))


def output(tmp_path, sub="out") -> pa.Table:
    files = sorted((tmp_path / sub).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def test_run_writes_every_row_once(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=5, rows=1000)
    summary = pipeline(tmp_path, data).run()
    assert isinstance(summary, Summary)
    assert summary.status == "done" and summary.exit_code == 0
    assert summary.rows == 5000 and summary.shards == 5 and summary.shards_done == 5
    assert summary.failed == [] and summary.wall_time > 0 and summary.rows_per_second > 0
    assert summary.peak_memory > 10 * 2**20
    out = output(tmp_path).sort_by("id")
    assert out.column_names == ["id", "y"]
    assert out["id"].to_pylist() == list(range(5000))
    assert out["y"].to_pylist() == [(i % 7) * 2 for i in range(5000)]
    parts = sorted(n for n in os.listdir(tmp_path / "out") if not n.startswith(("_", ".")))
    assert parts == [f"part-0000{i}.parquet" for i in range(5)]


def test_resume_skips_committed_shards_and_restart_redoes_them(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=500)
    first = pipeline(tmp_path, data).run()
    mtimes = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "out").glob("part-*")}
    os.remove(tmp_path / "out" / "part-00002.parquet")  # as if the run had stopped before it
    again = pipeline(tmp_path, data).run()
    assert again.shards_skipped == 3 and again.shards_done == 1 and again.rows == 500
    for p, t in mtimes.items():
        if not p.name.endswith("00002.parquet"):
            assert os.stat(p).st_mtime_ns == t  # untouched
    assert output(tmp_path).sort_by("id").equals(pa.concat_tables([output(tmp_path)]).sort_by("id"))
    assert output(tmp_path).num_rows == first.rows
    restarted = pipeline(tmp_path, data).run(restart=True)
    assert restarted.shards_done == 4 and restarted.shards_skipped == 0


def test_stream_yields_each_shard_as_it_finishes(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=300)
    p = Pipeline(source=data, model={"factory": f"{H}:fragile_model"},
                 predict={"keep_columns": ["id"]}, runtime=runtime(tmp_path))
    frames = list(p.stream())
    assert len(frames) == 4
    import pandas as pd

    df = pd.concat(frames).sort_values("id")
    assert df["id"].tolist() == list(range(1200)) and (df["y"] == (df["id"] % 7) * 2).all()
    tables = list(p.stream(format="pyarrow"))
    assert all(isinstance(t, pa.Table) for t in tables)
    assert not (tmp_path / "out").exists()


def test_stream_can_stop_early(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=6, rows=200)
    p = Pipeline(source=data, model={"factory": f"{H}:fragile_model"}, runtime=runtime(tmp_path))
    for frame in p.stream():
        break
    import core

    assert not core.is_initialized()


def test_failing_shard_fail_stops_the_run(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=400, bad={1: [17]})
    with pytest.raises(RunError, match=r"shard 1 \(.*part-00001\.parquet\) failed after 2 attempts: "
                                       r"rows 0-255: ValueError: bad x in rows \[17\]$") as info:
        pipeline(tmp_path, data).run()
    s = info.value.summary
    assert s.status == "failed" and s.exit_code == 1 and s.failed_shards == [1]
    assert not (tmp_path / "out" / "part-00001.parquet").exists()


def test_failing_shard_skip_finishes_the_others(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=400, bad={2: [5]})
    summary = pipeline(tmp_path, data, on_error="skip", max_retries=2).run()
    assert summary.status == "partial" and summary.exit_code == 1
    assert summary.failed_shards == [2] and summary.failed[0].attempts == 3
    assert "ValueError: bad x" in summary.failed[0].error
    assert summary.shards_done == 3 and summary.rows == 1200
    assert not (tmp_path / "out" / "part-00002.parquet").exists()
    assert "failed shard 2" in summary.table()


def test_quarantine_bisects_to_the_bad_rows(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=1000, bad={1: [3, 700, 701]})
    summary = pipeline(tmp_path, data, on_error="quarantine").run()
    assert summary.status == "partial" and summary.exit_code == 1
    assert summary.rows == 2997 and summary.rows_quarantined == 3
    assert summary.quarantined_shards == [1] and summary.failed == []
    out = output(tmp_path)
    assert sorted(out["id"].to_pylist()) == sorted(set(range(3000)) - {1003, 1700, 1701})
    q = pq.read_table(tmp_path / "out" / "_quarantine" / "part-00001.parquet")
    assert q["id"].to_pylist() == [1003, 1700, 1701]
    assert q["_row"].to_pylist() == [3, 700, 701] and set(q["_shard"].to_pylist()) == {1}
    assert all(p.endswith("part-00001.parquet") for p in q["_path"].to_pylist())
    assert all(e.startswith("ValueError: bad x") for e in q["_error"].to_pylist())
    # the good rows of the shard keep their input order
    part = pq.read_table(tmp_path / "out" / "part-00001.parquet")["id"].to_pylist()
    assert part == sorted(part)


def test_timeout_bounds_a_stuck_batch(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=200, stuck={0: [4]})
    p = pipeline(tmp_path, data, predict={"batch_size": 100, "timeout": 0.5}, on_error="skip", max_retries=0)
    summary = p.run()
    assert summary.failed_shards == [0]
    assert "BatchTimeoutError: a batch ran longer than predict.timeout (0.5 s)" in summary.failed[0].error
    assert summary.wall_time < 30


def test_timeout_in_quarantine_sets_the_batch_aside(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=1, rows=200, stuck={0: [150]})
    p = pipeline(tmp_path, data, predict={"batch_size": 100, "timeout": 0.5}, on_error="quarantine")
    summary = p.run()
    assert summary.rows == 100 and summary.rows_quarantined == 100


def test_callable_class_is_built_once_per_worker(tmp_path, monkeypatch):
    count = tmp_path / "count.txt"
    monkeypatch.setenv("COUNT_FILE", str(count))
    data = helpers.make_dataset(tmp_path / "data", shards=8, rows=100)
    p = pipeline(tmp_path, data, predict={"fn": f"{H}:CountingPredictor", "batch_size": 10})
    assert p.run().rows == 800
    pids = count.read_text().split()
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids)  # 2 workers at most, once each


@pytest.mark.parametrize("fn", ["double", "with_model", "numpy_predict", "arrow_predict", "torch_predict"])
def test_predict_forms_and_batch_formats(tmp_path, fn):
    fmt = {"numpy_predict": "numpy", "arrow_predict": "pyarrow", "torch_predict": "torch"}.get(fn, "pandas")
    if fmt == "torch":
        pytest.importorskip("torch")
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=100)
    p = Pipeline(source={"parquet": data, "columns": ["x"]}, model={"factory": f"{H}:fragile_model"},
                 predict={"fn": f"{H}:{fn}", "batch_format": fmt, "keep_columns": ["id"]},
                 sink=str(tmp_path / "out"), runtime=runtime(tmp_path))
    assert p.run().rows == 200
    out = output(tmp_path).sort_by("id")
    ycol = out.column_names[1]
    assert out["id"].to_pylist() == list(range(200))
    assert out[ycol].to_pylist() == [(i % 7) * 2 for i in range(200)]


def test_model_object_and_inline_backend(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=100)
    p = Pipeline(source=data, model=helpers.FragileModel(0.1), sink=str(tmp_path / "out"),
                 runtime={"backend": "inline"})
    assert p.run().rows == 200


def test_setup_model_is_built_in_each_worker(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=100)
    p = pipeline(tmp_path, data, model={"setup": f"{H}:lock_setup"})
    assert p.run().rows == 300


def test_unpicklable_model_names_the_captured_object(tmp_path):
    import threading

    lock = threading.Lock()

    def model(batch):
        with lock:
            return batch

    data = helpers.make_dataset(tmp_path / "data", shards=1, rows=10)
    p = Pipeline(source=data, model={"factory": lambda: model}, sink=str(tmp_path / "out"),
                 runtime=runtime(tmp_path))
    with pytest.raises(UnpicklableModelError, match=r"model closure variable 'lock' \(a lock\) does not "
                                                    r"pickle .*`model: \{setup: 'package\.module:function'\}`"):
        p.run()
    assert not list((tmp_path / "out").glob("part-*"))


def test_factory_error_is_a_model_error(tmp_path):
    def broken():
        raise OSError("weights not found")

    data = helpers.make_dataset(tmp_path / "data", shards=1, rows=10)
    p = Pipeline(source=data, model={"factory": broken}, sink=str(tmp_path / "out"), runtime=runtime(tmp_path))
    with pytest.raises(ModelError, match=r"model\.factory .*broken raised OSError: weights not found"):
        p.run()


def test_wrong_output_length_is_reported(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=1, rows=10)
    p = Pipeline(source=data, model={"factory": f"{H}:fragile_model"}, predict={"fn": lambda b: [1, 2]},
                 sink=str(tmp_path / "out"), runtime=runtime(tmp_path, max_retries=0))
    with pytest.raises(RunError, match=r"predict returned 2 rows for a batch of 10"):
        p.run()


def test_errors_keep_their_types():
    assert issubclass(BatchTimeoutError, TimeoutError) and issubclass(BatchTimeoutError, PredictError)
    assert issubclass(UnpicklableModelError, TypeError)


def test_csv_sink(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=50)
    p = Pipeline(source=data, model={"factory": f"{H}:fragile_model"}, sink={"csv": str(tmp_path / "csv")},
                 runtime=runtime(tmp_path))
    assert p.run().rows == 100
    assert len(ds.dataset(str(tmp_path / "csv"), format="csv").to_table()) == 100


def test_model_weights_are_stored_once_not_per_worker(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=6, rows=20000)
    peaks = {}
    for mb in (1, 200):
        p = pipeline(tmp_path, data, model={"factory": f"{H}:fragile_model", "args": {"payload_mb": mb}},
                     object_store_memory="1GB")
        peaks[mb] = p.run(restart=True).peak_memory
    # one copy in shared memory, mapped by both workers: about +200 MB, not +400 MB or more
    assert peaks[200] - peaks[1] < 1.5 * 200e6, peaks


def test_run_without_sink_points_at_stream(tmp_path):
    from dataflow import SpecError

    p = Pipeline(source="data/", model=helpers.FragileModel(0))
    with pytest.raises(SpecError, match=r"sink: run\(\) needs a sink .* use stream\(\)"):
        p.run()


def test_progress_bar_and_plain_lines():
    import io

    from dataflow.progress import Progress

    out = io.StringIO()
    bar = Progress(out, bar=True, verbose=True, report="size {rows} | tips {sum[score]}")
    bar.start("t", 2, 200, 0)
    bar.shard_done(0, 100, 100, 0.1, {"score": 40})
    bar.close()
    assert "size 100 | tips 40" in out.getvalue() and "rows" in out.getvalue()
    out = io.StringIO()
    plain = Progress(out, bar=False)
    plain.start("t", 2, 200, 1)
    plain.shard_done(1, 100, 100, 0.1, {})
    assert "t: 1 of 2 shards already committed, resuming" in out.getvalue()
    assert "shard 1 done: 100 rows in 0.10 s | 2/2 shards" in out.getvalue()


def test_nyc_taxi_model_is_the_tutorials():
    import pandas as pd

    from examples.nyc_taxi import model as m

    tip = m.load_trained_model()
    assert tip.payload.nbytes == 800_000_000 and isinstance(tip.payload, __import__("numpy").ndarray)
    out = tip(pd.DataFrame({"passenger_count": [0, 1, 2, 5]}))
    assert out["score"].tolist() == [False, False, True, True]
    assert m.load_model(payload_mb=1).payload.nbytes == 1_000_000


def test_a_crashed_worker_is_retried(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=100)
    p = pipeline(tmp_path, data, model={"factory": f"{H}:crash_once", "args": {"marker": str(tmp_path / "m")}})
    summary = p.run()
    assert summary.status == "done" and summary.rows == 300 and (tmp_path / "m").exists()


def test_workers_write_the_parts_and_the_driver_only_commits_them(tmp_path, monkeypatch):
    from connectors import Sink

    def driver_writes(*args):
        raise AssertionError("the driver encoded a part")

    monkeypatch.setattr(Sink, "write_part", driver_writes)
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=300)

    summary = pipeline(tmp_path, data).run()

    assert summary.status == "done" and summary.rows == 1200
    assert output(tmp_path).sort_by("id")["id"].to_pylist() == list(range(1200))
    assert sorted(os.listdir(tmp_path / "out")) == ["_manifest.json"] + [
        f"part-0000{i}.parquet" for i in range(4)]


def test_resume_removes_the_temporary_files_an_interrupted_run_left(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=200)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("_tmp-part-00001.parquet.0123abcd-89abcdef", "_tmp-part-00002.parquet.a1b2c3d4e5f6",
                 "_manifest.json._tmp-0f1e2d3c4b5a"):
        (out / name).write_bytes(b"half a file")

    summary = pipeline(tmp_path, data).run()

    assert summary.shards_done == 3
    assert sorted(os.listdir(out)) == ["_manifest.json"] + [f"part-0000{i}.parquet" for i in range(3)]


def test_local_sink_with_workers_elsewhere_is_written_by_the_driver(tmp_path):
    from connectors import open_sink
    from dataflow.backends import CoreBackend, InlineBackend
    from dataflow.pipeline import _stager

    local = open_sink(str(tmp_path / "out"))
    assert _stager(local, CoreBackend(address="ray://127.0.0.1:10001"), "t") is None
    assert _stager(local, InlineBackend(), "t") is not None
