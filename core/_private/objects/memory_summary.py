"""`core.memory_summary()`: the text `ray memory` would show, for this session.

One line per live object: full hex id, size, where it lives (inline, shared, or spilled with its
URL), how many references hold it and what made it; then totals. Spill URLs are printed without
credentials (`s3://key:secret@bucket` never appears).
"""

from __future__ import annotations

import re
from typing import Any

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(url: str | None) -> str:
    return _CREDENTIALS.sub("", url) if url else ""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def render(entries: list[Any], counts: dict[bytes, tuple[int, str]], usage: dict) -> str:
    """entries: the store's EntryInfo list; counts: oid -> (references, what made it)."""
    by_hex = {oid.hex(): info for oid, info in counts.items()}
    lines = [f"{'object id':<40}  {'size':>10}  {'where':<8}  {'refs':>4}  {'made by':<24}  location"]
    for e in sorted(entries, key=lambda e: e.object_id):
        refs, made_by = by_hex.get(e.object_id, (0, "?"))
        where = e.where + (" (pinned)" if e.pinned else "")
        location = redact(e.spill_url) if e.where == "spilled" else (e.segment or "")
        lines.append(f"{e.object_id:<40}  {_size(e.size):>10}  {where:<8}  {refs:>4}  {made_by[:24]:<24}  {location}")
    n = {w: sum(1 for e in entries if e.where == w) for w in ("inline", "shared", "spilled")}
    b = {w: sum(e.size for e in entries if e.where == w) for w in ("inline", "shared", "spilled")}
    lines.append("")
    lines.append(f"objects: {len(entries)} ({n['inline']} inline {_size(b['inline'])}, "
                 f"{n['shared']} shared {_size(b['shared'])}, {n['spilled']} spilled {_size(b['spilled'])})")
    cap = usage.get("capacity", 0)
    used = usage.get("used", 0)
    lines.append(f"shared memory: {_size(used)} used of {_size(cap)} capacity"
                 + (f", {_size(usage['pooled'])} in reusable segments" if usage.get("pooled") else ""))
    return "\n".join(lines)
