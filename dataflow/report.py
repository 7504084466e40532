"""The HTML run report: one self-contained file that shows what a run did.

    RunRecord (recorder.py) ─┐
                             ├─► _Page: summary cards · rows/s chart · memory chart · stages table
    Summary.to_dict() ───────┘          · timeline (a lane per worker, a bar per block) · slowest
                                        · errors and quarantined rows · stats text
                                   ─► write_report(record, summary, path): one .html, written atomically

The page opens offline and asks nothing of the network: CSS is inline, the charts are inline SVG
(drawn by `_report_charts.py`; hover text is SVG <title>, which every browser shows as a tooltip),
there is no script, and a Content-Security-Policy meta tag forbids the browser to fetch anything
at all. Every text that comes from the run (names, paths, error messages) goes through `esc`
(`html.escape`). This module gathers the facts and lays out the page, cards and tables.

Stable hooks for tests and for users who scrape the page: `<svg id="rows-chart">`,
`<svg id="memory-chart">`, `<svg id="timeline">` whose bars are `<rect class="bar outcome-ok"
data-shard="3" data-stage="predict" data-attempt="1">`, tables `#stages-table`,
`#slowest-table`, `#errors-table`, `#quarantine-table`, `<pre id="stats">`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._report_charts import STAGE_COLORS, esc, memory_chart, num, rows_chart, timeline
from ._report_charts import OUTCOME_STYLE  # noqa: F401 - the bars' outcome styles, read here as before
from .recorder import RunRecord, stage_stats, stats_text
from .summary import format_bytes

SLOWEST = 10
MAX_ERRORS_SHOWN = 200


def default_report_path(workdir: str | os.PathLike, pipeline: str, run_id: str) -> Path:
    """`<workdir>/.dataflow/reports/<pipeline>-<run id>.html` (names made safe for a file name)."""
    return Path(workdir) / ".dataflow" / "reports" / f"{_safe(pipeline)}-{_safe(run_id)}.html"


def write_report(record: RunRecord, summary: dict | None, path: str | os.PathLike) -> Path:
    """Write the report of `record` to `path` (folders made as needed) and return the path.

    `summary` is `Summary.to_dict()` (status, rows, wall_time, peak_memory, shards_*, failed, ...);
    a key it lacks, or `summary=None`, is taken from the record. The file is written under a
    temporary name and renamed, so an interrupted write never leaves half a page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render(record, summary)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def render(record: RunRecord, summary: dict | None = None) -> str:
    """The report as one HTML string."""
    facts = _facts(record, summary or {})
    colors = {s: STAGE_COLORS[i % len(STAGE_COLORS)] for i, s in enumerate(_stages(record))}
    body = "\n".join([
        _cards(facts),
        _section("Throughput", "rows-section", rows_chart(record, _last_stage(record)), "Rows written per second "
                 "(each block's rows spread over the time it ran), and the run's average (dashed)."),
        _section("Memory", "memory-section", memory_chart(record), "Process-tree PSS (driver and "
                 "workers; a shared page counts once), object store in use, and bytes spilled."),
        _section("Stages", "stages-section", _stages_table(record), ""),
        _section("Timeline", "timeline-section", timeline(record, colors), "One lane per worker, "
                 "one bar per shard or block attempt. Hover a bar for its shard, path, rows and seconds."),
        _section("Slowest shards", "slowest-section", _slowest(record), ""),
        _section("Errors", "errors-section", _errors(record, facts), ""),
        _section("Stats", "stats-section", f'<pre id="stats">{esc(stats_text(record))}</pre>', ""),
        f'<footer>dataflow run report · {esc(record.pipeline)} · run {esc(record.run_id)} · '
        f'this file is self-contained and opens offline</footer>',
    ])
    return _PAGE.format(title=esc(f"{record.pipeline} · run {record.run_id}"), css=_CSS,
                        header=_header(record, facts), body=body)


# -- the facts the header and cards show ---------------------------------------------------
@dataclass(frozen=True)
class _Facts:
    status: str
    rows: int
    wall: float
    rows_per_second: float
    peak_memory: int
    shards: int
    done: int
    skipped: int
    failed: list[dict]
    quarantined_shards: list[int]
    rows_quarantined: int
    output: str


def _facts(record: RunRecord, s: dict) -> _Facts:
    """Summary figures: the Summary's when given, else worked out from the record."""
    last = _last_stage(record)
    produced = [b for b in record.blocks if b.stage == last and b.outcome in ("ok", "quarantined")]
    failed_blocks = [b for b in record.blocks if b.stage == last and b.outcome == "failed"]
    rows = s.get("rows", sum(b.rows_out for b in produced))
    wall = s.get("wall_time", record.wall)
    failed = s.get("failed")
    if failed is None:
        failed = [{"index": b.shard, "path": b.path, "error": b.error, "attempts": b.attempt}
                  for b in failed_blocks]
    quarantined = s.get("quarantined_shards")
    if quarantined is None:
        quarantined = sorted({b.shard for b in produced if b.outcome == "quarantined"})
    done = s.get("shards_done", len({b.shard for b in produced}))
    return _Facts(
        status=str(s.get("status", record.status)), rows=int(rows), wall=float(wall),
        rows_per_second=float(s.get("rows_per_second", rows / wall if wall > 0 else 0.0)),
        peak_memory=int(s.get("peak_memory") or max((x.pss for x in record.samples), default=0)),
        shards=int(s.get("shards", done + len(failed))), done=int(done),
        skipped=int(s.get("shards_skipped", 0)), failed=list(failed),
        quarantined_shards=list(quarantined),
        rows_quarantined=int(s.get("rows_quarantined", record.quarantined_total)),
        output=str(s.get("output") or ""))


def _header(record: RunRecord, f: _Facts) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
    out = f' · output <code>{esc(f.output)}</code>' if f.output else ""
    return (f'<header><div class="inner"><div class="kicker">dataflow run report</div>'
            f'<h1 id="pipeline-name">{esc(record.pipeline)} '
            f'<span id="status" class="badge status-{_cls(f.status)}">{esc(f.status)}</span></h1>'
            f'<div class="meta">run <code id="run-id">{esc(record.run_id)}</code> · started {started}'
            f'{out}</div></div></header>')


def _cards(f: _Facts) -> str:
    shards = (f'{f.done:,} done · {f.skipped:,} skipped<br>'
              f'<span class="{"bad" if f.failed else ""}">{len(f.failed):,} failed</span> · '
              f'<span class="{"warn" if f.quarantined_shards else ""}">'
              f'{len(f.quarantined_shards):,} quarantined</span>')
    cards = [
        ("rows", "Rows written", f"{f.rows:,}",
         f"{f.rows_quarantined:,} quarantined" if f.rows_quarantined else "&nbsp;"),
        ("wall", "Wall time", _dur(f.wall), "&nbsp;"),
        ("rate", "Throughput", f"{num(f.rows_per_second)}", "rows/s"),
        ("memory", "Peak memory", format_bytes(f.peak_memory), "PSS, driver + workers"),
        ("shards", "Shards", f"{f.shards:,}", shards),
    ]
    items = "".join(f'<div class="card" id="card-{cid}"><div class="label">{label}</div>'
                    f'<div class="value">{value}</div><div class="sub">{sub}</div></div>'
                    for cid, label, value, sub in cards)
    return f'<div class="cards" id="summary">{items}</div>'


def _section(title: str, sid: str, content: str, note: str) -> str:
    note = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{sid}"><h2>{title}</h2>{note}{content}</section>'


# -- tables --------------------------------------------------------------------------------
def _table(tid: str, head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """`rows` hold HTML already escaped; columns listed in `numeric` are right-aligned."""
    th = "".join(f'<th class="{"num" if i in numeric else ""}">{h}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i in numeric else ""}">{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table id="{tid}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _stages_table(record: RunRecord) -> str:
    stats = stage_stats(record)
    if not stats:
        return '<p class="empty-text" id="stages-table">no stage ran</p>'
    rows = [[esc(s.stage), f"{s.tasks:,}", f"{s.blocks:,}", f"{s.rows_in:,}", f"{s.rows_out[3]:,}",
             format_bytes(s.bytes_out[3]), _dur(s.busy), f"{_dur(s.wall[0])} / {_dur(s.wall[1])} / {_dur(s.wall[2])}",
             f"{s.retried:,} / {s.failed:,}", f"{s.waiting_blocks:,}" + (
                 f" ({_dur(s.waiting_seconds)})" if s.waiting_seconds else "")] for s in stats]
    return _table("stages-table", ["stage", "tasks", "blocks", "rows in", "rows out", "bytes out",
                                   "busy", "block time min / mean / max", "retried / failed",
                                   "blocks waiting (backpressure)"], rows, set(range(1, 10)))


def _slowest(record: RunRecord) -> str:
    blocks = sorted(record.blocks, key=lambda b: b.seconds, reverse=True)[:SLOWEST]
    if not blocks:
        return '<p class="empty-text" id="slowest-table">no shard ran</p>'
    rows = [[f"{b.shard}", esc(b.stage), f"{b.attempt}", _badge(b.outcome), _dur(b.seconds),
             f"{b.rows_out:,}", esc(b.worker or "-"), _path(b.path)] for b in blocks]
    return _table("slowest-table", ["shard", "stage", "attempt", "outcome", "seconds", "rows out",
                                    "worker", "path"], rows, {0, 2, 4, 5})


def _errors(record: RunRecord, f: _Facts) -> str:
    parts = []
    if record.errors:
        parts.append('<ul id="run-errors">' + "".join(f"<li><code>{esc(m)}</code></li>" for m in record.errors)
                     + "</ul>")
    recorded = {(b.shard, b.attempt) for b in record.blocks}
    attempts = [b for b in record.blocks if b.outcome in ("retried", "failed") or b.error]
    # Failed shards the Summary knows of but no block event told (a run recorded in part).
    extra = [x for x in f.failed if (x.get("index"), x.get("attempts")) not in recorded]
    rows = [[f"{b.shard}", esc(b.stage), f"{b.attempt}", _badge(b.outcome), _path(b.path),
             f'<span class="msg">{esc(b.error or "-")}</span>'] for b in attempts]
    rows += [[f"{x.get('index')}", "-", f"{x.get('attempts', '')}", _badge("failed"),
              _path(str(x.get("path", ""))), f'<span class="msg">{esc(str(x.get("error", "")))}</span>']
             for x in extra]
    if rows:
        shown = rows[:MAX_ERRORS_SHOWN]
        more = f'<p class="note">and {len(rows) - len(shown):,} more</p>' if len(rows) > len(shown) else ""
        parts.append("<h3>Failed attempts</h3>" + _table("errors-table", ["shard", "stage", "attempt",
                     "outcome", "path", "error"], shown, {0, 2}) + more)
    if record.quarantined or f.rows_quarantined:
        q = [[f"{r.shard}", f"{r.row}", _path(r.path), f'<span class="msg">{esc(r.error)}</span>']
             for r in record.quarantined[:MAX_ERRORS_SHOWN]]
        total = max(record.quarantined_total, f.rows_quarantined)
        more = (f'<p class="note">{total - len(q):,} more quarantined rows are not listed here: '
                f'see the sink\'s <code>_quarantine/</code> folder</p>') if total > len(q) else ""
        parts.append(f"<h3>Quarantined rows ({total:,})</h3>" + _table(
            "quarantine-table", ["shard", "row", "path", "error"], q, {0, 1}) + more)
    if not parts:
        return '<p class="ok-text" id="no-errors">No errors: every attempt succeeded and no row was quarantined.</p>'
    return "".join(parts)


# -- small helpers -------------------------------------------------------------------------
def _stages(record: RunRecord) -> list[str]:
    return record.stages + sorted({b.stage for b in record.blocks} - set(record.stages))


def _last_stage(record: RunRecord) -> str | None:
    stages = _stages(record)
    return stages[-1] if stages else None


def _path(path: str, most: int = 64) -> str:
    """A path cell: long paths keep their end (the file name), the whole path on hover."""
    if not path:
        return "<code>-</code>"
    shown = path if len(path) <= most else "…" + path[-(most - 1):]
    return f'<code title="{esc(path)}">{esc(shown)}</code>'


def _badge(outcome: str) -> str:
    return f'<span class="badge outcome-{_cls(outcome)}">{esc(outcome)}</span>'


def _cls(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def _dur(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.2f} s"
    m, sec = divmod(s, 60)
    return f"{m:.0f} min {sec:.0f} s" if m < 60 else f"{m // 60:.0f} h {m % 60:.0f} min"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{header}
<main>
{body}
</main>
</body>
</html>
"""

_CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #ffffff;
        --accent: #4C78A8; --ok: #2f855a; --bad: #c53030; --warn: #b7791f; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main, header .inner { max-width: 1180px; margin: 0 auto; padding: 0 32px; }
main { padding-top: 24px; padding-bottom: 40px; }
header { background: #243b53; color: #fff; padding: 26px 0 22px; }
header .kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 11px; color: #9fb3c8; }
header h1 { margin: 4px 0 6px; font-size: 26px; font-weight: 600; }
header .meta { color: #bcccdc; font-size: 13px; }
header code { color: #e1e8f0; background: rgba(255,255,255,.08); padding: 1px 5px; border-radius: 3px; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.badge { display: inline-block; padding: 2px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
         vertical-align: middle; background: #e4e7eb; color: var(--ink); }
h1 .badge { font-size: 13px; margin-left: 8px; }
.status-done, .outcome-ok { background: #c6f6d5; color: #22543d; }
.status-partial, .outcome-quarantined, .outcome-retried { background: #feebc8; color: #7b341e; }
.status-failed, .outcome-failed { background: #fed7d7; color: #822727; }
.status-interrupted, .status-running, .outcome-cancelled { background: #e2e8f0; color: #2d3748; }
.cards { display: grid; grid-template-columns: repeat(5, 1fr); gap: 14px; margin-bottom: 22px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
        box-shadow: 0 1px 2px rgba(16,24,40,.04); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
.card .value { font-size: 24px; font-weight: 600; margin: 4px 0 2px; font-variant-numeric: tabular-nums; }
.card .sub { color: var(--muted); font-size: 12px; }
.card .bad { color: var(--bad); font-weight: 600; } .card .warn { color: var(--warn); font-weight: 600; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px 18px;
          margin-bottom: 18px; box-shadow: 0 1px 2px rgba(16,24,40,.04); }
section h2 { margin: 0 0 4px; font-size: 16px; font-weight: 600; }
section h3 { margin: 14px 0 6px; font-size: 14px; }
.note { margin: 0 0 10px; color: var(--muted); font-size: 12.5px; }
svg.chart { width: 100%; height: auto; display: block; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
svg .grid { stroke: #eef1f4; stroke-width: 1; }
svg .axis, svg .tickmark { stroke: #9aa5b1; stroke-width: 1; }
svg .tick { fill: #616e7c; font-size: 11px; }
svg .axis-title { fill: #52606d; font-size: 12px; }
svg .legend-text { fill: #3e4c59; font-size: 12px; }
svg .lane-label { fill: #3e4c59; font-size: 11.5px; }
svg .lane-bg { fill: #f7f9fb; }
svg .empty-text { fill: #9aa5b1; font-size: 14px; }
svg .pt { opacity: 0; } svg .pt:hover { opacity: 1; }
svg .bar:hover { stroke: #1f2933; stroke-width: 2; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th { text-align: left; color: var(--muted); font-weight: 600; font-size: 12px; border-bottom: 2px solid var(--line);
     padding: 6px 8px; white-space: nowrap; }
td { border-bottom: 1px solid var(--line); padding: 6px 8px; vertical-align: top; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; width: 1%; white-space: nowrap; }
tbody tr:hover { background: #f7f9fb; }
td code { word-break: break-all; }
.msg { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; white-space: pre-wrap;
       color: #822727; }
.ok-text { color: var(--ok); margin: 4px 0 0; } .empty-text { color: #9aa5b1; }
pre#stats { background: #f7f9fb; border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px;
            font: 12px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-x: auto; margin: 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 10px; }
@media (max-width: 900px) { .cards { grid-template-columns: repeat(2, 1fr); } }
"""
