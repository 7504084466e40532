"""The HTML run report: one self-contained file that shows what a run did.

    RunRecord (recorder.py) ─┐
                             ├─► _Page: summary cards · rows/s chart · memory chart · stages table
    Summary.to_dict() ───────┘          · timeline (a lane per worker, a bar per block) · slowest
                                        · errors and quarantined rows · stats text
                                   ─► write_report(record, summary, path): one .html, written atomically

The page opens offline and asks nothing of the network: CSS is inline, the charts are inline SVG
drawn here (hover text is SVG <title>, which every browser shows as a tooltip), there is no
script, and a Content-Security-Policy meta tag forbids the browser to fetch anything at all.
Every text that comes from the run (names, paths, error messages) goes through `html.escape`.

Stable hooks for tests and for users who scrape the page: `<svg id="rows-chart">`,
`<svg id="memory-chart">`, `<svg id="timeline">` whose bars are `<rect class="bar outcome-ok"
data-shard="3" data-stage="predict" data-attempt="1">`, tables `#stages-table`,
`#slowest-table`, `#errors-table`, `#quarantine-table`, `<pre id="stats">`.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .recorder import BlockEvent, RunRecord, stage_stats, stats_text
from .summary import format_bytes

STAGE_COLORS = ("#4C78A8", "#54A24B", "#B279A2", "#72B7B2", "#9D755D", "#EECA3B", "#FF9DA6")
OUTCOME_STYLE = {  # outcome -> (fill, legend text); "ok" takes its stage's colour
    "retried": ("url(#pat-retried)", "attempt failed, retried"),
    "failed": ("url(#pat-failed)", "failed for good"),
    "quarantined": ("url(#pat-quarantined)", "done, some rows quarantined"),
    "cancelled": ("url(#pat-cancelled)", "cancelled (run stopped)"),
}
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
        _section("Throughput", "rows-section", _rows_chart(record), "Rows written per second "
                 "(each block's rows spread over the time it ran), and the run's average (dashed)."),
        _section("Memory", "memory-section", _memory_chart(record), "Process-tree PSS (driver and "
                 "workers; a shared page counts once), object store in use, and bytes spilled."),
        _section("Stages", "stages-section", _stages_table(record), ""),
        _section("Timeline", "timeline-section", _timeline(record, colors), "One lane per worker, "
                 "one bar per shard or block attempt. Hover a bar for its shard, path, rows and seconds."),
        _section("Slowest shards", "slowest-section", _slowest(record), ""),
        _section("Errors", "errors-section", _errors(record, facts), ""),
        _section("Stats", "stats-section", f'<pre id="stats">{_e(stats_text(record))}</pre>', ""),
        f'<footer>dataflow run report · {_e(record.pipeline)} · run {_e(record.run_id)} · '
        f'this file is self-contained and opens offline</footer>',
    ])
    return _PAGE.format(title=_e(f"{record.pipeline} · run {record.run_id}"), css=_CSS,
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
    out = f' · output <code>{_e(f.output)}</code>' if f.output else ""
    return (f'<header><div class="inner"><div class="kicker">dataflow run report</div>'
            f'<h1 id="pipeline-name">{_e(record.pipeline)} '
            f'<span id="status" class="badge status-{_cls(f.status)}">{_e(f.status)}</span></h1>'
            f'<div class="meta">run <code id="run-id">{_e(record.run_id)}</code> · started {started}'
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
        ("rate", "Throughput", f"{_num(f.rows_per_second)}", "rows/s"),
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


# -- charts --------------------------------------------------------------------------------
W, H = 1100, 280
ML, MR, MT, MB = 78, 24, 34, 46     # margins: room for tick labels, axis titles and the legend


@dataclass(frozen=True)
class _Series:
    name: str
    color: str
    points: list[tuple[float, float]]
    dashed: bool = False
    area: bool = False


def _line_chart(svg_id: str, series: list[_Series], y_fmt: Callable[[float], str], y_title: str,
                x_max: float) -> str:
    pts = [p for s in series for p in s.points]
    if not pts:
        return _empty_chart(svg_id, "no samples were recorded for this run")
    x_hi = max(x_max, max(x for x, _ in pts), 1e-9)
    y_hi = max(max(y for _, y in pts), 1e-9)
    yt = _ticks(0, y_hi)
    y_hi = max(y_hi, yt[-1])
    xt = _ticks(0, x_hi)
    pw, ph = W - ML - MR, H - MT - MB
    sx = lambda x: ML + pw * x / x_hi                      # noqa: E731
    sy = lambda y: MT + ph * (1 - y / y_hi)                 # noqa: E731
    out = [f'<svg id="{svg_id}" class="chart" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{_e(y_title)} over time" xmlns="http://www.w3.org/2000/svg">']
    out += _axes(xt, yt, sx, sy, y_fmt, y_title, x_hi)
    for s in series:
        if not s.points:
            continue
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        if s.area:
            x0, x1 = sx(s.points[0][0]), sx(s.points[-1][0])
            out.append(f'<polygon class="area" points="{x0:.1f},{sy(0):.1f} {line} {x1:.1f},{sy(0):.1f}" '
                       f'fill="{s.color}" fill-opacity="0.12"/>')
        dash = ' stroke-dasharray="6 5"' if s.dashed else ""
        out.append(f'<polyline class="series" data-series="{_e(s.name)}" points="{line}" fill="none" '
                   f'stroke="{s.color}" stroke-width="2"{dash}><title>{_e(s.name)}</title></polyline>')
        if not s.dashed:
            for x, y in _thin(s.points, 150):
                out.append(f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{s.color}">'
                           f'<title>{_e(s.name)}: {_e(y_fmt(y))} at {x:.1f} s</title></circle>')
    out.append(_legend([(s.name, s.color, s.dashed) for s in series], W - MR, 14))
    out.append("</svg>")
    return "".join(out)


def _axes(xt, yt, sx, sy, y_fmt, y_title, x_hi) -> list[str]:
    out = ['<g class="axes">']
    for y in yt:
        out.append(f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>'
                   f'<text class="tick" x="{ML - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{_e(y_fmt(y))}</text>')
    for x in xt:
        if x <= x_hi * 1.0001:
            out.append(f'<line class="tickmark" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{H - MB}" y2="{H - MB + 5}"/>'
                       f'<text class="tick" x="{sx(x):.1f}" y="{H - MB + 19}" text-anchor="middle">{_tick_s(x)}</text>')
    out.append(f'<line class="axis" x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}"/>'
               f'<line class="axis" x1="{ML}" x2="{ML}" y1="{MT}" y2="{H - MB}"/>'
               f'<text class="axis-title" x="{ML + (W - ML - MR) / 2:.0f}" y="{H - 6}" text-anchor="middle">'
               f'seconds since the run started</text>'
               f'<text class="axis-title" x="14" y="{MT + (H - MT - MB) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {MT + (H - MT - MB) / 2:.0f})">{_e(y_title)}</text></g>')
    return out


def _legend(items: list[tuple[str, str, bool]], right: float, y: float) -> str:
    """A one-line legend, right-aligned at `right` (widths estimated from the text length)."""
    out, x = ['<g class="legend">'], right
    for name, color, dashed in reversed(items):
        x -= 7.2 * len(name) + 36
        dash = ' stroke-dasharray="6 5"' if dashed else ""
        out.append(f'<line x1="{x:.0f}" x2="{x + 22:.0f}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="3"{dash}/><text class="legend-text" x="{x + 28:.0f}" y="{y + 4}">{_e(name)}</text>')
    out.append("</g>")
    return "".join(out)


def _empty_chart(svg_id: str, why: str) -> str:
    return (f'<svg id="{svg_id}" class="chart empty" viewBox="0 0 {W} 80" xmlns="http://www.w3.org/2000/svg">'
            f'<text class="empty-text" x="{W / 2}" y="45" text-anchor="middle">{_e(why)}</text></svg>')


def _rows_chart(record: RunRecord) -> str:
    """Rows/s of the last stage: each block's rows spread evenly over the time it ran, summed
    over bins (so the area under the curve is the rows written). Without blocks, the sampled
    rows-done counter, differenced."""
    last = _last_stage(record)
    spans = [(b.start, b.end, b.rows_out) for b in record.blocks
             if b.stage == last and b.outcome in ("ok", "quarantined")]
    if not spans:
        spans = [(prev.t, s.t, n) for prev, s, n in _increments(record.samples)]
    wall = max(record.wall, max((e for _, e, _ in spans), default=0.0))
    if not spans or wall <= 0:
        return _empty_chart("rows-chart", "no rows were produced in this run")
    avg = sum(n for _, _, n in spans) / wall
    return _line_chart("rows-chart", [
        _Series("rows/s", "#4C78A8", _binned_rate(spans, wall), area=True),
        _Series(f"average {_num(avg)} rows/s", "#888888", [(0.0, avg), (wall, avg)], dashed=True),
    ], _num, "rows per second", wall)


def _increments(samples) -> Iterable[tuple]:
    """(previous sample, sample, rows done between them) wherever the counter rose."""
    for prev, s in zip(samples, samples[1:]):
        if s.rows_done > prev.rows_done:
            yield prev, s, s.rows_done - prev.rows_done


def _binned_rate(spans: list[tuple[float, float, int]], wall: float, bins: int = 100) -> list[tuple[float, float]]:
    """Rows per second in `bins` equal bins over [0, wall], drawn at each bin's middle."""
    width = wall / bins
    rows = [0.0] * bins
    for start, end, n in spans:
        if end - start <= width / 100:   # instantaneous: all of it in its bin
            rows[min(bins - 1, int(end / width))] += n
            continue
        per_s = n / (end - start)
        for i in range(max(0, int(start / width)), min(bins, int(end / width) + 1)):
            overlap = min(end, (i + 1) * width) - max(start, i * width)
            if overlap > 0:
                rows[i] += per_s * overlap
    return [(0.0, 0.0)] + [((i + 0.5) * width, r / width) for i, r in enumerate(rows)] + [(wall, rows[-1] / width)]


def _memory_chart(record: RunRecord) -> str:
    s = record.samples
    if not s:
        return _empty_chart("memory-chart", "no memory samples were recorded for this run")
    series = [_Series("PSS (driver + workers)", "#4C78A8", [(x.t, x.pss) for x in s], area=True),
              _Series("object store used", "#54A24B", [(x.t, x.store_used) for x in s])]
    if any(x.spilled for x in s):
        series.append(_Series("spilled", "#E45756", [(x.t, x.spilled) for x in s]))
    return _line_chart("memory-chart", series, format_bytes, "bytes", record.wall)


# -- timeline ------------------------------------------------------------------------------
LANE_H, BAR_H, LABEL_W = 24, 16, 170


def _lanes(blocks: list[BlockEvent]) -> list[tuple[str, list[BlockEvent]]]:
    """Bars per lane: named workers by first start; bars with no worker packed into slots."""
    named: dict[str, list[BlockEvent]] = {}
    slots: list[list[BlockEvent]] = []
    for b in sorted(blocks, key=lambda b: (b.start, b.end)):
        if b.worker is not None:
            named.setdefault(b.worker, []).append(b)
            continue
        for slot in slots:   # the first slot free when this bar starts
            if slot[-1].end <= b.start + 1e-9:
                slot.append(b)
                break
        else:
            slots.append([b])
    lanes = [(_worker_label(w, named[w]), named[w]) for w in sorted(named, key=_natural)]
    return lanes + [(f"slot {i + 1}", bars) for i, bars in enumerate(slots)]


def _natural(text: str) -> list:
    """Sort key that puts "worker 2" before "worker 10"."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def _worker_label(worker: str, bars: list[BlockEvent]) -> str:
    pid = next((b.pid for b in bars if b.pid), 0)
    label = worker if not worker.isdigit() else f"worker {worker}"
    return f"{label} (pid {pid})" if pid and str(pid) != worker else label


def _timeline(record: RunRecord, colors: dict[str, str]) -> str:
    if not record.blocks:
        return _empty_chart("timeline", "no shard or block ran in this run")
    lanes = _lanes(record.blocks)
    x_hi = max(record.wall, max(b.end for b in record.blocks), 1e-9)
    top, bottom = 40, 42
    height = top + LANE_H * len(lanes) + bottom
    pw = W - LABEL_W - MR
    sx = lambda x: LABEL_W + pw * x / x_hi          # noqa: E731
    out = [f'<svg id="timeline" class="chart timeline" viewBox="0 0 {W} {height}" role="img" '
           f'aria-label="timeline of shards per worker" xmlns="http://www.w3.org/2000/svg">', _PATTERNS]
    for x in _ticks(0, x_hi):
        if x <= x_hi * 1.0001:
            out.append(f'<line class="grid" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" '
                       f'y2="{height - bottom}"/><text class="tick" x="{sx(x):.1f}" '
                       f'y="{height - bottom + 17}" text-anchor="middle">{_tick_s(x)}</text>')
    out.append(f'<text class="axis-title" x="{LABEL_W + pw / 2:.0f}" y="{height - 6}" '
               f'text-anchor="middle">seconds since the run started</text>')
    for i, (label, bars) in enumerate(lanes):
        y = top + i * LANE_H
        if i % 2:
            out.append(f'<rect class="lane-bg" x="0" y="{y}" width="{W}" height="{LANE_H}"/>')
        out.append(f'<text class="lane-label" x="{LABEL_W - 10}" y="{y + LANE_H / 2 + 4:.0f}" '
                   f'text-anchor="end">{_e(label)}</text>')
        by = y + (LANE_H - BAR_H) / 2
        for b in bars:
            out.append(_bar(b, sx(b.start), max(3.0, sx(b.end) - sx(b.start)), by, colors, label))
    out.append(_timeline_legend(record, colors))
    out.append("</svg>")
    return "".join(out)


def _bar(b: BlockEvent, x: float, w: float, y: float, colors: dict[str, str], lane: str) -> str:
    color = colors.get(b.stage, STAGE_COLORS[0])
    fill = color if b.outcome == "ok" else OUTCOME_STYLE[b.outcome][0]
    stroke = {"ok": color, "retried": "#C4620A", "failed": "#B3261E", "quarantined": color,
              "cancelled": "#6B6B6B"}[b.outcome]
    tip = [f"shard {b.shard} · {b.stage} · attempt {b.attempt} · {b.outcome}", f"path: {b.path or '-'}",
           f"rows: {b.rows_in:,} in, {b.rows_out:,} out", f"seconds: {b.seconds:.3f} "
           f"({b.start:.2f} to {b.end:.2f})", f"worker: {lane}"]
    if b.error:
        tip.append(f"error: {b.error}")
    return (f'<rect class="bar outcome-{b.outcome}" data-shard="{b.shard}" data-stage="{_e(b.stage)}" '
            f'data-attempt="{b.attempt}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{BAR_H}" '
            f'rx="2" fill="{fill}" stroke="{stroke}" stroke-width="1">'
            f'<title>{_e(chr(10).join(tip))}</title></rect>')


def _timeline_legend(record: RunRecord, colors: dict[str, str]) -> str:
    present = {b.outcome for b in record.blocks}
    items = [(f"stage {s}", c) for s, c in colors.items() if any(b.stage == s for b in record.blocks)]
    items += [(text, fill) for o, (fill, text) in OUTCOME_STYLE.items() if o in present]
    out, x = ['<g class="legend" id="timeline-legend">'], LABEL_W
    for text, fill in items:
        out.append(f'<rect x="{x}" y="10" width="18" height="12" rx="2" fill="{fill}" stroke="#777" '
                   f'stroke-width="0.5"/><text class="legend-text" x="{x + 24}" y="20">{_e(text)}</text>')
        x += 7.2 * len(text) + 46
    out.append("</g>")
    return "".join(out)


_PATTERNS = """<defs>
<pattern id="pat-retried" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
<rect width="6" height="6" fill="#FBD5AE"/><rect width="3" height="6" fill="#F58518"/></pattern>
<pattern id="pat-failed" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#F4B6B4"/><path d="M0 0L6 6M6 0L0 6" stroke="#E45756" stroke-width="1.6"/></pattern>
<pattern id="pat-quarantined" width="5" height="5" patternUnits="userSpaceOnUse">
<rect width="5" height="5" fill="#D9C2DF"/><circle cx="2.5" cy="2.5" r="1.3" fill="#8E4B91"/></pattern>
<pattern id="pat-cancelled" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)">
<rect width="6" height="6" fill="#E6E6E6"/><rect width="2" height="6" fill="#A8A8A8"/></pattern>
</defs>"""


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
    rows = [[_e(s.stage), f"{s.tasks:,}", f"{s.blocks:,}", f"{s.rows_in:,}", f"{s.rows_out[3]:,}",
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
    rows = [[f"{b.shard}", _e(b.stage), f"{b.attempt}", _badge(b.outcome), _dur(b.seconds),
             f"{b.rows_out:,}", _e(b.worker or "-"), _path(b.path)] for b in blocks]
    return _table("slowest-table", ["shard", "stage", "attempt", "outcome", "seconds", "rows out",
                                    "worker", "path"], rows, {0, 2, 4, 5})


def _errors(record: RunRecord, f: _Facts) -> str:
    parts = []
    if record.errors:
        parts.append('<ul id="run-errors">' + "".join(f"<li><code>{_e(m)}</code></li>" for m in record.errors)
                     + "</ul>")
    recorded = {(b.shard, b.attempt) for b in record.blocks}
    attempts = [b for b in record.blocks if b.outcome in ("retried", "failed") or b.error]
    # Failed shards the Summary knows of but no block event told (a run recorded in part).
    extra = [x for x in f.failed if (x.get("index"), x.get("attempts")) not in recorded]
    rows = [[f"{b.shard}", _e(b.stage), f"{b.attempt}", _badge(b.outcome), _path(b.path),
             f'<span class="msg">{_e(b.error or "-")}</span>'] for b in attempts]
    rows += [[f"{x.get('index')}", "-", f"{x.get('attempts', '')}", _badge("failed"),
              _path(str(x.get("path", ""))), f'<span class="msg">{_e(str(x.get("error", "")))}</span>']
             for x in extra]
    if rows:
        shown = rows[:MAX_ERRORS_SHOWN]
        more = f'<p class="note">and {len(rows) - len(shown):,} more</p>' if len(rows) > len(shown) else ""
        parts.append("<h3>Failed attempts</h3>" + _table("errors-table", ["shard", "stage", "attempt",
                     "outcome", "path", "error"], shown, {0, 2}) + more)
    if record.quarantined or f.rows_quarantined:
        q = [[f"{r.shard}", f"{r.row}", _path(r.path), f'<span class="msg">{_e(r.error)}</span>']
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
    return f'<code title="{_e(path)}">{_e(shown)}</code>'


def _badge(outcome: str) -> str:
    return f'<span class="badge outcome-{_cls(outcome)}">{_e(outcome)}</span>'


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cls(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values from `lo` covering `hi` (steps of 1, 2, 2.5 or 5 x 10^k)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    count = math.ceil((hi - lo) / step - 1e-9)
    return [lo + i * step for i in range(count + 1)]


def _thin(points: list, most: int) -> list:
    if len(points) <= most:
        return points
    k = math.ceil(len(points) / most)
    return points[::k]


def _tick_s(x: float) -> str:
    return f"{x:g}" if x < 1e4 else f"{x:.0f}"


def _num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}" if x % 1 else f"{x:.0f}"


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
