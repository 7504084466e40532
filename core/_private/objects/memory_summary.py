"""`core.memory_summary()`: the text `ray memory` would show, for this session.

One line per live object: full hex id, size, where it lives (inline, shared, spilled with its
URL, or inherited: made by `core.build` in the zygote, whose forked workers share its pages), how many references hold it and what made it; then totals. Spill URLs are printed without
credentials (`s3://key:secret@bucket` never appears).
"""

from __future__ import annotations

import re

from core._private.objects.table import EntryInfo
from core.units import format_bytes

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(url: str | None) -> str:
    return _CREDENTIALS.sub("", url) if url else ""


def render(entries: list[EntryInfo], counts: dict[bytes, tuple[int, str]], usage: dict) -> str:
    """entries: the store's `entries()`; counts: oid -> (references, what made it)."""
    by_hex = {oid.hex(): info for oid, info in counts.items()}
    lines = [f"{'object id':<40}  {'size':>10}  {'where':<8}  {'refs':>4}  {'made by':<24}  location"]
    for e in sorted(entries, key=lambda e: e.object_id):
        refs, made_by = by_hex.get(e.object_id, (0, "?"))
        if e.where == "inherited" and made_by == "put":
            made_by = "build"                     # core.build: no task, made by the zygote
        where = e.where + (" (pinned)" if e.pinned else "")
        location = redact(e.spill_url) if e.where == "spilled" else (e.segment or "")
        lines.append(f"{e.object_id:<40}  {format_bytes(e.size):>10}  {where:<8}  {refs:>4}  {made_by[:24]:<24}  {location}")
    kinds = ("inline", "shared", "spilled", "inherited")
    n = {w: sum(1 for e in entries if e.where == w) for w in kinds}
    b = {w: sum(e.size for e in entries if e.where == w) for w in kinds}
    lines.append("")
    inherited = (f", {n['inherited']} inherited {format_bytes(b['inherited'])} (the zygote's memory)"
                 if n["inherited"] else "")
    lines.append(f"objects: {len(entries)} ({n['inline']} inline {format_bytes(b['inline'])}, "
                 f"{n['shared']} shared {format_bytes(b['shared'])}, {n['spilled']} spilled {format_bytes(b['spilled'])}"
                 f"{inherited})")
    cap = usage.get("capacity", 0)
    used = usage.get("used", 0)
    lines.append(f"shared memory: {format_bytes(used)} used of {format_bytes(cap)} capacity"
                 + (f", {format_bytes(usage['pooled'])} in reusable segments" if usage.get("pooled") else ""))
    return "\n".join(lines)
