"""What a process does on Ray, driver or worker alike: objects, tasks, actors and streams.

    put/get/wait/future ──► ray.put/get/wait ──────────────┐  errors translated (errors.py)
    submit(TaskSpec "task") ──► Ray remote function (cached) ├─► ray refs ─► RefTable.adopt ─► ObjectRef
    submit("actor_method") ──► host.call(method) ────────────┘
    submit("actor_create") ──► Ray actor of the host class ─► actor id ─► Ray handle (kept here)

`RayClient` holds one `ray` connection and the state on top of it: the ref table, the Ray handles
of the actors this process knows, the Ray generators of its streams, and the Ray remote functions
made for our functions. The driver's runtime (backend.py) and a worker's runtime (worker.py) each
hold one; neither is a kind of the other. How our functions run inside Ray workers (wrapped so
that the worker runtime is attached first) is the worker side's knowledge, handed in as `Hosting`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, Callable, NamedTuple

import cloudpickle

from core._private.ray.errors import first_line, translate, translate_get_error
from core._private.ray.table import RefTable
from core._private.refs import IdSource, ObjectRef, ObjectRefGenerator
from core._private.taskspec import TaskSpec
from core.exceptions import ActorDiedError, CoreError, GetTimeoutError

__all__ = ["Hosting", "RayClient"]

_log = logging.getLogger("core")


class Hosting(NamedTuple):
    """How our code runs inside Ray workers (worker.py makes it)."""

    task: Callable[[Callable], Callable]     # a function -> the function Ray runs for it
    stream: Callable[[Callable], Callable]   # a generator function -> the generator Ray runs
    actor: Callable[[type], type]            # a class -> the Ray actor class that holds an instance


class RayClient:
    """Objects, tasks, actors and streams of one process on one Ray connection."""

    def __init__(self, ray: Any, hosting: Hosting) -> None:
        self.ray = ray
        self.table = RefTable()
        self._hosting = hosting
        self._ids = IdSource()                             # ids of our streams
        self._actors: dict[bytes, tuple[Any, str]] = {}   # actor id -> (Ray handle, name)
        self._killed: set[bytes] = set()
        self._streams: dict[bytes, tuple[Any, str]] = {}  # our stream id -> (Ray generator, name)
        self._remotes: dict[tuple, Any] = {}               # (shipped id, options) -> ray remote function
        self._shipped: dict[int, Any] = {}                 # keeps shipped objects (and so their ids) alive
        self._last_remote: dict[int, tuple] = {}           # shipped id -> (options dict, label, remote function)

    def ray_ref(self, oid: bytes) -> Any:
        return self.table.entry(oid).ray_ref

    # ── objects ────────────────────────────────────────────────────────────────────────────────
    def put(self, value: Any) -> ObjectRef:
        try:
            ray_ref = self.ray.put(value)
        except Exception as exc:
            raise translate(self.ray, exc, "put") from None
        return self.table.adopt(ray_ref, "put", "put")

    def get(self, refs: list[ObjectRef], timeout: float | None, writable: bool = False) -> list:
        entries = [self.table.entry(r.binary) for r in refs]
        try:
            values = self.ray.get([e.ray_ref for e in entries], timeout=timeout)
        except Exception as exc:
            raise translate_get_error(self.ray, exc, entries, timeout, self._killed) from None
        if writable:
            # A protocol-4 pickle round trip (no PickleBuffers): every array becomes a private,
            # writable copy.
            values = [cloudpickle.loads(cloudpickle.dumps(v, protocol=4)) for v in values]
        return values

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        if num_returns > len(refs):
            raise ValueError(f"num_returns={num_returns} is more than the {len(refs)} refs given")
        ray_refs = [self.table.entry(r.binary).ray_ref for r in refs]
        try:
            ready_refs, _ = self.ray.wait(ray_refs, num_returns=num_returns, timeout=timeout)
        except Exception as exc:
            raise translate(self.ray, exc, "wait") from None
        done = {r.binary() for r in ready_refs}
        ready, not_ready = [], []
        for ref in refs:
            (ready if ref.binary in done and len(ready) < num_returns else not_ready).append(ref)
        return ready, not_ready

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        entry = self.table.entry(ref.binary)
        ours: concurrent.futures.Future = concurrent.futures.Future()
        theirs = entry.ray_ref.future()
        ray = self.ray

        def done(f: concurrent.futures.Future, _keep=ref) -> None:
            try:
                ours.set_result(f.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the future
                ours.set_exception(translate(ray, exc, entry.name))

        theirs.add_done_callback(done)
        return ours

    # ── tasks ──────────────────────────────────────────────────────────────────────────────────
    def submit(self, spec: TaskSpec) -> Any:
        """Run a task or an actor call on Ray (its ref, its list of refs, or a streaming
        generator), or create an actor (its id)."""
        if spec.kind == "actor_create":
            return self._create_actor(spec)
        options = spec.options
        num_returns = options.get("num_returns", 1)
        ray_args, ray_kwargs = self._ray_args(spec.args, spec.kwargs)
        label = options.get("name") or spec.name
        try:
            if spec.kind == "actor_method":
                handle = self.ray_handle(spec.actor_id, spec.name)
                target = handle.call_stream if spec.streaming else handle.call
                out = target.options(num_returns=num_returns).remote(spec.method, *ray_args, **ray_kwargs)
            else:
                out = self._remote_function(spec.shipped, options, label).remote(*ray_args, **ray_kwargs)
        except CoreError:
            raise
        except Exception as exc:
            raise translate(self.ray, exc, label) from exc
        if spec.streaming:
            stream_id = self._ids.new()
            self._streams[stream_id] = (out, label)
            return ObjectRefGenerator(self, stream_id)
        if isinstance(out, list):
            return [self.table.adopt(r, label, spec.kind, spec.actor_id) for r in out]
        return self.table.adopt(out, label, spec.kind, spec.actor_id)

    def _ray_args(self, args: tuple, kwargs: dict) -> tuple[list, dict]:
        """Top-level refs become Ray refs (Ray resolves them); nested ones travel as our refs."""
        def sub(v: Any) -> Any:
            return self.table.entry(v.binary).ray_ref if type(v) is ObjectRef else v

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
            wrap = self._hosting.stream if ray_options["num_returns"] == "streaming" else self._hosting.task
            fn = self._remotes[key] = self.ray.remote(**ray_options)(wrap(shipped.obj))
        return fn

    def _create_actor(self, spec: TaskSpec) -> bytes:
        shipped, options = spec.shipped, spec.options
        host = self._remotes.get(("actor", id(shipped)))
        if host is None:
            self._shipped[id(shipped)] = shipped
            host = self._remotes[("actor", id(shipped))] = self.ray.remote(self._hosting.actor(shipped.obj))
        ray_options = {"num_cpus": options.get("num_cpus", 0), "num_gpus": options.get("num_gpus", 0),
                       "max_restarts": options.get("max_restarts", 0),
                       "max_task_retries": options.get("max_task_retries", 0)}
        if options.get("resources"):
            ray_options["resources"] = dict(options["resources"])
        ray_args, ray_kwargs = self._ray_args(spec.args, spec.kwargs)
        try:
            handle = host.options(**ray_options).remote(*ray_args, **ray_kwargs)
        except Exception as exc:
            raise translate(self.ray, exc, spec.name) from exc
        actor_id = handle._actor_id.binary()
        self._actors[actor_id] = (handle, spec.name)
        return actor_id

    # ── actors ─────────────────────────────────────────────────────────────────────────────────
    def ray_handle(self, actor_id: bytes | None, name: str) -> Any:
        """The Ray handle of one of our actors known in this process."""
        known = self._actors.get(actor_id) if actor_id is not None else None
        if known is None:
            raise ActorDiedError(f"cannot call {name}: actor {actor_id.hex() if actor_id else '?'} is unknown "
                                 f"in this process (its handle came from another session)")
        return known[0]

    def register_actor(self, actor_id: bytes, handle: Any, name: str) -> None:
        self._actors.setdefault(actor_id, (handle, name))

    def kill_actor(self, actor_id: bytes) -> None:
        known = self._actors.get(actor_id)
        if known is None:
            return
        self._killed.add(actor_id)
        self.ray.kill(known[0], no_restart=True)
        self._await_death(known[0])

    def _await_death(self, handle: Any, timeout: float = 30.0) -> None:
        """Return once Ray refuses calls on a killed actor: `ray.kill` only sends the request, and
        a call made before its death is published can still reach the actor and succeed (our
        contract, as the local engine's: after `core.kill`, calls raise ActorDiedError)."""
        ray = self.ray
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ray.get(handle.__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except ray.exceptions.RayActorError:
                return
            except Exception as exc:  # noqa: BLE001 - the kill was sent; the probe is best effort
                _log.warning("core.kill(): could not confirm the actor's death: %s", first_line(exc))
                return
            time.sleep(0.01)
        _log.warning("core.kill(): Ray still ran calls on the killed actor %.0f s after the kill",
                     timeout)

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
        return self.table.adopt(ray_ref, name, "stream")

    def release_stream(self, task_id: bytes) -> None:
        self._streams.pop(task_id, None)

    # ── cancel ─────────────────────────────────────────────────────────────────────────────────
    def cancel(self, oid: bytes, force: bool) -> None:
        entry = self.table.find(oid)
        if entry is None or entry.kind == "put":
            return
        try:
            # Ray cannot force-cancel an actor call (that would kill the actor): interrupt it instead.
            self.ray.cancel(entry.ray_ref, force=force and entry.kind != "actor_method")
        except Exception:  # already finished, or not a task: nothing to cancel
            pass

    def close(self) -> None:
        """Drop every hold on Ray objects, actors, streams and functions (Ray itself stays up)."""
        self.table.close()
        self._streams.clear()
        self._actors.clear()
        self._remotes.clear()
        self._last_remote.clear()
        self._shipped.clear()
