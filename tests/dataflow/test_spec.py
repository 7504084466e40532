"""The pipeline spec: every YAML under pipelines/ validates; each bad field gives one message
naming the file, line and key path; all problems at once; ${ENV}; --set overrides."""

from __future__ import annotations

import glob
import os
import textwrap

import pytest

import core.units
from dataflow import SpecError
from dataflow import spec as S

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPELINES = sorted(glob.glob(os.path.join(ROOT, "pipelines", "*.yaml")))

GOOD = """\
name: t
source:
  parquet: data/
  columns: [passenger_count]
model:
  factory: examples.nyc_taxi.model:load_trained_model
  args: {payload_mb: 1}
predict:
  batch_size: 1024
  batch_format: pandas
sink:
  parquet: out/t/
runtime:
  num_cpus: 2
"""


def write(tmp_path, text: str, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(tmp_path, text: str, overrides=None, env=None):
    return S.load(write(tmp_path, text), overrides, env=env)


@pytest.mark.parametrize("path", PIPELINES, ids=os.path.basename)
def test_every_pipeline_file_validates(path):
    spec = S.load(path, env={})
    assert spec.source.parquet and spec.sink is not None
    assert spec.stages or spec.model.factory or spec.model.path


def test_pipelines_folder_has_the_three_examples():
    names = {os.path.basename(p) for p in PIPELINES}
    assert {"nyc_taxi.yaml", "nyc_taxi_torch.yaml", "nyc_taxi_s3.yaml"} <= names


def test_good_spec_values(tmp_path):
    spec = load(tmp_path, GOOD)
    assert spec.predict.batch_size == 1024
    assert spec.model.args == {"payload_mb": 1}
    assert spec.sink.format == "parquet" and spec.sink.uri == "out/t/"
    assert spec.runtime.on_error == "fail" and spec.runtime.max_retries == 3


@pytest.mark.parametrize("old,new,message", [
    ("batch_size: 1024", 'batch_size: big',
     r'p\.yaml:9: predict\.batch_size: must be a positive integer, got "big"$'),
    ("batch_size: 1024", 'batch_size: 0',
     r'p\.yaml:9: predict\.batch_size: must be a positive integer, got 0$'),
    ("batch_format: pandas", "batch_format: pandsa",
     r'p\.yaml:10: predict\.batch_format: must be one of pandas, pyarrow, numpy, torch, got "pandsa"; did you mean "pandas"\?'),
    ("num_cpus: 2", "num_cpus: -1",
     r'p\.yaml:14: runtime\.num_cpus: must be a positive integer, got -1'),
    ("num_cpus: 2", "object_store_memory: lots",
     r'p\.yaml:14: runtime\.object_store_memory: must be a size in bytes such as 2GB'),
    ("num_cpus: 2", "object_store_memory: 3X",
     r'p\.yaml:14: runtime\.object_store_memory: must be a size in bytes such as 2GB, 512MiB or 1000000 '
     r'\(2G = 2 GiB, 2GB = 2\*10\^9\), got "3X"$'),
    ("num_cpus: 2", "object_store_memory: 0",
     r'p\.yaml:14: runtime\.object_store_memory: must be a size in bytes .*, got 0$'),
    ("num_cpus: 2", "on_error: ignore",
     r'p\.yaml:14: runtime\.on_error: must be one of fail, skip, quarantine, got "ignore"'),
    ("num_cpus: 2", "max_retries: many",
     r'p\.yaml:14: runtime\.max_retries: must be an integer >= 0, got "many"'),
    ("columns: [passenger_count]", "columns: passenger_count",
     r'p\.yaml:4: source\.columns: must be a list of column names, got "passenger_count"'),
    ("parquet: data/", "parquet: 3",
     r'p\.yaml:3: source\.parquet: must be a path or URI'),
    ("batch_size: 1024", "timeout: soon",
     r'p\.yaml:9: predict\.timeout: must be a positive duration in seconds'),
    ("args: {payload_mb: 1}", "args: 5",
     r'p\.yaml:7: model\.args: must be a mapping, got 5'),
    ("factory: examples.nyc_taxi.model:load_trained_model", "factory: load_trained_model",
     r'p\.yaml:6: model\.factory: must be "package\.module:function", got "load_trained_model"'),
    ("factory: examples.nyc_taxi.model:load_trained_model", "factory: examples.nyc_taxi.model:load_trained_modle",
     r"""p\.yaml:6: model\.factory: 'examples\.nyc_taxi\.model' has no attribute 'load_trained_modle'; did you mean "load_trained_model"\?"""),
    ("factory: examples.nyc_taxi.model:load_trained_model", "factory: examples.nyc_taxi.nope:f",
     r"p\.yaml:6: model\.factory: cannot import module 'examples\.nyc_taxi\.nope'"),
    ("factory: examples.nyc_taxi.model:load_trained_model", "factory: examples.nyc_taxi.model:PAYLOAD_MB",
     r"p\.yaml:6: model\.factory: examples\.nyc_taxi\.model:PAYLOAD_MB is not callable"),
    ("batch_size: 1024", "batchsize: 1024",
     r'p\.yaml:9: predict\.batchsize: unknown key; did you mean "batch_size"\? \(allowed: fn, batch_size'),
    ("parquet: out/t/", "parquet: out/t/\n  csv: out/c/",
     r'p\.yaml:11: sink: give exactly one of parquet, csv or jsonl \(the output URI\), got parquet and csv'),
    ("parquet: out/t/", "mode: resume",
     r'p\.yaml:11: sink: give exactly one of parquet, csv or jsonl \(the output URI\), got none'),
    ("  args: {payload_mb: 1}", "  path: m.pkl",
     r'p\.yaml:5: model: give exactly one of factory, path or setup, got factory and path'),
])
def test_each_field_error_names_file_line_and_key(tmp_path, old, new, message):
    assert old in GOOD
    with pytest.raises(SpecError, match=message) as info:
        load(tmp_path, GOOD.replace(old, new, 1))
    assert len(info.value.issues) == 1, str(info.value)


def test_error_carries_file_line_column_and_field(tmp_path):
    with pytest.raises(SpecError) as info:
        load(tmp_path, GOOD.replace("batch_size: 1024", "batch_size: big"))
    err = info.value
    assert err.file.endswith("p.yaml") and err.line == 9 and err.column == 3
    assert err.field == "predict.batch_size"
    assert isinstance(err, ValueError)


def test_all_errors_reported_at_once(tmp_path):
    bad = (GOOD.replace("batch_size: 1024", "batch_size: big")
               .replace("batch_format: pandas", "batch_format: xml")
               .replace("num_cpus: 2", "num_cpuz: 2")
               .replace("columns: [passenger_count]", "columns: [passenger_count, 5]"))
    with pytest.raises(SpecError) as info:
        load(tmp_path, bad)
    lines = str(info.value).splitlines()
    assert [i.path for i in info.value.issues] == [
        "source.columns", "predict.batch_size", "predict.batch_format", "runtime.num_cpuz"]
    assert len(lines) == 4 and all(":" in line for line in lines)
    assert "did you mean \"num_cpus\"" in lines[3]


def test_missing_required_sections(tmp_path):
    with pytest.raises(SpecError, match=r"p\.yaml: source: is required\n.*p\.yaml: model: is required"):
        load(tmp_path, "name: t\n")


def test_not_a_mapping(tmp_path):
    with pytest.raises(SpecError, match=r"p\.yaml:1: a pipeline must be a mapping"):
        load(tmp_path, "- a\n- b\n")


def test_empty_file(tmp_path):
    with pytest.raises(SpecError, match=r"p\.yaml:1: the file is empty"):
        load(tmp_path, "")


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.yaml: cannot read the pipeline file"):
        S.load(str(tmp_path / "nope.yaml"))


def test_yaml_syntax_error_has_line(tmp_path):
    with pytest.raises(SpecError, match=r"p\.yaml:4: invalid YAML: while parsing a flow sequence expected ',' or '\]'"):
        load(tmp_path, "name: t\nsource:\n  parquet: [a, b\nmodel: {}\n")


def test_duplicate_key_is_an_error(tmp_path):
    with pytest.raises(SpecError, match=r"p\.yaml:10: predict\.batch_size: duplicate key"):
        load(tmp_path, GOOD.replace("batch_format: pandas", "batch_size: 5"))


# -- ${ENV} --------------------------------------------------------------------------------


def test_env_interpolation(tmp_path):
    text = GOOD.replace("parquet: out/t/", "parquet: ${OUT}/t/").replace("batch_size: 1024", "batch_size: ${BS:-2048}")
    spec = load(tmp_path, text, env={"OUT": "/tmp/x"})
    assert spec.sink.parquet == "/tmp/x/t/"
    assert spec.predict.batch_size == 2048  # a plain scalar is re-read as YAML: an int
    spec = load(tmp_path, text, env={"OUT": "s3://b", "BS": "7"})
    assert spec.sink.parquet == "s3://b/t/" and spec.predict.batch_size == 7


def test_env_quoted_stays_a_string(tmp_path):
    text = GOOD.replace("name: t", 'name: "${N:-42}"')
    assert load(tmp_path, text, env={}).name == "42"


def test_env_missing_without_default(tmp_path):
    text = GOOD.replace("parquet: out/t/", "parquet: ${OUT_DIR}/t/")
    with pytest.raises(SpecError, match=r"p\.yaml:12: sink\.parquet: environment variable OUT_DIR is not set; "
                                        r"set it or give a default as \$\{OUT_DIR:-value\}"):
        load(tmp_path, text, env={})


def test_env_value_is_validated_at_its_line(tmp_path):
    text = GOOD.replace("batch_size: 1024", "batch_size: ${BS}")
    with pytest.raises(SpecError, match=r'p\.yaml:9: predict\.batch_size: must be a positive integer, got "big"'):
        load(tmp_path, text, env={"BS": "big"})


# -- --set -----------------------------------------------------------------------------------


def test_set_overrides_are_yaml_typed(tmp_path):
    spec = load(tmp_path, GOOD, ["predict.batch_size=99", "runtime.on_error=skip",
                                 "source.columns=[a, b]", "model.args.payload_mb=2.5",
                                 "runtime.spill=s3://bucket/spill"])
    assert spec.predict.batch_size == 99
    assert spec.runtime.on_error == "skip"
    assert spec.source.columns == ["a", "b"]
    assert spec.model.args == {"payload_mb": 2.5}
    assert spec.runtime.spill == "s3://bucket/spill"


def test_set_creates_missing_sections(tmp_path):
    spec = load(tmp_path, GOOD.replace("runtime:\n  num_cpus: 2\n", ""), ["runtime.max_in_flight=3"])
    assert spec.runtime.max_in_flight == 3


def test_set_error_names_the_override(tmp_path):
    with pytest.raises(SpecError, match=r'^--set predict\.batch_size=big: predict\.batch_size: must be a positive '
                                        r'integer, got "big"$'):
        load(tmp_path, GOOD, ["predict.batch_size=big"])


def test_set_without_equals(tmp_path):
    with pytest.raises(SpecError, match=r"--set predict\.batch_size: expected key\.path=value"):
        load(tmp_path, GOOD, ["predict.batch_size"])


def test_set_unknown_key(tmp_path):
    with pytest.raises(SpecError, match=r'--set predict\.batch_sise=3: predict\.batch_sise: unknown key; did you '
                                        r'mean "batch_size"\?'):
        load(tmp_path, GOOD, ["predict.batch_sise=3"])


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,size", [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1G", 2**30),
                                       (1000, 1000), ("1.5GB", 1_500_000_000), ("2 g", 2 * 2**30),
                                       ("2Gi", 2 * 2**30), ("1000", 1000)])
def test_sizes(text, size):
    # core.units' meanings: K/M/G/T and KiB.. powers of 2, KB/MB/GB/TB powers of 10.
    assert S.parse_size(text) == size == core.units.parse_size(text, "x")


@pytest.mark.parametrize("text,seconds", [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("500ms", 0.5), ("1h", 3600.0)])
def test_durations(text, seconds):
    assert S.parse_duration(text) == seconds


def test_python_spec_errors_have_no_file():
    from dataflow import Pipeline

    with pytest.raises(SpecError, match=r'^Pipeline\(\.\.\.\): predict\.batch_size: must be a positive integer, got "big"$'):
        Pipeline(source="data/", model=object(), predict={"batch_size": "big"}, sink="out/")


def test_python_api_accepts_objects():
    from dataflow import Pipeline

    def fn(batch):
        return batch

    model = object()
    p = Pipeline(source="data/", model=model, predict=fn, sink="out/x/", runtime={"num_cpus": 1})
    assert p.spec.model.instance is model and p.spec.predict.fn is fn
    assert p.spec.sink.uri == "out/x/" and p.spec.runtime.num_cpus == 1


def test_report_format_is_checked(tmp_path):
    with pytest.raises(SpecError, match=r"p\.yaml:15: report: bad format string"):
        load(tmp_path, GOOD + "report: 'rows {rows'\n")


def test_filters_are_checked(tmp_path):
    spec = load(tmp_path, GOOD, ['source.filters=[[passenger_count, ">", 0], [x, in, [1, 2]]]'])
    assert spec.source.filters == [["passenger_count", ">", 0], ["x", "in", [1, 2]]]
    with pytest.raises(SpecError, match=r'source\.filters: must be a list of \[column, op, value\] predicates '
                                        r'\(op one of = == != < > <= >= in not in\)'):
        load(tmp_path, GOOD, ['source.filters=[[passenger_count, "~", 0]]'])
