"""The Ray backend: the `core` API on a Ray cluster, chosen by `core.init(address=...)`.

    driver process                                        Ray worker processes
    ┌────────────────────────────────────────┐            ┌──────────────────────────────────────┐
    │ core API ── RayBackend (the runtime)   │  ray tasks │ _run_task / _ActorHost (our wrappers) │
    │   ObjectRef(oid) ──► table oid ─► ray  │ ─────────► │   attach RayWorkerRuntime (lazily,     │
    │   ref + count (kept alive while > 0)   │ ◄───────── │   never ray.init) ─► user code calls   │
    │   errors: ray.exceptions ─► ours       │   results  │   core.get/put/remote like anywhere    │
    └────────────────────────────────────────┘            └──────────────────────────────────────┘
          │ ray.init(...) once: "local-ray" starts Ray on 127.0.0.1, anything else connects

Objects: `put`/`get`/`wait` are Ray's. Our id of an object is its Ray id (28 bytes,
`ObjectRef.hex()` is stable), and the runtime keeps one `ray.ObjectRef` per id alive while any of
our refs to it lives (a count per id; `__del__` only appends to a lock-free queue, applied under
the lock by the next call that holds it).

Moving refs and actor handles between processes: Ray pickles task arguments, results and `put`
values with its own cloudpickle. We register a reducer with it (in the driver and in each worker
when it attaches) that pickles our `ObjectRef` as the `ray.ObjectRef` itself (so Ray's borrowing
protocol keeps the object alive wherever the ref travels) and our `ActorHandle` with its Ray actor
handle. Top-level ref arguments are handed to Ray as Ray refs, so Ray resolves them to values
before the task runs; nested ones arrive as our refs.

Errors: every Ray error is translated at this boundary (`_translate`): a task's own exception
becomes `TaskError.for_cause` (still an instance of the cause's type), and Ray's system errors
map to `GetTimeoutError`, `WorkerCrashedError`, `ObjectLostError`, `TaskCancelledError`,
`ActorDiedError`, `ObjectStoreFullError`.

`ray` is imported here only, when `core.init(address=...)` runs; importing `core` never imports it.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from typing import Any

from core._private import refs as refs_mod
from core._private.refs import IdSource, ObjectRef, ObjectRefGenerator
from core.exceptions import (
    ActorDiedError,
    ConfigError,
    CoreError,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

__all__ = ["RayBackend", "RayWorkerRuntime", "ray_init_kwargs", "spilling_config"]

_log = logging.getLogger("core")

LOCAL_RAY = "local-ray"
LOOPBACK = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _import_ray(address: str | None = None) -> Any:
    # Read by ray at import time: a local instance then uses the loopback address for everything.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address == LOCAL_RAY:
        # Token auth stays on (Ray's default for a new local instance), without its banner.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError as exc:
        raise CoreError("core.init(address=...) runs on Ray, which is not installed; install the extra "
                        "with `pip install 'ddsf[ray]'` (or `pip install ray`), or call core.init() "
                        "without address for the local engine") from exc
    return ray


# ─── configuration: pure functions ──────────────────────────────────────────────────────────────
def spilling_config(spill: Any) -> dict | None:
    """Ray's `object_spilling_config` for our `spill=` value (a folder, a URI, or the dict form),
    or None for Ray's default. S3 goes through smart_open with our buffer_size."""
    from core._private.objects.spill import parse_spill_config

    if spill is None:
        return None
    config = parse_spill_config(spill)
    if config.scheme == "file":
        path = config.uri or ""
        path = path[len("file://"):] if path.startswith("file://") else path
        return {"type": "filesystem", "params": {"directory_path": os.path.abspath(os.path.expanduser(path))}}
    # buffer_size is what Ray hands smart_open; smart_open >= 5 sizes multipart parts with
    # min_part_size, so that gets our buffer_size too (as our own S3 spill target does).
    size = int(config.buffer_size)
    return {"type": "smart_open", "params": {"uri": config.uri, "buffer_size": size,
                                             "override_transport_params": {"min_part_size": size}}}


def ray_init_kwargs(address: str, *, num_cpus=None, num_gpus=None, resources=None,
                    object_store_memory=None, spill=None, **ray_kwargs: Any) -> tuple[dict, list[str]]:
    """(keyword arguments for `ray.init`, names of our arguments that an existing cluster ignores).

    "local-ray" starts a Ray instance in this process, bound to 127.0.0.1, without dashboard;
    anything else ("auto", "ray://host:10001", "host:port") connects to a running cluster, whose
    size and spilling are its own."""
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True, "log_to_driver": True}
    ignored: list[str] = []
    if address == LOCAL_RAY:
        kwargs.update(address=None, _node_ip_address=LOOPBACK)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        if resources:
            kwargs["resources"] = dict(resources)
        if object_store_memory is not None:
            kwargs["object_store_memory"] = int(object_store_memory)
        spilling = spilling_config(spill)
        if spilling is not None:
            system = dict(ray_kwargs.pop("_system_config", None) or {})
            system["object_spilling_config"] = json.dumps(spilling)
            if isinstance(spill, dict) and "min_spilling_size" in spill:
                from core._private.objects.spill import parse_spill_config

                system["min_spilling_size"] = parse_spill_config(spill).min_spilling_size
            kwargs["_system_config"] = system
    else:
        if not isinstance(address, str) or not address.strip():
            raise ConfigError(f"address: expected \"local-ray\", \"auto\", \"ray://host:port\" or a "
                              f"Ray address such as \"127.0.0.1:6379\", got {address!r}")
        kwargs["address"] = address
        for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("resources", resources),
                           ("object_store_memory", object_store_memory), ("spill", spill)):
            if value is not None:
                ignored.append(key)
        if address.startswith("ray://"):
            # Ray Client forwards ray.init's arguments to the driver it starts on the cluster.
            kwargs = {"address": address}
    kwargs.update(ray_kwargs)
    return kwargs, ignored


# ─── the runtime ────────────────────────────────────────────────────────────────────────────────
class _Entry:
    """Our hold on one Ray object: the Ray ref, how many of our refs point at it, what made it."""

    __slots__ = ("ray_ref", "count", "name", "kind", "actor_id")

    def __init__(self, ray_ref: Any, name: str, kind: str, actor_id: bytes | None = None) -> None:
        self.ray_ref = ray_ref
        self.count = 0
        self.name = name
        self.kind = kind          # "put", "task", "actor_method", "stream", "borrowed"
        self.actor_id = actor_id


class RayBackend:
    """The driver's runtime on Ray: what `core.*` and our `ObjectRef`s call."""

    inline_threshold = 100 * 1024   # Ray decides what travels inline; kept for the interface

    def __init__(self, *, address: str, num_cpus: float | None = None, num_gpus: float | None = None,
                 resources: dict | None = None, object_store_memory: int | None = None, spill: Any = None,
                 **ray_kwargs: Any) -> None:
        self._setup_state()
        kwargs, ignored = ray_init_kwargs(address, num_cpus=num_cpus, num_gpus=num_gpus,
                                          resources=resources, object_store_memory=object_store_memory,
                                          spill=spill, **ray_kwargs)
        ray = self._ray = _import_ray(address)
        self.address = address
        self._owns_ray = not ray.is_initialized()
        if not self._owns_ray and address == LOCAL_RAY:
            ignored = [k for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("resources", resources),
                                      ("object_store_memory", object_store_memory), ("spill", spill))
                       if v is not None]
        if ignored:
            _log.warning(f"core.init(address={address!r}): {', '.join(ignored)} ignored: "
                         + ("Ray is already initialized in this process" if not self._owns_ray else
                            "an existing Ray cluster has its own resources and object spilling "
                            "(set them with `ray start`)"))
        if self._owns_ray and address == LOCAL_RAY and "_temp_dir" not in kwargs:
            # A private (0700) folder for the instance's sockets, logs and default spill files,
            # removed at shutdown, so a session leaves nothing behind (Ray keeps /tmp/ray/session_*).
            self._temp_dir = tempfile.mkdtemp(prefix="ddsf-ray-", dir="/tmp")
            kwargs["_temp_dir"] = self._temp_dir
        if self._owns_ray:
            # Notices about choices we made on purpose (spilling config, token auth) stay out of
            # the user's terminal.
            quiet = _DropMessages("The object spilling config is specified from an unstable API",
                                  "Token authentication is enabled for this Ray cluster")
            loggers = [logging.getLogger(n) for n in ("ray._private.node",
                                                      "ray._private.authentication.authentication_token_setup")]
            for logger in loggers:
                logger.addFilter(quiet)
            try:
                ray.init(**kwargs)
            except Exception as exc:
                self._remove_temp_dir()
                raise CoreError(f"cannot start or reach Ray at address={address!r}: "
                                f"{type(exc).__name__}: {_first_line(exc)}") from exc
            finally:
                for logger in loggers:
                    logger.removeFilter(quiet)
        try:
            _register_serializers(ray)
        except Exception as exc:  # noqa: BLE001 - Ray Client has no serialization context here
            _log.warning(f"core on Ray at {address!r}: refs nested in arguments and actor handles passed "
                         f"to tasks are not supported here ({_first_line(exc)})")
        refs_mod.set_runtime(self)

    def _setup_state(self) -> None:
        self._lock = threading.Lock()
        self._events: deque[tuple[int, bytes]] = deque()
        self._table: dict[bytes, _Entry] = {}
        self._freed: set[bytes] = set()
        self._actors: dict[bytes, tuple[Any, str]] = {}   # actor id -> (Ray handle, name)
        self._killed: set[bytes] = set()
        self._streams: dict[bytes, tuple[Any, str]] = {}  # our stream id -> (Ray generator, name)
        self._remotes: dict[tuple, Any] = {}               # (shipped id, options) -> ray remote function
        self._shipped: dict[int, Any] = {}                 # keeps shipped objects (and so their ids) alive
        self._last_remote: dict[int, tuple] = {}           # shipped id -> (options dict, label, remote function)
        self._ids = IdSource()
        self._closed = False
        self._owns_ray = False
        self._temp_dir: str | None = None

    # ── ids and reference counting ─────────────────────────────────────────────────────────────
    def new_id(self, index: int = 0) -> bytes:
        return self._ids.new(index)

    def add_local_ref(self, oid: bytes) -> None:
        self._events.append((1, oid))
        self._try_apply()

    def remove_local_ref(self, oid: bytes) -> None:
        if self._closed:
            return
        self._events.append((-1, oid))
        self._try_apply()

    def _try_apply(self) -> None:
        # Never block: this runs from ObjectRef.__del__, possibly while this thread holds the lock.
        if self._lock.acquire(blocking=False):
            try:
                self._apply_events()
            finally:
                self._lock.release()

    def _apply_events(self) -> None:
        events, table = self._events, self._table
        while events:
            delta, oid = events.popleft()
            entry = table.get(oid)
            if entry is not None:
                entry.count += delta
                if entry.count <= 0:
                    del table[oid]   # drops the Ray ref: Ray's own count decides when the object goes

    def _adopt(self, ray_ref: Any, name: str, kind: str, actor_id: bytes | None = None) -> ObjectRef:
        """Our ref for a Ray ref, counted at once (no window where the entry has count 0)."""
        oid = ray_ref.binary()
        with self._lock:
            self._apply_events()
            entry = self._table.get(oid)
            if entry is None:
                entry = self._table[oid] = _Entry(ray_ref, name, kind, actor_id)
            entry.count += 1
        return ObjectRef(oid, _counted=True)

    def _entry(self, oid: bytes) -> _Entry:
        with self._lock:
            self._apply_events()
            entry = self._table.get(oid)
        if entry is None:
            raise self._missing(oid)
        return entry

    def _missing(self, oid: bytes) -> ObjectLostError:
        if oid in self._freed:
            return ObjectLostError(f"object {oid.hex()} was freed with core.free(); it cannot be read again")
        return ObjectLostError(f"object {oid.hex()} is not held in this process (its refs were all dropped, "
                               f"or it belongs to another session)")

    def ray_ref(self, ref: ObjectRef) -> Any:
        """The `ray.ObjectRef` behind one of our refs (for code mixing core and plain Ray)."""
        return self._entry(ref.binary).ray_ref

    def on_ref_unpickled(self, oid: bytes) -> None:
        """A ref unpickled by plain pickle: it is usable only while its object is held here."""

    # ── objects ────────────────────────────────────────────────────────────────────────────────
    def put(self, value: Any) -> ObjectRef:
        try:
            ray_ref = self._ray.put(value)
        except Exception as exc:
            raise _translate(self._ray, exc, "put") from None
        return self._adopt(ray_ref, "put", "put")

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list:
        entries = [self._entry(r.binary) for r in refs]
        try:
            values = self._ray.get([e.ray_ref for e in entries], timeout=timeout)
        except Exception as exc:
            raise self._translate_for(exc, entries, timeout) from None
        if writable:
            import cloudpickle

            # A protocol-4 pickle round trip (no PickleBuffers): every array becomes a private,
            # writable copy.
            values = [cloudpickle.loads(cloudpickle.dumps(v, protocol=4)) for v in values]
        return values

    def _translate_for(self, exc: BaseException, entries: list[_Entry], timeout: float | None) -> BaseException:
        ray = self._ray
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            not_ready = self._ray.wait([e.ray_ref for e in entries], num_returns=len(entries), timeout=0,
                                       fetch_local=False)[1]
            first = not_ready[0].hex() if not_ready else entries[0].ray_ref.hex()
            return GetTimeoutError(f"{len(not_ready) or len(entries)} of {len(entries)} objects not ready "
                                   f"after {timeout}s (first: {first}); raise `timeout` or check the tasks "
                                   f"that make them")
        name = next((e.name for e in entries if e.kind != "put"), "?")
        if len(entries) <= 64:  # name the task that failed, when it is cheap to find out
            failed = [e for e in entries if e.kind != "put" and _failed(ray, e.ray_ref)]
            if failed:
                name = failed[0].name
        err = _translate(ray, exc, name)
        if isinstance(err, ActorDiedError):
            if any(e.actor_id in self._killed for e in entries if e.actor_id is not None):
                return ActorDiedError(f"{err}; it was killed with core.kill()")
        return err

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        if num_returns > len(refs):
            raise ValueError(f"num_returns={num_returns} is more than the {len(refs)} refs given")
        ray_refs = [self._entry(r.binary).ray_ref for r in refs]
        try:
            ready_refs, _ = self._ray.wait(ray_refs, num_returns=num_returns, timeout=timeout)
        except Exception as exc:
            raise _translate(self._ray, exc, "wait") from None
        done = {r.binary() for r in ready_refs}
        ready, not_ready = [], []
        for ref in refs:
            (ready if ref.binary in done and len(ready) < num_returns else not_ready).append(ref)
        return ready, not_ready

    def free(self, refs: list[ObjectRef]) -> None:
        """Drop our hold now. Ray deletes the data once nothing else (a running task, an object
        that contains it) references it; our later `get` raises ObjectLostError at once."""
        with self._lock:
            self._apply_events()
            for r in refs:
                self._freed.add(r.binary)
                self._table.pop(r.binary, None)

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        entry = self._entry(ref.binary)
        ours: concurrent.futures.Future = concurrent.futures.Future()
        theirs = entry.ray_ref.future()
        ray = self._ray

        def done(f: concurrent.futures.Future, _keep=ref) -> None:
            try:
                ours.set_result(f.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the future
                ours.set_exception(_translate(ray, exc, entry.name))

        theirs.add_done_callback(done)
        return ours

    # ── tasks ──────────────────────────────────────────────────────────────────────────────────
    def submit_remote(self, *, kind: str, name: str, shipped: Any, args: tuple, kwargs: dict,
                      options: dict, actor_id: bytes | None = None, method: str | None = None) -> Any:
        num_returns = options.get("num_returns", 1)
        streaming = num_returns == "streaming"
        ray_args, ray_kwargs = self._ray_args(args, kwargs)
        label = options.get("name") or name
        try:
            if kind == "actor_method":
                handle = self._actor(actor_id, name)
                target = handle.call_stream if streaming else handle.call
                out = target.options(num_returns=num_returns).remote(method, *ray_args, **ray_kwargs)
            else:
                out = self._remote_function(shipped, options, label).remote(*ray_args, **ray_kwargs)
        except CoreError:
            raise
        except Exception as exc:
            raise _translate(self._ray, exc, label) from exc
        if streaming:
            stream_id = self.new_id()
            self._streams[stream_id] = (out, label)
            return ObjectRefGenerator(self, stream_id)
        if isinstance(out, list):
            return [self._adopt(r, label, kind, actor_id) for r in out]
        return self._adopt(out, label, kind, actor_id)

    def _ray_args(self, args: tuple, kwargs: dict) -> tuple[list, dict]:
        """Top-level refs become Ray refs (Ray resolves them); nested ones travel as our refs."""
        def sub(v: Any) -> Any:
            return self._entry(v.binary).ray_ref if type(v) is ObjectRef else v

        return [sub(a) for a in args], {k: sub(v) for k, v in kwargs.items()}

    def _remote_function(self, shipped: Any, options: dict, label: str) -> Any:
        # Fast path: `f.remote()` passes the same options dict every time.
        last = self._last_remote.get(id(shipped))
        if last is not None and last[0] is options and last[1] == label:
            return last[2]
        fn = self._make_remote_function(shipped, options, label)
        self._last_remote[id(shipped)] = (options, label, fn)
        return fn

    def _make_remote_function(self, shipped: Any, options: dict, label: str) -> Any:
        ray_options = {"num_cpus": options.get("num_cpus", 1), "num_gpus": options.get("num_gpus", 0),
                       "num_returns": options.get("num_returns", 1),
                       "max_retries": options.get("max_retries", 3),
                       "retry_exceptions": options.get("retry_exceptions", False), "name": label}
        if options.get("resources"):
            ray_options["resources"] = dict(options["resources"])
        key = (id(shipped), repr(sorted(ray_options.items())))
        fn = self._remotes.get(key)
        if fn is None:
            self._shipped[id(shipped)] = shipped
            streaming = ray_options["num_returns"] == "streaming"
            entry = _stream_entry(shipped.obj) if streaming else _task_entry(shipped.obj)
            fn = self._remotes[key] = self._ray.remote(**ray_options)(entry)
        return fn

    def create_actor_task(self, *, name: str, shipped: Any, args: tuple, kwargs: dict, options: dict) -> bytes:
        host = self._remotes.get(("actor", id(shipped)))
        if host is None:
            self._shipped[id(shipped)] = shipped
            host = self._remotes[("actor", id(shipped))] = self._ray.remote(_actor_host(shipped.obj))
        ray_options = {"num_cpus": options.get("num_cpus", 0), "num_gpus": options.get("num_gpus", 0),
                       "max_restarts": options.get("max_restarts", 0),
                       "max_task_retries": options.get("max_task_retries", 0)}
        if options.get("resources"):
            ray_options["resources"] = dict(options["resources"])
        ray_args, ray_kwargs = self._ray_args(args, kwargs)
        try:
            handle = host.options(**ray_options).remote(*ray_args, **ray_kwargs)
        except Exception as exc:
            raise _translate(self._ray, exc, name) from exc
        actor_id = handle._actor_id.binary()
        self._actors[actor_id] = (handle, name)
        return actor_id

    def _actor(self, actor_id: bytes | None, name: str) -> Any:
        known = self._actors.get(actor_id) if actor_id is not None else None
        if known is None:
            raise ActorDiedError(f"cannot call {name}: actor {actor_id.hex() if actor_id else '?'} is unknown "
                                 f"in this process (its handle came from another session)")
        return known[0]

    def register_actor(self, actor_id: bytes, handle: Any, name: str) -> None:
        self._actors.setdefault(actor_id, (handle, name))

    # ── streams ────────────────────────────────────────────────────────────────────────────────
    def next_stream_item(self, task_id: bytes, index: int, timeout: float | None) -> ObjectRef | None:
        known = self._streams.get(task_id)
        if known is None:
            return None
        gen, name = known
        try:
            if timeout is None:
                ray_ref = next(gen)
            else:
                ray_ref = gen._next_sync(timeout)
                if ray_ref.is_nil():
                    raise GetTimeoutError(f"no item from the stream of task {name} within {timeout}s")
        except StopIteration:
            return None
        return self._adopt(ray_ref, name, "stream")

    def release_stream(self, task_id: bytes) -> None:
        self._streams.pop(task_id, None)

    # ── cancel / kill ──────────────────────────────────────────────────────────────────────────
    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        self._cancel_oid(ref.binary, force)

    def _cancel_oid(self, oid: bytes, force: bool) -> None:
        with self._lock:
            self._apply_events()
            entry = self._table.get(oid)
        if entry is None or entry.kind == "put":
            return
        try:
            # Ray cannot force-cancel an actor call (that would kill the actor): interrupt it instead.
            self._ray.cancel(entry.ray_ref, force=force and entry.kind != "actor_method")
        except Exception:  # already finished, or not a task: nothing to cancel
            pass

    def kill_actor(self, actor_id: bytes) -> None:
        known = self._actors.get(actor_id)
        if known is None:
            return
        self._killed.add(actor_id)
        self._ray.kill(known[0], no_restart=True)
        self._await_death(known[0])

    def _await_death(self, handle: Any, timeout: float = 30.0) -> None:
        """Return once Ray refuses calls on a killed actor: `ray.kill` only sends the request, and
        a call made before its death is published can still reach the actor and succeed (our
        contract, as the local engine's: after `core.kill`, calls raise ActorDiedError)."""
        ray = self._ray
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ray.get(handle.__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except ray.exceptions.RayActorError:
                return
            except Exception as exc:  # noqa: BLE001 - the kill was sent; the probe is best effort
                _log.warning("core.kill(): could not confirm the actor's death: %s", _first_line(exc))
                return
            time.sleep(0.01)
        _log.warning("core.kill(): Ray still ran calls on the killed actor %.0f s after the kill",
                     timeout)

    # ── reporting ──────────────────────────────────────────────────────────────────────────────
    def cluster_resources(self) -> dict:
        return _our_resources(self._ray.cluster_resources())

    def available_resources(self) -> dict:
        return _our_resources(self._ray.available_resources())

    def memory_summary(self) -> str:
        """Our objects as Ray sees them: id, size, where (inline = Ray's in-process store,
        shared = its plasma store, spilled), our ref count, what made it; then Ray's totals."""
        from core._private.objects.memory_summary import _size

        with self._lock:
            self._apply_events()
            rows = sorted((oid.hex(), e.ray_ref, e.count, e.name, e.kind) for oid, e in self._table.items())
        try:
            from ray.experimental import get_object_locations

            locations = get_object_locations([row[1] for row in rows], timeout_ms=5000)
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
            lines.append(f"{hexid:<56}  {(_size(size) if size is not None else '?'):>10}  {where:<8}  "
                         f"{count:>4}  {'put' if kind == 'put' else name}")
        lines.append("")
        lines.append(f"objects: {len(rows)} ({totals['inline']} inline, {totals['shared']} shared, "
                     f"{totals['spilled']} spilled) held by this process in Ray's object store")
        total = self._ray.cluster_resources().get("object_store_memory", 0.0)
        free = self._ray.available_resources().get("object_store_memory", 0.0)
        lines.append(f"Ray object store: {_size(total)} capacity across the cluster "
                     f"({_size(free)} not reserved; Ray counts usage per node, see `ray memory`)")
        return "\n".join(lines)

    # ── shutdown ───────────────────────────────────────────────────────────────────────────────
    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if refs_mod.current_runtime() is self:
            refs_mod.set_runtime(None)
        with self._lock:
            self._table.clear()
            self._events.clear()
        self._streams.clear()
        self._actors.clear()
        self._remotes.clear()
        self._last_remote.clear()
        self._shipped.clear()
        if self._owns_ray:
            self._ray.shutdown()
            self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


class RayWorkerRuntime(RayBackend):
    """The runtime inside a Ray worker: attached to the worker's Ray connection (never starts or
    stops Ray). It has a `worker_id`, so the API treats it as a worker (no `core.init`, no
    `free`/`cluster_resources`, which belong to the driver)."""

    def __init__(self, ray: Any) -> None:
        self._setup_state()
        self._ray = ray
        self.address = "attached"
        self.worker_id = os.getpid()
        _register_serializers(ray)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> list[bool]:  # type: ignore[override]
        ready, _ = super().wait(refs, num_returns, timeout)
        chosen = set(ready)
        return [r in chosen for r in refs]

    def request(self, op: str, *args: Any) -> None:
        """The worker side of `core.cancel`/`core.kill` (the local engine forwards these)."""
        if op == "cancel":
            self._cancel_oid(args[0], args[1])
        elif op == "kill":
            self.kill_actor(args[0])
        else:
            raise CoreError(f"{op} is not available inside a task on Ray")

    def shutdown(self) -> None:
        pass


_attach_lock = threading.Lock()


def _worker_runtime() -> RayBackend:
    """The process's Ray runtime: the driver's backend, or one attached now in a Ray worker."""
    rt = refs_mod.current_runtime()
    if isinstance(rt, RayBackend):
        return rt
    with _attach_lock:
        rt = refs_mod.current_runtime()
        if isinstance(rt, RayBackend):
            return rt
        if rt is not None:
            raise CoreError("a core object from Ray reached a process whose core session is not on Ray; "
                            "use core.init(address=...) in the driver")
        import ray

        rt = RayWorkerRuntime(ray)
        refs_mod.set_runtime(rt)
        return rt


# ─── what runs in Ray workers ───────────────────────────────────────────────────────────────────
def _task_entry(fn: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        _worker_runtime()
        return fn(*args, **kwargs)

    run.__name__ = getattr(fn, "__name__", "task")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    return run


def _stream_entry(fn: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        _worker_runtime()
        yield from fn(*args, **kwargs)

    run.__name__ = getattr(fn, "__name__", "task")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    return run


class _ActorHost:
    """The Ray actor that holds one instance of the user's class; every call goes through `call`
    (or `call_stream` for num_returns="streaming"), so the instance's methods need no Ray wrapping."""

    _target: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _worker_runtime()
        self._instance = type(self)._target(*args, **kwargs)

    def call(self, _method: str, /, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._instance, _method)(*args, **kwargs)

    def call_stream(self, _method: str, /, *args: Any, **kwargs: Any) -> Any:
        yield from getattr(self._instance, _method)(*args, **kwargs)


def _actor_host(cls: type) -> type:
    # Named after the user's class, so Ray's process titles and errors show it.
    return type(cls.__name__, (_ActorHost,), {"_target": cls, "__qualname__": cls.__qualname__})


# ─── pickling our refs and handles inside Ray's serialization ───────────────────────────────────
def _ref_to_ray(ref: ObjectRef) -> Any:
    rt = refs_mod.current_runtime()
    if not isinstance(rt, RayBackend):
        raise CoreError(f"{ref!r} cannot be sent through Ray: no Ray session in this process")
    return rt._entry(ref.binary).ray_ref


def _ref_from_ray(ray_ref: Any) -> ObjectRef:
    return _worker_runtime()._adopt(ray_ref, "borrowed", "borrowed")


def _handle_to_ray(handle: Any) -> tuple:
    rt = refs_mod.current_runtime()
    if not isinstance(rt, RayBackend):
        raise CoreError(f"{handle!r} cannot be sent through Ray: no Ray session in this process")
    return handle._actor_id, handle._name, handle._methods, rt._actor(handle._actor_id, handle._name)


def _handle_from_ray(state: tuple) -> Any:
    from core._private.actor import ActorHandle

    actor_id, name, methods, ray_handle = state
    _worker_runtime().register_actor(actor_id, ray_handle, name)
    return ActorHandle(actor_id, name, methods)


def _register_serializers(ray: Any) -> None:
    from core._private.actor import ActorHandle

    ray.util.register_serializer(ObjectRef, serializer=_ref_to_ray, deserializer=_ref_from_ray)
    ray.util.register_serializer(ActorHandle, serializer=_handle_to_ray, deserializer=_handle_from_ray)


class _DropMessages(logging.Filter):
    """Drops Ray's log records that start with one of the given texts (notices about what we chose)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# ─── errors and resources ───────────────────────────────────────────────────────────────────────
def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failed(ray: Any, ray_ref: Any) -> bool:
    try:
        ready, _ = ray.wait([ray_ref], timeout=0, fetch_local=False)
        if not ready:
            return False
        ray.get(ray_ref, timeout=0)
        return False
    except Exception:  # noqa: BLE001 - this one raised
        return True


def _translate(ray: Any, exc: BaseException, name: str) -> BaseException:
    """Our exception for a Ray one (ours pass through untouched)."""
    rx = ray.exceptions
    if isinstance(exc, CoreError) or not isinstance(exc, rx.RayError):
        return exc
    if isinstance(exc, rx.RayTaskError):
        cause = exc.__dict__.get("cause")
        if isinstance(cause, rx.RayError):   # a system error surfaced inside the task (cancel, ...)
            return _translate(ray, cause, name)
        if isinstance(cause, KeyboardInterrupt):
            return TaskCancelledError(f"task {name} was cancelled while running")
        tb = exc.__dict__.get("traceback_str") or str(exc)
        return TaskError.for_cause(name, cause, _ANSI.sub("", tb))
    message = _first_line(exc)
    if isinstance(exc, rx.GetTimeoutError):
        return GetTimeoutError(f"objects not ready after the timeout: {message}")
    if isinstance(exc, rx.TaskCancelledError):
        return TaskCancelledError(f"task {name} was cancelled")
    if isinstance(exc, (rx.WorkerCrashedError, rx.NodeDiedError, rx.OutOfMemoryError, rx.LocalRayletDiedError)):
        return WorkerCrashedError(f"the worker running task {name} died and retries ran out (Ray: {message})")
    if isinstance(exc, rx.RayActorError):
        return ActorDiedError(f"actor of {name} died: {message}")
    if isinstance(exc, rx.ObjectLostError):
        return ObjectLostError(f"object of {name} was lost: {message}")
    if isinstance(exc, (rx.ObjectStoreFullError, rx.OutOfDiskError)):
        return ObjectStoreFullError(f"Ray's object store is full: {message}")
    return CoreError(f"{type(exc).__name__} from Ray in {name}: {message}")


def _our_resources(ray_resources: dict) -> dict:
    """Ray's resource dict in our keys: CPU, GPU, object_store_memory, then custom resources
    (Ray's bookkeeping keys `memory`, `node:*`, `accelerator_type:*` left out)."""
    out = {"CPU": float(ray_resources.get("CPU", 0.0)), "GPU": float(ray_resources.get("GPU", 0.0)),
           "object_store_memory": float(ray_resources.get("object_store_memory", 0.0))}
    for key, value in ray_resources.items():
        if key in out or key == "memory" or key.startswith(("node:", "accelerator_type:")):
            continue
        out[key] = float(value)
    return out
