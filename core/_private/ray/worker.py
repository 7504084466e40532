"""The worker side of the Ray backend: what runs inside Ray's worker processes, and how our refs
and actor handles travel through Ray's pickling.

    driver: ray.remote(task_entry(f)) ──► Ray worker: run(*args) ──► process_client() ──► f(*args)
            ray.remote(actor_host(C))  ──► Ray actor: _ActorHost(C) ──┘  (attaches once:   user code
                                                                       RayWorkerRuntime  calls core.*
                                                                       in the slot)      as anywhere

A Ray worker has no `core.init`: the first of our functions to run there (or the first of our
refs to be unpickled there) attaches a `RayWorkerRuntime` to the worker's Ray connection. It
never starts or stops Ray; it holds a `RayClient` (client.py) like the driver's runtime does.

Pickling: Ray pickles task arguments, results and `put` values with its own cloudpickle. We
register a reducer with it (in the driver and in each worker when it attaches) that pickles our
`ObjectRef` as the `ray.ObjectRef` itself (so Ray's borrowing protocol keeps the object alive
wherever the ref travels) and our `ActorHandle` with its Ray actor handle. The deserializers are
module-level functions, so Ray's pickles name them and any worker can load them.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from core._private import runtime
from core._private.actor import ActorHandle
from core._private.ray.client import Hosting, RayClient
from core._private.ray.config import import_ray
from core._private.refs import ObjectRef
from core._private.taskspec import TaskSpec
from core.exceptions import CoreError

__all__ = ["HOSTING", "RayWorkerRuntime", "connect", "disconnect", "process_client"]


class RayWorkerRuntime(runtime.DriverOnlyCalls):
    """The runtime inside a Ray worker (`runtime.Runtime`): the client of the worker's Ray
    connection, attached on first use; it never starts or stops Ray, and the session's calls
    (free, resources, memory summary) say they belong to the driver."""

    def __init__(self, client: RayClient) -> None:
        self.client = client

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

    # ── the session is the driver's (free, resources, build, ...: runtime.DriverOnlyCalls) ──
    def shutdown(self) -> None:
        """Nothing to stop: Ray owns this process."""


# ─── this process's Ray connection ──────────────────────────────────────────────────────────────
# Ray allows one connection per process; our pickling reducers need its client. Set by the
# driver's runtime while its session is up, or here when a Ray worker attaches.
_client: RayClient | None = None
_attach_lock = threading.Lock()


def connect(client: RayClient) -> None:
    """Make `client` this process's Ray connection (the driver, at `core.init(address=...)`)."""
    global _client
    _client = client


def disconnect(client: RayClient) -> None:
    global _client
    if _client is client:
        _client = None


def process_client() -> RayClient:
    """This process's Ray client: the driver's, or one attached now in a Ray worker."""
    global _client
    client = _client
    if client is not None:
        return client
    with _attach_lock:
        if _client is not None:
            return _client
        if runtime.current() is not None:
            raise CoreError("a core object from Ray reached a process whose core session is not on Ray; "
                            "use core.init(address=...) in the driver")
        ray = import_ray()   # loaded already: this is a Ray worker
        client = RayClient(ray, HOSTING)
        register_serializers(ray)
        _client = client
        runtime.set_current(RayWorkerRuntime(client))
        return client


# ─── what runs in Ray workers ───────────────────────────────────────────────────────────────────
def _task_entry(fn: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        process_client()
        return fn(*args, **kwargs)

    run.__name__ = getattr(fn, "__name__", "task")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    return run


def _stream_entry(fn: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        process_client()
        yield from fn(*args, **kwargs)

    run.__name__ = getattr(fn, "__name__", "task")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    return run


class _ActorHost:
    """The Ray actor that holds one instance of the user's class; every call goes through `call`
    (or `call_stream` for num_returns="streaming"), so the instance's methods need no Ray wrapping."""

    _target: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        process_client()
        self._instance = type(self)._target(*args, **kwargs)

    def call(self, _method: str, /, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._instance, _method)(*args, **kwargs)

    def call_stream(self, _method: str, /, *args: Any, **kwargs: Any) -> Any:
        yield from getattr(self._instance, _method)(*args, **kwargs)


def _actor_host(cls: type) -> type:
    # Named after the user's class, so Ray's process titles and errors show it.
    return type(cls.__name__, (_ActorHost,), {"_target": cls, "__qualname__": cls.__qualname__})


HOSTING = Hosting(task=_task_entry, stream=_stream_entry, actor=_actor_host)


# ─── pickling our refs and handles inside Ray's serialization ───────────────────────────────────
def _sending_client(what: Any) -> RayClient:
    if _client is None:
        raise CoreError(f"{what!r} cannot be sent through Ray: no Ray session in this process")
    return _client


def _ref_to_ray(ref: ObjectRef) -> Any:
    return _sending_client(ref).ray_ref(ref.binary)


def _ref_from_ray(ray_ref: Any) -> ObjectRef:
    return process_client().table.adopt(ray_ref, "borrowed", "borrowed")


def _handle_to_ray(handle: ActorHandle) -> tuple:
    client = _sending_client(handle)
    return handle._actor_id, handle._name, handle._methods, client.ray_handle(handle._actor_id, handle._name)


def _handle_from_ray(state: tuple) -> ActorHandle:
    actor_id, name, methods, ray_handle = state
    process_client().register_actor(actor_id, ray_handle, name)
    return ActorHandle(actor_id, name, methods)


def register_serializers(ray: Any) -> None:
    """Teach Ray's pickler (in this process) to carry our refs and actor handles."""
    ray.util.register_serializer(ObjectRef, serializer=_ref_to_ray, deserializer=_ref_from_ray)
    ray.util.register_serializer(ActorHandle, serializer=_handle_to_ray, deserializer=_handle_from_ray)
