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
    _plan_and_put: plan (helper thread)  ║  _model_put: a factory's model: backend.build (core.build:
                                         ║  made where the workers fork from, inherited, written once)
                                         ║  others: load_model ─► put once (diagnose if it does not pickle)
    _execute:      _run.Execution: Executor.run (stages: maybe the StreamExecutor) over the
                   shards to do; with a file sink each worker writes its shard's part under a
                   temporary name and the driver commits it (rename and manifest: record_event),
                   so the driver never encodes output. The temporary files of a run that died
                   are removed by the next run (resume), a run's own by itself.

The backend starts first, so that the workers' imports run while the driver plans and builds
the model. A factory's model is made by the zygote the workers fork from, never in the driver;
one the driver loaded is put and then dropped: only the object store holds it. This module
keeps the public API and the order of a run; `_run.py` and `_model_put.py` hold the machinery.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from . import spec as spec_mod
from ._model_put import put_model
from ._run import (Execution, dnf_filters, feed, is_local, read_columns, record_event, start_backend,
                   start_recorder, write_html_report)
from ._run import stager as _stager
from .exceptions import RunError, SpecError
from .progress import Progress, Silent
from .summary import Summary


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
        self._execution: Execution | None = None  # the last run's or stream's, for _stage_report

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
        return read_columns(self.spec)

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
        if gen is None or not isinstance(src.parquet, str) or not is_local(src.parquet):
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
        return plan_shards(src.parquet, columns=self.read_columns, filters=dnf_filters(src.filters),
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
        recorder = start_recorder(s, token, store=bool(html_report))
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
                                    record_event(event, summary, progress, sink, recorder,
                                                 on_error=s.runtime.on_error)
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
                self.last_report = write_html_report(recorder.record, summary, html_report, finished)
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
        recorder = start_recorder(self.spec, token)
        self.last_record = recorder.record
        with self._session() as backend:
            shards, refs = self._plan_and_put(backend)
            self.last_plan = shards
            try:
                with contextlib.closing(self._execute(shards, refs, backend, token,
                                                      order_window=order_window)) as events:
                    for event in events:
                        feed(recorder, event)
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

    # -- the run's machinery (dataflow/_run.py, dataflow/_model_put.py) ---------------------
    @contextlib.contextmanager
    def _session(self, trace: str | os.PathLike | None = None) -> Iterator[Any]:
        """A started backend for the whole run (`_run.start_backend`: it starts first, so that
        the workers' imports overlap planning and building the model). `trace`: where the
        backend writes the session's timeline as it stops (`last_trace`)."""
        backend = start_backend(self.spec, trace)
        try:
            yield backend
        finally:
            backend.stop()
            written = getattr(backend, "trace_written", None)
            self.last_trace = Path(written) if written else None

    def _plan_and_put(self, backend: Any, progress: Progress | None = None) -> tuple[list, Any]:
        """Plan the shards in a helper thread (mostly imports and footer reads) while this thread
        builds the model and puts it: the two are independent, and both sit before the first task."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="dataflow-plan") as pool:
            planned = pool.submit(self.plan, progress)
            model_ref = put_model(self.spec, backend)
            return planned.result(), model_ref

    def _execute(self, shards: list, model_ref: Any, backend: Any, token: str,
                 stager: Any = None, order_window: int | None = None) -> Iterator[Any]:
        """The executor's events over `shards`; the execution stays for `_stage_report`."""
        self._execution = Execution(self.spec, backend, token, stager, order_window)
        return self._execution.events(shards, model_ref)

    def _stage_report(self) -> list[dict]:
        return self._execution.stage_report() if self._execution is not None else []


def _progress(progress: Progress | bool | None, report: str | None) -> Progress:
    if isinstance(progress, Progress):
        if progress.report is None:
            progress.report = report
        return progress
    return Progress(report=report) if progress else Silent(report=report)
