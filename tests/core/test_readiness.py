"""get and wait blocking until their objects are ready (local/readiness.py), with no process:
a stand-in condition whose `wait` is a wake-up of the io thread, making objects ready as a
batch of Dones would."""

from __future__ import annotations

import pytest

from core._private.local.readiness import first_pending, still_pending, wait_ready
from core._private.tasks.state import Obj
from core.exceptions import GetTimeoutError


class CountingObjects(dict):
    """The board's objects, counting how often a status is looked up."""

    lookups = 0

    def __getitem__(self, oid: bytes) -> Obj:
        self.lookups += 1
        return super().__getitem__(oid)


class Wakeups:
    """Each wait: `step(objects)` (an io batch) runs, then the waiter wakes."""

    def __init__(self, objects: dict, step) -> None:
        self.objects, self.step, self.count = objects, step, 0

    def wait(self, timeout: float | None = None) -> bool:
        self.count += 1
        self.step(self.objects, self.count)
        return True


def missing(oid: bytes) -> BaseException:
    return KeyError(f"unknown {oid!r}")


def objects_of(n: int) -> tuple[CountingObjects, list[bytes]]:
    objects = CountingObjects()
    oids = [i.to_bytes(4, "big") for i in range(n)]
    for oid in oids:
        objects[oid] = Obj("pending")
    return objects, oids


def ready_in_batches(size: int):
    """An io batch makes the next `size` objects ready, in order (a no-op flood's Dones)."""
    def step(objects: dict, count: int) -> None:
        for oid in list(objects)[(count - 1) * size: count * size]:
            dict.__getitem__(objects, oid).status = "ready"
    return step


def test_a_get_of_a_flood_looks_at_each_object_about_once_not_once_per_wakeup():
    objects, oids = objects_of(10_000)
    cond = Wakeups(objects, ready_in_batches(40))
    wait_ready(objects, oids, len(oids), None, cond, missing)
    assert cond.count == 250
    # each wake-up starts from the first object still pending; a full pass at the end (an
    # object seen ready may be pending again); a scan of all per wake-up would be 1.25M
    assert objects.lookups <= 10_000 + 250 + 10_000


def test_a_get_waits_for_an_object_made_pending_again_after_it_was_seen_ready():
    objects, oids = objects_of(3)

    def step(objs: dict, count: int) -> None:
        if count == 1:        # all ready, but the first is lost and rebuilt meanwhile
            for oid in oids:
                dict.__getitem__(objs, oid).status = "ready"
            dict.__getitem__(objs, oids[0]).status = "pending"
        elif count == 2:
            dict.__getitem__(objs, oids[0]).status = "ready"

    cond = Wakeups(objects, step)
    wait_ready(objects, oids, 3, None, cond, missing)
    assert cond.count == 2


def test_a_wait_does_not_count_an_object_made_pending_again():
    objects, oids = objects_of(3)
    statuses = {1: {0: "ready"}, 2: {1: "ready", 0: "pending"}, 3: {0: "ready"}}

    def step(objs: dict, count: int) -> None:   # the first is lost and rebuilt meanwhile
        for i, status in statuses[count].items():
            dict.__getitem__(objs, oids[i]).status = status

    cond = Wakeups(objects, step)
    wait_ready(objects, oids, 2, None, cond, missing)
    assert cond.count == 3
    assert still_pending(objects, oids) == oids[2:]


def test_a_wait_returns_once_enough_are_ready_in_any_order():
    objects, oids = objects_of(6)

    def step(objs: dict, count: int) -> None:   # the last ones first
        dict.__getitem__(objs, oids[-count]).status = "ready"

    cond = Wakeups(objects, step)
    wait_ready(objects, oids, 2, None, cond, missing)
    assert cond.count == 2
    assert still_pending(objects, oids) == oids[:4]


def test_an_unknown_object_and_the_timeout_are_errors_naming_them():
    objects, oids = objects_of(2)
    with pytest.raises(KeyError, match="unknown"):
        wait_ready(objects, oids + [b"gone"], 3, None, Wakeups(objects, lambda o, c: None), missing)
    with pytest.raises(GetTimeoutError, match=f"2 of 2 objects not ready.*{oids[0].hex()}"):
        wait_ready(objects, oids, 2, 0.0, Wakeups(objects, lambda o, c: None), missing)


def test_an_object_freed_while_waiting_is_reported_missing():
    objects, oids = objects_of(2)

    def step(objs: dict, count: int) -> None:
        dict.__getitem__(objs, oids[0]).status = "ready"
        del objs[oids[1]]

    with pytest.raises(KeyError, match="unknown"):
        wait_ready(objects, oids, 2, None, Wakeups(objects, step), missing)


def test_first_pending():
    objects, oids = objects_of(4)
    for oid in oids[:2]:
        objects[oid].status = "ready"
    objects[oids[3]].status = "failed"        # failed is not pending: reading it raises
    assert first_pending(objects, oids, 0) == 2
    assert first_pending(objects, oids, 3) == 4
