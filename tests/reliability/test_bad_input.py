"""Bad input through the CLI: each refused with the right exit code (2 for a bad spec, 1 for a
run that cannot go on), one clear line on stderr, no traceback, and nothing already committed
lost.

The spec errors are checked in detail (every field) by tests/dataflow/test_spec.py on the Python
API, and the CLI's `--set` and argument errors by tests/e2e/test_cli.py; here the errors a user
meets in a pipeline *file* and at run time, through `python -m dataflow run`.

Run errors start from a sink that already holds four committed shards of an earlier run (and two
new input files still to do): after the failed run those four parts and their manifest entries
are byte for byte what they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from .conftest import BASE, MODELS, dataflow, make_data, manifest, one_error_line, write_pipeline


def tree(folder) -> dict[str, str]:
    """Every file under `folder` with the sha256 of its bytes."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


# ─── spec errors: exit 2, exactly one line, nothing written ───────────────────────────────────
GOOD = yaml.safe_dump(BASE, sort_keys=False)


def line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


SPEC_CASES = {
    "yaml_syntax": (GOOD.replace("columns:\n  - passenger_count", "columns: [passenger_count"),
                    r"p\.yaml:\d+: invalid YAML: .*"),
    "unknown_field": (GOOD.replace("batch_size:", "batch_sise:"),
                      r'p\.yaml:\d+: predict\.batch_sise: unknown key; did you mean "batch_size"\? '
                      r"\(allowed: .*\)"),
    "unknown_section": (GOOD.replace("runtime:", "runtim:"),
                        r'p\.yaml:\d+: runtim: unknown key; did you mean "runtime"\?.*'),
    "wrong_type": (GOOD.replace("num_cpus: 2", "num_cpus: two"),
                   r"p\.yaml:\d+: runtime\.num_cpus: .*got \"two\".*"),
    "wrong_type_list": (GOOD.replace("keep_columns:\n  - trip_distance", "keep_columns: 7"),
                        r"p\.yaml:\d+: predict\.keep_columns: .*"),
    "missing_factory_module": (GOOD.replace(f"{MODELS}:tip_model", "tests.reliability.nomodels:tip_model"),
                               r"p\.yaml:\d+: model\.factory: .*tests\.reliability\.nomodels.*"),
    "missing_factory_name": (GOOD.replace(f"{MODELS}:tip_model", f"{MODELS}:tip_modle"),
                             r"p\.yaml:\d+: model\.factory: 'tests\.reliability\.models' has no attribute "
                             r"'tip_modle'; did you mean \"tip_model\"\?"),
    "bad_batch_format": (GOOD.replace("batch_format: pandas", "batch_format: polars"),
                         r'p\.yaml:\d+: predict\.batch_format: must be one of pandas, pyarrow, numpy, torch, '
                         r'got "polars"'),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_error_exit_2_one_line_nothing_written(tmp_path, case):
    text, message = SPEC_CASES[case]
    assert text != GOOD
    (tmp_path / "p.yaml").write_text(text)
    r = dataflow("run", "p.yaml", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.fullmatch(message, r.stderr.strip()), r.stderr
    assert os.listdir(tmp_path) == ["p.yaml"]


# ─── run errors: exit 1, one error line, committed shards kept ────────────────────────────────
@pytest.fixture
def committed(tmp_path):
    """out/ with shards 0-3 committed by a good run; then two more input files appear."""
    make_data(tmp_path / "data", shards=4, scale=0.005)
    good = write_pipeline(tmp_path / "good.yaml")
    r = dataflow("run", good, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for i in (4, 5):
        t = pq.read_table(tmp_path / "data" / "part-00000.parquet")
        pq.write_table(t, tmp_path / "data" / f"part-0000{i}.parquet")
    return tree(tmp_path / "out")


def run_error(tmp_path, before, *, expect=1, **overrides) -> str:
    spec = write_pipeline(tmp_path / "p.yaml", **overrides)
    r = dataflow("run", spec, cwd=tmp_path)
    assert r.returncode == expect, r.stderr
    line = one_error_line(r.stderr)
    after = tree(tmp_path / "out")
    for name, digest in before.items():
        if name != "_manifest.json":
            assert after.get(name) == digest, f"{name} changed or vanished"
    assert {i for i in manifest(tmp_path / "out") if i < 4} == {0, 1, 2, 3}
    return line


def test_factory_that_raises(tmp_path, committed):
    line = run_error(tmp_path, committed, model__factory=f"{MODELS}:raising_factory")
    assert re.fullmatch(r"dataflow: error: model\.factory .*raising_factory raised RuntimeError: "
                        r"weights file /models/tip\.bin is missing", line), line


def test_model_returning_the_wrong_number_of_rows(tmp_path, committed):
    line = run_error(tmp_path, committed, model__factory=f"{MODELS}:wrong_rows_model")
    assert re.fullmatch(r"dataflow: error: shard [45] \(.*part-0000[45]\.parquet\) failed after 4 attempts: "
                        r"rows 0-\d+: PredictError: predict returned 1 rows for a batch of \d+; it must return one "
                        r"row per input row", line), line


def test_batch_format_the_model_cannot_take(tmp_path, committed):
    line = run_error(tmp_path, committed, model__factory=f"{MODELS}:pandas_only_model",
                     predict__batch_format="pyarrow")
    assert re.fullmatch(r"dataflow: error: shard [45] \(.*\) failed after 4 attempts: rows 0-\d+: "
                        r"AttributeError: 'pyarrow\.lib\.Table' object has no attribute 'iloc'.*", line), line


def test_unpicklable_closure_names_the_captured_object(tmp_path, committed):
    line = run_error(tmp_path, committed, model__factory=f"{MODELS}:lock_closure_model")
    assert "model closure variable 'guard' (a lock) does not pickle" in line, line
    assert "setup" in line


def test_unpicklable_model_attribute_is_named(tmp_path, committed):
    line = run_error(tmp_path, committed, model__factory=f"{MODELS}:connection_model")
    assert re.search(r"HoldsAConnection.*connection|connection.*RLock", line), line


def test_non_parquet_file_among_the_inputs(tmp_path, committed):
    (tmp_path / "data" / "part-00006.parquet").write_text("id,value\n1,2\n")
    line = run_error(tmp_path, committed)
    assert "part-00006.parquet" in line and re.search(r"not a Parquet file|Parquet", line), line


def test_empty_parquet_file_among_the_inputs(tmp_path, committed):
    (tmp_path / "data" / "part-00006.parquet").write_bytes(b"")
    line = run_error(tmp_path, committed)
    assert "part-00006.parquet" in line, line


def test_empty_input_folder(tmp_path):
    (tmp_path / "data").mkdir()
    spec = write_pipeline(tmp_path / "p.yaml")
    r = dataflow("run", spec, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr)
    assert "data" in line and "no Parquet files" in line, line
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_input_with_zero_rows_is_valid_and_gives_an_empty_part(tmp_path):
    """Not bad input: a Parquet file with no rows is a shard with no rows."""
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"passenger_count": pa.array([], pa.int8()),
                             "trip_distance": pa.array([], pa.float32())}),
                   tmp_path / "data" / "part-00000.parquet")
    spec = write_pipeline(tmp_path / "p.yaml")
    r = dataflow("run", spec, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "done" and s["rows"] == 0 and s["shards_done"] == 1
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 0


def test_sink_that_exists_with_mode_error(tmp_path, committed):
    line = run_error(tmp_path, committed, sink__mode="error")
    assert "out" in line and "error" in line, line
    assert tree(tmp_path / "out") == committed        # not even the manifest was touched


@pytest.fixture
def s3_auth_enforced_with_data(s3_bucket, request):
    make_data(f"s3://{s3_bucket}/data", shards=1, scale=0.001)
    request.getfixturevalue("s3_auth_enforced")


def test_s3_credentials_denied(tmp_path, s3_bucket, s3_auth_enforced_with_data):
    spec = write_pipeline(tmp_path / "p.yaml", source__parquet=f"s3://{s3_bucket}/data/")
    r = dataflow("run", spec, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr)
    assert f"s3://{s3_bucket}/data/" in line and re.search(r"denied|credentials", line, re.I), line


def test_s3_credentials_missing(tmp_path, s3_bucket, s3_auth_enforced_with_data):
    spec = write_pipeline(tmp_path / "p.yaml", source__parquet=f"s3://{s3_bucket}/data/")
    env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
           "AWS_PROFILE": None, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_CONFIG_FILE": "/nonexistent"}
    r = dataflow("run", spec, cwd=tmp_path, extra_env=env)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr)
    assert line.startswith(f"dataflow: error: cannot list Parquet files at s3://{s3_bucket}/data/: "
                           "no AWS credentials found ("), line
