"""The NYC taxi pipeline end to end on Ray (`--address local-ray`: a Ray instance started by the
CLI on 127.0.0.1): the same output as on the local engine, and failing shards reported the same."""

from __future__ import annotations

import importlib.util
import json
import re

import pyarrow.parquet as pq
import pytest

from tests.e2e.test_cli import NYC, dataflow, failing_pipeline, read_parts, small

pytestmark = [pytest.mark.ray, pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed: install the extra with `pip install 'ddsf[ray]'` to run the Ray backend tests")]


def test_nyc_taxi_on_ray_matches_the_local_engine(tmp_path):
    local = dataflow("run", NYC, *small(tmp_path, out="local"), "--json", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    ray = dataflow("run", NYC, *small(tmp_path, out="ray"), "--address", "local-ray", "--json", "--verbose",
                   cwd=tmp_path)
    assert ray.returncode == 0, ray.stderr
    assert "Traceback" not in ray.stderr
    s_local, s_ray = json.loads(local.stdout), json.loads(ray.stdout)
    assert s_ray["status"] == "done" and s_ray["rows"] == s_local["rows"] == 17_106
    assert s_ray["shards_done"] == s_local["shards_done"] == 4
    # the tutorial's printout comes from the driver, one line per shard
    assert len(re.findall(r"^Predictions dataframe size: \d+ \| Total score for tips: \d+$", ray.stderr, re.M)) == 4
    parts_local, parts_ray = read_parts(tmp_path / "local"), read_parts(tmp_path / "ray")
    assert list(parts_ray) == list(parts_local) == [f"part-{i:05d}.parquet" for i in range(4)]
    for name, table in parts_local.items():
        assert parts_ray[name].equals(table), f"{name} differs between the local engine and Ray"
    manifest = json.loads((tmp_path / "ray" / "_manifest.json").read_text())
    assert len(manifest["parts"]) == 4


def test_failing_shard_is_reported_the_same_on_ray(tmp_path):
    path = failing_pipeline(tmp_path, "skip")
    r = dataflow("run", path, "--set", "runtime.address=local-ray", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "partial" and [f["index"] for f in s["failed"]] == [1]
    assert "ValueError: bad x in rows [10]" in s["failed"][0]["error"]
    assert s["rows"] == 4000 and sorted(read_parts(tmp_path / "out")) == ["part-00000.parquet", "part-00002.parquet"]
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 2000
