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

This module owns the models (`PipelineSpec` and its sections), `validate` (pydantic's errors
translated in `_translate`, unknown keys rejected with a did-you-mean, what no single field can
see in `_shape_problems` and `_infeasible`), `load` and `from_python`. The YAML side (positions,
interpolation, `--set`) is `dataflow._spec_yaml`; every field's validator, and the message it
writes (what was expected, what was found), is `dataflow._spec_fields`. `module:function`
references are imported during validation, so `validate` catches a typo in a factory name
without running anything.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Iterator, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ._spec_fields import (Amount, ArgList, Concurrency, Duration, Filters, Mapping, NonNegativeInt,
                           PositiveInt, Ref, ReportFormat, Resources, Size, StageFn, Str, StrList,
                           UriOrList, choice, parse_duration, parse_size, show)
from ._spec_yaml import Mark, Path, Positions, apply_overrides, dotted, load_yaml
from .exceptions import SpecError, SpecIssue
from .refs import did_you_mean as _did_you_mean
from .refs import resolve_ref

# The spec's API. The last two lines are re-exports from _spec_fields, _spec_yaml and refs: callers
# reach them through `dataflow.spec` (pipeline.py's `spec_mod.resolve_ref`, the tests' `S.parse_size`).
__all__ = [
    "GenerateSpec", "SourceSpec", "ModelSpec", "PredictSpec", "SinkSpec", "RuntimeSpec", "StageSpec",
    "PipelineSpec", "BATCH_FORMATS", "STAGE_BATCH_FORMATS", "ON_ERROR", "SINK_MODES", "SINK_FORMATS",
    "validate", "session_resources", "load", "from_python",
    "SpecError", "SpecIssue", "Mark", "Positions", "load_yaml", "apply_overrides", "dotted", "show",
    "parse_size", "parse_duration", "resolve_ref",
]

BATCH_FORMATS = ("pandas", "pyarrow", "numpy", "torch")
STAGE_BATCH_FORMATS = ("numpy", "pandas", "pyarrow", "torch")
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
    filters: Filters = None
    shard_by: Annotated[Literal["file", "row_group"], BeforeValidator(choice("file", "row_group"))] = "file"
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
    format: Annotated[str, BeforeValidator(choice("auto", "pickle", "torch", "torchscript", "safetensors", "numpy"))] = "auto"
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
    batch_format: Annotated[str, BeforeValidator(choice(*BATCH_FORMATS))] = "pandas"
    keep_columns: StrList = []
    timeout: Duration | None = None
    output_column: Str = "prediction"


class SinkSpec(_Spec):
    parquet: Str | None = None
    csv: Str | None = None
    jsonl: Str | None = None
    mode: Annotated[str, BeforeValidator(choice(*SINK_MODES))] = "resume"
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
    on_error: Annotated[str, BeforeValidator(choice(*ON_ERROR))] = "fail"
    # Consecutive stateless stages with the same resources run as one task per shard (false: one
    # task per stage, blocks through the object store between them; for comparing).
    fuse: bool = True
    # "inline" runs every shard in the driver, one at a time: for debugging (pdb, prints).
    backend: Annotated[str, BeforeValidator(choice("core", "inline"))] = "core"


class StageSpec(_Spec):
    """One step of a multi-stage pipeline (Ray Data's `map_batches`): `fn` is a function, run as
    tasks (`fn(batch, *fn_args, **fn_kwargs)`, or `fn(model, batch, ...)` with a `model`), or a
    class, run as an actor pool (built once per actor as `cls([model,] *fn_constructor_args,
    **fn_constructor_kwargs)`, then called `obj(batch, *fn_args, **fn_kwargs)`)."""

    name: Str
    fn: StageFn
    model: ModelSpec | None = None
    fn_args: ArgList = []
    fn_kwargs: Mapping = {}
    fn_constructor_args: ArgList = []
    fn_constructor_kwargs: Mapping = {}
    batch_size: PositiveInt | None = None
    batch_format: Annotated[str, BeforeValidator(choice(*STAGE_BATCH_FORMATS))] = "numpy"
    concurrency: Concurrency = None
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
    report: ReportFormat = None


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
