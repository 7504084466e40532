"""`Dataset`: the Python API shaped like Ray Data's, over the same plan as a YAML pipeline.

    dataflow.read_parquet(uri, columns=, filters=, ...)        a lazy Dataset: a source, no stages
        .map_batches(fn_or_class, batch_size=, concurrency=, num_cpus=, ...)   one more stage (still lazy)
        │
        ├─ .write_parquet / .write_csv / .write_json(uri, html_report=)   Pipeline(spec).run(): resumable,
        │                                                      returns the Summary; the HTML report when asked
        └─ .iter_batches / .take / .take_batch / .count / .to_pandas / .schema
                                                               Pipeline(spec).stream(): nothing written

A Dataset is only a description: each method returns a new one, and nothing runs until a
`write_*` or a consuming method. It compiles to the same `PipelineSpec` (hence the same plan) as
the YAML file `to_yaml()` writes.

Runtime options (num_cpus, object_store_memory, spill, on_error, max_retries, ...) come from
`read_parquet(..., runtime={...})` or `Dataset.options(...)`; when a `core` session is already
running (`core.init(...)` before), its workers and resources are used and the runtime's
session keys (num_cpus, num_gpus, resources, object_store_memory, spill) are ignored.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

_RAY_FORMATS = {"default": "numpy", None: "numpy"}
ORDER_BUFFER = 4  # iter_batches(preserve_order=True): finished shards that may wait ahead of the next one


def _identity(batch: Any) -> Any:
    """The stage of a Dataset without map_batches: the rows as read."""
    return batch


def read_parquet(uri: str | list[str] | os.PathLike, *, columns: list[str] | None = None,
                 filters: list | None = None, storage_options: dict | None = None,
                 shard_by: str = "file", runtime: dict | None = None) -> "Dataset":
    """A lazy Dataset over Parquet files (a file, a folder, a glob or a list; any fsspec URI)."""
    source: dict[str, Any] = {"parquet": os.fspath(uri) if isinstance(uri, os.PathLike) else uri,
                              "shard_by": shard_by}
    if columns is not None:
        source["columns"] = list(columns)
    if filters is not None:
        source["filters"] = filters
    if storage_options:
        source["storage_options"] = dict(storage_options)
    return Dataset(source=source, runtime=dict(runtime or {}))


@dataclass(frozen=True)
class Dataset:
    source: dict
    stages: tuple = ()
    runtime: dict = field(default_factory=dict)
    name: str = "dataset"
    # The last run's stage figures, for stats(); not part of the description.
    _last: dict = field(default_factory=dict, compare=False, repr=False)

    # -- building ---------------------------------------------------------------------------
    def map_batches(self, fn: Any, *, batch_size: int | None | str = None, batch_format: str | None = "default",
                    fn_args: Any = None, fn_kwargs: dict | None = None, fn_constructor_args: Any = None,
                    fn_constructor_kwargs: dict | None = None, concurrency: int | tuple | None = None,
                    num_cpus: float | None = None, num_gpus: float | None = None,
                    resources: dict | None = None, model: Any = None, timeout: float | None = None,
                    name: str | None = None, num_threads: int | None = None) -> "Dataset":
        """One more stage: `fn(batch)` as tasks, or a class as an actor pool (Ray Data's meanings).
        `model` (a ModelSpec mapping, e.g. {"factory": "pkg.mod:load"}) is built once in the driver
        and passed as the first constructor argument. `num_threads`: torch (and BLAS) threads in
        the stage's workers (default: `num_cpus` rounded, at least 1)."""
        stage: dict[str, Any] = {"name": name or self._stage_name(fn), "fn": fn,
                                 "batch_format": _RAY_FORMATS.get(batch_format, batch_format)}
        if batch_size not in (None, "default"):
            stage["batch_size"] = batch_size
        for key, value in (("fn_args", fn_args), ("fn_kwargs", fn_kwargs), ("fn_constructor_args", fn_constructor_args),
                           ("fn_constructor_kwargs", fn_constructor_kwargs), ("num_cpus", num_cpus),
                           ("num_gpus", num_gpus), ("resources", resources), ("model", model),
                           ("timeout", timeout), ("num_threads", num_threads)):
            if value is not None:
                stage[key] = list(value) if key.endswith("_args") else value
        if concurrency is not None:
            stage["concurrency"] = list(concurrency) if isinstance(concurrency, tuple) else concurrency
        return replace(self, stages=self.stages + (stage,), _last={})

    def options(self, **runtime: Any) -> "Dataset":
        """The same Dataset with runtime options (num_cpus, on_error, max_retries, spill, ...)."""
        return replace(self, runtime={**self.runtime, **runtime}, _last={})

    def _stage_name(self, fn: Any) -> str:
        base = fn.rsplit(":", 1)[-1] if isinstance(fn, str) else getattr(fn, "__name__", "stage")
        taken = {s["name"] for s in self.stages}
        name, i = base, 1
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        return name

    def pipeline(self, sink: dict | None = None):
        """The Pipeline this Dataset compiles to (validated now)."""
        from .pipeline import Pipeline

        stages = list(self.stages) or [{"name": "read", "fn": _identity, "batch_format": "pyarrow"}]
        return Pipeline(source=self.source, stages=stages, sink=sink, runtime=self._runtime(),
                        name=self.name)

    def _runtime(self) -> dict:
        import core

        rt = dict(self.runtime)
        if core.is_initialized():
            # The running session decides: validate the stages against what it has.
            have = core.cluster_resources()
            rt["num_cpus"] = max(1, int(have.get("CPU", 1)))
            rt["num_gpus"] = have.get("GPU", 0) or None
            rt["resources"] = {k: v for k, v in have.items()
                               if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")}
        return rt

    # -- running to a sink ------------------------------------------------------------------
    def write_parquet(self, uri: str, *, mode: str = "resume", storage_options: dict | None = None,
                      html_report: str | os.PathLike | bool | None = None, progress: Any = None):
        """Run to Parquet files under `uri` (resumable); returns the Summary. `html_report`: a
        path, or True for `.dataflow/reports/<name>-<run id>.html` under the current folder: the
        run's HTML report, as `dataflow run --html-report` writes it (`last_report` says where).
        `progress`: True for the run's bar and its stages' bars on a terminal (plain lines
        elsewhere), or a `dataflow.progress.Progress`; default none."""
        return self._write("parquet", uri, mode, storage_options, html_report, progress)

    def write_csv(self, uri: str, *, mode: str = "resume", storage_options: dict | None = None,
                  html_report: str | os.PathLike | bool | None = None, progress: Any = None):
        """As write_parquet, to CSV files."""
        return self._write("csv", uri, mode, storage_options, html_report, progress)

    def write_json(self, uri: str, *, mode: str = "resume", storage_options: dict | None = None,
                   html_report: str | os.PathLike | bool | None = None, progress: Any = None):
        """As write_parquet, to JSON Lines, one file per shard."""
        return self._write("jsonl", uri, mode, storage_options, html_report, progress)

    def _write(self, fmt: str, uri: str, mode: str, storage_options: dict | None, html_report: Any,
               progress: Any = None):
        sink = {fmt: os.fspath(uri), "mode": mode}
        if storage_options:
            sink["storage_options"] = dict(storage_options)
        pipe = self.pipeline(sink)
        try:
            return pipe.run(html_report=html_report, progress=progress)
        finally:
            self._last["stages"] = pipe.last_summary.stages if pipe.last_summary else []
            self._last["record"] = pipe.last_record
            self._last["report"] = pipe.last_report

    @property
    def last_report(self):
        """The path of the HTML report the last write_*(html_report=...) wrote, else None."""
        return self._last.get("report")

    # -- consuming --------------------------------------------------------------------------
    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str | None = "default",
                     preserve_order: bool = False, order_buffer: int = ORDER_BUFFER) -> Iterator[Any]:
        """Batches of `batch_size` rows as results are ready (completion order). With
        `preserve_order=True`, input order: at most `order_buffer` finished shards wait ahead of
        the one it waits for, and the run starts no shard further ahead (a slow shard holds
        upstream back instead of letting the buffer grow)."""
        from .batches import block_format, block_rows, concat_blocks, slice_block

        fmt = _RAY_FORMATS.get(batch_format, batch_format)
        pending: list = []
        for table in self._tables(preserve_order, order_buffer):
            if batch_size is None:
                yield block_format(table, fmt)
                continue
            pending.append(table)
            rows = sum(t.num_rows for t in pending)
            if rows < batch_size:
                continue
            block = concat_blocks(pending)
            n = block_rows(block)
            full = n - n % batch_size
            for lo in range(0, full, batch_size):
                yield block_format(slice_block(block, lo, lo + batch_size), fmt)
            pending = [slice_block(block, full, n)] if full < n else []
        if pending and sum(t.num_rows for t in pending):
            yield block_format(concat_blocks(pending), fmt)

    def _tables(self, preserve_order: bool, order_buffer: int | None = None) -> Iterator[Any]:
        pipe = self.pipeline()
        try:
            yield from self._ordered(pipe, preserve_order, ORDER_BUFFER if order_buffer is None else order_buffer)
        finally:
            self._last["stages"] = pipe.last_stages
            self._last["record"] = pipe.last_record
            self._last["report"] = None

    def _ordered(self, pipe: Any, preserve_order: bool, order_buffer: int) -> Iterator[Any]:
        if not preserve_order:
            yield from pipe.stream(format="pyarrow")
            return
        if order_buffer < 0:
            raise ValueError(f"iter_batches(order_buffer=...) must be 0 or more, got {order_buffer}")
        heap: list = []
        expected = None
        self._last["order_buffer_high"] = 0
        # The executor starts a shard only while it is fewer than order_buffer + 1 shards past the
        # one awaited, so no more than order_buffer can finish ahead of it (see OrderWindow).
        window = {"order_window": order_buffer + 1} if _takes(pipe.stream, "order_window") else {}
        for index, table in pipe.stream(format="pyarrow", with_index=True, **window):
            if expected is None:
                expected = pipe.last_plan[0].index if pipe.last_plan else 0
            heapq.heappush(heap, (index, id(table), table))
            while heap and heap[0][0] == expected:
                yield heapq.heappop(heap)[2]
                expected = _next_index(pipe.last_plan, expected)
            self._last["order_buffer_high"] = max(self._last["order_buffer_high"], len(heap))
        while heap:
            yield heapq.heappop(heap)[2]

    def take_batch(self, batch_size: int = 20, *, batch_format: str | None = "default") -> Any:
        for batch in self.iter_batches(batch_size=batch_size, batch_format=batch_format, preserve_order=True):
            return batch
        return self.iter_batches  # pragma: no cover - unreachable on a non-empty dataset

    def take(self, limit: int = 20) -> list[dict]:
        """The first `limit` rows, as dicts."""
        rows: list[dict] = []
        for table in self._tables(preserve_order=True):
            rows += _table_rows(table.slice(0, limit - len(rows)))
            if len(rows) >= limit:
                break
        return rows

    def take_all(self) -> list[dict]:
        return [r for t in self._tables(preserve_order=True) for r in _table_rows(t)]

    def count(self) -> int:
        """Rows out of the last stage (with no stage: the source's rows, from the footers)."""
        if not self.stages:
            return sum(sh.num_rows for sh in self.pipeline().plan())
        return sum(t.num_rows for t in self._tables(preserve_order=False))

    def to_pandas(self):
        import pandas as pd
        import pyarrow as pa

        tables = list(self._tables(preserve_order=True))
        return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame()

    def schema(self):
        """The output's Arrow schema (runs the plan over the first shard's first rows)."""
        for table in self._tables(preserve_order=True):
            return table.schema
        return None

    def stats(self) -> str:
        """Per stage, as text, what Ray Data's `ds.stats()` gives (tasks, wall and CPU time
        min/mean/max, rows and bytes out, peak memory, spilled bytes; "n/a" where not known), for
        the last write_*/iter_batches of this Dataset."""
        from .summary import run_stats

        if "record" not in self._last:
            return "no run yet: stats() describes the last write_*/iter_batches of this Dataset"
        return run_stats(self._last["record"], self._last.get("stages") or [])

    # -- YAML -------------------------------------------------------------------------------
    def to_yaml(self, sink: str | None = None) -> str:
        """The YAML pipeline of this Dataset; every fn must be importable by name."""
        import yaml

        stages = []
        for st in self.stages:
            out = dict(st)
            out["fn"] = _ref_of(st["fn"], st["name"])
            stages.append(out)
        doc: dict[str, Any] = {"name": self.name, "source": dict(self.source), "stages": stages}
        if sink:
            doc["sink"] = {"parquet": sink}
        if self.runtime:
            doc["runtime"] = dict(self.runtime)
        try:
            return yaml.safe_dump(doc, sort_keys=False)
        except yaml.representer.RepresenterError as exc:
            raise ValueError(f"to_yaml: a value has no YAML form (a {type(exc.args[-1]).__name__}); pass "
                             f"arguments YAML can hold, or the model as {{'factory': 'pkg.module:function'}}") from None


def _takes(fn: Any, keyword: str) -> bool:
    """Whether `fn` takes `keyword` (Pipeline.stream's order_window, until it has it everywhere)."""
    import inspect

    return keyword in inspect.signature(fn).parameters


def _next_index(plan: list | None, index: int) -> int:
    if not plan:
        return index + 1
    indices = [sh.index for sh in plan]
    i = indices.index(index)
    return indices[i + 1] if i + 1 < len(indices) else index + 1


def _table_rows(table: Any) -> list[dict]:
    import pyarrow as pa

    cols = {}
    for name, col in zip(table.column_names, table.columns):
        if isinstance(col.type, pa.FixedShapeTensorType):
            arr = col.combine_chunks().to_numpy_ndarray()
            cols[name] = list(arr)
        else:
            cols[name] = col.to_pylist()
    return [dict(zip(cols, values)) for values in zip(*cols.values())] if cols else []


def _ref_of(fn: Any, stage: str) -> str:
    from .plan import by_name

    if isinstance(by_name(fn), str):
        return by_name(fn)
    ref = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    raise ValueError(f"to_yaml: stage {stage}: {ref} cannot be imported by name (a lambda, a local "
                     f"function or one defined in __main__); move it to a module")
