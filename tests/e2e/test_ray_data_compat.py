"""A Ray Data batch-inference script ports by changing its import: the same script text runs on
`ray.data` and on `dataflow`, and both give the same rows (skipped without the `ray` extra)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.dataflow import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only the import line differs. num_cpus=0.5: with 1 CPU per actor, Ray Data 2.60 never finishes
# on a 2-CPU machine (the pool takes every CPU and the read tasks starve); dataflow finishes both ways.
SCRIPT = """
import json, sys
import numpy as np

class Scale:
    def __init__(self, factor):
        self.factor = factor
    def __call__(self, batch):
        return {"id": batch["id"], "y": batch["x"] * self.factor}

def plus_one(batch):
    return {"id": batch["id"], "y": batch["y"] + 1}

ds = (data.read_parquet(sys.argv[1], columns=["id", "x"])
      .map_batches(plus_one_x)
      .map_batches(Scale, fn_constructor_args=[3], concurrency=2, num_cpus=0.5, batch_size=100)
      .map_batches(plus_one))
rows = sorted((int(r["id"]), float(r["y"])) for r in ds.take_all())
print(json.dumps({"rows": rows, "count": ds.count(), "first": sorted(int(i) for i in ds.take_batch(5)["id"])}))
"""

PRELUDE = """
def plus_one_x(batch):
    return {"id": batch["id"], "x": batch["x"] + 1}
"""

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed: `pip install 'ddsf[ray]'` to compare with ray.data")


def run(tmp_path, module: str, data: str) -> dict:
    path = tmp_path / f"script_{module.replace('.', '_')}.py"
    path.write_text(f"import {module} as data\n" + PRELUDE + SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_num_cpus": "2"}
    if module == "ray.data":
        # a local Ray with 2 CPUs, on loopback, as the machine has
        path.write_text(f"import ray\nray.init(num_cpus=2, include_dashboard=False)\nimport {module} as data\n"
                        + PRELUDE + SCRIPT)
    r = subprocess.run([sys.executable, str(path), data], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_same_script_runs_on_ray_data_and_dataflow(tmp_path):
    data = helpers.make_dataset(tmp_path / "data", shards=3, rows=200)
    ours = run(tmp_path, "dataflow", data)
    theirs = run(tmp_path, "ray.data", data)
    assert ours["count"] == theirs["count"] == 600
    assert ours["rows"] == theirs["rows"]
    assert ours["rows"][:3] == [[0, 4.0], [1, 7.0], [2, 10.0]]  # ((x + 1) * 3) + 1
    assert len(ours["first"]) == len(theirs["first"]) == 5
