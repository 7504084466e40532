"""Sizes in bytes: one meaning of each unit for the whole project.

`parse_size` reads what users write (`core.init(object_store_memory=...)`, `spill=` sizes, the
`runtime:` section of a pipeline's YAML); `format_bytes` writes sizes for people to read.

    value               bytes                    why
    ─────               ─────                    ───
    1000, "1000", "1000B"  1000                  a plain number is bytes
    "2K" "2Ki" "2KiB"   2 * 2**10                K/M/G/T alone mean powers of two, as -Xmx2g
    "2M" "2Mi" "2MiB"   2 * 2**20                (Java) and Ray's docs do: someone writing "2G"
    "2G" "2Gi" "2GiB"   2 * 2**30                for a memory limit means 2 GiB
    "2T" "2Ti" "2TiB"   2 * 2**40
    "2KB" "2MB" "2GB" "2TB"   2 * 10**3 ... 10**12   with a B, the SI (disk) meaning

Units are case-insensitive, a space may sit between number and unit, the number may have a
fraction ("1.5G"; the result is rounded down to whole bytes). A bool, a negative number, a
fraction of a byte given as a float, or an unknown unit raises `ConfigError` naming `what` and
the value.
"""

from __future__ import annotations

import math
import re
from typing import Any

from core.exceptions import ConfigError

__all__ = ["parse_size", "format_bytes", "UNITS"]

UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 2**10, "ki": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mi": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gi": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "ti": 2**40, "tib": 2**40, "tb": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_EXAMPLES = "an int of bytes or a string such as '512MiB', '2G' (2 GiB) or '2GB' (2*10^9 bytes)"


def parse_size(value: Any, what: str, *, minimum: int = 0) -> int:
    """Bytes from an int or a size string (see the module docstring for the units). `what` names
    the setting in errors (e.g. "spill.buffer_size"); sizes below `minimum` are rejected."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected {_EXAMPLES}, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ConfigError(f"{what}: expected a whole number of bytes, got {value!r}")
        size = int(value)
    elif isinstance(value, str):
        m = _SIZE.match(value)
        unit = m.group(2).lower() if m else None
        if unit not in UNITS:
            raise ConfigError(f"{what}: expected {_EXAMPLES}, got {value!r}"
                              + (f" (unknown unit {m.group(2)!r})" if m else ""))
        size = int(float(m.group(1)) * UNITS[unit])
    else:
        raise ConfigError(f"{what}: expected {_EXAMPLES}, got {type(value).__name__} {value!r}")
    if size < minimum:
        expected = "a non-negative size" if minimum == 0 else f"a size of at least {minimum} bytes"
        raise ConfigError(f"{what}: expected {expected}, got {value!r}")
    return size


def format_bytes(n: float) -> str:
    """A size for people, in powers of two: "512 B", "1.5 KiB", "2.0 GiB", "3.0 TiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
