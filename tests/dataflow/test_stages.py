"""Multi-stage pipelines on a real `core` session: the spec's stages, fusing, actor pools,
blocks of N-d arrays between stages, failures per stage, dead actors, resume and GPUs."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataflow import Pipeline, RunError, SpecError
from dataflow import plan as P
from dataflow import spec as S
from dataflow import streaming
from tests.dataflow import helpers

H = "tests.dataflow.stage_helpers"


def runtime(tmp_path, **extra):
    return {"num_cpus": 2, "object_store_memory": "256MB", "spill": str(tmp_path / "spill"), **extra}


def stages3(**model_stage):
    return [{"name": "parse", "fn": f"{H}:images", "fn_kwargs": {"size": 4}},
            {"name": "model", "fn": f"{H}:MeanModel", "concurrency": 2, "batch_size": 100,
             "model": {"factory": f"{H}:weights", "args": {"mb": 1}}, **model_stage},
            {"name": "post", "fn": f"{H}:fail_on_bad"}]


def pipeline(tmp_path, data, stages, **rt):
    return Pipeline(source={"parquet": data, "columns": ["id", "x"]}, stages=stages,
                    sink=str(tmp_path / "out"), runtime=runtime(tmp_path, **rt))


def output(tmp_path, sub="out") -> pa.Table:
    files = sorted((tmp_path / sub).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")


# -- spec ------------------------------------------------------------------------------------

YAML = """\
source:
  parquet: data/
stages:
  - name: parse
    fn: tests.dataflow.stage_helpers:images
  - name: model
    fn: tests.dataflow.stage_helpers:MeanModel
    concurrency: 2
sink:
  parquet: out/
runtime:
  num_cpus: 2
"""


def load(tmp_path, text, overrides=None):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return S.load(str(path), overrides, env={})


@pytest.mark.parametrize("old,new,message", [
    ("    concurrency: 2", "    concurency: 2",
     r'p\.yaml:8: stages\[1\]\.concurency: unknown key; did you mean "concurrency"\?'),
    ("    concurrency: 2", "    concurrency: [3, 1]",
     r'p\.yaml:8: stages\[1\]\.concurrency: \[min, max\] with min \(3\) > max \(1\)'),
    ("  - name: model", "  - name: parse",
     r'p\.yaml:6: stages\[1\]\.name: duplicate stage name "parse" \(also stages\[0\]\)'),
    ("fn: tests.dataflow.stage_helpers:images", "fn: tests.dataflow.stage_helpers:not_a_function",
     r'p\.yaml:5: stages\[0\]\.fn: must be a function \(runs as tasks\) or a class \(runs as an actor pool\); '
     r'"tests.dataflow.stage_helpers:not_a_function" is a int'),
    ("    concurrency: 2", "    concurrency: 2\n    num_gpus: 1",
     r'p\.yaml:9: stages\[1\]\.num_gpus: asks for 1 GPU per task or actor; the session can never have it'),
    ("    concurrency: 2", "    concurrency: 2\n    num_cpus: 3",
     r'p\.yaml:9: stages\[1\]\.num_cpus: asks for 3 CPU'),
    ("    concurrency: 2", "    concurrency: 2\n    resources: {tpu: 1}",
     r'p\.yaml:9: stages\[1\]\.resources\.tpu: asks for 1 tpu; the session has 0'),
])
def test_each_stage_error_is_one_line_with_file_line_and_path(tmp_path, old, new, message):
    with pytest.raises(SpecError, match=message) as info:
        load(tmp_path, YAML.replace(old, new))
    assert len(info.value.issues) == 1


def test_stages_and_model_together_is_an_error(tmp_path):
    with pytest.raises(SpecError, match=r"stages: give either model \+ predict"):
        load(tmp_path, YAML + "model:\n  factory: tests.dataflow.helpers:fragile_model\n")


def test_a_class_without_concurrency_is_a_pool_of_one_to_workers(tmp_path):
    spec = load(tmp_path, YAML.replace("    concurrency: 2\n", ""))
    stages = P.compile_stages(spec)
    assert [s.kind for s in stages] == ["tasks", "pool"]
    assert P.pool_bounds(stages[1], workers=2) == (1, 2)
    assert P.pool_bounds(P.compile_stages(load(tmp_path, YAML))[1], workers=2) == (2, 2)


def test_shorthand_compiles_to_one_stage(tmp_path):
    spec = S.load(os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "nyc_taxi.yaml"), env={})
    (stage,) = P.compile_stages(spec)
    assert stage.shorthand and stage.kind == "tasks" and stage.batch_size == 262144
    assert len(P.segments([stage])) == 1


def test_consecutive_stateless_stages_with_the_same_resources_fuse():
    f = P.Stage("a", "m:f", "tasks")
    g = P.Stage("b", "m:g", "tasks")
    gpu = P.Stage("c", "m:h", "tasks", num_gpus=1)
    pool = P.Stage("d", "m:C", "pool")
    segs = P.segments([f, g, pool, gpu, f])
    assert [(s.kind, [x.name for x in s.stages]) for s in segs] == [
        ("tasks", ["a", "b"]), ("pool", ["d"]), ("tasks", ["c"]), ("tasks", ["a"])]
    assert len(P.segments([f, g], fuse=False)) == 2


def test_a_stateless_stage_asking_for_nothing_rides_along_in_the_pool_before_it():
    pool = P.Stage("m", "m:C", "pool", concurrency=2)
    post = P.Stage("post", "m:f", "tasks")
    own = P.Stage("own", "m:g", "tasks", num_cpus=1)
    segs = P.segments([P.Stage("parse", "m:f", "tasks"), pool, post, post, own])
    assert [(s.kind, [x.name for x in s.stages]) for s in segs] == [
        ("tasks", ["parse"]), ("pool", ["m", "post", "post"]), ("tasks", ["own"])]
    assert len(P.segments([pool, post], fuse=False)) == 2
    timed = P.Stage("m", "m:C", "pool", timeout=1.0)  # a pool with a timeout takes only timed riders
    assert len(P.segments([timed, post])) == 2


def test_a_pool_as_large_as_the_machine_leaves_the_tasks_a_cpu():
    pool = P.Stage("m", "m:C", "pool", concurrency=2, num_cpus=1)
    assert P.actor_cpus(pool, 2, total_cpus=2, reserved_elsewhere=0, task_cpus=1) == 0.5
    assert P.actor_cpus(pool, 2, total_cpus=8, reserved_elsewhere=0, task_cpus=1) == 1
    assert P.actor_cpus(P.Stage("m", "m:C", "pool"), 2, 2, 0, 1) == 0
    # A task stage asking for 2 CPUs on 2: the pool's actors reserve nothing (else it never runs).
    half = P.Stage("m", "m:C", "pool", concurrency=1, num_cpus=0.5)
    two = P.Stage("t", "m:f", "tasks", num_cpus=2)
    segs = P.segments([P.Stage("r", "m:f", "tasks"), half, two])
    assert P.task_cpus(segs) == 2 and P.task_cpus(P.segments([half])) == 0
    assert P.actor_cpus(half, 1, 2, 0, P.task_cpus(segs)) == 0


def test_pool_grows_while_blocks_wait_and_shrinks_when_nothing_can_come():
    assert P.pool_target(1, 1, 3, queued=4, busy=1, upstream_done=False) == 2
    assert P.pool_target(3, 1, 3, queued=4, busy=3, upstream_done=False) == 3
    assert P.pool_target(3, 1, 3, queued=0, busy=1, upstream_done=True) == 1
    assert P.pool_target(2, 1, 3, queued=0, busy=0, upstream_done=False) == 2


def test_fractional_gpus_share_a_device():
    assert [P.gpu_devices(i, 0.5, 2) for i in range(4)] == [[0], [0], [1], [1]]
    assert [P.gpu_devices(i, 1, 2) for i in range(2)] == [[0], [1]]


def test_backpressure_holds_the_fast_segment_back():
    segs = P.segments([P.Stage("a", "m:f", "tasks"), P.Stage("b", "m:C", "pool")])
    state = streaming.StreamState([streaming.SegState(segs[0], 4, buffer=2, ready=True),
                                   streaming.SegState(segs[1], 4, buffer=2, ready=True,
                                                      pool=streaming.Pool(actors=[object()]))], 0)
    state.segs[0].queue.extend(range(100))
    assert streaming.can_submit(state, 0)
    state.segs[1].queue.extend(range(4))  # the pool's buffer (2) plus its 2 slots are taken
    assert not streaming.can_submit(state, 0)


def test_a_segment_still_starting_lets_the_one_before_run_ahead_within_the_budget():
    segs = P.segments([P.Stage("a", "m:f", "tasks"), P.Stage("b", "m:C", "pool")])
    state = streaming.StreamState([streaming.SegState(segs[0], 4, buffer=2, ready=True),
                                   streaming.SegState(segs[1], 4, buffer=2, ready=False)], 0,
                                  startup_budget=10_000)
    state.segs[0].queue.extend(range(100))
    state.segs[0].blocks, state.segs[0].bytes_out = 4, 4_000  # 1,000 bytes a block so far
    state.segs[1].queue.extend(range(8))
    state.segs[1].queued_bytes = 8_000
    assert streaming.can_submit(state, 0)          # 8 blocks wait, past buffer + slots, but within 10,000 bytes
    state.segs[1].queued_bytes = 9_500
    assert not streaming.can_submit(state, 0)      # one more would pass the budget
    state.segs[1].ready, state.segs[1].queued_bytes = True, 0
    state.segs[1].pool = streaming.Pool(actors=[object()])
    state.segs[1].pids.add(1)                      # started: the block count rules again
    assert not streaming.can_submit(state, 0)
    # the budget: 256 MiB, at most a quarter of the store
    assert streaming.startup_budget({"object_store_memory": 256e6}) == 64_000_000
    assert streaming.startup_budget({"object_store_memory": 8e9}) == streaming.STARTUP_BUDGET


# -- running ---------------------------------------------------------------------------------


def test_three_stages_with_a_pool_write_every_row_once(tmp_path, monkeypatch):
    monkeypatch.setenv("COUNT_FILE", str(tmp_path / "count"))
    data = helpers.make_dataset(tmp_path / "data", shards=6, rows=500)
    summary = pipeline(tmp_path, data, stages3(fn_constructor_kwargs={"offset": 1.0})).run()
    assert summary.status == "done" and summary.rows == 3000 and summary.shards_done == 6
    out = output(tmp_path)
    assert out["id"].to_pylist() == list(range(3000))
    x = np.arange(3000) % 7
    np.testing.assert_allclose(out["y"].to_numpy(), (x + 1.0) * 2)
    # one construction per actor (2), each given the one put copy of the weights
    assert len((tmp_path / "count").read_text().splitlines()) == 2
    names = [st["name"] for st in summary.stages]
    assert names == ["parse", "model", "post"]
    model = summary.stages[1]
    assert model["kind"] == "pool" and model["actors"] == 2 and model["rows_in"] == 3000
    assert "stage model" in summary.table()


def test_n_d_arrays_reach_the_sink_as_fixed_shape_tensors(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=100)
    stages = [{"name": "parse", "fn": f"{H}:images", "fn_kwargs": {"size": 4}},
              {"name": "keep", "fn": f"{H}:MeanModel", "concurrency": 1},
              {"name": "again", "fn": f"{H}:images", "fn_kwargs": {"size": 2}, "num_cpus": 0.5}]
    stages[2]["fn"] = f"{H}:images"
    # `again` needs an x column: give it the mean back as x
    stages.insert(2, {"name": "as_x", "fn": "tests.dataflow.test_stages:mean_as_x"})
    pipeline(tmp_path, data, stages).run()
    t = output(tmp_path)
    assert isinstance(t.schema.field("image").type, pa.FixedShapeTensorType)
    arr = t["image"].combine_chunks().to_numpy_ndarray()
    assert arr.shape == (200, 3, 2, 2) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 0, 0, 0], np.arange(200) % 7)


def mean_as_x(batch: dict) -> dict:
    return {"id": batch["id"], "x": batch["mean"]}


def test_all_functions_fuse_into_one_task_and_unfused_gives_the_same(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=200)
    st = [{"name": "a", "fn": f"{H}:add_one"}, {"name": "b", "fn": f"{H}:add_one"}]
    p = pipeline(tmp_path, data, st)
    assert len(p.segments()) == 1
    p.run()
    unfused = Pipeline(source={"parquet": data, "columns": ["id", "x"]}, stages=st,
                       sink=str(tmp_path / "out2"), runtime=runtime(tmp_path, fuse=False))
    assert len(unfused.segments()) == 2
    unfused.run()
    assert output(tmp_path).equals(output(tmp_path, "out2"))
    assert output(tmp_path)["x"].to_pylist() == [(i % 7) + 2 for i in range(600)]


def test_quarantine_bisects_in_the_failing_stage_and_names_it(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=200, bad={1: [5, 150]})
    # x == -1 gives a negative mean, which `post` refuses
    summary = pipeline(tmp_path, data, stages3(), on_error="quarantine").run()
    assert summary.status == "partial" and summary.rows == 598 and summary.rows_quarantined == 2
    q = pq.read_table(tmp_path / "out" / "_quarantine" / "part-00001.parquet")
    assert q["_stage"].to_pylist() == ["post", "post"] and q["id"].to_pylist() == [205, 350]
    assert all(e.startswith("ValueError: negative mean") for e in q["_error"].to_pylist())


def test_a_failing_stage_fails_the_run_naming_the_stage(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=100, bad={0: [3]})
    with pytest.raises(RunError, match=r"shard 0 .* stage post: rows 0-99: ValueError: negative mean"):
        pipeline(tmp_path, data, stages3(), max_retries=0).run()


def test_a_pool_whose_constructor_raises_fails_the_run_in_one_line(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=100)
    st = [{"name": "parse", "fn": f"{H}:images"}, {"name": "broken", "fn": f"{H}:BadModel", "concurrency": 2}]
    with pytest.raises(RunError, match=r"^stage broken: its actor pool cannot start: .*RuntimeError: no weights here") as info:
        pipeline(tmp_path, data, st).run()
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "out").glob("part-*"))


def test_an_actor_that_dies_is_restarted_and_its_block_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("DIE_ONCE", str(tmp_path / "died"))
    monkeypatch.setenv("COUNT_FILE", str(tmp_path / "count"))
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=100)
    summary = pipeline(tmp_path, data, stages3(concurrency=1)).run()
    assert (tmp_path / "died").exists()
    assert summary.status == "done" and summary.rows == 400
    assert output(tmp_path)["id"].to_pylist() == list(range(400))
    assert len((tmp_path / "count").read_text().splitlines()) == 2  # built again after the crash


def test_a_pool_as_large_as_the_machine_does_not_starve_the_tasks(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=6, rows=100)
    summary = pipeline(tmp_path, data, stages3(concurrency=2, num_cpus=1)).run()
    assert summary.status == "done" and summary.rows == 600


def test_resume_recomputes_only_the_shard_not_committed(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    monkeypatch.setenv("CALLS_FILE", str(calls))
    monkeypatch.setenv("FAIL_SHARD", "2")
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=1000)
    st = [{"name": "parse", "fn": f"{H}:images", "fn_kwargs": {"size": 2}},
          {"name": "model", "fn": f"{H}:MeanModel", "concurrency": 1},
          {"name": "count", "fn": f"{H}:count_calls"}]
    s1 = pipeline(tmp_path, data, st, on_error="skip", max_retries=0).run()
    assert s1.status == "partial" and s1.failed_shards == [2]
    assert sorted(calls.read_text().split()) == ["0", "1", "2", "3"]
    calls.unlink()
    monkeypatch.delenv("FAIL_SHARD")
    s2 = pipeline(tmp_path, data, st).run()
    assert s2.shards_skipped == 3 and s2.shards_done == 1
    assert calls.read_text().split() == ["2"]
    assert output(tmp_path)["id"].to_pylist() == list(range(4000))
    # intermediate blocks are never written: only parts, the manifest and nothing else
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("part-")) == ["_manifest.json"]


def test_num_gpus_gives_each_task_and_actor_its_devices(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=4, rows=50)
    st = [{"name": "where", "fn": f"{H}:devices", "num_gpus": 1},
          {"name": "model", "fn": f"{H}:DeviceModel", "concurrency": 2, "num_gpus": 1,
           "fn_constructor_kwargs": {"log": str(tmp_path / "actors.txt")}}]
    with pytest.raises(RunError, match=r"^stage where needs 1 GPU per task, but the actor pools hold 2 of "
                                        r"the session's 2: it could never run"):
        pipeline(tmp_path, data, st, num_gpus=2).run()
    pipeline(tmp_path, data, st, num_gpus=3).run()
    t = output(tmp_path)
    assert set(t["cuda"].to_pylist()) <= {"0", "1", "2"} and "" not in t["cuda"].to_pylist()
    assert set(t["actor_cuda"].to_pylist()) <= {"0", "1"}
    # Which actor gets the blocks is the scheduler's choice; each actor's own devices are not.
    built = (tmp_path / "actors.txt").read_text().split()
    assert sorted(built[-2:]) == ["0", "1"]


def test_a_stage_model_that_cannot_be_built_fails_the_run_naming_it(tmp_path):
    from dataflow import ModelError

    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=100)
    st = stages3(model={"factory": f"{H}:broken_weights"})
    with pytest.raises(ModelError, match=r"model\.factory tests\.dataflow\.stage_helpers:broken_weights raised "
                                         r"RuntimeError: disk on fire"):
        pipeline(tmp_path, data, st).run()
    assert not list((tmp_path / "out").glob("part-*"))
