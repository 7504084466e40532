"""The machinery of a `Pipeline`'s run or stream: its backend, its execution, and what each
event does.

    start_backend:  make_backend ─► backend.start(worker_modules): the workers, forked from a
                    zygote, import what the tasks need while the driver plans and puts the model
    Execution:      shorthand     Executor(run_shard) over the shards, one task per shard
                    stages, fused Executor(run_segment), every stage in each shard's one task
                    stages        StreamExecutor (streaming.py): segments of tasks and actor pools
                    ─► events (ShardDone / ShardRetry / ShardFailed, StagesUpdate); stage_report()
    record_event:   an event of run(): the quarantine part, then the part (staged by the worker
                    and committed here, or written here) ─► Summary, progress lines, the record
    feed:           an event as the record's blocks (RunRecorder), for stats and the HTML report

The model and payload puts are `_model_put.py`'s; the public API and the order of a run
(open the sink, skip what is committed, execute, close) stay in pipeline.py. Heavy modules
(pyarrow through the executors and tasks) are imported where a run needs them, not here.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .exceptions import RunError, SpecError
from .progress import Progress
from .summary import FailedShard, Summary

if TYPE_CHECKING:
    from .spec import PipelineSpec


# -- the spec as a run reads it ----------------------------------------------------------------
def read_columns(spec: PipelineSpec) -> list[str] | None:
    """The source's columns to read: the model's and the kept ones (None: all)."""
    src, pred = spec.source, spec.predict
    if src.columns is None:
        return None
    keep = pred.keep_columns if not spec.stages else []
    return list(dict.fromkeys(list(src.columns) + list(keep)))


def dnf_filters(filters: Any) -> Any:
    # YAML has no tuples; pyarrow's DNF filters want [(col, op, value), ...].
    if filters is None:
        return None
    return [tuple(f) if isinstance(f, list) and f and not isinstance(f[0], list)
            else [tuple(g) for g in f] for f in filters]


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


# -- the session -------------------------------------------------------------------------------
def start_backend(spec: PipelineSpec, trace: str | os.PathLike | None = None) -> Any:
    """The spec's backend, started: its workers import what the tasks need right away, so that
    their start-up overlaps planning and building the model. `trace`: where the backend writes
    the session's timeline as it stops."""
    from .backends import make_backend

    rt = spec.runtime
    backend = make_backend(rt.backend, num_cpus=rt.num_cpus, num_gpus=rt.num_gpus,
                           resources=dict(rt.resources) or None,
                           object_store_memory=rt.object_store_memory, spill=rt.spill, address=rt.address,
                           **({"trace": trace} if trace is not None else {}))
    backend.start(worker_modules(spec))
    return backend


def worker_modules(spec: PipelineSpec) -> list[str]:
    """What the workers import before the first task: the tasks' own modules, the models' and
    stages' modules, pandas or torch when a stage's batches are those, fsspec for a remote sink."""
    from .backends import TASK_MODULES

    from .plan import compile_stages, model_specs

    s = spec
    mods = list(TASK_MODULES)
    stages = compile_stages(s)
    for m in model_specs(s):
        if m is None:
            continue
        for ref in (m.factory, m.setup):
            if isinstance(ref, str):
                mods.append(ref.partition(":")[0])
        if m.instance is not None:
            mods.append(type(m.instance).__module__)
    for st in stages:
        if isinstance(st.fn, str):
            mods.append(st.fn.partition(":")[0])
        if st.batch_format == "pandas":
            mods.append("pandas")
    if s.sink is not None and not is_local(s.sink.uri):  # workers write their parts there
        mods += ["fsspec", "s3fs"] if s.sink.uri.startswith(("s3://", "s3a://")) else ["fsspec"]
    models = [m for m in model_specs(s) if m is not None]
    if any(st.batch_format == "torch" for st in stages) or any(
            m.format in ("torch", "torchscript") or (m.path or "").endswith((".pt", ".pth")) for m in models):
        mods.append("torch")
    if any(m.format == "safetensors" or (m.path or "").endswith(".safetensors") for m in models):
        # mapped with safetensors.torch when torch is installed (weights.py): imported once here,
        # not into each worker's private memory (~0.15 GB each); skipped when it is not installed
        mods += ["torch", "safetensors.torch"]
    return list(dict.fromkeys(mods))


def start_recorder(spec: PipelineSpec, token: str, store: bool = False) -> Any:
    """The run's recorder, started. `store`: sample the object store too (for the report's
    memory chart; a call into core per tick, so only when the page is asked for)."""
    from .backends import store_stats
    from .recorder import RunRecorder

    stages = [st.name for st in spec.stages] if spec.stages else ["predict"]
    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{token[:6]}"  # a name, sorts by start
    return RunRecorder(spec.name, run_id, stages=stages,
                       store_stats=store_stats if store else None).start()


def stager(sink: Any, backend: Any, token: str) -> Any:
    """Workers write their parts (the driver only commits them) when they can reach the
    destination: any non-local URI, or a local folder with workers on this machine."""
    from connectors import FileSink

    if not isinstance(sink, FileSink) or (sink.local and not backend.local):
        return None
    return sink.stager(token)


# -- the execution -----------------------------------------------------------------------------
class Execution:
    """One run's or stream's work over the shards to do, on a started backend: `events()`
    yields the executor's events; `stage_report()` then gives the stages' figures ([] for the
    shorthand, and for fused stages until their last shard is in)."""

    def __init__(self, spec: PipelineSpec, backend: Any, token: str, stager: Any = None,
                 order_window: int | None = None):
        self.spec, self.backend, self.token = spec, backend, token
        self.stager, self.order_window = stager, order_window
        self._stream = None              # the StreamExecutor, when the stages stream
        self._single_report: list[dict] = []

    def events(self, shards: list, model_ref: Any) -> Iterator[Any]:
        if self.spec.stages:
            yield from self._execute_stages(shards, model_ref)
            return
        yield from self._execute_shorthand(shards, model_ref)

    def stage_report(self) -> list[dict]:
        if self._stream is not None:
            return self._stream.stage_report()
        return list(self._single_report)

    def _execute_stages(self, shards: list, payload_refs: list) -> Iterator[Any]:
        """Stages: one task per shard when every stage fuses, else the streaming executor."""
        from ._stream_state import segment_deadline, task_options
        from ._task import SegmentTask, run_segment
        from .executor import Executor, default_max_in_flight
        from .plan import actor_cpus, compile_stages, pool_bounds, segments, starved_stages, task_cpus
        from .streaming import StreamExecutor

        s, backend, token, stager, order_window = self.spec, self.backend, self.token, self.stager, self.order_window
        rt, src = s.runtime, s.source
        segs = segments(compile_stages(s), fuse=rt.fuse)
        self._stream = None
        check_session(s, backend)
        read = dict(batch_size=segs[0].head.batch_size or s.predict.batch_size, columns=read_columns(s),
                    filters=dnf_filters(src.filters), storage_options=dict(src.storage_options))
        by_stage = {st.name: fut for st, fut in zip(s.stages, payload_refs)}
        seg_payloads = [[by_stage[st.name] for st in seg.stages] for seg in segs]

        def make_task(shard, seg):
            last = seg.index == len(segs) - 1
            return SegmentTask(run_token=token, shard=shard, stages=seg.stages, on_error=rt.on_error,
                               read=read if seg.index == 0 else None, last=last,
                               stager=stager if last else None)

        workers = backend.workers()
        max_in_flight = rt.max_in_flight or default_max_in_flight(workers)
        if len(segs) == 1 and segs[0].kind == "tasks":
            seg = segs[0]
            if isinstance(seg.head.concurrency, int):
                max_in_flight = seg.head.concurrency
            shared = tuple(fut.result() for fut in seg_payloads[0])  # every stage runs in each task
            executor = Executor(backend=backend, fn=run_segment, options=task_options(seg),
                                make_args=lambda sh: make_task(sh, seg),
                                model_ref=None, shared=shared, max_in_flight=max_in_flight,
                                max_retries=rt.max_retries, fail_fast=rt.on_error == "fail",
                                order_window=order_window, deadline_of="timeout x batches",
                                deadline_what=f"stage {seg.name}: ",
                                deadline_for=lambda sh: segment_deadline(seg, sh.num_rows, read["batch_size"],
                                                                         rt.on_error == "quarantine"))
            stats = {st.name: [0, 0, 0.0, 0.0, 0] for st in seg.stages}
            pids: set = set()
            with contextlib.closing(executor.run(shards)) as events:
                for event in events:
                    r = getattr(event, "result", None)
                    if r is not None:
                        pids.add(r.pid)
                        for name, v in r.stage_stats.items():
                            stats[name] = [a + b for a, b in zip(stats[name], v)]
                    yield event
            self._single_report = [
                {"name": st.name, "kind": "tasks", "segment": 0, "fused_with": [x.name for x in seg.stages if x is not st],
                 "rows_in": stats[st.name][0], "rows_out": stats[st.name][1], "blocks": len(shards),
                 "busy_seconds": round(stats[st.name][2], 3), "actors": 0, "workers": len(pids),
                 "backpressure": False} for st in seg.stages]
            return
        total = backend.resources()
        starved = starved_stages(segs, total, workers)
        if starved:
            raise RunError(starved[0])
        tasks_need = task_cpus(segs)
        pools = [seg for seg in segs if seg.kind == "pool"]
        reserved = {}
        used = 0.0
        for seg in pools:
            hi = pool_bounds(seg.head, workers)[1]
            reserved[seg.index] = actor_cpus(seg.head, hi, total.get("CPU", 1.0), used, tasks_need)
            used += reserved[seg.index] * hi

        def pool_options(seg):
            st = seg.head
            opts: dict = {"num_cpus": reserved.get(seg.index, 0.0)}
            if st.num_gpus:
                opts["num_gpus"] = st.num_gpus
            if st.resources:
                opts["resources"] = dict(st.resources)
            return opts

        self._stream = StreamExecutor(
            backend=backend, segments=segs, payloads=seg_payloads, make_task=make_task,
            max_in_flight=max_in_flight, max_retries=rt.max_retries, fail_fast=rt.on_error == "fail",
            run_token=token, pool_options=pool_options, total_gpus=int(total.get("GPU", 0)), workers=workers,
            order_window=order_window)
        with contextlib.closing(self._stream.run(shards)) as events:
            yield from events

    def _execute_shorthand(self, shards: list, model_ref: Any) -> Iterator[Any]:
        from ._task import ShardTask, run_shard
        from .executor import Executor, default_max_in_flight, task_deadline

        s, backend, token, stager = self.spec, self.backend, self.token, self.stager
        rt, pred, src = s.runtime, s.predict, s.source
        model_columns = list(src.columns) if src.columns is not None else None
        columns = read_columns(s)

        def make_args(shard):
            return ShardTask(
                run_token=token, shard=shard, read_columns=columns,
                model_columns=model_columns, filters=dnf_filters(src.filters),
                storage_options=dict(src.storage_options), batch_size=pred.batch_size,
                batch_format=pred.batch_format, keep_columns=list(pred.keep_columns),
                output_column=pred.output_column, timeout=pred.timeout, on_error=rt.on_error,
                predict_fn=pred.fn, stager=stager)

        executor = Executor(
            backend=backend, fn=run_shard, make_args=make_args, model_ref=model_ref,
            max_in_flight=rt.max_in_flight or default_max_in_flight(backend.workers()),
            max_retries=rt.max_retries, fail_fast=rt.on_error == "fail",
            deadline_for=lambda sh: task_deadline(pred.timeout, sh.num_rows, pred.batch_size,
                                                  rt.on_error == "quarantine"),
            order_window=self.order_window)
        with contextlib.closing(executor.run(shards)) as events:
            yield from events


def check_session(spec: PipelineSpec, backend: Any) -> None:
    """Stages asking for what the running session can never have (a session started
    elsewhere, or a cluster): the same one-line errors as the spec's."""
    from .exceptions import SpecIssue

    if backend.name == "inline":
        return
    have = backend.resources()
    issues = []
    for i, st in enumerate(spec.stages):
        for key, res, amount in (("num_cpus", "CPU", st.num_cpus), ("num_gpus", "GPU", st.num_gpus),
                                 *(("resources." + k, k, v) for k, v in st.resources.items())):
            if amount and amount > have.get(res, 0):
                issues.append(SpecIssue(f"asks for {amount:g} {res} per task or actor; the session has "
                                        f"{have.get(res, 0):g}", f"stages[{i}].{key}"))
    if issues:
        raise SpecError(issues)


# -- what an event does ------------------------------------------------------------------------
def record_event(event: Any, summary: Summary, progress: Progress, sink: Any, recorder: Any = None, *,
                 on_error: str) -> None:
    """One event of run(): a done shard's parts to the sink, then the Summary and the progress
    lines; a StagesUpdate only to the progress lines. `on_error`: the runtime's (a failed shard
    fails the run, or leaves it partial)."""
    from .executor import ShardDone, ShardFailed, ShardRetry
    from .streaming import StagesUpdate

    if isinstance(event, StagesUpdate):  # the stages' live figures: progress lines only
        progress.stage_update(event.stages)
        return
    if recorder is not None:
        feed(recorder, event)
    if isinstance(event, ShardDone):
        r = event.result
        # The quarantine part first: the part's commit is what marks the shard done, so a
        # crash in between redoes the shard and rewrites both, the same.
        if r.quarantine is not None and r.quarantine.num_rows:
            sink.write_quarantine(r.index, r.quarantine)
            summary.rows_quarantined += r.quarantine.num_rows
            summary.quarantined_shards.append(r.index)
            summary.status = "partial" if summary.status == "done" else summary.status
        if r.staged is not None:
            # The worker wrote it under a temporary name; quick parts share manifest writes.
            sink.commit_staged(r.staged, defer_manifest=True)
        else:
            sink.write_part(r.index, r.table)
        summary.rows += r.rows
        summary.shards_done += 1
        progress.shard_done(r.index, r.rows_in, r.rows, r.seconds, r.sums, r.rows_quarantined)
    elif isinstance(event, ShardRetry):
        progress.shard_retry(event.shard.index, event.attempt, event.error)
    elif isinstance(event, ShardFailed):
        summary.failed.append(FailedShard(event.shard.index, event.shard.path, event.error, event.attempts))
        progress.shard_failed(event.shard.index, event.attempts, event.error)
        summary.status = "failed" if on_error == "fail" else "partial"


def feed(recorder: Any, event: Any) -> None:
    """One shard event as the record's blocks: a done shard gives one block per stage (the
    worker's seconds place it, ending when the driver learnt of it); a retried or failed attempt
    one block under the pipeline's last stage (the event does not say which stage failed)."""
    from .executor import ShardDone, ShardFailed, ShardRetry
    from ._stream_state import stage_blocks

    sh = event.shard
    if isinstance(event, ShardDone):
        r = event.result
        blocks = r.stage_blocks or stage_blocks(r.stage_stats, r.pid, r.peak_memory, time.perf_counter())
        last = len(blocks) - 1
        for i, b in enumerate(blocks):
            recorder.block(b.stage, sh.index, attempt=event.attempts if i == last else 1,
                           outcome="quarantined" if r.rows_quarantined and i == last else "ok",
                           end=recorder.at(b.end), seconds=b.seconds, path=sh.path,
                           worker=b.pid or None, pid=b.pid, rows_in=b.rows_in, rows_out=b.rows_out,
                           bytes_out=b.bytes_out, cpu_seconds=b.cpu_seconds,
                           peak_memory=b.peak_memory or None, error=r.first_error if i == last else "")
        return
    stage = recorder.record.stages[-1]
    if isinstance(event, ShardRetry):
        recorder.block(stage, sh.index, attempt=event.attempt, outcome="retried", path=sh.path,
                       error=event.error)
    elif isinstance(event, ShardFailed):
        recorder.block(stage, sh.index, attempt=event.attempts, outcome="failed", path=sh.path,
                       error=event.error)


def write_html_report(record: Any, summary: Summary, where: Any, finished: bool) -> Path | None:
    """Write the finished record's page. When the run is stopping on an exception, a report
    that cannot be written must not hide that exception: it is skipped."""
    from .report import default_report_path, write_report

    path = (default_report_path(os.getcwd(), record.pipeline, record.run_id) if where is True
            else Path(where))
    try:
        return write_report(record, {**summary.to_dict(), "status": record.status}, path)
    except OSError:
        if finished:
            raise
        return None
