"""`core.build` on the local engine: a value made once, where the workers are forked from.

    build(fn, args, kwargs)  (driver)
      serialize (fn, args, kwargs) ──► zygote.build ──► the zygote runs fn and keeps the value
      ◄── its serialized size, or the factory's error, or "threads were left running"
      store.put_inherited(oid, size): an entry of that size, in no segment
      idle task workers forked before the build exit and are replaced by forks that have it
    afterwards
      a task's argument ──► store.locate ──► ("inherited", oid, size) to a worker that has it
                                         └─► otherwise a copy in a segment, written once by the
                                             zygote (a worker forked before the build and busy
                                             then, an actor's worker, the driver's own get); a
                                             worker asks for it itself (request COPY, answered
                                             off the engine's lock) if it is not made yet
      free / count 0 ──► zygote.drop: workers forked later do not carry it
      the zygote died ──► store.lose_inherited: reading an object only it held raises
                          ObjectLostError naming the object (not rebuilt: no lineage, as put)

Without a zygote that forks (none started, or it died, or a factory left threads running in it:
see zygote.py), or with refs among the arguments (the zygote has no session to read them), the
value is made in the driver and put once.
"""

from __future__ import annotations

from typing import Any, Callable

from core._private.local import messages as M
from core._private.local.zygote import Zygote
from core._private.local.zygote_builds import unpack_error
from core._private.objects.serialization import serialize
from core._private.refs import ObjectRef
from core._private.tasks.state import Obj
from core._private.taskspec import call_here, function_name
from core.exceptions import CoreError

# `LocalEngine` in annotations is local/engine.py's, not imported: the engine imports this module.


class Builder:
    def __init__(self, engine: "LocalEngine") -> None:
        self.engine = engine
        self.store = engine.store
        self._wired: Zygote | None = None

    def build(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> ObjectRef:
        engine = self.engine
        name = function_name(fn)
        zygote = engine.pool.zygote
        if zygote is None or not zygote.alive or not zygote.forks:
            return engine.put(call_here(fn, args, kwargs, name))
        try:
            ser = serialize((fn, args, kwargs))
        except CoreError as exc:
            raise CoreError(f"core.build({name}): the function or its arguments cannot be pickled, so "
                            f"they cannot be sent to the process the workers are forked from: "
                            f"{exc.__cause__ or exc}") from exc
        if ser.contained_refs:
            return engine.put(call_here(fn, args, kwargs, name))
        self._wire(zygote)
        oid = engine.new_id()
        reply = zygote.build(oid, name, ser.to_bytes())
        del ser
        if reply.error is not None:
            raise unpack_error(reply.error, name)
        self.store.put_inherited(oid, reply.size)
        if reply.threads:
            # The zygote forks no more: the value goes into the store now (its one copy).
            try:
                engine.collecting_if_full(lambda: self.store.view(oid).release())
            except BaseException:
                self.store.delete(oid)         # no copy, and the zygote lets it go: no object
                raise
            finally:
                zygote.drop(oid)
            self.store.disown(oid)
        obj = Obj("ready")
        with engine.locked:
            engine.board.objects[oid] = obj
            if not reply.threads:
                self._replace_idle_workers(oid)
        return ObjectRef(oid)

    def _replace_idle_workers(self, oid: bytes) -> None:
        """Idle task workers forked before the build exit, and forks that have it take their
        place (a fork costs milliseconds): they would otherwise read a copy from the store. Lock
        held."""
        engine = self.engine
        zygote = engine.pool.zygote
        if engine.board.closing or zygote is None or not (zygote.alive and zygote.forks):
            return                     # a replacement would not have it either
        for w in list(engine.pool.workers.values()):
            if w.alive and w.actor_id is None and not w.inflight and not w.blocked and oid not in w.inherits:
                # Seen as blocked, the scheduler plans nothing for it until its exit is reaped
                # (scheduler.plan takes only workers neither busy nor blocked).
                w.blocked += 1
                w.chan.send(M.Exit(M.EXIT))
                engine.pool.spawn(actor_id=None)

    def _wire(self, zygote: Zygote) -> None:
        """Tell the store who holds built values, once per zygote."""
        if self._wired is zygote:
            return
        self._wired = zygote
        store, workers = self.store, self.engine.pool.workers

        def heirs(oid: bytes, wid: int) -> bool:
            worker = workers.get(wid)
            return worker is not None and oid in worker.inherits

        store.heirs = heirs
        store.materializer = zygote.materialize
        store.inherited_dropped = zygote.drop
        zygote.on_exit.append(lambda: store.lose_inherited(
            "object {} (made by core.build) is lost: the zygote process that held it exited"))

