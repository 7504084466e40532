"""The report's inline SVG: the rows/s and memory line charts and the timeline (a lane per
worker, a bar per block attempt), drawn from a RunRecord; report.py lays out the page around them.

    rows_chart(record, last stage)   the last stage's blocks, binned ─► rows/s, and the average
    memory_chart(record)             the samples ─► PSS, object store used, spilled
    timeline(record, colours)        blocks ─► lanes (workers, or packed slots) ─► bars, legend

Hover text is SVG <title>; every text from the run goes through `esc`. Ids and classes that
tests and users read (`#rows-chart`, `#memory-chart`, `#timeline`, `rect.bar[data-shard]`) are
made here.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from .summary import format_bytes

if TYPE_CHECKING:
    from .recorder import BlockEvent, RunRecord

STAGE_COLORS = ("#4C78A8", "#54A24B", "#B279A2", "#72B7B2", "#9D755D", "#EECA3B", "#FF9DA6")
OUTCOME_STYLE = {  # outcome -> (fill, legend text); "ok" takes its stage's colour
    "retried": ("url(#pat-retried)", "attempt failed, retried"),
    "failed": ("url(#pat-failed)", "failed for good"),
    "quarantined": ("url(#pat-quarantined)", "done, some rows quarantined"),
    "cancelled": ("url(#pat-cancelled)", "cancelled (run stopped)"),
}


# -- line charts ---------------------------------------------------------------------------
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
           f'aria-label="{esc(y_title)} over time" xmlns="http://www.w3.org/2000/svg">']
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
        out.append(f'<polyline class="series" data-series="{esc(s.name)}" points="{line}" fill="none" '
                   f'stroke="{s.color}" stroke-width="2"{dash}><title>{esc(s.name)}</title></polyline>')
        if not s.dashed:
            for x, y in _thin(s.points, 150):
                out.append(f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{s.color}">'
                           f'<title>{esc(s.name)}: {esc(y_fmt(y))} at {x:.1f} s</title></circle>')
    out.append(_legend([(s.name, s.color, s.dashed) for s in series], W - MR, 14))
    out.append("</svg>")
    return "".join(out)


def _axes(xt, yt, sx, sy, y_fmt, y_title, x_hi) -> list[str]:
    out = ['<g class="axes">']
    for y in yt:
        out.append(f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>'
                   f'<text class="tick" x="{ML - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{esc(y_fmt(y))}</text>')
    for x in xt:
        if x <= x_hi * 1.0001:
            out.append(f'<line class="tickmark" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{H - MB}" y2="{H - MB + 5}"/>'
                       f'<text class="tick" x="{sx(x):.1f}" y="{H - MB + 19}" text-anchor="middle">{_tick_s(x)}</text>')
    out.append(f'<line class="axis" x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}"/>'
               f'<line class="axis" x1="{ML}" x2="{ML}" y1="{MT}" y2="{H - MB}"/>'
               f'<text class="axis-title" x="{ML + (W - ML - MR) / 2:.0f}" y="{H - 6}" text-anchor="middle">'
               f'seconds since the run started</text>'
               f'<text class="axis-title" x="14" y="{MT + (H - MT - MB) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {MT + (H - MT - MB) / 2:.0f})">{esc(y_title)}</text></g>')
    return out


def _legend(items: list[tuple[str, str, bool]], right: float, y: float) -> str:
    """A one-line legend, right-aligned at `right` (widths estimated from the text length)."""
    out, x = ['<g class="legend">'], right
    for name, color, dashed in reversed(items):
        x -= 7.2 * len(name) + 36
        dash = ' stroke-dasharray="6 5"' if dashed else ""
        out.append(f'<line x1="{x:.0f}" x2="{x + 22:.0f}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="3"{dash}/><text class="legend-text" x="{x + 28:.0f}" y="{y + 4}">{esc(name)}</text>')
    out.append("</g>")
    return "".join(out)


def _empty_chart(svg_id: str, why: str) -> str:
    return (f'<svg id="{svg_id}" class="chart empty" viewBox="0 0 {W} 80" xmlns="http://www.w3.org/2000/svg">'
            f'<text class="empty-text" x="{W / 2}" y="45" text-anchor="middle">{esc(why)}</text></svg>')


def rows_chart(record: RunRecord, last: str | None) -> str:
    """Rows/s of the `last` stage: each block's rows spread evenly over the time it ran, summed
    over bins (so the area under the curve is the rows written). Without blocks, the sampled
    rows-done counter, differenced."""
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
        _Series(f"average {num(avg)} rows/s", "#888888", [(0.0, avg), (wall, avg)], dashed=True),
    ], num, "rows per second", wall)


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


def memory_chart(record: RunRecord) -> str:
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


def timeline(record: RunRecord, colors: dict[str, str]) -> str:
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
                   f'text-anchor="end">{esc(label)}</text>')
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
    return (f'<rect class="bar outcome-{b.outcome}" data-shard="{b.shard}" data-stage="{esc(b.stage)}" '
            f'data-attempt="{b.attempt}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{BAR_H}" '
            f'rx="2" fill="{fill}" stroke="{stroke}" stroke-width="1">'
            f'<title>{esc(chr(10).join(tip))}</title></rect>')


def _timeline_legend(record: RunRecord, colors: dict[str, str]) -> str:
    present = {b.outcome for b in record.blocks}
    items = [(f"stage {s}", c) for s, c in colors.items() if any(b.stage == s for b in record.blocks)]
    items += [(text, fill) for o, (fill, text) in OUTCOME_STYLE.items() if o in present]
    out, x = ['<g class="legend" id="timeline-legend">'], LABEL_W
    for text, fill in items:
        out.append(f'<rect x="{x}" y="10" width="18" height="12" rx="2" fill="{fill}" stroke="#777" '
                   f'stroke-width="0.5"/><text class="legend-text" x="{x + 24}" y="20">{esc(text)}</text>')
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


# -- small helpers -------------------------------------------------------------------------
def esc(text: object) -> str:
    """`text` as HTML, quotes too."""
    return html.escape(str(text), quote=True)


def num(x: float) -> str:
    """A figure in 3 significant digits with k, M or G."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}" if x % 1 else f"{x:.0f}"


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
