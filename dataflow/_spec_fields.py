"""The spec's field types: each value in a pipeline spec is checked by a small validator here that
writes the message the user reads (what was expected, what was found), raised as a
`PydanticCustomError` so that pydantic collects every problem at once.

    raw value ──BeforeValidator(_positive_int, parse_size, choice(...), ...)──► typed value
                          │ wrong
                          ▼
    PydanticCustomError("must be a positive integer, got \"big\"")  ──► spec._translate adds
                                                                        file, line and key path

The `Annotated` aliases (`PositiveInt`, `Size`, `Ref`, `StageFn`, ...) are what the models in
`dataflow.spec` declare their fields with. `module:function` references are imported here, so a
typo in a factory name is caught by validation without running anything. `show` prints a value
as the user wrote it, for these messages and the YAML loader's.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Callable, Union

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from core.exceptions import ConfigError
from core.units import parse_size as parse_size_bytes

from .refs import resolve_ref
from .refs import did_you_mean as _did_you_mean

# ---------------------------------------------------------------------------------------------
# value validators: each raises a PydanticCustomError whose message is the one the user reads


def show(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it: strings in double quotes, the rest as YAML would print it."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(kind: str, message: str, value: Any) -> PydanticCustomError:
    # Braces in user values must not be read as placeholders by pydantic's formatter.
    return PydanticCustomError(kind, message + ", got {got}", {"got": show(value)})


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail("positive_int", "must be a positive integer", value)
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail("non_negative_int", "must be an integer >= 0", value)
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail("string", "must be a non-empty string", value)
    return value


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail("string_list", "must be a list of column names", value)
    return value


def _uri_or_list(value: Any) -> str | list[str]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return value
    raise _fail("uri", "must be a path or URI (a file, folder or glob) or a list of them", value)


def _mapping(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail("mapping", "must be a mapping", value)
    return value


_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _ref(value: Any) -> str | Callable:
    """A `module:function` reference (checked by importing it) or, from Python, a callable."""
    if callable(value) and not isinstance(value, str):
        return value
    if not isinstance(value, str) or not _REF.match(value):
        raise _fail("ref", 'must be "package.module:function"', value)
    try:
        target = resolve_ref(value)
    except ValueError as exc:
        raise PydanticCustomError("ref_import", "{why}", {"why": str(exc)}) from None
    if not callable(target):
        raise PydanticCustomError("ref_call", "{ref} is not callable (it is a {kind})",
                                  {"ref": value, "kind": type(target).__name__})
    return value


def parse_size(value: Any) -> int:
    """Bytes from a positive size, with core's one meaning of each unit (`core.units`): K/M/G/T
    and KiB/MiB/GiB/TiB are powers of 2 (`2G` = 2 GiB), KB/MB/GB/TB powers of 10 (`2GB` =
    2*10^9), a plain number is bytes. core's ConfigError becomes the spec's message; the file,
    line and key path are added where the issue is reported."""
    try:
        return parse_size_bytes(value, "size", minimum=1)
    except ConfigError as exc:
        raise _fail("size", "must be a size in bytes such as 2GB, 512MiB or 1000000 (2G = 2 GiB, "
                            "2GB = 2*10^9)", value) from exc


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from a number or `500ms`, `30s`, `5m`, `1h`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
            if seconds > 0:
                return seconds
    raise _fail("duration", "must be a positive duration in seconds such as 30 or 30s, 5m", value)


def choice(*options: str) -> Callable[[Any], str]:
    """A validator that takes one of `options` (a did-you-mean for a near miss)."""
    def check(value: Any) -> str:
        if value in options:
            return value
        hint = _did_you_mean(value, options) if isinstance(value, str) else ""
        raise PydanticCustomError("choice", "must be one of {options}, got {got}{hint}",
                                  {"options": ", ".join(options), "got": show(value), "hint": hint})
    return check


_OPS = ("=", "==", "!=", "<", ">", "<=", ">=", "in", "not in")


def _filters(value: Any) -> list | None:
    """pyarrow DNF filters: [[col, op, value], ...] (AND), or a list of such lists (OR of ANDs)."""
    if value is None:
        return None

    def predicate(p: Any) -> bool:
        return (isinstance(p, list) and len(p) == 3 and isinstance(p[0], str) and p[1] in _OPS
                and (not p[1].endswith("in") or isinstance(p[2], list)))

    ok = isinstance(value, list) and value and (
        all(predicate(p) for p in value)
        or all(isinstance(c, list) and c and all(predicate(p) for p in c) for c in value))
    if not ok:
        raise PydanticCustomError(
            "filters", "must be a list of [column, op, value] predicates (op one of {ops}), "
            "e.g. [[passenger_count, \">\", 0]], or a list of such lists, got {got}",
            {"ops": " ".join(_OPS), "got": show(value, 80) if not isinstance(value, list) else json.dumps(value)[:80]})
    return value


def _report(value: Any) -> str | None:
    if value is None:
        return None
    _string(value)
    try:
        value.format(shard=0, rows=0, sum=_AnyKey(), seconds=0.0)
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise PydanticCustomError("report", "bad format string ({why}); use {hint}",
                                  {"why": str(exc), "hint": "{rows}, {shard}, {seconds} and {sum[column]}"}) from None
    return value


class _AnyKey(dict):
    def __missing__(self, key):
        return 0


def _stage_fn(value: Any) -> Any:
    """A stage's `fn`: a function (runs as tasks) or a class (an actor pool), by `module:name`
    or, from Python, the object itself."""
    target = value
    if isinstance(value, str):
        if not _REF.match(value):
            raise _fail("ref", 'must be "package.module:function" or "package.module:Class"', value)
        try:
            target = resolve_ref(value)
        except ValueError as exc:
            raise PydanticCustomError("ref_import", "{why}", {"why": str(exc)}) from None
    if isinstance(target, type):
        if not callable(getattr(target, "__call__", None)) or target.__call__ is type.__call__:
            raise PydanticCustomError("stage_class", "class {ref} has no __call__(self, batch): an actor "
                                      "pool calls each actor with a batch", {"ref": show(value)})
        return value
    if not callable(target):
        raise PydanticCustomError("stage_fn", "must be a function (runs as tasks) or a class (runs as "
                                  "an actor pool); {ref} is a {kind}",
                                  {"ref": show(value), "kind": type(target).__name__})
    return value


def _concurrency(value: Any) -> int | tuple[int, int] | None:
    """An int (actors in the pool, or tasks in flight) or [min, max] (a pool that grows and shrinks)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        lo, hi = value
        if lo > hi:
            raise PydanticCustomError("concurrency_range", "[min, max] with min ({lo}) > max ({hi}); "
                                      "write [{hi}, {lo}]", {"lo": lo, "hi": hi})
        return (lo, hi)
    raise _fail("concurrency", "must be a positive integer or [min, max] of positive integers", value)


def _amount(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _fail("amount", "must be a number >= 0", value)
    return value


def _resources(value: Any) -> dict:
    value = _mapping(value)
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise PydanticCustomError("resources", "resource {name} must be a number >= 0, got {got}",
                                      {"name": k, "got": show(v)})
        if k in ("CPU", "GPU"):
            raise PydanticCustomError("resources", "use num_cpus / num_gpus for {name}, not resources",
                                      {"name": k})
    return value


def _arg_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, tuple):
        return list(value)
    if not isinstance(value, list):
        raise _fail("args", "must be a list of positional arguments", value)
    return value


# ---------------------------------------------------------------------------------------------
# the field types the models declare

PositiveInt = Annotated[int, BeforeValidator(_positive_int)]
NonNegativeInt = Annotated[int, BeforeValidator(_non_negative_int)]
Str = Annotated[str, BeforeValidator(_string)]
StrList = Annotated[list[str], BeforeValidator(_string_list)]
UriOrList = Annotated[Union[str, list[str]], BeforeValidator(_uri_or_list)]
Mapping = Annotated[dict[str, Any], BeforeValidator(_mapping)]
Ref = Annotated[Any, BeforeValidator(_ref)]
Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Amount = Annotated[float | None, BeforeValidator(_amount)]
Resources = Annotated[dict[str, float], BeforeValidator(_resources)]
ArgList = Annotated[list, BeforeValidator(_arg_list)]
Filters = Annotated[list | None, BeforeValidator(_filters)]
ReportFormat = Annotated[str | None, BeforeValidator(_report)]
StageFn = Annotated[Any, BeforeValidator(_stage_fn)]
Concurrency = Annotated[Any, BeforeValidator(_concurrency)]
