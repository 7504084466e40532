"""A run's models, made once and put in the object store once, before the first task needs them.

    shorthand:  put_model ─► a factory's model: backend.build (core.build: made where the workers
                             fork from, inherited by them, written once)
                          └► else (or when the build fails for a reason of its own):
                             load_model ─► backend.put (pickling diagnosed only if the put fails)
    stages:     put_payloads ─► a helper thread, stage by stage: put_stage ─► the stage's Payload
                (its model and arguments), made and put the same way ─► one Future per stage

A model the driver loaded is put and then dropped: only the object store holds it. Inline
(nothing is pickled) a model that would not pickle fails here as core would fail it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import ModelError

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .spec import PipelineSpec


def put_model(s: PipelineSpec, backend: Any) -> Any:
    """Build or read the model of spec `s`, and put it once (with stages: each stage's Payload,
    a list of Futures, see put_payloads)."""
    from .models import build_model, built_where_workers_fork, check_picklable

    if s.stages:
        return put_payloads(s, backend)
    if s.predict.fn is not None and not isinstance(s.predict.fn, str):
        check_picklable(s.predict.fn, "predict function")
    if built_where_workers_fork(s.model) and backend.name != "inline":
        built = _build(backend, build_model, s.model.factory, dict(s.model.args))
        if built is not None:
            return built
    return _put(backend, _loaded(s.model), "model")


def put_payloads(spec: PipelineSpec, backend: Any) -> list[Future]:
    """Each stage's model (built once, here) and arguments, put once: every task and actor
    of the stage maps the same bytes (one copy of the weights however many actors).

    Returns one Future per stage, filled in stage order by a helper thread: the stages
    before a big model start on the first shards while it is built and put."""
    import threading
    from concurrent.futures import Future

    futures: list[Future] = [Future() for _ in spec.stages]

    def put_all() -> None:
        for i, fut in enumerate(futures):
            try:
                fut.set_result(put_stage(spec, backend, i))
            except BaseException as exc:  # noqa: BLE001 - raised where the stage needs it
                for rest in futures[i:]:
                    rest.set_exception(exc)
                return

    threading.Thread(target=put_all, daemon=True, name="dataflow-put").start()
    return futures


def put_stage(spec: PipelineSpec, backend: Any, i: int) -> Any:
    """Stage `i`'s Payload (its model and arguments), built where the workers fork from or
    loaded here, put once."""
    from .models import build_payload, built_where_workers_fork, check_picklable
    from .plan import Payload, model_specs, payload_args

    st, mspec, args = spec.stages[i], model_specs(spec)[i], payload_args(spec)[i]
    if not isinstance(st.fn, str):
        check_picklable(st.fn, f"stage {st.name} fn")
    if built_where_workers_fork(mspec) and backend.name != "inline":
        built = _build(backend, build_payload, mspec.factory, dict(mspec.args), args)
        if built is not None:
            return built
    return _put(backend, Payload(model=None if mspec is None else _loaded(mspec), **args),
                f"stage {st.name} model and arguments")


def _loaded(mspec: Any) -> Any:
    """The model as the driver puts it: a factory's or a file's value, or a PerWorker recipe."""
    from .models import PerWorker, load_model

    source = load_model(mspec)
    return source if isinstance(source, PerWorker) else source.value


def _put(backend: Any, payload: Any, what: str) -> Any:
    """Put `payload` once; the caller drops its own reference, so the store holds the only copy."""
    from .models import check_picklable

    if backend.name == "inline":
        check_picklable(payload, what)  # nothing is pickled inline; fail as core would
    try:
        return backend.put(payload)
    except Exception:
        # Diagnose only on failure: the check costs a second pickling pass.
        check_picklable(payload, what)  # raises, naming the captured object
        raise


def _build(backend: Any, fn: Any, *args: Any) -> Any:
    """`backend.build(fn, *args)`: the model made where the workers are forked from, so they
    inherit it and it is written once (core.build). The factory's own error (a ModelError) is
    raised with its wording; None if it could not be made there for another reason (the spec or
    the model does not pickle, the process died): the caller then builds it here and puts it,
    as without a zygote, which raises the errors it always did (UnpicklableModelError naming the
    culprit)."""
    try:
        return backend.build(fn, *args)
    except ModelError as exc:
        cause = getattr(exc, "cause", None)   # core's TaskError keeps the factory's own error
        if isinstance(cause, ModelError):
            raise cause.with_traceback(None) from exc
        raise
    except Exception:  # noqa: BLE001 - made again here, where its error is diagnosed
        return None
