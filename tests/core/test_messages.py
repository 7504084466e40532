"""The wire messages: every kind round-trips through encode/pickle/decode with its fields named,
and what goes on the wire is a plain tuple (no class pickled with each message)."""

from __future__ import annotations

import pickle
import socket

import pytest

from core._private.local import messages as M
from core._private.local import protocol as P
from core.exceptions import CoreError

EXAMPLES = [
    M.Tasks(M.TASKS, [{"task_id": b"t" * 20, "kind": "task", "fn_id": b"f" * 16, "name": "f", "method": None,
                       "args": ("inline", b"xx", []), "return_ids": [b"t" * 20], "num_returns": 1,
                       "streaming": False, "env": None}]),
    M.Tasks(M.TASKS, [{"task_id": b"u" * 20, "kind": "task", "fn_id": b"f" * 16, "name": "f", "method": None,
                       "args": ("inline", b"xx", []), "return_ids": [b"u" * 20], "num_returns": 1,
                       "streaming": False, "env": None}], True),   # the session records its timeline
    M.Reply(M.REPLY, 7, True, [("inline", b"abc")]),
    M.Function(M.FUNCTION, b"f" * 16, b"blob"),
    M.ReleaseSegments(M.RELEASE_SEGMENTS, ["seg-1"]),
    M.Exit(M.EXIT),
    M.Reclaim(M.RECLAIM, [b"t" * 20]),
    M.Hello(M.HELLO, 3, 1234),
    M.Done(M.DONE, b"t" * 20, [(("inline", b"r"), [])], None, 0.01),
    M.Yield(M.YIELD, b"t" * 20, 0, (("inline", b"r"), [])),
    M.Request(M.REQUEST, 1, M.GET, M.GetArgs([b"o" * 20], None)),
    M.Request(M.REQUEST, 2, M.WAIT, M.WaitArgs([b"o" * 20], 1, 0.5)),
    M.Request(M.REQUEST, 3, M.CREATE, M.CreateArgs(b"o" * 20, 4096)),
    M.Request(M.REQUEST, 4, M.CANCEL, M.CancelArgs(b"o" * 20, False)),
    M.Request(M.REQUEST, 5, M.KILL, M.KillArgs(b"a" * 20)),
    M.Request(M.REQUEST, 6, M.CREATE_ACTOR, M.CreateActorArgs({"task_id": b"a" * 20}, b"blob", 0)),
    M.Request(M.REQUEST, 7, M.RESOURCES, M.ResourcesArgs()),
    M.Put(M.PUT, b"o" * 20, ("inline", b"v"), []),
    M.Submit(M.SUBMIT, {"task_id": b"t" * 20, "kind": "task"}),
    M.Refs(M.REFS, [b"a" * 20], [], [b"b" * 20]),
    M.Ended(M.ENDED, b"t" * 20 + bytes(53), ["f"], [(0, "ValueError: no")]),
    M.Batch(M.BATCH, [M.Refs(M.REFS, [], [b"a" * 20], []), M.Done(M.DONE, b"t" * 20, None, ValueError("x"), 0.0)]),
]


def _plain(value):
    """True if `value` holds no NamedTuple anywhere (only builtins travel)."""
    if isinstance(value, tuple) and type(value) is not tuple:
        return False
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return True


def test_every_kind_has_a_class_and_an_example():
    assert {type(m) for m in EXAMPLES} == set(M.Message.__args__)
    assert {m.kind for m in EXAMPLES} == set(M._CLASSES)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: f"{m.kind}-{getattr(m, 'op', '')}")
def test_round_trip_keeps_kind_and_fields(msg):
    raw = M.encode(msg)
    assert type(raw) is tuple and raw[0] == msg.kind and _plain(raw)
    back = M.decode(pickle.loads(pickle.dumps(raw, protocol=5)))
    assert type(back) is type(msg)
    assert repr(back) == repr(msg)   # exceptions compare by identity; their repr is enough here
    if isinstance(msg, M.Request):
        assert type(back.args) is M.REQUEST_ARGS[msg.op]


def test_a_message_reads_by_name_and_by_position_alike():
    done = M.Done(M.DONE, b"t", [1], None, 0.5)
    assert (done.kind, done.task_id, done.results, done.error, done.seconds) == tuple(done)
    assert done[0] == M.DONE and done[1] == b"t"


def test_the_wire_is_no_bigger_than_a_plain_tuple():
    msg = M.Done(M.DONE, b"t" * 20, [(("inline", b"r"), [])], None, 0.01)
    assert P.dumps(msg) == P.dumps(tuple(msg))


def test_an_unknown_kind_is_named():
    with pytest.raises(CoreError, match="unknown message kind 'bogus'"):
        M.decode(("bogus", 1))


def test_frames_arrive_decoded_whole_and_in_order():
    a, b = socket.socketpair()
    try:
        sent = [M.Hello(M.HELLO, 1, 2), M.Batch(M.BATCH, [M.Exit(M.EXIT)]), M.Reclaim(M.RECLAIM, [b"x"])]
        for msg in sent:
            P.send_frame(a, msg)
        reader = P.FrameReader()
        got: list = []
        while len(got) < len(sent):
            got.extend(P.recv_blocking(b, reader))
        assert [type(m) for m in got] == [M.Hello, M.Batch, M.Reclaim]
        assert got[1].messages == [M.Exit(M.EXIT)] and got[2].task_ids == [b"x"]
    finally:
        a.close()
        b.close()


def test_zygote_messages_decode_by_kind():
    assert M.decode_zygote(("pid", 3, 99)) == M.ZygotePid("pid", 3, 99)
    assert M.decode_zygote(("exit", 99, -9)).returncode == -9
    with pytest.raises(CoreError, match="unknown zygote message"):
        M.decode_zygote(("fork", 1))


def test_the_timelines_sizes_are_read_from_the_locations():
    inline = ("inline", b"x" * 30, [])
    with_refs = ("inline", b"x" * 30, [(b"a", ("shared", "seg", 4096)), (b"b", ("inline", b"yy")),
                                       (b"c", ("inherited", b"c", 10**9))])   # core.build's: no copy
    stored = ("stored", (b"s", ("shared", "seg", 300_000)), [])
    assert [M.arg_bytes(a) for a in (inline, with_refs, stored)] == [30, 30 + 4096 + 2, 300_000]
    assert M.result_bytes([(("inline", b"abc"), []), (("shared", "seg", 4096), [b"x"])]) == 3 + 4096
    assert M.result_bytes([(("inline", b"abc"), [])]) == 3 and M.result_bytes([(("shared", "s", 9), [])]) == 9
    assert M.result_bytes(None) == -1 and M.result_bytes(3) == -1    # none: an error's; a stream's count
    # a task's ENDED values: the same sizes, the common case without a call
    # and what the driver's messages said of it, echoed: its submit and when it was sent
    one = [(("inline", b"abc"), [])]

    def task(args, **submit):
        return {"task_id": b"t", "kind": "actor_method", "name": "A.f", "args": args, **submit}

    assert M.ended(task(inline, t_submit=1.0, submitter=None), 1.5, 0.25, one, 1.25) == (
        b"t", 1.5, 0.25, 30, 3, 1.0, 1.25, -1, 2)                     # -1: the driver; 2: actor_method
    assert M.ended(task(with_refs, t_submit=1.0, submitter=4), 1.5, 0.25, one + one, 1.25)[3:8] == (
        30 + 4096 + 2, 6, 1.0, 1.25, 4)
    constructor = M.ended(task(stored), 1.5, 0.25, None, 1.25)       # no submit: not a task's
    assert constructor[3:5] == (300_000, -1) and constructor[5] != constructor[5] and constructor[7] == -1
