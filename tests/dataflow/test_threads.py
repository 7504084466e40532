"""Threads that fit the machine (issue 18): each stage's worker runs torch with its share of the
cores (`num_cpus`, rounded, at least 1) unless the stage says `num_threads`; read off real
workers and actors of a real run."""

from __future__ import annotations

import textwrap

import pytest

import dataflow
from dataflow import SpecError
from dataflow import plan as P
from dataflow import spec as S
from tests.dataflow import helpers
from tests.dataflow.stage_helpers import TorchThreads, torch_loaded, torch_threads


@pytest.mark.parametrize("num_cpus,num_threads,threads", [
    (None, None, 1), (0.5, None, 1), (0.4, None, 1), (1, None, 1), (1.5, None, 2), (2, None, 2),
    (2.5, None, 3), (0.5, 4, 4), (None, 2, 2),
])
def test_fitted_threads(num_cpus, num_threads, threads):
    assert P.fitted_threads(num_cpus, num_threads) == threads


def test_num_threads_in_yaml(tmp_path):
    text = textwrap.dedent("""\
        source:
          parquet: data/
        stages:
          - name: classify
            fn: tests.dataflow.stage_helpers:TorchThreads
            num_cpus: 0.5
            num_threads: {n}
        runtime:
          num_cpus: 2
        """)
    path = tmp_path / "p.yaml"
    path.write_text(text.format(n=2))
    spec = S.load(str(path), env={})
    assert spec.stages[0].num_threads == 2 and P.compile_stages(spec)[0].threads == 2
    path.write_text(text.format(n=0))
    with pytest.raises(SpecError, match=r"p\.yaml:7: stages\[0\]\.num_threads: must be a positive integer, got 0$"):
        S.load(str(path), env={})
    assert P.compile_stages(S.load(str(path), ["stages.0.num_threads=null"], env={}))[0].threads == 1


def test_each_stage_worker_sees_its_fitted_threads_and_the_override(tmp_path):
    pytest.importorskip("torch", reason="needs torch to read a worker's torch.get_num_threads()")
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=50)
    ds = (dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2})
          # tasks, no num_cpus: 1 thread (torch's default here would be one per core)
          .map_batches(torch_threads, fn_kwargs={"column": "tasks"})
          # tasks asking for 2 CPUs (all of them: the pools then reserve none): 2 threads
          .map_batches(torch_threads, fn_kwargs={"column": "tasks2"}, num_cpus=2)
          # an actor pool at 0.5 CPU per actor: 1 thread
          .map_batches(TorchThreads, fn_constructor_kwargs={"column": "pool"}, concurrency=1, num_cpus=0.5)
          # a constructor that sets its own threads keeps them
          .map_batches(TorchThreads, fn_constructor_kwargs={"column": "own", "set_in_init": 2},
                       concurrency=1, num_cpus=0.5)
          # the override, then a stage fused with it (same resources) that has none: 3, then 1
          .map_batches(torch_threads, fn_kwargs={"column": "override"}, num_threads=3)
          .map_batches(torch_threads, fn_kwargs={"column": "fused"}))
    assert [len(seg.stages) for seg in ds.pipeline().segments()] == [1, 1, 1, 1, 2]
    out = ds.to_pandas()
    assert len(out) == 100
    seen = {c: sorted(set(out[c])) for c in out.columns if c not in ("id", "x")}
    assert seen == {"tasks": [1], "tasks_env": [1], "tasks2": [2], "tasks2_env": [2],
                    "pool": [1], "pool_env": [1], "own": [2], "own_env": [1],
                    "override": [3], "override_env": [3], "fused": [1], "fused_env": [1]}


def test_a_stage_without_torch_does_not_import_it(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=2, rows=10)
    ds = dataflow.read_parquet(data, columns=["id", "x"], runtime={"num_cpus": 2}).map_batches(
        torch_loaded, num_threads=2)
    out = ds.to_pandas()
    assert out["threads_env"].tolist() == [2] * 20      # fitted all the same, for what loads later
    assert not out["torch_loaded"].any()                 # but torch was not imported for it
