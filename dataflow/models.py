"""Models: where they come from, how they reach the workers, and how a batch goes through them.

    driver                                           each worker (once per run, then cached)
    ──────                                           ─────────────────────────────────────────
    model.factory(**args) ─┐                         Shared: the put object, mapped zero-copy
    model.path: a pickle   ├─► Shared(value) ─put─►    (numpy/torch weights stay in shared memory)
    model.instance        ─┘                                   │
    model.path: torch.save, safetensors, .npy/.npz             │
      ─► PerWorker(MappedWeights(local path)) ─put─► build() ──┤  maps the file (weights.py)
    model.setup / TorchScript ─► PerWorker(build) ─put─► build() ─┤
                                                               ▼
                                       make_predictor(model, predict.fn) -> batch -> output

`Shared` is the DDSF pattern: the model is built once in the driver and put once; every worker
maps the same bytes. `PerWorker` is for what cannot be pickled (a connection, a lock, a compiled
TorchScript module) and for weights files: only a small recipe is put, and each worker runs it
once. A weights file is never read into the driver: each worker maps it from the page cache, so
the workers share its pages and nothing is copied (a remote file is first downloaded once into a
local cache, see weights.py).

Before the put, `check_picklable` pickles the model with out-of-band buffers (so an 800 MB array
costs nothing to check) and, if that fails, walks the object to name the captured object that
does not pickle.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import weights
from .exceptions import ModelError, UnpicklableModelError
from .plan import Payload
from .refs import callable_arity, resolve_ref

if TYPE_CHECKING:  # the spec (pydantic) is the driver's; workers import this module too
    from .spec import ModelSpec


@dataclass
class Shared:
    """A model built in the driver, put once, mapped by every worker."""

    value: Any


@dataclass
class PerWorker:
    """A recipe (a picklable zero-argument callable) that builds the model in each worker."""

    build: Callable[[], Any]
    description: str = ""


@dataclass
class _SetupCall:
    """`setup(**args)`, resolved in the worker: the function travels by name when given as a
    `module:function` string, so nothing it closes over is ever pickled."""

    setup: Any
    args: dict = field(default_factory=dict)

    def __call__(self) -> Any:
        fn = resolve_ref(self.setup) if isinstance(self.setup, str) else self.setup
        return fn(**self.args)


def _load_torchscript(data: bytes) -> Any:
    import torch

    module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    module.eval()
    return module


def load_model(spec: ModelSpec) -> Shared | PerWorker:
    """Build (or read) the model the spec names, in the driver."""
    if spec.instance is not None:
        return Shared(spec.instance)
    if spec.setup is not None:
        return PerWorker(_SetupCall(spec.setup, dict(spec.args)), f"setup {_name(spec.setup)}")
    if spec.factory is not None:
        return Shared(build_model(spec.factory, dict(spec.args)))
    if spec.generate is not None:
        _generate_file(spec.path, spec.generate)
    return _load_file(spec.path, spec.format, spec.storage_options)


def built_where_workers_fork(spec: ModelSpec | None) -> bool:
    """Whether the spec's model is a factory's value, shared by the workers: what `core.build`
    makes where the workers are forked from (they inherit it; it is written once). Instances are
    already in the driver; `setup` models are built per worker; files are mapped or loaded here."""
    return spec is not None and spec.instance is None and spec.setup is None and spec.factory is not None


def build_model(factory: str | Callable, args: dict) -> Any:
    """`model.factory(**args)`, for `backend.build` too. It takes the spec's fields, not the spec:
    the zygote that runs it then unpickles no pydantic model, whose import (~0.15 s) would sit
    between the build's request and the factory's start."""
    fn = resolve_ref(factory) if isinstance(factory, str) else factory
    try:
        return fn(**args)
    except Exception as exc:
        raise ModelError(f"model.factory {_name(factory)} raised {type(exc).__name__}: {exc}") from exc


def build_payload(factory: str | Callable, factory_args: dict, args: dict) -> Any:
    """A stage's Payload with the factory's model, built as one object (`backend.build`): its
    tasks and actors get the model and their arguments together, without a copy."""
    return Payload(model=build_model(factory, factory_args), **args)


def _generate_file(uri: str, gen: Any) -> None:
    """`model.generate`: make a missing local weights file on first use (e.g. seeded weights)."""
    path = uri.removeprefix("file://")
    if "://" in path or os.path.exists(path):
        return
    fn = resolve_ref(gen.factory) if isinstance(gen.factory, str) else gen.factory
    try:
        fn(path, **gen.args)
    except Exception as exc:
        raise ModelError(f"model.generate {_name(gen.factory)} could not make {uri}: "
                         f"{type(exc).__name__}: {exc}") from exc


def _load_file(uri: str, fmt: str, storage_options: dict) -> Shared | PerWorker:
    """torch.save, safetensors and numpy files are mapped in each worker (only the path travels);
    TorchScript travels as the file's bytes; a pickle is loaded here and put."""
    local = weights.local_copy(uri, storage_options)  # a remote file: downloaded once, to a cache
    try:
        if fmt == "auto":
            fmt = weights.sniff_file(local, uri)
        if fmt in weights.MAPPED_FORMATS and not (fmt == "torch" and weights.is_legacy_torch(local)):
            recipe = weights.MappedWeights(local, fmt, uri, dict(storage_options), os.path.getsize(local))
            weights.check_weights(local, fmt, uri)  # fail here, in the driver (reads headers only)
            return PerWorker(recipe, f"{fmt} weights {uri}, memory-mapped in each worker")
        with open(local, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelError(f"model.path: cannot read {uri}: {type(exc).__name__}: {exc}") from exc
    try:
        if fmt == "torchscript":
            # A ScriptModule does not pickle: put the file's bytes once, load them in each worker.
            _load_torchscript(data)  # fail here, in the driver, with a clear error
            return PerWorker(functools.partial(_load_torchscript, data), f"TorchScript {uri}")
        if fmt == "torch":  # the legacy format, which cannot be mapped: loaded here, put once
            import torch

            model = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            if hasattr(model, "eval"):
                model.eval()
            return Shared(model)
        import cloudpickle  # noqa: F401  (registers the reducers cloudpickled files need)

        return Shared(pickle.loads(data))
    except ModuleNotFoundError as exc:
        raise ModelError(f"model.path {uri} ({fmt}) needs module {exc.name!r}: "
                         f"pip install {exc.name}" if exc.name == "torch" else
                         f"model.path {uri} ({fmt}) refers to module {exc.name!r}, which is not importable") from exc
    except Exception as exc:
        raise ModelError(f"model.path: cannot load {uri} as {fmt}: {type(exc).__name__}: {exc}") from exc


def sniff_format(data: bytes, uri: str = "") -> str:
    """pickle, torch (torch.save zip archive), torchscript, safetensors or numpy, from the bytes."""
    names = None
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            names = []
    return weights.sniff(data[:16], uri, names)


def _name(ref: Any) -> str:
    if isinstance(ref, str):
        return ref
    return f"{getattr(ref, '__module__', '?')}:{getattr(ref, '__qualname__', repr(ref))}"


# ---------------------------------------------------------------------------------------------
# picklability


def _dumps(value: Any) -> None:
    import cloudpickle

    # buffer_callback keeps big arrays out of band: the check copies no weights.
    cloudpickle.dumps(value, protocol=5, buffer_callback=lambda b: None)


def check_picklable(value: Any, what: str = "model") -> None:
    """Raise UnpicklableModelError naming the first captured object that does not pickle."""
    try:
        _dumps(value)
    except Exception as exc:
        culprit, obj, err = _find_culprit(value, what, exc, depth=0, seen=set())
        kind = type(obj).__name__
        raise UnpicklableModelError(
            f"the {what} cannot be pickled, so it cannot be put in the object store: {culprit} "
            f"(a {kind}) does not pickle ({type(err).__name__}: {err}). Build such objects in "
            f"each worker instead: give `model: {{setup: 'package.module:function'}}` (runs once "
            f"per worker, never pickled), or a callable class as `predict.fn` whose __init__ "
            f"creates it", culprit) from exc


def _children(obj: Any, path: str):
    """(access path, child) pairs of what pickling `obj` would also pickle."""
    if isinstance(obj, functools.partial):
        yield f"{path}.func", obj.func
        for i, a in enumerate(obj.args):
            yield f"{path}.args[{i}]", a
        for k, v in (obj.keywords or {}).items():
            yield f"{path}.keywords[{k!r}]", v
        return
    code = getattr(obj, "__code__", None)
    if code is not None:
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                yield f"{path} closure variable {name!r}", cell.cell_contents
            except ValueError:
                pass
        g = getattr(obj, "__globals__", {})
        for name in code.co_names:
            if name in g:
                yield f"{path} global {name!r}", g[name]
        for k, v in getattr(obj, "__dict__", {}).items():
            yield f"{path}.{k}", v
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{path}[{k!r}]", v
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            yield f"{path}[{i}]", v
        return
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        for k, v in d.items():
            yield f"{path}.{k}", v
    for slot in getattr(type(obj), "__slots__", ()) or ():
        if hasattr(obj, slot):
            yield f"{path}.{slot}", getattr(obj, slot)
    bound_self = getattr(obj, "__self__", None)
    if bound_self is not None and not isinstance(bound_self, type(pickle)):
        yield f"{path}.__self__", bound_self


def _find_culprit(obj: Any, path: str, err: BaseException, depth: int, seen: set) -> tuple[str, Any, BaseException]:
    if depth > 8 or id(obj) in seen:
        return path, obj, err
    seen.add(id(obj))
    for child_path, child in _children(obj, path):
        try:
            _dumps(child)
        except Exception as child_err:
            return _find_culprit(child, child_path, child_err, depth + 1, seen)
    return path, obj, err


# ---------------------------------------------------------------------------------------------
# worker side: model + predict.fn -> one callable over batches


def make_predictor(model: Any, fn: Any) -> Callable[[Any], Any]:
    """The callable a worker applies to each batch.

    - no `fn`: `model(batch)`, or `model.predict(batch)`;
    - a class: built once here as `cls(model)` (or `cls()`), then `obj(batch)`;
    - a function: `fn(model, batch)`, or `fn(batch)` when it takes one argument.
    """
    if isinstance(fn, str):
        fn = resolve_ref(fn)
    if fn is None:
        if callable(model):
            return model
        if callable(getattr(model, "predict", None)):
            return model.predict
        raise ModelError(f"the model (a {type(model).__name__}) is neither callable nor has a "
                         f"predict() method; give predict.fn")
    if isinstance(fn, type):
        try:
            takes_model = fn.__init__ is not object.__init__ and callable_arity(fn.__init__) >= 2
            obj = fn(model) if takes_model else fn()
        except Exception as exc:
            raise ModelError(f"predict.fn {_name(fn)}: building it in the worker raised "
                             f"{type(exc).__name__}: {exc}") from exc
        if not callable(obj):
            raise ModelError(f"predict.fn {_name(fn)} has no __call__(batch)")
        return obj
    if callable_arity(fn) <= 1:
        return fn
    return functools.partial(fn, model)
