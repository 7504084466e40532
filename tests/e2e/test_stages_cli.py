"""The three-stage review pipeline (pipelines/reviews.yaml: parse -> a model in a pool of 2
actors -> post) through `python -m dataflow`: runs on generated data, per-stage lines with
--verbose, bad stage specs exit 2 with one line, and a SIGKILLed run resumes to the same output."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pyarrow.parquet as pq

from tests.e2e.test_cli import ROOT, committed, dataflow, read_parts, start, wait_for

REVIEWS = os.path.join(ROOT, "pipelines", "reviews.yaml")


def small(tmp_path, out="out", shards=6, rows=500) -> list[str]:
    return ["--set", f"source.parquet={tmp_path}/data/", "--set", f"sink.parquet={tmp_path}/{out}/",
            "--set", f"source.generate.args.shards={shards}", "--set", f"source.generate.args.rows={rows}",
            "--set", "runtime.object_store_memory=256MB"]


def test_three_stage_pipeline_runs_and_reports_each_stage(tmp_path):
    r = dataflow("run", REVIEWS, *small(tmp_path), "--verbose", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "done" and s["rows"] == 3000 and s["shards_done"] == 6
    assert [st["name"] for st in s["stages"]] == ["tokenize", "sentiment", "label"]
    assert s["stages"][1]["kind"] == "pool" and s["stages"][1]["actors"] == 2
    assert "stage sentiment: pool: 3,000 rows in, 3,000 out, 6 blocks" in r.stderr
    t = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert t.column_names == ["review_id", "score", "label", "embedding"]
    assert set(t["label"].to_pylist()) <= {"positive", "negative", "neutral"}
    assert t.schema.field("embedding").type.shape == [16]  # a fixed-shape tensor column


def test_validate_lists_the_stages(tmp_path):
    r = dataflow("validate", REVIEWS, cwd=tmp_path)
    assert r.returncode == 0 and "tokenize -> sentiment -> label" in r.stderr, r.stderr


def test_a_typo_in_a_stage_exits_2_with_one_line_and_runs_nothing(tmp_path):
    text = open(REVIEWS).read().replace("    concurrency: 2", "    concurency: 2")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = dataflow("run", str(path), *small(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml:" in lines[0]
    assert 'stages[1].concurency: unknown key; did you mean "concurrency"?' in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_resume_after_sigkill_matches_a_clean_run(tmp_path):
    clean = dataflow("run", REVIEWS, *small(tmp_path, "clean", shards=10), cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    slow = ["--set", "stages.1.fn_constructor_kwargs.delay=0.2", "--set", "stages.1.batch_size=100"]
    proc = start(["run", REVIEWS, *small(tmp_path, "out", shards=10), *slow], tmp_path)
    try:
        wait_for(lambda: committed(tmp_path / "out") >= 2 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done_before = committed(tmp_path / "out")
    assert 2 <= done_before < 10
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers or actors outlived the killed driver: {alive}"
    r = dataflow("run", REVIEWS, *small(tmp_path, "out", shards=10), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["shards_skipped"] == done_before and s["shards_done"] == 10 - done_before
    resumed, reference = read_parts(tmp_path / "out"), read_parts(tmp_path / "clean")
    assert list(resumed) == list(reference)
    for name in reference:
        assert resumed[name].equals(reference[name]), name
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".") or "tmp" in n]
