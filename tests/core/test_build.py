"""core.build(fn, *args): a value made once and stored as an object (a model's weights)."""

from __future__ import annotations

import numpy as np
import pytest

import core
from core.exceptions import CoreError


def make_weights(n: int, fill: float) -> dict:
    return {"w": np.full(n, fill), "name": "tiny"}


@pytest.fixture
def session():
    core.init(num_cpus=2)
    yield
    core.shutdown()


def test_build_gives_a_ref_to_the_value(session):
    ref = core.build(make_weights, 1000, fill=0.5)
    value = core.get(ref)
    assert value["name"] == "tiny" and value["w"].shape == (1000,) and float(value["w"].sum()) == 500.0


def test_tasks_read_a_built_value(session):
    @core.remote
    def total(weights: dict) -> float:
        return float(weights["w"].sum())

    ref = core.build(make_weights, 100, fill=2.0)
    assert core.get([total.remote(ref) for _ in range(4)]) == [200.0] * 4


def test_build_belongs_to_the_driver(session):
    @core.remote
    def inside() -> None:
        core.build(make_weights, 1, fill=1.0)

    with pytest.raises(CoreError, match=r"core.build\(\) belongs to the driver"):
        core.get(inside.remote())


def test_build_takes_a_callable(session):
    with pytest.raises(TypeError, match="takes a callable"):
        core.build(42)
