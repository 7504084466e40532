"""The plan: a validated spec as a list of stages, and the stages grouped into segments.

    PipelineSpec ─compile_stages─► [Stage, ...]  ─segments─► [Segment(tasks: s1+s2), Segment(pool: s3), Segment(tasks: s4)]
      stages: [...]                 one per step                 │ consecutive stateless stages with the same
      model: + predict: ─► one Stage (the shorthand)             │ resources and concurrency fuse into one task
                                                                 ▼ per shard; a class is an actor pool of its own

A YAML pipeline and a `Dataset` both compile here, so they run the same plan. `Stage` holds no
model object: what a worker needs (`Stage`, picklable and small) travels apart from what is put
once in the object store (the stage's `Payload`: its model and its large arguments).

Decisions here are pure functions: how stages fuse, how many actors a pool starts with, how much
CPU each actor reserves so that the task stages keep a slot, how many threads a stage's torch
(and BLAS) runs with in its worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["tasks", "pool"]


@dataclass(frozen=True)
class Stage:
    """One step, as the workers see it."""

    name: str
    fn: Any                           # "module:name", or the function / class itself
    kind: Kind                        # a function runs as tasks, a class as an actor pool
    batch_size: int | None = None     # None: the block as it comes (the first stage reads 65536 rows)
    batch_format: str = "numpy"
    timeout: float | None = None
    concurrency: int | tuple[int, int] | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: tuple = ()             # sorted (name, amount) pairs: hashable, comparable
    num_threads: int | None = None    # torch/BLAS threads in its worker; None: fitted to num_cpus
    has_model: bool = False
    # The one-stage shorthand (`model:` + `predict:`): the model is called the old way
    # (make_predictor), one output row per input row, with keep_columns and output_column.
    shorthand: bool = False
    keep_columns: tuple = ()
    output_column: str = "prediction"

    @property
    def threads(self) -> int:
        """The torch (and BLAS) threads its worker runs with (see `fitted_threads`)."""
        return fitted_threads(self.num_cpus, self.num_threads)

    @property
    def resource_key(self) -> tuple:
        return (self.num_cpus, self.num_gpus, self.resources, self.concurrency)


@dataclass
class Payload:
    """What a stage's workers share, put once: the model and the (possibly large) arguments."""

    model: Any = None
    fn_args: tuple = ()
    fn_kwargs: dict = field(default_factory=dict)
    constructor_args: tuple = ()
    constructor_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """Stages that run together: fused stateless stages in one task per shard, or one pool."""

    index: int
    kind: Kind
    stages: tuple[Stage, ...]

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.stages)

    @property
    def head(self) -> Stage:
        return self.stages[0]


def _fn_is_class(fn: Any) -> bool:
    if isinstance(fn, str):
        from .refs import resolve_ref

        fn = resolve_ref(fn)
    return isinstance(fn, type)


def by_name(fn: Any) -> Any:
    """`module:qualname` for a function or class importable under that name (it then travels to
    the workers by reference, and a Dataset's plan equals its YAML's); else the object itself."""
    if isinstance(fn, str):
        return fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return fn
    from .refs import resolve_ref

    try:
        return f"{module}:{qualname}" if resolve_ref(f"{module}:{qualname}") is fn else fn
    except (ValueError, ImportError):
        return fn


def compile_stages(spec: Any) -> list[Stage]:
    """The spec's steps as Stages (`spec` is a validated PipelineSpec)."""
    if not spec.stages:
        p = spec.predict
        return [Stage(name="predict", fn=p.fn, kind="tasks", batch_size=p.batch_size,
                      batch_format=p.batch_format, timeout=p.timeout, has_model=True, shorthand=True,
                      keep_columns=tuple(p.keep_columns), output_column=p.output_column)]
    out = []
    for st in spec.stages:
        out.append(Stage(
            name=st.name, fn=by_name(st.fn), kind="pool" if _fn_is_class(st.fn) else "tasks",
            batch_size=st.batch_size, batch_format=st.batch_format, timeout=st.timeout,
            concurrency=st.concurrency, num_cpus=st.num_cpus, num_gpus=st.num_gpus,
            resources=tuple(sorted(st.resources.items())), num_threads=st.num_threads,
            has_model=st.model is not None))
    return out


def model_specs(spec: Any) -> list[Any]:
    """Each stage's ModelSpec (or None), in stage order."""
    if not spec.stages:
        return [spec.model]
    return [st.model for st in spec.stages]


def payload_args(spec: Any) -> list[dict]:
    """Each stage's arguments (Payload fields besides the model), in stage order."""
    if not spec.stages:
        return [{}]
    return [dict(fn_args=tuple(st.fn_args), fn_kwargs=dict(st.fn_kwargs),
                 constructor_args=tuple(st.fn_constructor_args),
                 constructor_kwargs=dict(st.fn_constructor_kwargs)) for st in spec.stages]


def segments(stages: list[Stage], fuse: bool = True) -> list[Segment]:
    """Group consecutive stateless stages with the same resources (and concurrency) into one
    segment; each pool stage starts a segment of its own, and the stateless stages right after it
    that ask for nothing of their own (`rides_along`) run in its actors, after the class: the
    block is there already, so it makes no hop through the store. `fuse=False` gives one segment
    per stage."""
    groups: list[list[Stage]] = []
    for st in stages:
        last = groups[-1] if groups else None
        if fuse and last and st.kind == "tasks" and (
                last[0].kind == "tasks" and last[-1].resource_key == st.resource_key
                or last[0].kind == "pool" and rides_along(st, last[0])):
            last.append(st)
        else:
            groups.append([st])
    return [Segment(i, g[0].kind, tuple(g)) for i, g in enumerate(groups)]


def rides_along(stage: Stage, pool: Stage) -> bool:
    """A stateless stage that may run in the actors of the pool before it: it asks for no CPUs,
    GPUs, resources, concurrency or threads of its own (any of them keeps it in its own tasks),
    and has a timeout if the pool has one (else the pool's blocks would have no deadline)."""
    return (stage.kind == "tasks" and stage.num_cpus is None and not stage.num_gpus and not stage.resources
            and stage.concurrency is None and stage.num_threads is None
            and (pool.timeout is None or stage.timeout is not None))


def fitted_threads(num_cpus: float | None, num_threads: int | None = None) -> int:
    """Threads for torch's intra-op pool (and BLAS) in a stage's worker: `num_threads` when the
    stage gives it, else its share of the cores, `num_cpus` (1 when not given, as a task's
    default) rounded half up, at least 1. torch's own default is one thread per core in EVERY
    process: two workers on two cores then run four threads that fight over two cores (measured:
    0.49 of the limit on the ResNet-18 pipeline, issue 18)."""
    if num_threads is not None:
        return num_threads
    return max(1, math.floor((1.0 if num_cpus is None else num_cpus) + 0.5))


def pool_bounds(stage: Stage, workers: int) -> tuple[int, int]:
    """(min, max) actors: `concurrency` as an int is a fixed pool; none is [1, workers]."""
    c = stage.concurrency
    if c is None:
        return 1, max(1, workers)
    if isinstance(c, int):
        return c, c
    return int(c[0]), int(c[1])


def task_cpus(segs: list[Segment]) -> float:
    """CPU the largest task of the plan's task stages needs (a task's default: 1); 0 without any."""
    return max((1.0 if seg.head.num_cpus is None else seg.head.num_cpus
                for seg in segs if seg.kind == "tasks"), default=0.0)


def actor_cpus(stage: Stage, pool_max: int, total_cpus: float, reserved_elsewhere: float,
               task_cpus: float) -> float:
    """CPU each actor of a pool reserves in the session. An actor reserves CPU only when its stage
    asks (`num_cpus`), and never so much that the largest task of the task stages (`task_cpus`,
    see `task_cpus()`) cannot be scheduled: a pool as large as the machine (2 actors x 1 CPU on
    2 CPUs) would otherwise starve the stages before and after it, and the run would never
    finish (what Ray Data 2.60 does); so would a 2-CPU task beside pools holding 1 of 2 CPUs.
    The actors then share the CPUs with the tasks (the OS schedules them), which is what the
    user asked for."""
    want = stage.num_cpus or 0.0
    if not want:
        return 0.0
    room = total_cpus - reserved_elsewhere - task_cpus
    if want * pool_max <= room:
        return want
    return max(0.0, math.floor(100 * room / pool_max) / 100) if room > 0 else 0.0


def pool_target(actors: int, lo: int, hi: int, queued: int, busy: int, upstream_done: bool) -> int:
    """How many actors the pool should have now: grow by one while blocks wait and every actor
    is busy; shrink to what is busy once nothing more can come; else stay."""
    if queued > 0 and busy >= actors and actors < hi:
        return actors + 1
    if upstream_done and queued == 0 and actors > max(lo, busy):
        return max(lo, busy)
    return actors


def gpu_devices(index: int, num_gpus: float | None, total_gpus: int) -> list[int]:
    """The devices actor `index` of a pool sees: whole GPUs each, or a share of one (0.5: two
    actors per device)."""
    if not num_gpus or total_gpus <= 0:
        return []
    if num_gpus < 1:
        per_device = max(1, int(1 / num_gpus))
        return [(index // per_device) % total_gpus]
    n = int(math.ceil(num_gpus))
    return [(index * n + k) % total_gpus for k in range(n)]


def starved_stages(segs: list[Segment], total: dict, workers: int) -> list[str]:
    """Task stages that could never run because the pools hold all of a GPU or custom resource
    they need (CPU is shared out by `actor_cpus` instead). One message per stage."""
    held: dict[str, float] = {}
    for seg in segs:
        if seg.kind == "pool":
            n = pool_bounds(seg.head, workers)[1]
            for res, amount in (("GPU", seg.head.num_gpus or 0), *seg.head.resources):
                held[res] = held.get(res, 0) + amount * n
    out = []
    for seg in segs:
        if seg.kind != "tasks":
            continue
        for res, amount in (("GPU", seg.head.num_gpus or 0), *seg.head.resources):
            left = total.get(res, 0) - held.get(res, 0)
            if amount and amount > left:
                out.append(f"stage {seg.head.name} needs {amount:g} {res} per task, but the actor pools hold "
                           f"{held.get(res, 0):g} of the session's {total.get(res, 0):g}: it could never run; "
                           f"give the session more {res} or the pools less")
    return out
