"""connectors: Parquet sources and sinks on local disk, S3 or any fsspec filesystem.

    plan_shards(uri) ──► [Shard, ...] ──► read_shard / iter_batches ──► Arrow
                                               (a task per shard)          │
                                                                           ▼
                          open_sink(uri) / MemorySink ◄── write_part / open_part

Importing this package is cheap: names resolve lazily on first use, so pyarrow, fsspec and
s3fs load only when something is planned, read or written.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import ConnectorError, SchemaError, SinkError, SourceError, StorageError

if TYPE_CHECKING:
    from .sample_data import make_nyc_taxi_shards
    from .sinks import FileSink, MemorySink, PartStager, PartWriter, Sink, StagedPart, open_sink
    from .sources import SchemaCheck, Shard, iter_batches, plan_shards, read_shard

__all__ = [
    "ConnectorError",
    "FileSink",
    "MemorySink",
    "PartStager",
    "PartWriter",
    "SchemaCheck",
    "SchemaError",
    "Shard",
    "Sink",
    "SinkError",
    "SourceError",
    "StagedPart",
    "StorageError",
    "iter_batches",
    "make_nyc_taxi_shards",
    "open_sink",
    "plan_shards",
    "read_shard",
]

_LAZY = {
    "SchemaCheck": "sources",
    "Shard": "sources",
    "plan_shards": "sources",
    "read_shard": "sources",
    "iter_batches": "sources",
    "FileSink": "sinks",
    "MemorySink": "sinks",
    "PartStager": "sinks",
    "PartWriter": "sinks",
    "StagedPart": "sinks",
    "Sink": "sinks",
    "open_sink": "sinks",
    "make_nyc_taxi_shards": "sample_data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connectors' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
