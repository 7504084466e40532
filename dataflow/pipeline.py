"""`Pipeline`: a validated spec, and the run that carries it out.

    Pipeline.from_yaml / Pipeline(...)      spec validated here, before anything runs
        │
        ├─ plan()    source.generate (first use) ─► connectors.plan_shards ─► [Shard]
        │
        ├─ run()     open_sink ─► skip committed shards (resume) ─► _execute ─► one sink write per
        │            ShardDone (quarantine part first, then the part, whose commit marks the shard done)
        │
        └─ stream()  _execute ─► each shard's predictions, as they finish (nothing written)

    _session:      backend.start (workers forked from a zygote that imported the task's modules) ─► ... ─► backend.stop
    _plan_and_put: plan (helper thread)  ║  a factory's model: backend.build (core.build: made
                                         ║  where the workers fork from, inherited, written once)
                                         ║  others: load_model ─► put once (diagnose if it does not pickle)
    _execute:      Executor.run over the shards to do; with a file sink each worker writes its
                   shard's part under a temporary name and the driver commits it (rename and
                   manifest), so the driver never encodes output. The temporary files of a
                   run that died are removed by the next run (resume), a run's own by itself.

The backend starts first, so that the workers' imports run while the driver plans and builds
the model. A factory's model is made by the zygote the workers fork from, never in the driver;
one the driver loaded is put and then dropped: only the object store holds it.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from . import spec as spec_mod
from .exceptions import ModelError, RunError, SpecError
from .progress import Progress, Silent
from .summary import FailedShard, Summary


class Pipeline:
    """A DDSF pipeline: the same function (the model) over different data (the shards)."""

    def __init__(self, source: Any = None, model: Any = None, predict: Any = None, sink: Any = None,
                 runtime: Any = None, *, name: str | None = None, report: str | None = None,
                 stages: list | None = None, spec: spec_mod.PipelineSpec | None = None):
        self.spec = spec if spec is not None else spec_mod.from_python(
            source=source, model=model, predict=predict, sink=sink, runtime=runtime, name=name, report=report,
            stages=stages)
        self.last_summary: Summary | None = None
        self.last_plan: list | None = None      # the shards of the last run or stream
        self.last_stages: list[dict] = []       # per-stage figures of the last stream
        self.last_record = None                 # the recorder.RunRecord of the last run or stream
        self.last_report: Path | None = None    # the HTML report of the last run(html_report=...)
        self.last_trace: Path | None = None     # the task timeline of the last run(trace=...)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> "Pipeline":
        """Load and validate a pipeline file; `overrides` are `key.path=value` strings (`--set`)."""
        return cls(spec=spec_mod.load(path, overrides))

    def __repr__(self) -> str:
        from connectors.storage import redact

        src = self.spec.source.parquet
        src = redact(src) if isinstance(src, str) else [redact(u) for u in src]
        sink = redact(self.spec.sink.uri) if self.spec.sink else None
        return f"Pipeline(name={self.spec.name!r}, source={src!r}, sink={sink!r})"

    # -- planning ---------------------------------------------------------------------------
    @property
    def read_columns(self) -> list[str] | None:
        src, pred = self.spec.source, self.spec.predict
        if src.columns is None:
            return None
        keep = pred.keep_columns if not self.spec.stages else []
        return list(dict.fromkeys(list(src.columns) + list(keep)))

    def stages(self) -> list:
        """The plan: one `plan.Stage` per step (the shorthand is one stage)."""
        from .plan import compile_stages

        return compile_stages(self.spec)

    def segments(self) -> list:
        """The plan's stages grouped as they run: fused task stages, and actor pools."""
        from .plan import segments

        return segments(self.stages(), fuse=self.spec.runtime.fuse)

    def prepare_source(self, progress: Progress | None = None) -> None:
        """Run `source.generate` when the (local) source path does not exist yet."""
        src = self.spec.source
        gen = src.generate
        if gen is None or not isinstance(src.parquet, str) or not _is_local(src.parquet):
            return
        path = src.parquet.removeprefix("file://")
        if os.path.exists(path):
            return
        fn = spec_mod.resolve_ref(gen.factory) if isinstance(gen.factory, str) else gen.factory
        if progress:
            progress.line(f"source {src.parquet} is missing: generating it with {gen.factory}")
        fn(path, **gen.args)

    def plan(self, progress: Progress | None = None) -> list:
        """The shards the source splits into (generating the sample source on first use)."""
        from connectors import plan_shards

        self.prepare_source(progress)
        src = self.spec.source
        return plan_shards(src.parquet, columns=self.read_columns, filters=_filters(src.filters),
                           shard_by=src.shard_by, target_rows=src.target_rows,
                           storage_options=src.storage_options or None)

    def committed(self) -> dict[int, int]:
        """Shards already committed in the sink (shard index -> rows); {} if it does not exist.
        Reads only: a missing destination is not created."""
        s = self.spec.sink
        if s is None or s.mode != "resume":
            return {}
        import fsspec
        from connectors import open_sink

        try:
            fs, path = fsspec.core.url_to_fs(s.uri, **(s.storage_options or {}))
            if not fs.exists(path):
                return {}
        except Exception:  # unreachable destination: the run itself will report it
            return {}
        sink = open_sink(s.uri, format=s.format, mode="resume", storage_options=s.storage_options or None)
        try:
            return sink.committed()
        finally:
            sink.close()

    # -- running ----------------------------------------------------------------------------
    def run(self, *, restart: bool = False, progress: Progress | bool | None = None,
            html_report: str | os.PathLike | bool | None = None,
            trace: str | os.PathLike | None = None) -> Summary:
        """Run to the sink; returns the Summary. Raises RunError when a shard keeps failing with
        `on_error: fail` (its `.summary` tells what was done). Ctrl-C stops the run, keeps the
        committed shards, and re-raises KeyboardInterrupt: run again to resume.

        `html_report`: a path, or True for `.dataflow/reports/<pipeline>-<run id>.html` under the
        current folder: the run's HTML report (docs/report.md) is written there, also when the
        run fails or is interrupted, and its path kept in `last_report`.

        `trace`: a path where the session's task timeline (`core.timeline`, a Chrome trace that
        Perfetto opens) is written as the session ends, also when the run fails or is
        interrupted; its path is kept in `last_trace` (None if nothing was written: the inline
        backend runs no tasks)."""
        from connectors import open_sink

        s = self.spec
        if s.sink is None:
            raise SpecError("sink: run() needs a sink (an output URI); use stream() to get the "
                            "predictions without writing them")
        progress = _progress(progress, s.report)
        from connectors.storage import redact

        summary = Summary(name=s.name, status="done", output=redact(s.sink.uri))  # printed: no secrets
        self.last_summary = summary
        start = time.monotonic()
        mode = "overwrite" if restart else s.sink.mode
        token = uuid.uuid4().hex
        self.last_report = self.last_trace = None
        # Every run keeps its record (a few events per shard; its sampler is the run's one memory
        # sampler): Summary.stats() reads it, and the HTML report draws it when asked.
        recorder = self._recorder(token, store=bool(html_report))
        summary.record = self.last_record = recorder.record
        sink = stager = None
        finished = False
        try:
            with self._session(trace) as backend:
                try:
                    shards, model_ref = self._plan_and_put(backend, progress)
                    sink = open_sink(s.sink.uri, format=s.sink.format, mode=mode,
                                     storage_options=s.sink.storage_options or None)
                    try:
                        committed = sink.committed() if mode == "resume" else {}
                        if mode == "resume":
                            sink.discard_staged()  # what an interrupted run left half-written
                        stager = _stager(sink, backend, token)
                        todo = [sh for sh in shards if sh.index not in committed]
                        summary.shards = len(shards)
                        summary.shards_skipped = len(shards) - len(todo)
                        progress.start(s.name, len(shards), sum(sh.num_rows for sh in todo), summary.shards_skipped)
                        if todo:
                            with contextlib.closing(self._execute(todo, model_ref, backend, token, stager)) as events:
                                for event in events:
                                    self._record(event, summary, progress, sink, recorder)
                            summary.stages = self._stage_report()
                            progress.stages(summary.stages)
                    finally:
                        sink.close()
                except KeyboardInterrupt:
                    summary.status = "interrupted"
                    raise
                finally:
                    progress.close()
                    summary.wall_time = time.monotonic() - start
            finished = True
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                recorder.error(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if stager is not None:  # the session is over, its workers gone: nothing writes these now
                sink.discard_staged(token)
            status = summary.status if finished or summary.status == "interrupted" else "failed"
            recorder.finish(status)
            summary.peak_memory = recorder.memory.peak
            if html_report:
                self.last_report = _write_html_report(recorder.record, summary, html_report, finished)
        if summary.status == "failed":
            f = summary.failed[0]
            raise RunError(f"shard {f.index} ({f.path}) failed after {f.attempts} attempts: {f.error}", summary)
        return summary

    def stream(self, *, format: str = "pandas", with_index: bool = False,
               order_window: int | None = None) -> Iterator[Any]:
        """Each shard's predictions (a pandas DataFrame, or a pyarrow Table with
        `format="pyarrow"`) as soon as it is ready, in completion order; `(shard index, table)`
        pairs with `with_index=True`. Nothing is written to the sink. Breaking out of the loop
        cancels the remaining work. `order_window`: start a shard only while it is fewer than
        that many shards past the first one not yet yielded (Dataset.iter_batches(preserve_order=True))."""
        from .executor import ShardDone, ShardFailed

        if format not in ("pandas", "pyarrow"):
            raise ValueError(f'stream(format=...) must be "pandas" or "pyarrow", got {format!r}')
        self.last_stages = []
        token = uuid.uuid4().hex
        recorder = self._recorder(token)
        self.last_record = recorder.record
        with self._session() as backend:
            shards, refs = self._plan_and_put(backend)
            self.last_plan = shards
            try:
                with contextlib.closing(self._execute(shards, refs, backend, token,
                                                      order_window=order_window)) as events:
                    for event in events:
                        _feed(recorder, event)
                        if isinstance(event, ShardDone):
                            table = event.result.table
                            out = table.to_pandas() if format == "pandas" else table
                            yield (event.shard.index, out) if with_index else out
                        elif isinstance(event, ShardFailed) and self.spec.runtime.on_error == "fail":
                            raise RunError(f"shard {event.shard.index} ({event.shard.path}) failed after "
                                           f"{event.attempts} attempts: {event.error}")
            finally:
                self.last_stages = self._stage_report() if self.spec.stages else []
                recorder.finish("done")

    # -- internals --------------------------------------------------------------------------
    def _recorder(self, token: str, store: bool = False) -> Any:
        """The run's recorder, started. `store`: sample the object store too (for the report's
        memory chart; a call into core per tick, so only when the page is asked for)."""
        from .backends import store_stats
        from .recorder import RunRecorder

        stages = [st.name for st in self.spec.stages] if self.spec.stages else ["predict"]
        run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{token[:6]}"  # a name, sorts by start
        return RunRecorder(self.spec.name, run_id, stages=stages,
                           store_stats=store_stats if store else None).start()

    def _record(self, event: Any, summary: Summary, progress: Progress, sink: Any,
                recorder: Any = None) -> None:
        from .executor import ShardDone, ShardFailed, ShardRetry
        from .streaming import StagesUpdate

        if isinstance(event, StagesUpdate):  # the stages' live figures: progress lines only
            progress.stage_update(event.stages)
            return
        if recorder is not None:
            _feed(recorder, event)
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
            summary.status = "failed" if self.spec.runtime.on_error == "fail" else "partial"

    @contextlib.contextmanager
    def _session(self, trace: str | os.PathLike | None = None) -> Iterator[Any]:
        """A started backend for the whole run. It starts first, and the workers import what the
        tasks need right away, so that their start-up overlaps planning and building the model.
        `trace`: where the backend writes the session's timeline as it stops (`last_trace`)."""
        from .backends import make_backend

        rt = self.spec.runtime
        backend = make_backend(rt.backend, num_cpus=rt.num_cpus, num_gpus=rt.num_gpus,
                               resources=dict(rt.resources) or None,
                               object_store_memory=rt.object_store_memory, spill=rt.spill, address=rt.address,
                               **({"trace": trace} if trace is not None else {}))
        backend.start(self._worker_modules())
        try:
            yield backend
        finally:
            backend.stop()
            written = getattr(backend, "trace_written", None)
            self.last_trace = Path(written) if written else None

    def _worker_modules(self) -> list[str]:
        from .backends import TASK_MODULES

        from .plan import model_specs

        s = self.spec
        mods = list(TASK_MODULES)
        stages = self.stages()
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
        if s.sink is not None and not _is_local(s.sink.uri):  # workers write their parts there
            mods += ["fsspec", "s3fs"] if s.sink.uri.startswith(("s3://", "s3a://")) else ["fsspec"]
        if any(st.batch_format == "torch" for st in stages) or any(
                m is not None and (m.format in ("torch", "torchscript") or (m.path or "").endswith((".pt", ".pth")))
                for m in model_specs(s)):
            mods.append("torch")
        return list(dict.fromkeys(mods))

    def _plan_and_put(self, backend: Any, progress: Progress | None = None) -> tuple[list, Any]:
        """Plan the shards in a helper thread (mostly imports and footer reads) while this thread
        builds the model and puts it: the two are independent, and both sit before the first task."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="dataflow-plan") as pool:
            planned = pool.submit(self.plan, progress)
            model_ref = self._put_model(backend)
            return planned.result(), model_ref

    def _put_model(self, backend: Any) -> Any:
        """Build or read the model, and put it once (with stages: each stage's Payload, a list)."""
        from .models import PerWorker, build_model, built_where_workers_fork, check_picklable, load_model

        s = self.spec
        if s.stages:
            return self._put_payloads(backend)
        if s.predict.fn is not None and not isinstance(s.predict.fn, str):
            check_picklable(s.predict.fn, "predict function")
        if built_where_workers_fork(s.model) and backend.name != "inline":
            built = _build(backend, build_model, s.model.factory, dict(s.model.args))
            if built is not None:
                return built
        source = load_model(s.model)
        payload = source if isinstance(source, PerWorker) else source.value
        del source
        if backend.name == "inline":
            check_picklable(payload, "model")  # nothing is pickled inline; fail as core would
        try:
            # Once this returns, the store holds the model; the driver's own copy goes with `payload`.
            return backend.put(payload)
        except Exception:
            # Diagnose only on failure: the check costs a second pickling pass.
            check_picklable(payload, "model")  # raises, naming the captured object
            raise

    def _put_payloads(self, backend: Any) -> list:
        """Each stage's model (built once, here) and arguments, put once: every task and actor
        of the stage maps the same bytes (one copy of the weights however many actors).

        Returns one Future per stage, filled in stage order by a helper thread: the stages
        before a big model start on the first shards while it is built and put."""
        import threading
        from concurrent.futures import Future

        futures: list[Future] = [Future() for _ in self.spec.stages]

        def put_all() -> None:
            for i, fut in enumerate(futures):
                try:
                    fut.set_result(self._put_stage(backend, i))
                except BaseException as exc:  # noqa: BLE001 - raised where the stage needs it
                    for rest in futures[i:]:
                        rest.set_exception(exc)
                    return

        threading.Thread(target=put_all, daemon=True, name="dataflow-put").start()
        return futures

    def _put_stage(self, backend: Any, i: int) -> Any:
        from .models import PerWorker, build_payload, built_where_workers_fork, check_picklable, load_model
        from .plan import Payload, model_specs, payload_args

        st, mspec, args = self.spec.stages[i], model_specs(self.spec)[i], payload_args(self.spec)[i]
        if not isinstance(st.fn, str):
            check_picklable(st.fn, f"stage {st.name} fn")
        if built_where_workers_fork(mspec) and backend.name != "inline":
            built = _build(backend, build_payload, mspec.factory, dict(mspec.args), args)
            if built is not None:
                return built
        model = None
        if mspec is not None:
            source = load_model(mspec)
            model = source if isinstance(source, PerWorker) else source.value
            del source
        payload = Payload(model=model, **args)
        del model
        if backend.name == "inline":
            check_picklable(payload, f"stage {st.name} model and arguments")
        try:
            return backend.put(payload)  # the driver's own copy goes with `payload`
        except Exception:
            check_picklable(payload, f"stage {st.name} model and arguments")
            raise

    def _stage_report(self) -> list[dict]:
        ex = getattr(self, "_stream", None)
        if ex is not None:
            return ex.stage_report()
        return list(getattr(self, "_single_report", []))

    def _execute(self, shards: list, model_ref: Any, backend: Any, token: str,
                 stager: Any = None, order_window: int | None = None) -> Iterator[Any]:
        if self.spec.stages:
            yield from self._execute_stages(shards, model_ref, backend, token, stager, order_window)
            return
        yield from self._execute_shorthand(shards, model_ref, backend, token, stager, order_window)

    def _execute_stages(self, shards: list, payload_refs: list, backend: Any, token: str,
                        stager: Any = None, order_window: int | None = None) -> Iterator[Any]:
        """Stages: one task per shard when every stage fuses, else the streaming executor."""
        from ._task import SegmentTask, run_segment
        from .executor import Executor, default_max_in_flight
        from .plan import actor_cpus, pool_bounds, starved_stages, task_cpus
        from .streaming import StreamExecutor, segment_deadline

        s = self.spec
        rt, src = s.runtime, s.source
        segs = self.segments()
        self._stream = None
        self._check_session(backend)
        read = dict(batch_size=segs[0].head.batch_size or s.predict.batch_size, columns=self.read_columns,
                    filters=_filters(src.filters), storage_options=dict(src.storage_options))
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
            from .streaming import _task_options

            shared = tuple(fut.result() for fut in seg_payloads[0])  # every stage runs in each task
            executor = Executor(backend=backend, fn=run_segment, options=_task_options(seg),
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

    def _check_session(self, backend: Any) -> None:
        """Stages asking for what the running session can never have (a session started
        elsewhere, or a cluster): the same one-line errors as the spec's."""
        from .exceptions import SpecIssue

        if backend.name == "inline":
            return
        have = backend.resources()
        issues = []
        for i, st in enumerate(self.spec.stages):
            for key, res, amount in (("num_cpus", "CPU", st.num_cpus), ("num_gpus", "GPU", st.num_gpus),
                                     *(("resources." + k, k, v) for k, v in st.resources.items())):
                if amount and amount > have.get(res, 0):
                    issues.append(SpecIssue(f"asks for {amount:g} {res} per task or actor; the session has "
                                            f"{have.get(res, 0):g}", f"stages[{i}].{key}"))
        if issues:
            raise SpecError(issues)

    def _execute_shorthand(self, shards: list, model_ref: Any, backend: Any, token: str,
                           stager: Any = None, order_window: int | None = None) -> Iterator[Any]:
        from ._task import ShardTask, run_shard
        from .executor import Executor, default_max_in_flight, task_deadline

        s = self.spec
        rt, pred, src = s.runtime, s.predict, s.source
        model_columns = list(src.columns) if src.columns is not None else None

        def make_args(shard):
            return ShardTask(
                run_token=token, shard=shard, read_columns=self.read_columns,
                model_columns=model_columns, filters=_filters(src.filters),
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
            order_window=order_window)
        with contextlib.closing(executor.run(shards)) as events:
            yield from events


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


def _stager(sink: Any, backend: Any, token: str) -> Any:
    """Workers write their parts (the driver only commits them) when they can reach the
    destination: any non-local URI, or a local folder with workers on this machine."""
    from connectors import FileSink

    if not isinstance(sink, FileSink) or (sink.local and not backend.local):
        return None
    return sink.stager(token)


def _feed(recorder: Any, event: Any) -> None:
    """One shard event as the record's blocks: a done shard gives one block per stage (the
    worker's seconds place it, ending when the driver learnt of it); a retried or failed attempt
    one block under the pipeline's last stage (the event does not say which stage failed)."""
    from .executor import ShardDone, ShardFailed, ShardRetry
    from .streaming import stage_blocks

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


def _write_html_report(record: Any, summary: Summary, where: Any, finished: bool) -> Path | None:
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


def _progress(progress: Progress | bool | None, report: str | None) -> Progress:
    if isinstance(progress, Progress):
        if progress.report is None:
            progress.report = report
        return progress
    return Progress(report=report) if progress else Silent(report=report)


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _filters(filters: Any) -> Any:
    # YAML has no tuples; pyarrow's DNF filters want [(col, op, value), ...].
    if filters is None:
        return None
    return [tuple(f) if isinstance(f, list) and f and not isinstance(f[0], list)
            else [tuple(g) for g in f] for f in filters]
