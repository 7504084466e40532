"""The pipeline spec: what a YAML file (or `Pipeline(...)` in Python) may say, validated in one
place before anything runs.

    pipeline.yaml ──compose──► node tree ──_Builder──► plain data + {key path: (line, column)}
                                              │  ${ENV} / ${ENV:-default} interpolated here
    --set a.b=c  ──yaml-typed value──────────►│  (overrides remember their own origin)
                                              ▼
                                  PipelineSpec.model_validate(data)
                                              │  pydantic collects every error at once
                                              ▼
               SpecError([ "pipelines/x.yaml:7: predict.batch_size: must be a positive integer, got \"big\"", ...])

Every value is checked by a small validator that writes our own message (what was expected, what
was found); pydantic's own messages are translated in `_translate`. Unknown keys are rejected with
a did-you-mean. `module:function` references are imported during validation, so `validate` catches
a typo in a factory name without running anything.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from core.exceptions import ConfigError
from core.units import parse_size as parse_size_bytes

from .exceptions import SpecError, SpecIssue
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


def _choice(*options: str) -> Callable[[Any], str]:
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


Amount = Annotated[float | None, BeforeValidator(_amount)]
Resources = Annotated[dict[str, float], BeforeValidator(_resources)]
ArgList = Annotated[list, BeforeValidator(_arg_list)]
STAGE_BATCH_FORMATS = ("numpy", "pandas", "pyarrow", "torch")


PositiveInt = Annotated[int, BeforeValidator(_positive_int)]
NonNegativeInt = Annotated[int, BeforeValidator(_non_negative_int)]
Str = Annotated[str, BeforeValidator(_string)]
StrList = Annotated[list[str], BeforeValidator(_string_list)]
UriOrList = Annotated[Union[str, list[str]], BeforeValidator(_uri_or_list)]
Mapping = Annotated[dict[str, Any], BeforeValidator(_mapping)]
Ref = Annotated[Any, BeforeValidator(_ref)]
Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]

BATCH_FORMATS = ("pandas", "pyarrow", "numpy", "torch")
ON_ERROR = ("fail", "skip", "quarantine")
SINK_MODES = ("resume", "overwrite", "append", "error")
SINK_FORMATS = ("parquet", "csv", "jsonl")


# ---------------------------------------------------------------------------------------------
# the spec


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=False)


class GenerateSpec(_Spec):
    """Make the source (or a model file) on first use: `factory(path, **args)` runs when the local
    path does not exist (e.g. `connectors:make_nyc_taxi_shards` for the sample data)."""

    factory: Ref
    args: Mapping = {}


class SourceSpec(_Spec):
    parquet: UriOrList
    columns: StrList | None = None
    filters: Annotated[list | None, BeforeValidator(_filters)] = None
    shard_by: Annotated[Literal["file", "row_group"], BeforeValidator(_choice("file", "row_group"))] = "file"
    target_rows: PositiveInt | None = None
    storage_options: Mapping = {}
    generate: GenerateSpec | None = None


class ModelSpec(_Spec):
    """Exactly one of: `factory` (built once in the driver, put once), `path` (a pickle,
    cloudpickle, torch.save or TorchScript file on any fsspec URI), `setup` (built once in each
    worker, never pickled: for models holding connections, locks, GPU handles), or `instance`
    (Python only: the model object itself)."""

    factory: Ref | None = None
    path: Str | None = None
    setup: Ref | None = None
    instance: Any = None
    format: Annotated[str, BeforeValidator(_choice("auto", "pickle", "torch", "torchscript", "safetensors", "numpy"))] = "auto"
    args: Mapping = {}
    storage_options: Mapping = {}
    generate: GenerateSpec | None = None  # with a local `path`: make the file on first use

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in ("factory", "path", "setup", "instance") if getattr(self, k) is not None]
        if len(given) != 1:
            found = " and ".join(given) if given else "none"
            raise PydanticCustomError(
                "model_source", "give exactly one of factory, path or setup, got {found}", {"found": found})
        if self.generate is not None and self.path is None:
            raise PydanticCustomError("model_generate", "generate makes a missing model.path file; "
                                      "this model has no path", {})
        if self.args and not (self.factory or self.setup):
            raise PydanticCustomError("model_args", "args are passed to a factory or setup function; "
                                      "this model has none", {})
        return self


class PredictSpec(_Spec):
    """How a batch goes through the model. `fn` is a function `fn(model, batch)` (or `fn(batch)`),
    or a class built once per worker as `cls(model)` and called as `obj(batch)`; without `fn` the
    model itself is called (`model(batch)`, or `model.predict(batch)`)."""

    fn: Ref | None = None
    batch_size: PositiveInt = 65536
    batch_format: Annotated[str, BeforeValidator(_choice(*BATCH_FORMATS))] = "pandas"
    keep_columns: StrList = []
    timeout: Duration | None = None
    output_column: Str = "prediction"


class SinkSpec(_Spec):
    parquet: Str | None = None
    csv: Str | None = None
    jsonl: Str | None = None
    mode: Annotated[str, BeforeValidator(_choice(*SINK_MODES))] = "resume"
    storage_options: Mapping = {}

    @model_validator(mode="after")
    def _one_format(self) -> "SinkSpec":
        given = [k for k in SINK_FORMATS if getattr(self, k) is not None]
        if len(given) != 1:
            found = " and ".join(given) if given else "none"
            raise PydanticCustomError("sink_format", "give exactly one of parquet, csv or jsonl "
                                      "(the output URI), got {found}", {"found": found})
        return self

    @property
    def format(self) -> str:
        return next(k for k in SINK_FORMATS if getattr(self, k) is not None)

    @property
    def uri(self) -> str:
        return getattr(self, self.format)


class RuntimeSpec(_Spec):
    num_cpus: PositiveInt | None = None
    num_gpus: Amount = None              # declared to the session (core.init(num_gpus=...))
    resources: Resources = {}            # custom resources declared to the session
    object_store_memory: Size | None = None
    spill: Str | None = None
    address: Str | None = None
    max_in_flight: PositiveInt | None = None
    max_retries: NonNegativeInt = 3
    on_error: Annotated[str, BeforeValidator(_choice(*ON_ERROR))] = "fail"
    # Consecutive stateless stages with the same resources run as one task per shard (false: one
    # task per stage, blocks through the object store between them; for comparing).
    fuse: bool = True
    # "inline" runs every shard in the driver, one at a time: for debugging (pdb, prints).
    backend: Annotated[str, BeforeValidator(_choice("core", "inline"))] = "core"


class StageSpec(_Spec):
    """One step of a multi-stage pipeline (Ray Data's `map_batches`): `fn` is a function, run as
    tasks (`fn(batch, *fn_args, **fn_kwargs)`, or `fn(model, batch, ...)` with a `model`), or a
    class, run as an actor pool (built once per actor as `cls([model,] *fn_constructor_args,
    **fn_constructor_kwargs)`, then called `obj(batch, *fn_args, **fn_kwargs)`)."""

    name: Str
    fn: Annotated[Any, BeforeValidator(_stage_fn)]
    model: ModelSpec | None = None
    fn_args: ArgList = []
    fn_kwargs: Mapping = {}
    fn_constructor_args: ArgList = []
    fn_constructor_kwargs: Mapping = {}
    batch_size: PositiveInt | None = None
    batch_format: Annotated[str, BeforeValidator(_choice(*STAGE_BATCH_FORMATS))] = "numpy"
    concurrency: Annotated[Any, BeforeValidator(_concurrency)] = None
    num_cpus: Amount = None
    num_gpus: Amount = None
    resources: Resources = {}
    # torch (and BLAS) threads in the stage's worker; default: num_cpus rounded, at least 1.
    num_threads: PositiveInt | None = None
    timeout: Duration | None = None


class PipelineSpec(_Spec):
    name: Str = "pipeline"
    source: SourceSpec
    # `model` + `predict` is the one-stage shorthand of `stages` (exactly one of the two is given).
    model: ModelSpec | None = None
    predict: PredictSpec = PredictSpec()
    stages: list[StageSpec] | None = None
    sink: SinkSpec | None = None
    runtime: RuntimeSpec = RuntimeSpec()
    # One line per shard in the --verbose listing, formatted with {shard}, {rows} and {sum[column]}.
    report: Annotated[str | None, BeforeValidator(_report)] = None


# ---------------------------------------------------------------------------------------------
# YAML with positions


@dataclass(frozen=True)
class Mark:
    origin: str
    line: int | None = None
    column: int | None = None


Path = tuple  # of str | int


class Positions:
    """Where each key path came from: a line in the file, or a `--set` override."""

    def __init__(self, origin: str | None = None):
        self.origin = origin
        self.marks: dict[Path, Mark] = {}
        self.overrides: dict[Path, Mark] = {}

    def locate(self, path: Path) -> Mark | None:
        for n in range(len(path), -1, -1):
            prefix = tuple(path[:n])
            if prefix in self.overrides:
                return self.overrides[prefix]
            if prefix in self.marks:
                return self.marks[prefix]
        return Mark(self.origin) if self.origin else None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Builder:
    """Node tree -> plain Python data, recording each key path's position and interpolating
    environment variables in scalars. Problems are collected, not raised."""

    def __init__(self, origin: str, env: dict[str, str]):
        self.origin = origin
        self.env = env
        self.positions = Positions(origin)
        self.issues: list[SpecIssue] = []

    def mark(self, node: yaml.Node) -> Mark:
        return Mark(self.origin, node.start_mark.line + 1, node.start_mark.column + 1)

    def issue(self, path: Path, node: yaml.Node, message: str) -> None:
        m = self.mark(node)
        self.issues.append(SpecIssue(message, dotted(path), m.origin, m.line, m.column))

    def build(self, node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                self.positions.marks[path + (i,)] = self.mark(item)
                out.append(self.build(item, path + (i,)))
            return out
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        out: dict = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    value = self.build(src, path)
                    if isinstance(value, dict):
                        for k, v in value.items():
                            merged.setdefault(k, v)
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, (str, int)):
                self.issue(path, key_node, f"keys must be names, got {show(key)}")
                continue
            key = str(key)
            if key in out:
                self.issue(path + (key,), key_node, "duplicate key (the earlier value would be ignored)")
            self.positions.marks[path + (key,)] = self.mark(key_node)
            out[key] = self.build(value_node, path + (key,))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        if "${" in node.value and node.tag == "tag:yaml.org,2002:str":
            text, ok = self._interpolate(node, path)
            if not ok:
                return node.value
            if node.style is None:  # plain scalar: `batch_size: ${BS:-1024}` becomes an int
                try:
                    typed = yaml.safe_load(text)
                except yaml.YAMLError:
                    return text
                return typed if isinstance(typed, (int, float, bool, str)) or typed is None else text
            return text
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)

    def _interpolate(self, node: yaml.Node, path: Path) -> tuple[str, bool]:
        missing: list[str] = []

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            missing.append(name)
            return m.group(0)

        text = _ENV.sub(sub, node.value)
        for name in missing:
            self.issue(path, node, f"environment variable {name} is not set; set it or give a "
                                   f"default as ${{{name}:-value}}")
        return text, not missing


def load_yaml(text: str, origin: str, env: dict[str, str] | None = None) -> tuple[Any, Positions, list[SpecIssue]]:
    """Parse YAML text into (data, positions, issues). Syntax errors become one issue each."""
    builder = _Builder(origin, dict(os.environ) if env is None else env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        why = " ".join(p for p in (exc.context, exc.problem) if p)
        issue = SpecIssue(f"invalid YAML: {why}", "", origin,
                          mark.line + 1 if mark else None, mark.column + 1 if mark else None)
        return None, builder.positions, [issue]
    except yaml.YAMLError as exc:
        return None, builder.positions, [SpecIssue(f"invalid YAML: {exc}", "", origin)]
    if root is None:
        return None, builder.positions, [SpecIssue("the file is empty; a pipeline needs at least "
                                                   "source and model", "", origin, 1)]
    data = builder.build(root, ())
    return data, builder.positions, builder.issues


def apply_overrides(data: dict, overrides: list[str], positions: Positions) -> list[SpecIssue]:
    """Apply `a.b=c` overrides in place; `c` is read as YAML (`5` is an int, `[a, b]` a list)."""
    issues = []
    for item in overrides or []:
        key, eq, raw = item.partition("=")
        key = key.strip()
        origin = f"--set {item}"
        if not eq or not key or any(not p for p in key.split(".")):
            issues.append(SpecIssue("expected key.path=value, e.g. predict.batch_size=1024", "", "--set " + item))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            issues.append(SpecIssue(f"the value is not valid YAML ({exc.__class__.__name__})", key, origin))
            continue
        parts: list = key.split(".")
        node: Any = data
        path: Path = ()
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                part = int(part)
            elif not isinstance(node, dict):
                issues.append(SpecIssue(f"cannot set a key inside {show(node)}", dotted(path), origin))
                break
            path += (part,)
            if last:
                node[part] = value
                positions.overrides[path] = Mark(origin)
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return issues


def dotted(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ---------------------------------------------------------------------------------------------
# validation: pydantic errors -> SpecIssues


_PLAIN = {
    "missing": "is required",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
}


def _fields_at(path: Path) -> list[str]:
    """Field names of the spec model found at `path` (for did-you-mean on unknown keys)."""
    cls: Any = PipelineSpec
    for part in path:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return []
        cls = _model_in(field.annotation)
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) else ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _translate(err: dict) -> tuple[Path, str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        key = str(loc[-1])
        hint = _did_you_mean(key, fields)
        allowed = f" (allowed: {', '.join(f for f in fields if f != 'instance')})" if fields else ""
        return loc, f"unknown key{hint}{allowed}" if hint else f"unknown key{allowed}"
    if kind in _PLAIN:
        msg = _PLAIN[kind]
        if kind != "missing":
            msg += f", got {show(err.get('input'))}"
        return loc, msg
    return loc, err["msg"].removeprefix("Value error, ")


def validate(data: Any, positions: Positions | None = None) -> PipelineSpec:
    """The spec from plain data, or a SpecError listing every problem with its position."""
    positions = positions or Positions()
    if not isinstance(data, dict):
        mark = positions.locate(())
        raise SpecError([SpecIssue(f"a pipeline must be a mapping with source, model, predict, sink "
                                   f"and runtime, got {show(data)}", "", mark.origin if mark else None,
                                   1 if mark and mark.origin and positions.marks is not None else None)])
    found: list[tuple[Path, str]] = []
    spec = None
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        found += [_translate(err) for err in exc.errors(include_url=False)]
    found += _shape_problems(data)
    if spec is not None and not found:
        found += list(_infeasible(spec))
    if not found:
        return spec
    issues = []
    for loc, message in found:
        mark = positions.locate(loc)
        issues.append(SpecIssue(message, dotted(loc), mark.origin if mark else None,
                                mark.line if mark else None, mark.column if mark else None))
    issues.sort(key=lambda i: (i.line or 0, i.column or 0))
    raise SpecError(issues) from None


def _shape_problems(data: dict) -> Iterator[tuple[Path, str]]:
    """What no single field can see: model/predict vs stages, and duplicate stage names."""
    stages = data.get("stages")
    if "model" not in data and stages is None:
        yield ("model",), "is required (or list the steps under stages:)"
    if stages is not None and "model" in data:
        yield ("stages",), ("give either model + predict (the one-stage shorthand) or stages, not both; "
                            "a stage takes its own model: key")
    if stages is not None and "predict" in data:
        yield ("predict",), ("belongs to the model: shorthand; with stages, each stage has its own "
                             "batch_size, batch_format and timeout")
    if isinstance(stages, list):
        if not stages:
            yield ("stages",), "must list at least one stage"
        seen: dict[str, int] = {}
        for i, st in enumerate(stages):
            name = st.get("name") if isinstance(st, dict) else None
            if isinstance(name, str) and name in seen:
                yield ("stages", i, "name"), f"duplicate stage name {show(name)} (also stages[{seen[name]}]); names must be unique"
            elif isinstance(name, str):
                seen[name] = i


def _infeasible(spec: PipelineSpec) -> Iterator[tuple[Path, str]]:
    """Stages asking for more than the session can ever have (a local session: runtime.num_cpus
    or this machine's CPUs, runtime.num_gpus, runtime.resources). A cluster (runtime.address)
    is checked when the run starts."""
    rt = spec.runtime
    if rt.address is not None or not spec.stages:
        return
    have = session_resources(rt)
    for i, st in enumerate(spec.stages):
        asks = {"num_cpus": ("CPU", st.num_cpus), "num_gpus": ("GPU", st.num_gpus)}
        for key, (res, amount) in asks.items():
            if amount and amount > have.get(res, 0):
                yield ("stages", i, key), (f"asks for {amount:g} {res} per task or actor; the session can "
                                           f"never have it (it has {have.get(res, 0):g}; declare more "
                                           f"in runtime.{key})")
        for res, amount in st.resources.items():
            if amount and amount > have.get(res, 0):
                yield ("stages", i, "resources", res), (
                    f"asks for {amount:g} {res}; the session has {have.get(res, 0):g} (declare it in "
                    f"runtime.resources)")


def session_resources(rt: RuntimeSpec) -> dict[str, float]:
    """What a local session started from this runtime section has."""
    return {"CPU": float(rt.num_cpus or os.cpu_count() or 1), "GPU": float(rt.num_gpus or 0),
            **{k: float(v) for k, v in rt.resources.items()}}


def load(path: str | os.PathLike, overrides: list[str] | None = None,
         env: dict[str, str] | None = None) -> PipelineSpec:
    """Read, interpolate, override and validate a pipeline file. Raises SpecError with all issues."""
    origin = os.fspath(path)
    try:
        with open(origin, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise SpecError(SpecIssue(f"cannot read the pipeline file: {exc.strerror or exc}", "", origin)) from None
    data, positions, issues = load_yaml(text, origin, env)
    if data is not None and isinstance(data, dict):
        issues += apply_overrides(data, overrides or [], positions)
    if issues:
        # Report the structural problems together with whatever field errors we can find too.
        if isinstance(data, dict):
            try:
                validate(data, positions)
            except SpecError as more:
                known = {(i.path, i.line) for i in issues}
                issues += [i for i in more.issues if (i.path, i.line) not in known]
        raise SpecError(issues)
    return validate(data, positions)


def from_python(source: Any = None, model: Any = None, predict: Any = None, sink: Any = None,
                runtime: Any = None, name: str | None = None, report: str | None = None,
                stages: list | None = None) -> PipelineSpec:
    """The spec for `Pipeline(source=..., model=..., ...)`: strings and objects are accepted where
    YAML would need a mapping (a URI for source/sink, a model object, a predict function)."""
    data: dict[str, Any] = {}
    if name is not None:
        data["name"] = name
    if report is not None:
        data["report"] = report
    data["source"] = _as_mapping(source, "parquet", SourceSpec)
    if isinstance(model, ModelSpec):
        data["model"] = model
    elif isinstance(model, dict):
        data["model"] = model
    elif model is not None:
        data["model"] = {"instance": model}
    if stages is not None:
        data["stages"] = [st.model_dump(exclude_unset=True) if isinstance(st, BaseModel) else st for st in stages]
    if predict is not None:
        data["predict"] = predict if isinstance(predict, (dict, PredictSpec)) else {"fn": predict}
    if sink is not None:
        data["sink"] = _as_mapping(sink, "parquet", SinkSpec)
    if runtime is not None:
        data["runtime"] = runtime
    data = {k: v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) and k != "model" else v
            for k, v in data.items()}
    if isinstance(data.get("model"), ModelSpec):
        data["model"] = {k: getattr(data["model"], k) for k in data["model"].model_fields_set}
    return validate(data, Positions("Pipeline(...)"))


def _as_mapping(value: Any, key: str, cls: type) -> Any:
    if isinstance(value, (str, list, os.PathLike)):
        return {key: os.fspath(value) if isinstance(value, os.PathLike) else value}
    return value
