"""dataflow: declarative DDSF ("different data, same function") batch-inference pipelines.

    from dataflow import Pipeline
    summary = Pipeline.from_yaml("pipelines/nyc_taxi.yaml").run()

The same, shaped like Ray Data (a lazy Dataset of stages; see dataflow/dataset.py):

    ds = dataflow.read_parquet("data/").map_batches(parse).map_batches(Model, concurrency=2)
    ds.write_parquet("out/")

A pipeline names a Parquet source, a model (built once, put once in shared memory), how to
predict, and a sink; `run()` writes one part file per shard and returns a `Summary`; `stream()`
yields each shard's predictions as they finish. The CLI is `python -m dataflow run|validate|plan`.

Nothing heavy is imported here: `Pipeline` and `Summary` load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import (
    BatchTimeoutError,
    DataflowError,
    ModelError,
    PredictError,
    RunError,
    SpecError,
    SpecIssue,
    UnpicklableModelError,
)

if TYPE_CHECKING:
    from .dataset import Dataset, read_parquet
    from .pipeline import Pipeline
    from .summary import Summary

__all__ = [
    "Dataset",
    "read_parquet",
    "Pipeline",
    "Summary",
    "DataflowError",
    "SpecError",
    "SpecIssue",
    "ModelError",
    "UnpicklableModelError",
    "PredictError",
    "BatchTimeoutError",
    "RunError",
]

_LAZY = {"Pipeline": ".pipeline", "Summary": ".summary", "Dataset": ".dataset", "read_parquet": ".dataset"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dataflow' has no attribute {name!r}")
