"""The HTML run report in a real browser: headless Chromium (Debian's `chromium`) loads the report
of a real pipeline run from a file:// URL.

  * `--dump-dom`: the DOM after rendering has the three charts as SVG and one timeline bar per
    attempt of each shard of the run (so every shard has its bar).
  * No request leaves the machine, checked two ways: every host name resolves to nothing
    (`--host-resolver-rules="MAP * ~NOTFOUND"`), and Chromium's own network log
    (`--log-net-log`) shows no request started by the page. Chromium itself makes background
    requests (component updates, time sync) whatever the page; those carry no page origin
    (`initiator: "not an origin"`), while a page's requests carry the file page's (`"null"`). A
    control page with an <img> and a stylesheet on http(s) shows that the log does catch page
    requests, so an empty result means something.
  * `--screenshot`: a PNG of the page, kept at $DATAFLOW_REPORT_SCREENSHOT when set (to look at).

Each Chromium runs in its own session (process group) with a fresh profile folder: at the end
the whole group is killed, whatever happened, and the folder removed.

The page is the one `Pipeline.run(html_report=...)` writes (as `dataflow run --html-report`
does): the run's own recorder, fed by the executor's shard events, lanes by worker pid, the
object store sampled for the memory chart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser

import psutil
import pytest

from dataflow import Pipeline
from tests.dataflow import helpers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's `chromium` package "
                                "(apt-get install chromium); .ci/run installs it")

H = "tests.dataflow.helpers"
BROWSER_TIMEOUT = 90


# -- the run ---------------------------------------------------------------------------------
def _real_run(tmp_path) -> tuple:
    """6 shards of 20,000 rows; shard 2 has a row the model rejects (on_error: skip, one retry).
    Returns (the report's path, the summary as a dict, the shards)."""
    data = helpers.make_dataset(tmp_path / "data", shards=6, rows=20_000, bad={2: [7]})
    pipe = Pipeline(source={"parquet": data},
                    model={"factory": f"{H}:fragile_model", "args": {"payload_mb": 16}},
                    predict={"batch_size": 2048, "keep_columns": ["id"]},
                    sink=str(tmp_path / "out"), name="report_e2e",
                    runtime={"num_cpus": 2, "object_store_memory": "256MB",
                             "spill": str(tmp_path / "spill"), "max_retries": 1, "on_error": "skip"})
    shards = pipe.plan()
    summary = pipe.run(html_report=tmp_path / "report.html")
    return pipe.last_report, summary.to_dict(), shards


# -- chromium --------------------------------------------------------------------------------
def chromium(*args: str, profile: str) -> subprocess.CompletedProcess:
    """Run headless Chromium to completion in its own process group, which is then killed."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--no-default-browser-check", "--disable-background-networking", "--disable-sync",
           "--disable-component-update", "--disable-extensions", "--disable-dev-shm-usage",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    finally:
        _kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the renderer, zygote, crashpad handler: all of it
    except ProcessLookupError:
        pass
    proc.communicate()
    # Its own children are reparented when it dies: wait until none of the group still runs.
    gone, alive = psutil.wait_procs(_group(proc.pid), timeout=10)
    assert not alive, f"chromium processes outlived their group's SIGKILL: {alive}"


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


@pytest.fixture
def profile():
    path = tempfile.mkdtemp(prefix="dataflow-chromium-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def page_requests(net_log: str) -> list[str]:
    """URLs of requests the page started (see the module docstring), from a --log-net-log file."""
    with open(net_log) as f:
        log = json.load(f)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start_job and "url" in e.get("params", {})
            and e["params"].get("initiator") != "not an origin"]


class Dom(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def with_class(self, tag: str, cls: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag and cls in (a.get("class") or "").split()]

    def by_id(self, ident: str) -> list[tuple[str, dict]]:
        return [(t, a) for t, a in self.tags if a.get("id") == ident]


# -- the test --------------------------------------------------------------------------------
def test_report_of_a_real_run_renders_offline_in_chromium(tmp_path, profile):
    report, summary, shards = _real_run(tmp_path)
    assert summary["status"] == "partial" and summary["shards_done"] == 5
    assert [f["index"] for f in summary["failed"]] == [2]
    assert report == tmp_path / "report.html"

    # The charts rendered, one bar per attempt, every shard of the run on the timeline.
    net_log = os.path.join(profile, "net-log.json")
    dumped = chromium("--dump-dom", f"--log-net-log={net_log}", report.as_uri(), profile=profile)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    for chart in ("rows-chart", "memory-chart", "timeline"):
        assert dom.by_id(chart)[0][0] == "svg", chart
    assert dom.with_class("polyline", "series"), "the line charts drew no line"
    bars = dom.with_class("rect", "bar")
    assert sorted({int(b["data-shard"]) for b in bars}) == [s.index for s in shards] == list(range(6))
    ok = [int(b["data-shard"]) for b in bars if "outcome-ok" in b["class"].split()]
    assert sorted(ok) == [0, 1, 3, 4, 5]
    assert [(b["data-shard"], b["data-attempt"]) for b in dom.with_class("rect", "outcome-retried")] == [("2", "1")]
    assert [(b["data-shard"], b["data-attempt"]) for b in dom.with_class("rect", "outcome-failed")] == [("2", "2")]
    assert len(bars) == 7
    assert "bad x in rows" in dumped.stdout                    # the error, in the errors table

    # Nothing left the machine: no request from the page in the browser's network log.
    assert page_requests(net_log) == []
    html = report.read_text()
    assert not re.search(r"""\b(src|href)\s*=|url\((?!#)|@import""", html)

    # The control: the same log does catch a page that fetches.
    control = tmp_path / "control.html"
    control.write_text('<img src="http://leak.invalid/x.png">'
                       '<link rel="stylesheet" href="https://fonts.invalid/a.css">')
    control_log = os.path.join(profile, "control-net-log.json")
    assert chromium("--dump-dom", f"--log-net-log={control_log}", control.as_uri(),
                    profile=profile).returncode == 0
    assert sorted(page_requests(control_log)) == ["http://leak.invalid/x.png", "https://fonts.invalid/a.css"]

    # A screenshot, to look at.
    png = os.environ.get("DATAFLOW_REPORT_SCREENSHOT") or str(tmp_path / "report.png")
    shot = chromium(f"--screenshot={png}", "--window-size=1400,2000", "--hide-scrollbars",
                    report.as_uri(), profile=profile)
    assert shot.returncode == 0, shot.stderr[-2000:]
    with open(png, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (1400, 2000)
