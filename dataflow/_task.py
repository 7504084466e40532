"""What runs in a worker: one shard through a segment of the plan (one or more fused stages).

    iter_batches(shard) ─► RecordBatch ─► to_format ─► predictor (timeout) ─► to_table (+ keep columns)
                                              │ raises
                                              ├─ on_error fail/skip: PredictError (shard, rows) ─► driver retries / reports
                                              └─ on_error quarantine: bisect the batch down to the rows that fail;
                                                 those rows (+ _error, _shard, _path, _row) become the quarantine table

A segment of several stages (plan.Segment) does the same per batch, stage after stage
(`run_segment`): the first segment reads the shard, the others take the block the previous
segment returned through the object store; every segment but the last returns
(BlockMeta, block) as two objects, so the driver reads the small meta and hands the block's ref on
without touching it. An actor-pool segment runs the same code in a `StageActor`.

The predictor (model + predict.fn) is built once per worker per run and cached here, keyed by the
run's token: a callable class's __init__ or a `setup` function runs once per worker, not per shard.
With a file sink the worker writes the shard's part under a temporary name (`task.stager`) and
returns only its name; the driver commits it, once, as the shard's one part (a retried shard's
earlier attempt is never committed). Otherwise (`stream()`, a memory sink, or a local sink on
a cluster) the predictions return to the driver as one Arrow table, through the object store.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .batches import (add_columns, as_block, block_bytes, block_format, block_rows, block_table, column_sums,
                      concat_blocks, slice_block, take_rows, to_format, to_table)
from .exceptions import BatchTimeoutError, PredictError
from .models import PerWorker, make_predictor


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs besides the model; small and picklable."""

    run_token: str
    shard: Any                      # connectors.Shard
    read_columns: list[str] | None  # model columns + keep columns
    model_columns: list[str] | None
    filters: Any
    storage_options: dict
    batch_size: int
    batch_format: str
    keep_columns: list[str]
    output_column: str
    timeout: float | None
    on_error: str
    predict_fn: Any                 # None, "module:function", or a callable
    stager: Any = None              # connectors.PartStager: write the part here, return its name


@dataclass
class ShardResult:
    index: int
    table: pa.Table | None          # None once staged
    staged: Any = None              # connectors.StagedPart, for the driver to commit
    rows_out: int = 0
    quarantine: pa.Table | None = None
    rows_in: int = 0
    rows_quarantined: int = 0
    sums: dict = field(default_factory=dict)
    seconds: float = 0.0
    pid: int = 0
    first_error: str = ""
    stage_stats: dict = field(default_factory=dict)  # stage name -> STAT_FIELDS
    peak_memory: int = 0                             # the worker's peak RSS so far, bytes
    # Filled by the driver: every segment's per-stage figures for this shard (streaming.StageBlock).
    stage_blocks: list = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.rows_out


# What a worker measures per stage per block, summed over the block's batches.
STAT_FIELDS = ("rows_in", "rows_out", "seconds", "cpu_seconds", "bytes_out")


def _new_stats() -> list:
    return [0, 0, 0.0, 0.0, 0]


def peak_rss() -> int:
    """This process's peak RSS so far, in bytes (Linux reports KiB; what Ray Data's stats call
    peak heap memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_CACHE: dict[str, Any] = {}


def _predictor(task: ShardTask, model: Any):
    if _CACHE.get("token") != task.run_token:
        _CACHE.clear()  # a new run: drop the last run's model (and its shared-memory mapping)
        if isinstance(model, PerWorker):
            model = model.build()
        _CACHE.update(token=task.run_token, predictor=make_predictor(model, task.predict_fn))
    return _CACHE["predictor"]


def run_shard(task: ShardTask, model: Any) -> ShardResult:
    """Predict one shard; the task function every backend runs."""
    from connectors import iter_batches

    start, cpu_start = time.perf_counter(), time.process_time()
    predictor = _predictor(task, model)
    shard = task.shard
    tables: list[pa.Table] = []
    bad: list[pa.Table] = []
    first_error = ""
    offset = 0
    rows_in = 0
    for rb in iter_batches(shard, batch_size=task.batch_size, columns=task.read_columns,
                           filters=task.filters, storage_options=task.storage_options):
        if isinstance(rb, pa.Table):
            rb = rb.combine_chunks().to_batches()[0] if rb.num_rows else pa.RecordBatch.from_pylist([], schema=rb.schema)
        n = rb.num_rows
        rows_in += n
        try:
            tables.append(_predict(task, predictor, rb))
        except Exception as exc:
            if task.on_error != "quarantine":
                # The shard and its file are reported with this error by the driver.
                raise PredictError(f"rows {offset}-{offset + n - 1}: {_describe(exc)}", shard.index) from exc
            good, failed = _bisect(task, predictor, rb, exc)
            tables += good
            if failed:
                first_error = first_error or failed[0][1]
                bad.append(_quarantine_rows(task, rb, offset, failed))
        offset += n
    table = _concat(tables, task)
    quarantine = pa.concat_tables(bad) if bad else None
    sums = column_sums(table)
    seconds = time.perf_counter() - start
    stats = [rows_in, table.num_rows, seconds, time.process_time() - cpu_start, table.nbytes]
    staged = task.stager.write(shard.index, table) if task.stager is not None else None
    return ShardResult(
        index=shard.index, table=None if staged else table, staged=staged,
        rows_out=table.num_rows, quarantine=quarantine, rows_in=rows_in,
        rows_quarantined=quarantine.num_rows if quarantine is not None else 0,
        sums=sums, seconds=seconds, pid=os.getpid(),
        first_error=first_error, stage_stats={"predict": stats}, peak_memory=peak_rss())


def _call_batch(fn: Any, batch: Any, batch_format: str, timeout: float | None) -> Any:
    """One call of a stage (or the model) on a batch; torch batches run under inference_mode."""
    if batch_format != "torch":
        return call_with_timeout(fn, batch, timeout)
    import torch

    with torch.inference_mode():
        return call_with_timeout(fn, batch, timeout)


def _predict(task: ShardTask, predictor, rb: pa.RecordBatch) -> pa.Table:
    model_view = rb.select(task.model_columns) if task.model_columns else rb
    batch = to_format(model_view, task.batch_format)
    output = _call_batch(predictor, batch, task.batch_format, task.timeout)
    table = to_table(output, rb.num_rows, task.output_column)
    return add_columns(table, rb, task.keep_columns)


def _bisect(task: ShardTask, predictor, rb: pa.RecordBatch, exc: BaseException,
            base: int = 0) -> tuple[list[pa.Table], list[tuple[int, str]]]:
    """Split a failing batch in halves until the failing rows are alone.

    Returns the predictions of the rows that passed (in input order) and (row, error) pairs with
    row positions relative to `rb`. k bad rows cost O(k log n) calls. A timeout is not bisected:
    each half could time out again, so the whole batch is quarantined at once."""
    if rb.num_rows <= 1 or isinstance(exc, BatchTimeoutError):
        text = _describe(exc)
        return [], [(base + j, text) for j in range(rb.num_rows)]
    mid = rb.num_rows // 2
    good: list[pa.Table] = []
    failed: list[tuple[int, str]] = []
    for part, off in ((rb.slice(0, mid), 0), (rb.slice(mid), mid)):
        try:
            good.append(_predict(task, predictor, part))
        except Exception as part_exc:
            g, f = _bisect(task, predictor, part, part_exc, base + off)
            good += g
            failed += f
    return good, failed


def _quarantine_rows(task: ShardTask, rb: pa.RecordBatch, offset: int,
                     failed: list[tuple[int, str]]) -> pa.Table:
    rows = rb.take(pa.array([r for r, _ in failed], pa.int64()))
    t = pa.Table.from_batches([rows])
    n = len(failed)
    t = t.append_column("_error", pa.array([e for _, e in failed], pa.string()))
    t = t.append_column("_stage", pa.array(["predict"] * n, pa.string()))  # the shorthand's one stage
    t = t.append_column("_shard", pa.array([task.shard.index] * n, pa.int64()))
    t = t.append_column("_path", pa.array([task.shard.path] * n, pa.string()))
    return t.append_column("_row", pa.array([offset + r for r, _ in failed], pa.int64()))


def _concat(tables: list[pa.Table], task: ShardTask) -> pa.Table:
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PredictError(f"shard {task.shard.index}: predict returned batches with different "
                           f"columns or types ({exc}); return the same columns for every batch",
                           task.shard.index) from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Alarm(BaseException):
    """Raised by SIGALRM inside the model; a BaseException so `except Exception` in model code
    cannot swallow it."""


def call_with_timeout(fn, arg, timeout: float | None):
    """fn(arg), bounded by `timeout` seconds. In the main thread a SIGALRM interrupts the call
    (the Python code of the model, or a blocking system call); elsewhere the call runs in a helper
    thread that we stop waiting for (it cannot be killed, the driver's deadline backs this up)."""
    if timeout is None:
        return fn(arg)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            raise _Alarm()

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn(arg)
        except _Alarm:
            raise BatchTimeoutError(f"a batch ran longer than predict.timeout ({timeout:g} s)") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn(arg)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True, name="dataflow-predict")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise BatchTimeoutError(f"a batch ran longer than predict.timeout ({timeout:g} s)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------------------------------------
# threads: each stage's worker runs torch (and BLAS) with its share of the cores

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_applied_threads: int | None = None   # what this process last applied (a worker runs many stages)


def apply_threads(n: int, needs_torch: bool = False) -> None:
    """Fit this worker's threads to `n` (plan.fitted_threads), before a stage is built or runs.

    The variables reach the libraries loaded from now on: torch imported by the stage itself
    reads OMP_NUM_THREADS when it starts. torch already imported (by the model's unpickling, the
    worker's preimports) is set directly; a stage that needs torch (batch_format torch) imports
    it here; any other stage never pays for a torch import. Set once per change: a stage that
    calls torch.set_num_threads itself (in its constructor, say) keeps its own choice. numpy's
    own BLAS, loaded in every worker before any stage, keeps the threads it started with; the
    inline backend runs the stages in the driver, whose threads (and environment) are then set."""
    global _applied_threads
    if _applied_threads == n:
        return
    _applied_threads = n
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    if needs_torch or "torch" in sys.modules:
        import torch  # already loaded (or the stage needs it): no import cost paid for others

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _apply_stage_threads(stage: Any) -> None:
    if not stage.shorthand:  # the shorthand (model: + predict:) keeps its workers' defaults
        apply_threads(stage.threads, needs_torch=stage.batch_format == "torch")


# ---------------------------------------------------------------------------------------------
# segments: one or more stages over a shard's block


@dataclass(frozen=True)
class SegmentTask:
    """What a segment needs besides its stages' payloads; small and picklable."""

    run_token: str
    shard: Any                      # connectors.Shard
    stages: tuple                   # plan.Stage, fused in this segment
    on_error: str
    read: dict | None = None        # the first segment: iter_batches keywords (columns, filters, ...)
    last: bool = True               # the last segment writes (stager) or returns the table
    stager: Any = None


@dataclass
class BlockMeta:
    """What the driver learns of an intermediate block (the block itself stays in the store)."""

    index: int
    rows_in: int
    rows_out: int
    quarantine: pa.Table | None
    first_error: str
    stage_stats: dict               # stage name -> STAT_FIELDS
    seconds: float
    pid: int
    peak_memory: int = 0


class _StageFn:
    """One stage's callable, built once per worker (or actor) per run."""

    def __init__(self, stage: Any, payload: Any):
        from .refs import resolve_ref

        self.stage = stage
        _apply_stage_threads(stage)  # before the model is built or the constructor runs
        model = payload.model if payload is not None else None
        if isinstance(model, PerWorker):
            model = model.build()
        if stage.shorthand:
            self.call = make_predictor(model, stage.fn)
            self.args, self.kwargs = (), {}
            return
        fn = resolve_ref(stage.fn) if isinstance(stage.fn, str) else stage.fn
        self.args, self.kwargs = tuple(payload.fn_args), dict(payload.fn_kwargs)
        head = (model,) if stage.has_model else ()
        if stage.kind == "pool":
            try:
                self.call = fn(*head, *payload.constructor_args, **payload.constructor_kwargs)
            except Exception as exc:
                raise StageInitError(f"stage {stage.name}: {getattr(fn, '__qualname__', fn)}(...) raised "
                                     f"{_describe(exc)}") from exc
        else:
            self.call = functools.partial(fn, *head) if head else fn

    def __call__(self, batch: Any) -> Any:
        if self.args or self.kwargs:
            return self.call(batch, *self.args, **self.kwargs)
        return self.call(batch)


class StageInitError(PredictError):
    """A pool's constructor raised: the pool cannot start."""


def _stage_fns(task: SegmentTask, payloads: tuple) -> list[_StageFn]:
    key = (task.run_token, tuple(st.name for st in task.stages))
    if _CACHE.get("token") != task.run_token:
        _CACHE.clear()  # a new run: drop the last run's models
        _CACHE["token"] = task.run_token
    fns = _CACHE.get(key)
    if fns is None:
        fns = _CACHE[key] = [_StageFn(st, p) for st, p in zip(task.stages, payloads)]
    return fns


def run_segment(task: SegmentTask, block: Any, *payloads: Any) -> Any:
    """A segment over one shard: read it (first segment) or take the block the previous segment
    made, run each stage, and return the ShardResult (last segment) or (BlockMeta, block)."""
    start = time.perf_counter()
    fns = _stage_fns(task, payloads)
    return process(task, fns, block, start)


def process(task: SegmentTask, fns: list, block: Any, start: float) -> Any:
    from connectors import iter_batches

    stats = {st.name: _new_stats() for st in task.stages}
    bad: list[pa.Table] = []
    errors: list[str] = []
    outs: list = []
    if task.read is not None:
        batches = iter_batches(task.shard, **task.read)
        offset = rows_in = 0
        for rb in batches:
            if isinstance(rb, pa.Table):
                rb = pa.Table.from_batches(rb.combine_chunks().to_batches()) if rb.num_rows else rb
            else:
                rb = pa.Table.from_batches([rb])
            rows_in += rb.num_rows
            outs.append(_chain(task, fns, rb, offset, stats, bad, errors))
            offset += rb.num_rows
    else:
        rows_in = block_rows(block)
        outs.append(_chain(task, fns, block, 0, stats, bad, errors))
    out = concat_blocks([o for o in outs if o is not None and block_rows(o)] or [o for o in outs if o is not None][:1])
    quarantine = pa.concat_tables(bad, promote_options="permissive") if bad else None
    seconds = time.perf_counter() - start
    if not task.last:
        meta = BlockMeta(task.shard.index, rows_in, block_rows(out), quarantine,
                         errors[0] if errors else "", stats, seconds, os.getpid(), peak_rss())
        return meta, out
    table = block_table(out) if outs else pa.table({})
    sums = column_sums(table)
    staged = task.stager.write(task.shard.index, table) if task.stager is not None else None
    return ShardResult(index=task.shard.index, table=None if staged else table, staged=staged,
                       rows_out=table.num_rows, quarantine=quarantine, rows_in=rows_in,
                       rows_quarantined=quarantine.num_rows if quarantine is not None else 0,
                       sums=sums, seconds=seconds, pid=os.getpid(),
                       first_error=errors[0] if errors else "", stage_stats=stats, peak_memory=peak_rss())


def _chain(task: SegmentTask, fns: list, block: Any, offset: int, stats: dict, bad: list,
           errors: list) -> Any:
    """One block through every stage of the segment, each in its own batch size."""
    for fn in fns:
        st = fn.stage
        _apply_stage_threads(st)  # fused stages, and a worker's other segments, may differ
        t0, c0 = time.perf_counter(), time.process_time()
        n = block_rows(block)
        size = st.batch_size or n or 1
        parts = []
        for lo in range(0, max(n, 1), size):
            chunk = slice_block(block, lo, min(n, lo + size)) if n > size else block
            parts.append(_stage_batch(task, fn, chunk, offset + lo if st is task.stages[0] else lo, bad, errors))
        parts = [p for p in parts if p is not None]
        block = concat_blocks(parts) if parts else None
        s = stats[st.name]
        s[0] += n
        s[1] += block_rows(block) if block is not None else 0
        s[2] += time.perf_counter() - t0
        s[3] += time.process_time() - c0
        s[4] += block_bytes(block)
        if block is None:
            return None
    return block


def _stage_batch(task: SegmentTask, fn: _StageFn, chunk: Any, offset: int, bad: list, errors: list) -> Any:
    try:
        return _call_stage(fn, chunk)
    except Exception as exc:
        st = fn.stage
        rows = block_rows(chunk)
        if task.on_error != "quarantine":
            where = f"stage {st.name}: " if not st.shorthand else ""
            raise PredictError(f"{where}rows {offset}-{offset + rows - 1}: {_describe(exc)}", task.shard.index) from exc
        good, failed = _bisect_stage(fn, chunk, exc)
        if failed:
            errors.append(failed[0][1])
            q = take_rows(chunk, [r for r, _ in failed])
            n = len(failed)
            q = q.append_column("_error", pa.array([e for _, e in failed], pa.string()))
            q = q.append_column("_stage", pa.array([st.name] * n, pa.string()))
            q = q.append_column("_shard", pa.array([task.shard.index] * n, pa.int64()))
            q = q.append_column("_path", pa.array([task.shard.path] * n, pa.string()))
            bad.append(q.append_column("_row", pa.array([offset + r for r, _ in failed], pa.int64())))
        return concat_blocks(good) if good else None


def _call_stage(fn: _StageFn, chunk: Any) -> Any:
    st = fn.stage
    if st.shorthand:
        table = chunk if isinstance(chunk, pa.Table) else block_table(chunk)
        batch = to_format(table, st.batch_format)
    else:
        batch = block_format(chunk, st.batch_format)
    output = _call_batch(fn, batch, st.batch_format, st.timeout)
    if st.shorthand:
        rows = block_rows(chunk)
        out = to_table(output, rows, st.output_column)
        return add_columns(out, table, list(st.keep_columns))
    return as_block(output, "prediction")


def _bisect_stage(fn: _StageFn, chunk: Any, exc: BaseException, base: int = 0) -> tuple[list, list]:
    """As _bisect, for a stage: halves until the failing rows are alone; timeouts not split."""
    n = block_rows(chunk)
    if n <= 1 or isinstance(exc, BatchTimeoutError):
        text = _describe(exc)
        return [], [(base + j, text) for j in range(n)]
    mid = n // 2
    good: list = []
    failed: list = []
    for lo, hi in ((0, mid), (mid, n)):
        part = slice_block(chunk, lo, hi)
        try:
            good.append(_call_stage(fn, part))
        except Exception as part_exc:
            g, f = _bisect_stage(fn, part, part_exc, base + lo)
            good += g
            failed += f
    return good, failed


class StageActor:
    """An actor of a pool: builds its segment's stages once (the pool's class, whose constructor
    runs here with the model the driver put, zero-copy; then the stateless stages that ride
    along), then runs blocks through them."""

    def __init__(self, stages: tuple, run_token: str, devices: list | None, *payloads: Any):
        # The payloads come last, each a top-level argument: core maps each ref's object zero-copy.
        if devices is not None:
            # Set for the actor's whole life: the model may touch the device at any call.
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        self.stages = stages
        # The constructor's error is kept and raised by each call (first `ready`), with our
        # one-line message: raised here, it would reach the driver as the actor's death.
        self.error: StageInitError | None = None
        try:
            self.fns = [_StageFn(st, p) for st, p in zip(stages, payloads)]
        except StageInitError as exc:
            self.error = exc

    def ready(self) -> dict:
        if self.error is not None:
            raise self.error
        return {"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def run(self, task: SegmentTask, block: Any) -> Any:
        if self.error is not None:
            raise self.error
        return process(task, self.fns, block, time.perf_counter())
