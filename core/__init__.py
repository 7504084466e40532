"""core: an object store and task runtime with Ray Core's API.

    import core
    core.init()
    ref = core.put(big_array)            # stored once, in shared memory
    @core.remote
    def score(model, batch): ...
    out = core.get([score.remote(ref, b) for b in batches])

Importing `core` is cheap: the engine, numpy and ray are loaded when first used.
"""

from core import exceptions
from core._private.api import (
    available_resources,
    build,
    cancel,
    cluster_resources,
    free,
    get,
    init,
    is_initialized,
    kill,
    memory_summary,
    object_store_stats,
    preload_workers,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from core._private.refs import ObjectRef, ObjectRefGenerator

__all__ = [
    "ObjectRef",
    "ObjectRefGenerator",
    "available_resources",
    "build",
    "cancel",
    "cluster_resources",
    "exceptions",
    "free",
    "get",
    "init",
    "is_initialized",
    "kill",
    "memory_summary",
    "object_store_stats",
    "preload_workers",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "wait",
]
