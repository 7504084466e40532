"""`python -m dataflow` end to end, as a user runs it: subprocesses, exit codes, one-line errors,
the NYC taxi pipelines on local files and on moto's S3 server, resume after SIGKILL, Ctrl-C,
failing shards (skip / fail / quarantine), the torch model."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NYC = os.path.join(ROOT, "pipelines", "nyc_taxi.yaml")
NYC_TORCH = os.path.join(ROOT, "pipelines", "nyc_taxi_torch.yaml")


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def dataflow(*args, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataflow", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def small(tmp_path, out="out", shards=4, scale=0.01, payload_mb=8) -> list[str]:
    """--set overrides that make nyc_taxi.yaml small and keep everything under tmp_path."""
    return ["--set", f"source.parquet={tmp_path}/data/", "--set", f"sink.parquet={tmp_path}/{out}/",
            "--set", f"runtime.spill={tmp_path}/spill", "--set", f"source.generate.args.shards={shards}",
            "--set", f"source.generate.args.scale={scale}", "--set", f"model.args.payload_mb={payload_mb}",
            "--set", "runtime.object_store_memory=256MB"]


def read_parts(folder) -> dict[str, pa.Table]:
    return {os.path.basename(p): pq.read_table(p) for p in sorted(glob.glob(f"{folder}/part-*.parquet"))}


def committed(folder) -> int:
    try:
        with open(os.path.join(folder, "_manifest.json")) as f:
            return len(json.load(f)["parts"])
    except (OSError, ValueError, KeyError):
        return 0


# -- validate / bad specs / bad arguments -------------------------------------------------------


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "pipelines", "*.yaml"))),
                         ids=os.path.basename)
def test_validate_every_pipeline(path, tmp_path):
    r = dataflow("validate", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ": ok (" in r.stderr and os.listdir(tmp_path) == []


def test_bad_spec_one_line_exit_2_nothing_written(tmp_path):
    r = dataflow("run", NYC, *small(tmp_path), "--set", "predict.batch_size=big", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == ('--set predict.batch_size=big: predict.batch_size: must be a positive integer, '
                        'got "big"\n')
    assert os.listdir(tmp_path) == []  # no data generated, no output, no spill folder


def test_bad_field_in_file_names_file_and_line(tmp_path):
    text = open(NYC).read().replace("batch_format: pandas", "batch_format: pandsa")
    (tmp_path / "p.yaml").write_text(text)
    r = dataflow("run", "p.yaml", cwd=tmp_path)
    assert r.returncode == 2
    line = text.splitlines().index("  batch_format: pandsa") + 1
    assert r.stderr == (f'p.yaml:{line}: predict.batch_format: must be one of pandas, pyarrow, numpy, '
                        f'torch, got "pandsa"; did you mean "pandas"?\n')
    assert sorted(os.listdir(tmp_path)) == ["p.yaml"]


@pytest.mark.parametrize("args,message", [
    (["frobnicate", "x.yaml"], "dataflow: error: argument {run,validate,plan}: invalid choice"),
    (["run"], "dataflow: error: the following arguments are required: pipeline"),
    (["run", "x.yaml", "--bogus"], "dataflow: error: unrecognized arguments: --bogus"),
    (["validate", "missing.yaml"], "missing.yaml: cannot read the pipeline file: No such file or directory"),
])
def test_bad_arguments_exit_2(tmp_path, args, message):
    r = dataflow(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert "Traceback" not in r.stderr


def test_runtime_error_is_one_line_exit_1(tmp_path):
    r = dataflow("run", NYC, *small(tmp_path), "--set", "source.generate=null", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("dataflow: error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- runs ------------------------------------------------------------------------------------


def test_run_local_nyc_taxi_verbose_and_json(tmp_path):
    r = dataflow("run", NYC, *small(tmp_path), "--verbose", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    data = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(f"{tmp_path}/data/*.parquet")))
    assert summary["status"] == "done" and summary["rows"] == data.num_rows == 17_106
    assert summary["shards"] == summary["shards_done"] == 4 and summary["failed"] == []
    assert summary["peak_memory"] > 0 and summary["rows_per_second"] > 0
    lines = re.findall(r"^Predictions dataframe size: (\d+) \| Total score for tips: (\d+)$", r.stderr, re.M)
    assert len(lines) == 4
    assert sum(int(n) for n, _ in lines) == data.num_rows
    assert sum(int(s) for _, s in lines) == pc.sum(pc.greater_equal(data["passenger_count"], 2)).as_py()
    parts = read_parts(tmp_path / "out")
    assert list(parts) == [f"part-{i:05d}.parquet" for i in range(4)]
    assert all(t.column_names == ["score"] for t in parts.values())
    # a second run resumes: everything is committed, nothing runs
    again = dataflow("run", NYC, *small(tmp_path), "--json", cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["shards_skipped"] == 4


def test_plan_lists_shards(tmp_path):
    r = dataflow("plan", NYC, *small(tmp_path, shards=3), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shards = json.loads(r.stdout)["shards"]
    assert [s["index"] for s in shards] == [0, 1, 2] and sum(s["num_rows"] for s in shards) == 17_106
    text = dataflow("plan", NYC, *small(tmp_path, shards=3), cwd=tmp_path)
    assert "3 shards, 17,106 rows" in text.stdout and "to do: 3 shards, 17,106 rows" in text.stdout
    assert not (tmp_path / "out").exists()
    assert dataflow("run", NYC, *small(tmp_path, shards=3), cwd=tmp_path).returncode == 0
    os.remove(tmp_path / "out" / "part-00001.parquet")
    after = json.loads(dataflow("plan", NYC, *small(tmp_path, shards=3), "--json", cwd=tmp_path).stdout)
    assert [s["committed"] for s in after["shards"]] == [True, False, True]


def test_summary_table_when_not_a_terminal(tmp_path):
    r = dataflow("run", NYC, *small(tmp_path, shards=2), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^shard \d done: [\d,]+ rows in [\d.]+ s \| \d/2 shards \| [\d,]+ rows/s \| ETA", r.stderr, re.M)
    assert re.search(r"^status +done$", r.stderr, re.M) and re.search(r"^rows +17,106$", r.stderr, re.M)


def test_torch_pipeline(tmp_path):
    pytest.importorskip("torch")
    args = ["--set", f"source.parquet={tmp_path}/data/", "--set", f"sink.parquet={tmp_path}/out/",
            "--set", "source.generate.args.shards=2", "--set", "source.generate.args.scale=0.01",
            "--set", f"model.path={ROOT}/examples/nyc_taxi/tip_mlp.pt", "--verbose", "--json"]
    r = dataflow("run", NYC_TORCH, *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == 17_106
    parts = read_parts(tmp_path / "out")
    t = pa.concat_tables(parts.values())
    assert t.column_names == ["passenger_count", "predicted_tip"]
    tips = t["predicted_tip"].to_numpy()
    assert (tips >= 0).all() and 0.05 < tips.mean() < 2.0  # dollars: the MLP learned something sane
    assert re.search(r"^Predictions dataframe size: \d+ \| Total predicted tips: [\d.]+$", r.stderr, re.M)


# -- failures ------------------------------------------------------------------------------------


def failing_pipeline(tmp_path, on_error: str) -> str:
    from tests.dataflow import helpers

    helpers.make_dataset(tmp_path / "data", shards=3, rows=2000, bad={1: [10, 1500]})
    (tmp_path / "p.yaml").write_text(textwrap.dedent(f"""\
        name: fragile
        source: {{parquet: data/}}
        model: {{factory: "tests.dataflow.helpers:fragile_model"}}
        predict: {{batch_size: 512, keep_columns: [id]}}
        sink: {{parquet: out/}}
        runtime: {{num_cpus: 2, max_retries: 1, on_error: {on_error}, spill: spill/}}
        """))
    return "p.yaml"


def test_failing_shard_on_error_fail(tmp_path):
    r = dataflow("run", failing_pipeline(tmp_path, "fail"), cwd=tmp_path)
    assert r.returncode == 1
    assert re.search(r"^dataflow: error: shard 1 \(.*part-00001\.parquet\) failed after 2 attempts: "
                     r"rows 0-511: ValueError: bad x in rows \[10\]$", r.stderr, re.M), r.stderr
    assert re.search(r"^status +failed$", r.stderr, re.M) and "Traceback" not in r.stderr


def test_failing_shard_on_error_skip(tmp_path):
    r = dataflow("run", failing_pipeline(tmp_path, "skip"), "--json", cwd=tmp_path)
    assert r.returncode == 1
    s = json.loads(r.stdout)
    assert s["status"] == "partial" and [f["index"] for f in s["failed"]] == [1]
    assert s["rows"] == 4000 and sorted(read_parts(tmp_path / "out")) == ["part-00000.parquet", "part-00002.parquet"]
    assert "shard 1 failed (attempt 1), retrying" in r.stderr and "shard 1 FAILED after 2 attempts" in r.stderr


def test_quarantine_through_the_cli(tmp_path):
    r = dataflow("run", failing_pipeline(tmp_path, "quarantine"), "--json", cwd=tmp_path)
    assert r.returncode == 1
    s = json.loads(r.stdout)
    assert s["status"] == "partial" and s["rows"] == 5998 and s["rows_quarantined"] == 2
    q = pq.read_table(tmp_path / "out" / "_quarantine" / "part-00001.parquet")
    assert q["id"].to_pylist() == [2010, 3500] and q["_row"].to_pylist() == [10, 1500]


# -- interruptions -------------------------------------------------------------------------------


def slow(tmp_path, out: str, delay: float) -> list[str]:
    return small(tmp_path, out=out, shards=10, scale=0.02) + [
        "--set", "model.factory=tests.dataflow.helpers:slow_tip_model",
        "--set", f"model.args={{payload_mb: 8, delay: {delay}}}", "--set", "predict.batch_size=1024"]


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dataflow", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def shm_segments(pid: int) -> set[str]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return {line.split()[-1] for line in f if "/dev/shm/" in line}
    except OSError:
        return set()


def test_resume_after_sigkill_matches_a_clean_run(tmp_path):
    clean = dataflow("run", NYC, *slow(tmp_path, "clean", 0.0), cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    proc = start(["run", NYC, *slow(tmp_path, "out", 0.15)], tmp_path)
    try:
        wait_for(lambda: committed(tmp_path / "out") >= 2 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        workers = psutil.Process(proc.pid).children(recursive=True)
        segments = shm_segments(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done_before = committed(tmp_path / "out")
    assert 2 <= done_before < 10
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers outlived the killed driver: {alive}"
    r = dataflow("run", NYC, *slow(tmp_path, "out", 0.0), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["shards_skipped"] == done_before and s["shards_done"] == 10 - done_before
    resumed, reference = read_parts(tmp_path / "out"), read_parts(tmp_path / "clean")
    assert list(resumed) == list(reference)
    for name in reference:
        assert resumed[name].equals(reference[name]), name
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".") or "tmp" in n]
    left = [s for s in segments if os.path.exists(s)]
    assert not left, f"shared memory left by the killed driver: {left}"


def interrupt_after_first_commit(proc: subprocess.Popen, out, before=lambda: None) -> str:
    """Ctrl-C (SIGINT) to a run once a shard is committed in `out` (`before()` runs just ahead of
    it); the run's stderr. A run still alive after this is killed."""
    try:
        wait_for(lambda: committed(out) >= 1 or proc.poll() is not None)
        before()
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path):
    proc = start(["run", NYC, *slow(tmp_path, "out", 0.15)], tmp_path)
    workers: list = []
    err = interrupt_after_first_commit(proc, tmp_path / "out",
                                       before=lambda: workers.extend(psutil.Process(proc.pid).children(recursive=True)))
    assert proc.returncode == 130, err
    assert re.search(r"^dataflow: interrupted: \d+ of 10 shards committed to .*; run the same command again "
                     r"to resume$", err, re.M), err
    assert "Traceback" not in err
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
    r = dataflow("run", NYC, *slow(tmp_path, "out", 0.0), "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["shards_skipped"] >= 1
    assert len(read_parts(tmp_path / "out")) == 10


# -- S3 -------------------------------------------------------------------------------------------


def test_s3_source_sink_and_spill(tmp_path, s3_bucket):
    from connectors import make_nyc_taxi_shards

    make_nyc_taxi_shards(f"s3://{s3_bucket}/data", shards=3, scale=0.01)
    args = ["--set", f"source.parquet=s3://{s3_bucket}/data/", "--set", "source.generate=null",
            "--set", f"sink.parquet=s3://{s3_bucket}/out/", "--set", f"runtime.spill=s3://{s3_bucket}/spill",
            "--set", "model.args.payload_mb=8", "--set", "runtime.object_store_memory=64MB",
            "--verbose", "--json"]
    r = dataflow("run", NYC, *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == 17_106
    import s3fs

    fs = s3fs.S3FileSystem()
    names = sorted(os.path.basename(p) for p in fs.ls(f"{s3_bucket}/out/"))
    assert [n for n in names if n.startswith("part-")] == [f"part-{i:05d}.parquet" for i in range(3)]
    t = pa.concat_tables(pq.read_table(f"{s3_bucket}/out/part-{i:05d}.parquet", filesystem=fs) for i in range(3))
    assert t.num_rows == 17_106 and t.column_names == ["score"]
    again = dataflow("run", NYC, *args, cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["shards_skipped"] == 3
    assert os.listdir(tmp_path) == []  # nothing local: source, sink and spill all on S3


@pytest.mark.parametrize("sized", [True, False], ids=["sized", "no-size"])
def test_progress_bar_on_a_terminal(tmp_path, sized):
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    if sized:  # a real terminal; an unsized pty (some CI runners) must still show the bar
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dataflow", "run", NYC, *small(tmp_path, shards=3)],
                                cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "3/3 shards" in text and "rows/s" in text and "\r" in text  # a bar redrawn in place
    assert "shard 0 done:" not in text                                  # not the plain lines
    assert re.search(r"status +done", text)
