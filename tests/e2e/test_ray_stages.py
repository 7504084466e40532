"""The three-stage pipeline and a Dataset on Ray (`local-ray`: a Ray instance on 127.0.0.1):
actor pools as Ray actors, output identical to the local engine's (skipped without ray)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.e2e.test_cli import ROOT, dataflow, env, read_parts
from tests.e2e.test_stages_cli import REVIEWS, small

pytestmark = [pytest.mark.ray, pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed: install the extra with `pip install 'ddsf[ray]'` to run the Ray backend tests")]


def test_reviews_on_ray_match_the_local_engine(tmp_path):
    local = dataflow("run", REVIEWS, *small(tmp_path, "local"), "--json", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    ray = dataflow("run", REVIEWS, *small(tmp_path, "ray"), "--address", "local-ray", "--json", cwd=tmp_path,
                   timeout=300)
    assert ray.returncode == 0, ray.stderr
    s_local, s_ray = json.loads(local.stdout), json.loads(ray.stdout)
    assert s_ray["status"] == "done" and s_ray["rows"] == s_local["rows"] == 3000
    assert s_ray["stages"][1]["kind"] == "pool" and s_ray["stages"][1]["actors"] == 2
    parts_local, parts_ray = read_parts(tmp_path / "local"), read_parts(tmp_path / "ray")
    assert list(parts_ray) == list(parts_local) and len(parts_local) == 6
    for name, table in parts_local.items():
        assert parts_ray[name].equals(table), f"{name} differs between the local engine and Ray"


DATASET = """
import json, sys
import dataflow
from examples.reviews.model import Sentiment, load_weights, to_label, tokenize

ds = (dataflow.read_parquet(sys.argv[1], columns=["review_id", "text"], runtime=json.loads(sys.argv[3]))
      .map_batches(tokenize)
      .map_batches(Sentiment, fn_constructor_args=[load_weights()], concurrency=2, batch_size=256)
      .map_batches(to_label))
print(json.dumps(ds.write_parquet(sys.argv[2]).to_dict()))
"""


def test_a_dataset_on_ray_matches_the_local_engine(tmp_path):
    data = tmp_path / "data"
    from examples.reviews.data import make_reviews

    make_reviews(str(data), shards=4, rows=300)
    script = tmp_path / "ds.py"
    script.write_text(DATASET)
    outs = {}
    for name, rt in (("local", {"num_cpus": 2}), ("ray", {"num_cpus": 2, "address": "local-ray"})):
        r = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / name), json.dumps(rt)],
                           cwd=ROOT, env={**env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout.strip().splitlines()[-1])["rows"] == 1200
        outs[name] = read_parts(tmp_path / name)
    assert list(outs["ray"]) == list(outs["local"]) and len(outs["local"]) == 4
    for name, table in outs["local"].items():
        assert outs["ray"][name].equals(table), name
    assert not os.path.exists(tmp_path / "ray" / "_quarantine")
