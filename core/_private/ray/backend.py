"""The driver's runtime on Ray: `core.init(address=...)` starts or reaches Ray, and `core.*` in the
driver calls this.

    driver process                                       Ray worker processes
    ┌────────────────────────────────────────┐           ┌───────────────────────────────────────┐
    │ core API ── RayBackend (the runtime)   │ ray tasks │ worker.py: task entries, _ActorHost   │
    │   └ RayClient (client.py)              │ ────────► │   attach RayWorkerRuntime (lazily,    │
    │     ObjectRef(oid) ─► RefTable ─► ray  │ ◄──────── │   never ray.init) ─► user code calls  │
    │     errors: ray.exceptions ─► ours     │  results  │   core.get/put/remote like anywhere   │
    └────────────────────────────────────────┘           └───────────────────────────────────────┘
          │ ray.init(...) once: "local-ray" starts Ray on 127.0.0.1, anything else connects

This module owns the session: starting (or connecting to) Ray with the options config.py
translates, the private temp folder of a Ray instance we start, the driver-only calls
(`free`, `cluster_resources`, `memory_summary`, `timeline`) and shutdown. Everything else is the `RayClient`
it holds, which a worker's runtime (worker.py) holds too. `core.init` puts it in the runtime
slot (runtime.py) and `core.shutdown` takes it out.

`ray` is imported only when `core.init(address=...)` runs (config.import_ray); importing `core`
never imports it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
import tempfile
from typing import Any

import psutil

from core._private.ray import worker
from core._private.ray.client import RayClient
from core._private.ray.config import (
    LOCAL_RAY,
    DropMessages,
    ignored_options,
    import_ray,
    our_resources,
    ray_init_kwargs,
    spilling_config,
)
from core._private.ray.errors import first_line
from core._private.refs import ObjectRef
from core._private.tasks.timeline import write_trace
from core._private.taskspec import TaskSpec, call_here
from core.exceptions import CoreError
from core.units import format_bytes

__all__ = ["RayBackend", "ray_init_kwargs", "spilling_config"]

_log = logging.getLogger("core")

# Notices about choices we made on purpose (spilling config, token auth), kept out of the terminal.
_QUIET_LOGGERS = ("ray._private.node", "ray._private.authentication.authentication_token_setup")
_QUIET_PREFIXES = ("The object spilling config is specified from an unstable API",
                   "Token authentication is enabled for this Ray cluster")


class RayBackend:
    """The driver's runtime on Ray: what `core.*` and our `ObjectRef`s call."""

    def __init__(self, *, address: str, num_cpus: float | None = None, num_gpus: float | None = None,
                 resources: dict | None = None, object_store_memory: int | None = None, spill: Any = None,
                 **ray_kwargs: Any) -> None:
        self._closed = False
        self._temp_dir: str | None = None
        kwargs, ignored = ray_init_kwargs(address, num_cpus=num_cpus, num_gpus=num_gpus,
                                          resources=resources, object_store_memory=object_store_memory,
                                          spill=spill, **ray_kwargs)
        ray = import_ray(address)
        self.address = address
        self._owns_ray = not ray.is_initialized()
        if not self._owns_ray and address == LOCAL_RAY:
            ignored = ignored_options(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                      object_store_memory=object_store_memory, spill=spill)
        if ignored:
            _log.warning(f"core.init(address={address!r}): {', '.join(ignored)} ignored: "
                         + ("Ray is already initialized in this process" if not self._owns_ray else
                            "an existing Ray cluster has its own resources and object spilling "
                            "(set them with `ray start`)"))
        if self._owns_ray:
            self._start(ray, kwargs)
        self.client = RayClient(ray, worker.HOSTING)
        try:
            worker.register_serializers(ray)
        except Exception as exc:  # noqa: BLE001 - Ray Client has no serialization context here
            _log.warning(f"core on Ray at {address!r}: refs nested in arguments and actor handles passed "
                         f"to tasks are not supported here ({first_line(exc)})")
        worker.connect(self.client)

    def _start(self, ray: Any, kwargs: dict) -> None:
        """`ray.init`: start a local instance or connect; CoreError naming the address if it fails."""
        if self.address == LOCAL_RAY and "_temp_dir" not in kwargs:
            # A private (0700) folder for the instance's sockets, logs and default spill files,
            # removed at shutdown, so a session leaves nothing behind (Ray keeps /tmp/ray/session_*).
            self._temp_dir = kwargs["_temp_dir"] = tempfile.mkdtemp(prefix="ddsf-ray-", dir="/tmp")
        quiet = DropMessages(*_QUIET_PREFIXES)
        loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
        for logger in loggers:
            logger.addFilter(quiet)
        children_before = _child_pids()
        try:
            ray.init(**kwargs)
        except Exception as exc:
            _stop_what_a_failed_start_left(ray, children_before)
            self._remove_temp_dir()
            raise CoreError(f"cannot start or reach Ray at address={self.address!r}: "
                            f"{type(exc).__name__}: {first_line(exc)}") from exc
        finally:
            for logger in loggers:
                logger.removeFilter(quiet)

    # ── what every runtime does: the client's ──────────────────────────────────────────────────
    def add_local_ref(self, oid: bytes) -> None:
        self.client.table.add(oid)

    def remove_local_ref(self, oid: bytes) -> None:
        self.client.table.remove(oid)

    def put(self, value: Any) -> ObjectRef:
        return self.client.put(value)

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list:
        return self.client.get(refs, timeout, writable)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        return self.client.wait(refs, num_returns, timeout)

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        return self.client.future(ref)

    def submit(self, spec: TaskSpec) -> Any:
        return self.client.submit(spec)

    def next_stream_item(self, task_id: bytes, index: int, timeout: float | None) -> ObjectRef | None:
        return self.client.next_stream_item(task_id, index, timeout)

    def release_stream(self, task_id: bytes) -> None:
        self.client.release_stream(task_id)

    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        self.client.cancel(ref.binary, force)

    def kill_actor(self, actor_id: bytes) -> None:
        self.client.kill_actor(actor_id)

    # ── the driver's own ───────────────────────────────────────────────────────────────────────
    def free(self, refs: list[ObjectRef]) -> None:
        """Drop our hold now. Ray deletes the data once nothing else (a running task, an object
        that contains it) references it; our later `get` raises ObjectLostError at once."""
        self.client.table.free(r.binary for r in refs)

    def cluster_resources(self) -> dict:
        return our_resources(self.client.ray.cluster_resources())

    def available_resources(self) -> dict:
        return our_resources(self.client.ray.available_resources())

    def build(self, fn: Any, args: tuple, kwargs: dict) -> ObjectRef:
        """core.build on Ray: the value is made in the driver (its error a TaskError, as on the
        local engine) and put once into Ray's store."""
        return self.client.put(call_here(fn, args, kwargs))

    def memory_summary(self) -> str:
        """Our objects as Ray sees them: id, size, where (inline = Ray's in-process store,
        shared = its plasma store, spilled), our ref count, what made it; then Ray's totals."""
        ray = self.client.ray
        rows = self.client.table.rows()
        try:
            locations = ray.experimental.get_object_locations([row[1] for row in rows], timeout_ms=5000)
        except Exception:  # noqa: BLE001 - sizes are best effort
            locations = {}
        lines = [f"{'object id':<56}  {'size':>10}  {'where':<8}  {'refs':>4}  made by"]
        totals = {"inline": 0, "shared": 0, "spilled": 0, "?": 0}
        for hexid, ray_ref, count, name, kind in rows:
            loc = locations.get(ray_ref) or {}
            size = loc.get("object_size")
            where = ("spilled" if loc.get("did_spill") else "shared" if loc.get("node_ids")
                     else "inline" if size is not None else "?")
            totals[where] += 1
            lines.append(f"{hexid:<56}  {(format_bytes(size) if size is not None else '?'):>10}  {where:<8}  "
                         f"{count:>4}  {'put' if kind == 'put' else name}")
        lines.append("")
        lines.append(f"objects: {len(rows)} ({totals['inline']} inline, {totals['shared']} shared, "
                     f"{totals['spilled']} spilled) held by this process in Ray's object store")
        total = ray.cluster_resources().get("object_store_memory", 0.0)
        free = ray.available_resources().get("object_store_memory", 0.0)
        lines.append(f"Ray object store: {format_bytes(total)} capacity across the cluster "
                     f"({format_bytes(free)} not reserved; Ray counts usage per node, see `ray memory`)")
        return "\n".join(lines)

    def object_store_stats(self) -> dict:
        """Capacity and use from Ray's resources; spilled and restored bytes from Ray's memory
        report (`ray memory --stats-only`'s figures, from the raylet over gRPC), None if this Ray
        cannot give them (its minimal install has no grpcio)."""
        ray = self.client.ray
        capacity = ray.cluster_resources().get("object_store_memory", 0.0)
        free = ray.available_resources().get("object_store_memory", 0.0)
        out = {"capacity": int(capacity), "used": int(max(0.0, capacity - free)),
               "spilled_bytes": None, "restored_bytes": None}
        try:
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            state = get_state_from_address(ray.get_runtime_context().gcs_address)
            stats = get_memory_info_reply(state, timeout_seconds=5.0).store_stats
            out.update(spilled_bytes=int(stats.spilled_bytes_total), restored_bytes=int(stats.restored_bytes_total))
        except Exception:  # noqa: BLE001 - a private Ray API: the figures are optional
            pass
        return out

    def timeline(self, path: str | None = None) -> list[dict]:
        """core.timeline on Ray: Ray's own task events (`ray.timeline()`), passed through as Ray
        gives them (Chrome trace events too, with Ray's lanes, names and args, and times in
        microseconds of the wall clock), written as a trace file like the local engine's."""
        state_log = logging.getLogger("ray._private.state")
        quiet = DropMessages("In the near future, ray.timeline()")   # a notice about Ray's plans
        state_log.addFilter(quiet)
        try:
            events = list(self.client.ray.timeline())
        except Exception as exc:  # noqa: BLE001 - Ray Client and some clusters cannot give it
            raise CoreError(f"Ray gave no timeline for the session at {self.address!r}: "
                            f"{type(exc).__name__}: {first_line(exc)}") from exc
        finally:
            state_log.removeFilter(quiet)
        if path is not None:
            write_trace(path, events)
        return events

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        worker.disconnect(self.client)
        self.client.close()
        if self._owns_ray:
            self.client.ray.shutdown()
            self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _stop_what_a_failed_start_left(ray: Any, children_before: set[int]) -> None:
    """A `ray.init` that fails half way (say the GCS starts but the driver cannot reach it) leaves
    the processes it started running: shut Ray down, then kill what is still ours and new."""
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort after a failed start
        pass
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before]
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
