"""`dataflow run --html-report [PATH]`: a real small run through the CLI leaves its HTML report
(docs/report.md) and prints where: one timeline bar per shard, at the default path
`.dataflow/reports/<pipeline>-<run id>.html` under the working folder, or at the path given."""

from __future__ import annotations

import json
import os
import re

from tests.e2e.test_cli import NYC, dataflow, small

BAR = re.compile(r'<rect class="bar outcome-(\w+)" data-shard="(\d+)" data-stage="([^"]*)" data-attempt="(\d+)"')


def _timeline(page: str) -> list[tuple[str, int, str, int]]:
    start = page.index('<svg id="timeline"')
    svg = page[start:page.index("</svg>", start)]
    return [(o, int(s), st, int(a)) for o, s, st, a in BAR.findall(svg)]


def _printed_report(stderr: str) -> str:
    found = re.findall(r"^report: (.+)$", stderr, re.M)
    assert len(found) == 1, stderr
    return found[0]


def test_html_report_at_the_default_path(tmp_path):
    r = dataflow("run", NYC, *small(tmp_path, shards=4), "--html-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = _printed_report(r.stderr)
    folder = tmp_path / ".dataflow" / "reports"
    assert os.path.dirname(path) == str(folder)
    assert re.fullmatch(r"nyc_taxi_tips-.+\.html", os.path.basename(path)), path
    assert [p.name for p in folder.iterdir()] == [os.path.basename(path)]  # no temporary left
    page = open(path, encoding="utf-8").read()
    bars = _timeline(page)
    assert sorted(s for _, s, _, _ in bars) == [0, 1, 2, 3]                # one bar per shard
    assert {(o, st, a) for o, _, st, a in bars} == {("ok", "predict", 1)}
    assert 'id="status"' in page and ">done<" in page


def test_html_report_at_a_given_path_keeps_json_on_stdout(tmp_path):
    target = tmp_path / "reports" / "run.html"
    r = dataflow("run", NYC, *small(tmp_path, shards=3), "--json", "--html-report", str(target),
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shards_done"] == 3
    assert _printed_report(r.stderr) == str(target)
    assert sorted(s for _, s, _, _ in _timeline(target.read_text(encoding="utf-8"))) == [0, 1, 2]
    assert not (tmp_path / ".dataflow").exists()
