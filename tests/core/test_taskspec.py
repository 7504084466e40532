"""TaskSpec and argument packing, without a session or a process."""

from __future__ import annotations

import pytest

from core._private import runtime
from core._private.objects.serialization import deserialize
from core._private.refs import ObjectRef, return_id
from core._private.taskspec import ArgPlaceholder, TaskSpec, pack_args, return_ids


@pytest.fixture(autouse=True)
def no_runtime(monkeypatch):
    monkeypatch.setattr(runtime, "_current", None)   # refs made here count for nothing


def _never_stored(ser):
    raise AssertionError("small arguments must travel inline")


def test_small_arguments_travel_inline_with_top_level_refs_as_placeholders():
    top, nested = ObjectRef(b"a" * 20), ObjectRef(b"b" * 20)
    packed = pack_args((1, top), {"k": [nested], "r": top}, 1024, _never_stored)
    kind, payload = packed.args
    assert kind == "inline" and packed.arg_refs == [top, top] and packed.held == [nested]
    args, kwargs = deserialize(payload)
    assert args[0] == 1 and isinstance(args[1], ArgPlaceholder) and args[1].index == 0
    assert kwargs["k"] == [nested] and kwargs["r"].index == 1


def test_large_arguments_are_stored_and_held():
    stored = ObjectRef(b"s" * 20)
    seen = []

    def put(ser):
        seen.append(ser.total_size)
        return stored

    packed = pack_args((b"x" * 5000,), {}, 1024, put)
    assert packed.args == ("stored", stored) and packed.held == [stored] and seen and seen[0] > 1024


def test_return_ids_share_the_task_id_prefix():
    task_id = b"t" * 20
    assert return_ids(task_id, 1) == [task_id]
    assert return_ids(task_id, 3) == [return_id(task_id, i) for i in range(3)]
    assert len({oid[:16] for oid in return_ids(task_id, 3)}) == 1


def test_a_spec_knows_its_returns():
    spec = TaskSpec("task", "f", None, (), {}, {"num_returns": "streaming"})
    assert spec.streaming and spec.num_returns == 1
    spec = TaskSpec("task", "f", None, (), {}, {"num_returns": 2})
    assert not spec.streaming and spec.num_returns == 2
    with pytest.raises(AttributeError):
        spec.extra = 1   # slots: a typo in a field name fails
