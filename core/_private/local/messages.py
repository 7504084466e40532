"""Every message between the driver and a worker (and between the driver and the zygote), by name.

    driver ─► worker   Tasks  Reply  Function  ReleaseSegments  Exit  Reclaim
    worker ─► driver   Hello  Done   Yield     Request  Put  Submit  Refs  Ended
    either way         Batch (several messages in one frame)
    driver ◄► zygote   ZygoteImport  ZygoteSpawn  ZygotePid  ZygoteExit (own socket, own table)
                       ZygoteBuild ─► ZygoteBuilt   ZygoteMaterialize ─► ZygoteMaterialized
                       ZygoteDrop  (core.build: values the zygote holds for its forks)

A message is a `NamedTuple` whose first field is its kind: it *is* its wire tuple, with names.
`encode(msg)` gives the plain tuple that is pickled (no class travels, so the frames are as small
as before), `decode(raw)` names it again on receipt (`protocol.FrameReader` does, so receivers
read `msg.task_id`, not `msg[1]`). Senders build them as `Done(DONE, task_id, ...)`. A tuple
built by hand in the same order still encodes and decodes the same.

The payloads that are records themselves are named too: the tasks of a `Tasks` message
(`TaskMessage`), a task submitted from inside a task (`WireTask`), and the arguments of each
`Request` op (`GetArgs`, `WaitArgs`, ... keyed by the op's name in `REQUEST_ARGS`). An object's
location, in replies and `Done` results, is the store's: ("inline", bytes) | ("shared", name,
size) | ("error", exception).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, NotRequired, TypedDict, Union

from core._private.tasks.timeline import KIND_CODE
from core.exceptions import CoreError

# ─── kinds ──────────────────────────────────────────────────────────────────────────────────────
# driver -> worker
TASKS = "tasks"
REPLY = "reply"
FUNCTION = "function"
RELEASE_SEGMENTS = "release"
EXIT = "exit"
RECLAIM = "reclaim"
# worker -> driver
HELLO = "hello"
DONE = "done"
YIELD = "yield"
REQUEST = "request"
PUT = "put"
SUBMIT = "submit"
REFS = "refs"
ENDED = "ended"
# either way
BATCH = "batch"


# ─── records carried inside messages ────────────────────────────────────────────────────────────
class TaskMessage(TypedDict):
    """One task as the driver sends it to a worker (items of `Tasks.tasks`)."""

    task_id: bytes
    kind: str                     # "task" | "actor_create" | "actor_method"
    fn_id: bytes | None
    name: str
    method: str | None
    # ("inline", pickled (args, kwargs), arg_locs) | ("stored", (oid, location), arg_locs);
    # arg_locs: [(oid, location)] of the top-level ref arguments, in placeholder order
    args: tuple
    return_ids: list[bytes]
    num_returns: int
    streaming: bool
    env: dict[str, str] | None    # environment for the task's run (CUDA_VISIBLE_DEVICES)
    # only while the session records its timeline, for the worker to echo in the task's ENDED:
    # when it was submitted, and by which worker (None: the driver); both None for an actor's
    # constructor (not submitted as a task). "t_sent" is the worker's own, from its Tasks message
    t_submit: NotRequired[float | None]
    submitter: NotRequired[int | None]
    t_sent: NotRequired[float]


class WireTask(TypedDict, total=False):
    """A task submitted from inside a task (`Submit.spec`, `CreateActorArgs.spec`): refs
    travel as ids; the driver counts them again on receipt."""

    task_id: bytes
    kind: str
    name: str
    fn_id: bytes | None
    fn_blob: bytes                # the function, the first time this worker submits it
    args: tuple                   # ("inline", bytes) | ("stored", oid)
    arg_refs: list[bytes]
    held: list[bytes]
    return_ids: list[bytes]
    num_returns: int
    streaming: bool
    need: dict[str, float]
    max_retries: int
    retry_exceptions: Any
    actor_id: bytes | None
    method: str | None


# ─── requests: a worker's nested core call, answered by a Reply with the same request_id ───────
GET = "get"                  # -> [location per oid]
WAIT = "wait"                # -> [ready? per oid]
CREATE = "create"            # -> (segment name, size): room in the store for a large value
CANCEL = "cancel"            # -> None
KILL = "kill"                # -> None
CREATE_ACTOR = "create_actor"  # -> the actor's id
RESOURCES = "resources"      # -> (total, available)
COPY = "copy"                # -> location in the store of a built object this worker lacks


class GetArgs(NamedTuple):
    oids: list[bytes]
    timeout: float | None


class WaitArgs(NamedTuple):
    oids: list[bytes]
    num_returns: int
    timeout: float | None


class CreateArgs(NamedTuple):
    oid: bytes
    size: int


class CancelArgs(NamedTuple):
    oid: bytes
    force: bool


class KillArgs(NamedTuple):
    actor_id: bytes


class CreateActorArgs(NamedTuple):
    spec: WireTask
    fn_blob: bytes
    max_restarts: int


class ResourcesArgs(NamedTuple):
    pass


class CopyArgs(NamedTuple):
    oid: bytes


RequestArgs = Union[GetArgs, WaitArgs, CreateArgs, CancelArgs, KillArgs, CreateActorArgs, ResourcesArgs,
                    CopyArgs]
REQUEST_ARGS: dict[str, type] = {GET: GetArgs, WAIT: WaitArgs, CREATE: CreateArgs, CANCEL: CancelArgs,
                                 KILL: KillArgs, CREATE_ACTOR: CreateActorArgs, RESOURCES: ResourcesArgs,
                                 COPY: CopyArgs}


# ─── driver -> worker ───────────────────────────────────────────────────────────────────────────
class Tasks(NamedTuple):
    """Tasks to run, in order (a worker queues them; a batch of short tasks, or the next one)."""
    kind: Literal["tasks"]
    tasks: list[TaskMessage]
    # while the session records its timeline: when the batch was sent (the worker keeps an ENDED
    # of each task, and echoes it there); None otherwise
    timeline: float | None = None


class Reply(NamedTuple):
    """The answer to a worker's Request: `payload` is the result, or the exception when not ok."""
    kind: Literal["reply"]
    request_id: int
    ok: bool
    payload: Any


class Function(NamedTuple):
    """A function or class the worker's next tasks use, sent once per worker."""
    kind: Literal["function"]
    fn_id: bytes
    blob: bytes


class ReleaseSegments(NamedTuple):
    """Segments the store dropped: the worker closes its cached mappings of them."""
    kind: Literal["release"]
    names: list[str]


class Exit(NamedTuple):
    kind: Literal["exit"]


class Reclaim(NamedTuple):
    """Tasks queued behind the running one that the driver took back (the worker blocked)."""
    kind: Literal["reclaim"]
    task_ids: list[bytes]


# ─── worker -> driver ───────────────────────────────────────────────────────────────────────────
class Hello(NamedTuple):
    kind: Literal["hello"]
    worker_id: int
    pid: int


class Done(NamedTuple):
    """A task finished: `results` is [(location, contained ids)] per return (the item count for
    a streaming task) and `error` None, or `results` None and `error` the exception to raise."""
    kind: Literal["done"]
    task_id: bytes
    results: Any
    error: BaseException | None
    seconds: float                # time it ran, loading its function left out


class Yield(NamedTuple):
    """Item `index` of a streaming task: `result` is (location, contained ids)."""
    kind: Literal["yield"]
    task_id: bytes
    index: int
    result: tuple


class Request(NamedTuple):
    """A nested core call from task code (see the ops above); the worker blocks for its Reply."""
    kind: Literal["request"]
    request_id: int
    op: str
    args: RequestArgs


class Put(NamedTuple):
    """core.put inside a task: the value's location and the ids of the refs it contains."""
    kind: Literal["put"]
    oid: bytes
    result: tuple
    contained: list[bytes]


class Submit(NamedTuple):
    kind: Literal["submit"]
    spec: WireTask


class Refs(NamedTuple):
    """Borrows this worker took and dropped, and shared views it closed, since the last report;
    always sent before the Done of the task that made them."""
    kind: Literal["refs"]
    added: list[bytes]
    removed: list[bytes]
    unpinned: list[bytes]


class Ended(NamedTuple):
    """The tasks whose Dones follow in the same batch, while the session records its timeline:
    their ENDEDs (tasks/timeline.py), packed, their functions' names and the text of their
    errors; the driver keeps them as they came until core.timeline() reads them."""
    kind: Literal["ended"]
    packed: bytes
    names: list[str]                # one per ENDED
    errors: list[tuple[int, str]]   # (index among the ENDEDs, "Type: first line")


class Batch(NamedTuple):
    """Several messages in one frame, applied in order."""
    kind: Literal["batch"]
    messages: list


Message = Union[Tasks, Reply, Function, ReleaseSegments, Exit, Reclaim, Hello, Done, Yield, Request,
                Put, Submit, Refs, Ended, Batch]

_CLASSES: dict[str, Any] = {
    TASKS: Tasks, REPLY: Reply, FUNCTION: Function, RELEASE_SEGMENTS: ReleaseSegments, EXIT: Exit,
    RECLAIM: Reclaim, HELLO: Hello, DONE: Done, YIELD: Yield, REQUEST: Request, PUT: Put,
    SUBMIT: Submit, REFS: Refs, ENDED: Ended, BATCH: Batch}


# ─── sizes, for the timeline ───────────────────────────────────────────────────────────────────
NAN = float("nan")    # an ENDED's t_submit when there is none (an actor's constructor)


def ended(task: TaskMessage, began: float, seconds: float, results: Any, t_sent: float) -> tuple:
    """A task's ENDED values (tasks/timeline.py: ENDED_VALUES), as its worker keeps them while the
    session records: what the driver's messages said of it (its submit, when it was sent), and
    what the worker measured: its arguments' and results' bytes are read from their locations
    (-1: no results). Most tasks (inline arguments without refs, one inline result) take no
    call: this runs once per task."""
    args = task["args"]
    kind, payload, arg_locs = args
    n_args = len(payload) if kind == "inline" and not arg_locs else arg_bytes(args)
    if type(results) is list and len(results) == 1 and results[0][0][0] == "inline":
        n_out = len(results[0][0][1])
    else:
        n_out = result_bytes(results)
    t_submit, submitter = task.get("t_submit"), task.get("submitter")
    return (task["task_id"], began, seconds, n_args, n_out, NAN if t_submit is None else t_submit, t_sent,
            -1 if submitter is None else submitter, KIND_CODE[task["kind"]])


def arg_bytes(args: tuple) -> int:
    """Bytes of a task message's arguments: the inline blob (or the stored one) and each ref
    argument's object, as located (("inline", bytes) or ("shared", segment, size))."""
    n = len(args[1]) if args[0] == "inline" else _loc_size(args[1][1])
    for _, loc in args[2]:
        n += _loc_size(loc)
    return n


def result_bytes(results: Any) -> int:
    """Bytes of a Done's results, from their locations; -1 when there are none (a streaming
    task's count, an error)."""
    if type(results) is not list:
        return -1
    n = 0
    for loc, _contained in results:
        n += _loc_size(loc)
    return n


def _loc_size(loc: tuple) -> int:
    """Bytes a location makes the worker read or write: an inherited value (core.build) is in
    its memory already."""
    if loc[0] == "inherited":
        return 0
    return len(loc[1]) if loc[0] == "inline" else loc[-1]


# ─── encode / decode ────────────────────────────────────────────────────────────────────────────
def encode(msg: Message | tuple) -> tuple:
    """The plain tuple that goes on the wire."""
    cls = type(msg)
    if cls is Batch:
        return (BATCH, [encode(m) for m in msg.messages])
    if cls is Request:
        return (REQUEST, msg.request_id, msg.op, tuple(msg.args))
    return tuple(msg)   # the same object when it is a plain tuple already


def decode(raw: tuple) -> Message:
    """The named message for a tuple from the wire."""
    cls = _CLASSES.get(raw[0])
    if cls is None:
        raise CoreError(f"unknown message kind {raw[0]!r} (expected one of {', '.join(sorted(_CLASSES))})")
    if cls is Batch:
        return Batch(BATCH, [decode(m) for m in raw[1]])
    if cls is Request:
        args_cls = REQUEST_ARGS.get(raw[2])
        args = args_cls._make(raw[3]) if args_cls is not None else raw[3]  # unknown op: the driver says so
        return Request(REQUEST, raw[1], raw[2], args)
    return cls._make(raw)


# ─── driver <-> zygote (its own SEQPACKET socket; see zygote.py) ────────────────────────────────
class ZygoteImport(NamedTuple):
    """driver -> zygote: import these modules too, before the next forks."""
    kind: Literal["import"]
    modules: list[str]


class ZygoteSpawn(NamedTuple):
    """driver -> zygote: fork a worker running worker.main(fds + args) (the fds ride along)."""
    kind: Literal["spawn"]
    wid: int
    args: list[str]


class ZygotePid(NamedTuple):
    """zygote -> driver: the pid of the worker forked for `wid`."""
    kind: Literal["pid"]
    wid: int
    pid: int


class ZygoteExit(NamedTuple):
    """zygote -> driver: a worker it forked exited (reaped), with Popen's returncode."""
    kind: Literal["exit"]
    pid: int
    returncode: int


class ZygoteBuild(NamedTuple):
    """driver -> zygote: run a factory and keep its value as object `oid`; the serialized
    (fn, args, kwargs) ride along in a memfd (SCM_RIGHTS), whatever their size."""
    kind: Literal["build"]
    oid: bytes
    name: str


class ZygoteBuilt(NamedTuple):
    """zygote -> driver: the factory ran. `size`: the value's serialized size; `error`: None, or
    the TaskError to raise as (pickled, text) (zygote_builds.unpack_error); `threads`: it left threads
    running, so the zygote no longer forks (the driver has it write the value into the store at
    once, then drop it)."""
    kind: Literal["built"]
    oid: bytes
    size: int
    error: tuple | None
    threads: bool


class ZygoteMaterialize(NamedTuple):
    """driver -> zygote: write the value of `oid` into segment `segment` (`size` bytes)."""
    kind: Literal["materialize"]
    oid: bytes
    segment: str
    size: int


class ZygoteMaterialized(NamedTuple):
    kind: Literal["materialized"]
    oid: bytes
    error: tuple | None           # as ZygoteBuilt.error


class ZygoteDrop(NamedTuple):
    """driver -> zygote: forget `oid` (freed): workers forked from now on do not carry it."""
    kind: Literal["drop"]
    oid: bytes


ZygoteMessage = Union[ZygoteImport, ZygoteSpawn, ZygotePid, ZygoteExit, ZygoteBuild, ZygoteBuilt,
                      ZygoteMaterialize, ZygoteMaterialized, ZygoteDrop]
_ZYGOTE_CLASSES: dict[str, Any] = {"import": ZygoteImport, "spawn": ZygoteSpawn, "pid": ZygotePid,
                                   "exit": ZygoteExit, "build": ZygoteBuild, "built": ZygoteBuilt,
                                   "materialize": ZygoteMaterialize, "materialized": ZygoteMaterialized,
                                   "drop": ZygoteDrop}


def decode_zygote(raw: tuple) -> ZygoteMessage:
    cls = _ZYGOTE_CLASSES.get(raw[0])
    if cls is None:
        raise CoreError(f"unknown zygote message kind {raw[0]!r}")
    return cls._make(raw)
