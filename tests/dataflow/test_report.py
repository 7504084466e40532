"""The run recorder, the per-stage stats text and the HTML report (rendered and parsed here; the
browser test is tests/e2e/test_report_browser.py)."""

from __future__ import annotations

import json
import os
import re
import threading
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from dataflow.recorder import (
    Backpressure,
    BlockEvent,
    QuarantinedRow,
    RunRecord,
    RunRecorder,
    Sample,
    stage_stats,
    stats_text,
)
from dataflow.report import default_report_path, render, write_report

SVG = "{http://www.w3.org/2000/svg}"


# -- records built by hand -----------------------------------------------------------------
def record_of(blocks, *, samples=None, stages=None, status="done", wall=None, **extra) -> RunRecord:
    wall = wall if wall is not None else max((b.end for b in blocks), default=0.0)
    return RunRecord(pipeline=extra.pop("pipeline", "taxi"), run_id="r1", started_at=0.0, wall=wall,
                     status=status, stages=stages or sorted({b.stage for b in blocks}),
                     blocks=list(blocks), samples=samples or [], **extra)


def ok(shard, start=0.0, end=1.0, *, stage="predict", worker="1", rows=100, **kw) -> BlockEvent:
    return BlockEvent(stage, shard, start, end, kw.pop("outcome", "ok"), kw.pop("attempt", 1),
                      kw.pop("path", f"/data/part-{shard:05d}.parquet"), worker, 4000 + int(worker or 0),
                      rows, rows, rows * 8, **kw)


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside <title> elements."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.titles: list[str] = []
        self._in_title = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.titles.append(data)

    def find(self, tag=None, **attrs) -> list[dict]:
        return [a for t, a in self.tags if (tag is None or t == tag)
                and all(v in (a.get(k.rstrip("_")) or "").split() or a.get(k.rstrip("_")) == v
                        for k, v in attrs.items())]

    def bars(self) -> list[dict]:
        return self.find("rect", class_="bar")


def svgs(page: str) -> dict[str, ET.Element]:
    """Each inline <svg> parsed as XML: a stray `<` or `&` from user text would fail here."""
    out = {}
    for m in re.finditer(r"<svg\b.*?</svg>", page, re.S):
        el = ET.fromstring(m.group(0))
        out[el.get("id")] = el
    return out


# -- the recorder ----------------------------------------------------------------------------
def test_recorder_collects_blocks_from_many_threads_with_times_relative_to_the_run():
    rec = RunRecorder("taxi", "r1", stages=["predict"], sample=False)
    with rec:
        def feed(worker):
            for i in range(100):
                shard = worker * 100 + i
                rec.block_started("predict", shard, path=f"p{shard}")
                rec.block("predict", shard, worker=worker, pid=100 + worker, rows_in=10, rows_out=9)

        threads = [threading.Thread(target=feed, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    record = rec.record
    assert record.status == "done"
    assert len(record.blocks) == 800 and rec.rows_done == 800 * 9
    assert sorted(b.shard for b in record.blocks) == list(range(800))
    assert all(b.path == f"p{b.shard}" for b in record.blocks)  # taken from block_started
    # Relative to the run's start, never absolute clock values.
    assert all(0 <= b.start <= b.end <= record.wall for b in record.blocks)
    assert record.wall < 600


def test_block_start_from_seconds_and_outcome_checked():
    rec = RunRecorder("taxi", "r1", sample=False).start()
    event = rec.block("predict", 3, end=5.0, seconds=2.0, rows_out=7)
    assert (event.start, event.end, event.seconds) == (3.0, 5.0, 2.0)
    with pytest.raises(ValueError, match=r"outcome must be one of .*'done'.*stage 'predict', shard 4"):
        rec.block("predict", 4, outcome="done")
    assert rec.finish().blocks == [event]


def test_sampler_records_memory_and_store_stats_and_survives_a_failing_callable():
    calls = []

    def store_stats():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("store went away")
        return {"used": 1234, "spilled": 56}

    rec = RunRecorder("taxi", "r1", store_stats=store_stats, interval=0.01)
    with rec:
        rec.block("predict", 0, rows_out=10)
        while len(calls) < 4:
            threading.Event().wait(0.01)
    samples = rec.record.samples
    assert len(samples) >= 4
    assert all(s.pss > 1_000_000 for s in samples)      # this process's own PSS at least
    assert [s.t for s in samples] == sorted(s.t for s in samples) and samples[0].t >= 0
    assert samples[1].store_used == 0 and samples[-1].store_used == 1234 and samples[-1].spilled == 56
    assert samples[-1].rows_done == 10
    assert not any(t.name == "dataflow-recorder" for t in threading.enumerate())


def test_interrupted_run_closes_open_blocks_as_cancelled():
    rec = RunRecorder("taxi", "r1", stages=["predict"], sample=False)
    with pytest.raises(KeyboardInterrupt):
        with rec:
            rec.block_started("predict", 0, path="a.parquet")
            rec.block_started("predict", 1, path="b.parquet")
            rec.block("predict", 0, rows_out=5)
            raise KeyboardInterrupt
    record = rec.record
    assert record.status == "interrupted"
    assert [(b.shard, b.outcome, b.path) for b in record.blocks] == [(0, "ok", "a.parquet"),
                                                                     (1, "cancelled", "b.parquet")]
    assert record.blocks[1].end == pytest.approx(record.wall)
    page = Elements(render(record, None))
    assert page.find("span", id="status")[0]["class"] == "badge status-interrupted"
    assert [b["data-shard"] for b in page.find("rect", class_="outcome-cancelled")] == ["1"]


def test_record_round_trips_through_json():
    rec = RunRecorder("taxi", "r1", stages=["decode", "predict"], sample=False).start()
    rec.block("decode", 0, rows_out=3, cpu_seconds=0.5, peak_memory=10)
    rec.backpressure("predict", blocks=2, seconds=0.25)
    rec.quarantined(0, 2, "ValueError: nan")
    rec.error("sink unreachable")
    record = rec.finish("partial")
    again = RunRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and again.backpressure["predict"] == Backpressure(2, 0.25)


# -- stats text ------------------------------------------------------------------------------
def test_stats_text_per_stage_like_ray_data():
    blocks = [ok(0, 0, 1, stage="decode", rows=100, cpu_seconds=0.5, peak_memory=2**20),
              ok(1, 0, 3, stage="decode", rows=300, cpu_seconds=1.5, peak_memory=3 * 2**20),
              ok(0, 1, 2, stage="predict", rows=100),
              ok(1, 3, 4, stage="predict", rows=0, outcome="retried", error="boom"),
              ok(1, 4, 6, stage="predict", rows=300, attempt=2, worker="2")]
    record = record_of(blocks, stages=["decode", "predict"], backpressure={"predict": Backpressure(3, 1.5)})
    decode, predict = stage_stats(record)
    assert (decode.tasks, decode.blocks, decode.rows_out[3], decode.cpu) == (2, 2, 400, (0.5, 1.0, 1.5, 2.0))
    assert (predict.tasks, predict.blocks, predict.retried, predict.workers) == (3, 2, 1, 2)
    assert predict.wall[0] == 1 and predict.wall[2] == 2 and predict.waiting_blocks == 3
    text = stats_text(record)
    assert "Stage 1 decode: 2 tasks executed, 2 blocks produced in 3.00s" in text
    assert "Stage 2 predict: 3 tasks executed, 2 blocks produced in 5.00s" in text
    assert "* Remote cpu time: 0.500s min, 1.500s max, 1.000s mean, 2.000s total" in text
    assert "* Peak heap memory usage (MiB): 3.0" in text
    assert "* Output num rows per block: 100 min, 300 max, 200 mean, 400 total" in text
    assert "* Attempts: 1 retried, 0 failed, 0 cancelled" in text
    assert "* Backpressure: 3 blocks waited 1.50s" in text
    assert "Run taxi (r1): done, 400 rows in 6.00s (67 rows/s)" in text


# -- the page --------------------------------------------------------------------------------
def test_report_has_one_bar_per_block_and_marks_retries_failures_and_quarantine(tmp_path):
    blocks = [ok(i, i * 0.5, i * 0.5 + 1, worker=str(i % 3)) for i in range(12)]
    blocks += [ok(12, 0, 1, outcome="retried", error="ValueError: boom", rows=0),
               ok(12, 1, 2, attempt=2),
               ok(13, 0, 2, outcome="failed", error="OSError: disk", rows=0),
               ok(14, 2, 3, outcome="quarantined")]
    samples = [Sample(t / 2, t * 100, 100_000_000 + t, t, 0) for t in range(14)]
    record = record_of(blocks, samples=samples, status="partial",
                       quarantined=[QuarantinedRow(14, 3, "ValueError: nan in x", "/data/part-00014.parquet")],
                       quarantined_total=1)
    path = write_report(record, {"status": "partial", "rows": 1400, "wall_time": 7.0,
                                 "shards": 15, "shards_done": 14, "shards_skipped": 2,
                                 "failed": [{"index": 13, "path": "/data/part-00013.parquet",
                                             "error": "OSError: disk", "attempts": 1}],
                                 "quarantined_shards": [14], "rows_quarantined": 1,
                                 "peak_memory": 3 * 10**9, "rows_per_second": 200.0}, tmp_path / "r.html")
    page_text = path.read_text()
    page = Elements(page_text)
    bars = page.bars()
    assert len(bars) == len(blocks) == 16
    assert sorted(int(b["data-shard"]) for b in bars) == sorted(b.shard for b in blocks)
    assert [b["data-shard"] for b in page.find("rect", class_="outcome-retried")] == ["12"]
    assert [b["data-shard"] for b in page.find("rect", class_="outcome-failed")] == ["13"]
    assert [b["data-shard"] for b in page.find("rect", class_="outcome-quarantined")] == ["14"]
    retried = page.find("rect", class_="outcome-retried")[0]
    assert retried["fill"] == "url(#pat-retried)" and retried["data-attempt"] == "1"
    assert {b["fill"] for b in page.find("rect", class_="outcome-ok")} == {"#4C78A8"}
    charts = svgs(page_text)
    assert {"rows-chart", "memory-chart", "timeline"} <= set(charts)
    legend = " ".join(t.text or "" for t in charts["timeline"].iter(f"{SVG}text"))
    assert "attempt failed, retried" in legend and "failed for good" in legend and "quarantined" in legend
    lanes = [t.text for t in charts["timeline"].iter(f"{SVG}text") if t.get("class") == "lane-label"]
    assert lanes == ["worker 0 (pid 4000)", "worker 1 (pid 4001)", "worker 2 (pid 4002)"]
    assert len(charts["rows-chart"].findall(f"{SVG}polyline")) == 2       # rate + average
    assert "seconds since the run started" in ET.tostring(charts["memory-chart"], encoding="unicode")
    tips = [t for t in page.titles if t.startswith("shard 12 ")]
    assert any("attempt 1 · retried" in t and "error: ValueError: boom" in t
               and "path: /data/part-00012.parquet" in t for t in tips)
    assert "3.0 GB" in page_text and "1,400" in page_text and "2 skipped" in page_text
    assert page.find("table", id="errors-table") and page.find("table", id="quarantine-table")
    assert "ValueError: nan in x" in page_text and "OSError: disk" in page_text
    assert os.listdir(tmp_path) == ["r.html"]   # written under a temporary name, then renamed


def test_report_escapes_everything_that_comes_from_the_run():
    evil = '<img src=x onerror="alert(1)">&<script>alert(2)</script>'
    blocks = [BlockEvent(evil, 0, 0, 1, "failed", 1, evil, evil, 1, 0, 0, 0, error=evil)]
    record = record_of(blocks, pipeline=evil, status="failed",
                       quarantined=[QuarantinedRow(0, 1, evil, evil)], quarantined_total=1)
    record.errors.append(evil)
    page_text = render(record, {"output": evil, "status": evil})
    assert "<script" not in page_text and "<img" not in page_text and "onerror=\"" not in page_text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page_text
    page = Elements(page_text)
    assert page.find("script") == [] and page.find("img") == []
    assert len(page.bars()) == 1
    svgs(page_text)   # still well-formed XML


def test_report_fetches_nothing():
    record = record_of([ok(0, path="https://example.com/data.parquet", error="see http://x.invalid/")],
                       samples=[Sample(0, 0, 10, 0, 0), Sample(1, 100, 20, 0, 0)])
    page_text = render(record, {"output": "s3://bucket/out/"})
    page = Elements(page_text)
    assert not [a for _, a in page.tags if "src" in a or "href" in a]
    assert page.find("script") == [] and page.find("link") == [] and "@import" not in page_text
    assert not re.search(r"url\((?!#)", page_text)           # only url(#pattern) in the SVG
    csp = page.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    assert csp.startswith("default-src 'none'")


def test_empty_run_renders_placeholders():
    record = record_of([], status="done")
    page_text = render(record, None)
    page = Elements(page_text)
    charts = svgs(page_text)
    assert {"rows-chart", "memory-chart", "timeline"} <= set(charts)
    assert page.bars() == []
    assert "no rows were produced in this run" in page_text
    assert "no shard or block ran in this run" in page_text
    assert page.find("p", id="no-errors")
    assert "run r1" in page_text


def test_bars_without_a_worker_are_packed_into_slots():
    blocks = [ok(0, 0, 2, worker=None), ok(1, 0, 1, worker=None), ok(2, 1, 3, worker=None),
              ok(3, 2, 4, worker=None)]
    charts = svgs(render(record_of(blocks)))
    lanes = [t.text for t in charts["timeline"].iter(f"{SVG}text") if t.get("class") == "lane-label"]
    assert lanes == ["slot 1", "slot 2"]        # never more lanes than bars running at once
    ys = {}
    for bar in charts["timeline"].iter(f"{SVG}rect"):
        if "bar" in (bar.get("class") or "").split():
            ys.setdefault(bar.get("y"), []).append(bar.get("data-shard"))
    assert sorted(ys.values()) == [["0", "3"], ["1", "2"]]


def test_many_shards_one_bar_each():
    blocks = [ok(i, i * 0.01, i * 0.01 + 0.5, worker=str(i % 16)) for i in range(2000)]
    page = Elements(render(record_of(blocks)))
    assert sorted(int(b["data-shard"]) for b in page.bars()) == list(range(2000))


def test_default_report_path_is_under_the_working_directory(tmp_path):
    path = default_report_path(tmp_path, "nyc taxi/../x", "3f9c")
    assert path == tmp_path / ".dataflow" / "reports" / "nyc_taxi_.._x-3f9c.html"
    assert path.parent.parent.parent == tmp_path
    written = write_report(record_of([ok(0)]), None, path)
    assert written == path and path.read_text().startswith("<!DOCTYPE html>")
