"""Planning and reading Parquet on S3, against a real moto server over HTTP."""

from __future__ import annotations

import pickle
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import (SchemaError, SourceError, StorageError, iter_batches, plan_shards,
                        read_shard)
from connectors import _planning

from .conftest import small_table, upload_files, write_files


@pytest.fixture
def sampled(monkeypatch):
    """Plans of 6+ S3 files read 3 footers (files 0, 2 and 5 of 6) and estimate the rest."""
    monkeypatch.setattr(_planning, "_SAMPLE_FOOTERS_FROM", 6)
    monkeypatch.setattr(_planning, "_FOOTER_SAMPLE", 3)


def test_prefix_plans_one_shard_per_object_with_sizes_from_the_listing(s3_dataset, s3_bucket):
    shards = plan_shards(s3_dataset)

    assert [s.path for s in shards] == [f"s3://{s3_bucket}/data/f{i}.parquet" for i in range(3)]
    assert [s.num_rows for s in shards] == [100, 100, 100]
    assert all(s.file_size > 0 for s in shards)


def test_prefix_without_trailing_slash_glob_and_list_are_planned(s3_dataset, s3_bucket):
    assert len(plan_shards(s3_dataset.rstrip("/"))) == 3
    assert [s.path for s in plan_shards(f"s3://{s3_bucket}/data/f[01].parquet")] == [
        f"s3://{s3_bucket}/data/f0.parquet", f"s3://{s3_bucket}/data/f1.parquet"]
    listed = plan_shards([f"s3://{s3_bucket}/data/f2.parquet", s3_dataset])
    assert [s.path.rsplit("/", 1)[1] for s in listed] == ["f2.parquet", "f0.parquet",
                                                          "f1.parquet"]


def test_objects_starting_with_underscore_or_dot_are_skipped(s3_client, s3_bucket, s3_dataset):
    s3_client.put_object(Bucket=s3_bucket, Key="data/_SUCCESS", Body=b"")
    s3_client.put_object(Bucket=s3_bucket, Key="data/_tmp/x.parquet", Body=b"junk")

    assert len(plan_shards(s3_dataset)) == 3


def test_row_group_shards_read_back_every_row_from_s3(s3_dataset):
    shards = plan_shards(s3_dataset, shard_by="row_group", target_rows=50)

    assert len(shards) == 6
    ids = sorted(i for s in shards for i in read_shard(s, columns=["id"])["id"].to_pylist())
    assert ids == list(range(300))


def test_read_shard_from_s3_projects_and_filters(s3_dataset):
    shard = plan_shards(s3_dataset)[1]

    table = read_shard(shard, columns=["id"], filters=[("id", ">=", 195)])

    assert table.column_names == ["id"]
    assert table["id"].to_pylist() == [195, 196, 197, 198, 199]


def test_iter_batches_streams_from_s3(s3_dataset):
    batches = list(iter_batches(plan_shards(s3_dataset)[0], batch_size=30))

    assert [b.num_rows for b in batches] == [30, 30, 30, 10]


def test_read_matches_pyarrow_on_the_same_object(s3_server, s3_dataset):
    from pyarrow import fs

    shard = plan_shards(s3_dataset)[0]
    arrow_s3 = fs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http",
                               region="us-east-1")

    assert read_shard(shard).equals(pq.read_table(shard.path[5:], filesystem=arrow_s3))


def test_endpoint_and_credentials_from_storage_options_without_aws_environment(
        s3_server, s3_dataset, monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    options = {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}

    shards = plan_shards(s3_dataset, storage_options=options)

    assert read_shard(shards[0], storage_options=options).num_rows == 100


def test_endpoint_from_aws_endpoint_url_environment(s3_server, s3_dataset, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)

    assert sum(s.num_rows for s in plan_shards(s3_dataset)) == 300


def test_anonymous_uri_reads_a_public_bucket(s3_client, s3_bucket):
    upload_files(s3_client, s3_bucket, "public", count=2, acl="public-read")

    shards = plan_shards(f"s3://anonymous@{s3_bucket}/public/")

    assert [s.path for s in shards] == [f"s3://anonymous@{s3_bucket}/public/f0.parquet",
                                        f"s3://anonymous@{s3_bucket}/public/f1.parquet"]
    assert read_shard(shards[1], columns=["id"])["id"].to_pylist() == list(range(100, 200))


def test_anonymous_access_to_a_private_object_is_denied(s3_client, s3_bucket):
    upload_files(s3_client, s3_bucket, "private", count=1)

    with pytest.raises(StorageError,
                       match=rf"cannot read the Parquet footer of s3://anonymous@{s3_bucket}/"
                             r"private/f0.parquet: access denied \(.*ACCESS_DENIED"):
        plan_shards(f"s3://anonymous@{s3_bucket}/private/")


# --------------------------------------------------------------------------- errors


def test_missing_bucket_raises_source_error_naming_the_bucket(s3_server):
    with pytest.raises(SourceError,
                       match=r"Parquet source s3://no-such-bucket-x/data/ not found: bucket "
                             r"'no-such-bucket-x' does not exist"):
        plan_shards("s3://no-such-bucket-x/data/")


def test_missing_key_raises_source_error_naming_the_uri(s3_bucket):
    with pytest.raises(SourceError, match=rf"Parquet source s3://{s3_bucket}/data/x.parquet "
                                          r"not found: no such file, folder or prefix"):
        plan_shards(f"s3://{s3_bucket}/data/x.parquet")


def test_prefix_without_parquet_objects_raises_source_error(s3_client, s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="logs/run.txt", Body=b"hello")

    with pytest.raises(SourceError, match=rf"no Parquet files under s3://{s3_bucket}/logs/: "
                                          r".*found 1 other file\(s\): run.txt"):
        plan_shards(f"s3://{s3_bucket}/logs/")


def test_corrupt_object_raises_source_error_naming_it(s3_client, s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="bad/f.parquet", Body=b"PAR1 not really")

    with pytest.raises(SourceError, match=rf"s3://{s3_bucket}/bad/f.parquet: not a valid "
                                          r"Parquet file"):
        plan_shards(f"s3://{s3_bucket}/bad/")


def test_denied_credentials_raise_storage_error_quickly(s3_dataset, s3_auth_enforced):
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot list Parquet files at s3://.*/data/: access "
                                           r"denied \(.*INVALID_ACCESS_KEY_ID.*does not exist "
                                           r"in our records"):
        plan_shards(s3_dataset)
    assert time.monotonic() - start < 10


def test_denied_credentials_on_read_raise_storage_error(s3_dataset, request):
    shard = plan_shards(s3_dataset)[0]
    request.getfixturevalue("s3_auth_enforced")

    with pytest.raises(StorageError, match=r"cannot read the Parquet footer of s3://.*/f0.parquet: "
                                           r"access denied"):
        read_shard(shard)


def test_credentials_never_appear_in_errors(s3_dataset, s3_auth_enforced):
    with pytest.raises(StorageError) as info:
        plan_shards(s3_dataset, storage_options={"key": "AKIDSECRETKEY", "secret": "hunter2hunter2"})
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)


def test_endpoint_down_raises_storage_error_within_seconds(s3_bucket):
    options = {"endpoint_url": "http://127.0.0.1:9"}  # discard port: nothing listens
    start = time.monotonic()

    with pytest.raises(StorageError, match=rf"cannot list Parquet files at s3://{s3_bucket}/x/: "
                                           r"storage endpoint http://127.0.0.1:9 unreachable"):
        plan_shards(f"s3://{s3_bucket}/x/", storage_options=options)
    assert time.monotonic() - start < 15


def test_endpoint_down_when_reading_a_planned_shard_raises_storage_error(s3_dataset):
    shard = plan_shards(s3_dataset)[0]
    start = time.monotonic()

    with pytest.raises(StorageError, match=r"cannot read the Parquet footer of s3://.*f0.parquet"
                                           r": storage endpoint http://127.0.0.1:9 unreachable"):
        read_shard(shard, storage_options={"endpoint_url": "http://127.0.0.1:9"})
    assert time.monotonic() - start < 15


def test_mismatched_schemas_on_s3_raise_schema_error(s3_client, s3_bucket):
    from connectors import SchemaError

    for name, table in (("a", small_table(0, 5)), ("b", small_table(0, 5).drop(["name"]))):
        sink = __import__("pyarrow").BufferOutputStream()
        pq.write_table(table, sink)
        s3_client.put_object(Bucket=s3_bucket, Key=f"mixed/{name}.parquet",
                             Body=sink.getvalue().to_pybytes())

    with pytest.raises(SchemaError, match=rf"s3://{s3_bucket}/mixed/b.parquet differs from "
                                          rf"s3://{s3_bucket}/mixed/a.parquet: missing columns "
                                          r"\['name'\]"):
        plan_shards(f"s3://{s3_bucket}/mixed/")


def test_sampled_plan_estimates_unsampled_shards_and_reads_them_all(s3_client, s3_bucket,
                                                                    sampled):
    upload_files(s3_client, s3_bucket, "six", count=6)

    shards = plan_shards(f"s3://{s3_bucket}/six/", columns=["id"])

    assert [s.estimated for s in shards] == [False, True, False, True, True, False]
    assert all(abs(s.num_rows - 100) <= 1 and s.num_bytes > 0 for s in shards)
    ids = sorted(i for s in shards for i in read_shard(s, columns=["id"])["id"].to_pylist())
    assert ids == list(range(600))


def test_unsampled_file_with_another_schema_fails_its_own_shard_naming_both_files(
        s3_client, s3_bucket, sampled):
    upload_files(s3_client, s3_bucket, "six", count=6)
    odd = small_table(0, 10).set_column(0, "id", pa.array([str(i) for i in range(10)]))
    sink = pa.BufferOutputStream()
    pq.write_table(odd, sink)
    s3_client.put_object(Bucket=s3_bucket, Key="six/f3.parquet", Body=sink.getvalue().to_pybytes())

    shards = plan_shards(f"s3://{s3_bucket}/six/")  # f3 is not in the sample

    assert read_shard(shards[1]).num_rows == 100
    with pytest.raises(SchemaError) as info:
        read_shard(shards[3])
    message = str(info.value)
    assert "mismatched schemas" in message and "six/f3.parquet" in message
    assert "six/f0.parquet" in message and "'id' is string, expected int64" in message


def test_unsampled_file_without_a_planned_column_fails_its_shard(s3_client, s3_bucket, sampled):
    upload_files(s3_client, s3_bucket, "six", count=6)
    sink = pa.BufferOutputStream()
    pq.write_table(small_table(0, 10).drop_columns(["value"]), sink)
    s3_client.put_object(Bucket=s3_bucket, Key="six/f4.parquet", Body=sink.getvalue().to_pybytes())

    shards = plan_shards(f"s3://{s3_bucket}/six/", columns=["id", "value"])

    with pytest.raises(SchemaError, match=r"six/f4\.parquet has no column 'value'"):
        read_shard(shards[4], columns=["id", "value"])


def test_unsampled_corrupt_file_fails_its_shard_naming_the_file(s3_client, s3_bucket, sampled):
    upload_files(s3_client, s3_bucket, "six", count=6)
    s3_client.put_object(Bucket=s3_bucket, Key="six/f1.parquet", Body=b"PAR1 not really")

    shards = plan_shards(f"s3://{s3_bucket}/six/")

    with pytest.raises(SourceError, match=r"six/f1\.parquet: not a valid Parquet file"):
        read_shard(shards[1])


def test_sampling_is_off_with_filters_row_groups_or_footers_all(s3_client, s3_bucket, sampled):
    upload_files(s3_client, s3_bucket, "six", count=6)
    uri = f"s3://{s3_bucket}/six/"

    assert not any(s.estimated for s in plan_shards(uri, footers="all"))
    assert not any(s.estimated for s in plan_shards(uri, filters=[("id", ">=", 0)]))
    assert not any(s.estimated for s in plan_shards(uri, shard_by="row_group"))
    with pytest.raises(ValueError, match="footers must be 'auto' or 'all'"):
        plan_shards(uri, footers="some")


def test_many_local_files_are_sampled_too_and_a_stray_one_fails_its_own_shard(tmp_path, sampled):
    """On a local disk a footer is ~1 ms of CPU: 144 files cost more than the rest of planning."""
    write_files(tmp_path / "six", count=6)
    odd = small_table(0, 10).set_column(0, "id", pa.array([str(i) for i in range(10)]))
    pq.write_table(odd, tmp_path / "six" / "f3.parquet")

    shards = plan_shards(str(tmp_path / "six"))

    assert [s.estimated for s in shards] == [False, True, False, True, True, False]
    assert read_shard(shards[4]).num_rows == 100
    with pytest.raises(SchemaError, match=r"six/f3\.parquet differs from .*six/f0\.parquet"):
        read_shard(shards[3])
    with pytest.raises(SchemaError, match=r"six/f3\.parquet differs"):  # every footer, at once
        plan_shards(str(tmp_path / "six"), footers="all")


def test_a_sampled_plan_checks_each_shard_after_travelling_to_another_process(tmp_path, sampled):
    # A task receives its shard pickled: the sample's schema travels as Arrow IPC bytes and is
    # rebuilt once per process; the check it makes is the same.
    write_files(tmp_path / "six", count=6)
    odd = small_table(0, 10).set_column(0, "id", pa.array([str(i) for i in range(10)]))
    pq.write_table(odd, tmp_path / "six" / "f3.parquet")
    planned = plan_shards(str(tmp_path / "six"), columns=["id", "value"])

    shards = pickle.loads(pickle.dumps(planned))

    assert shards == planned and shards[1].expect == planned[1].expect
    assert shards[1].expect is shards[4].expect  # rebuilt once
    assert sum(b.num_rows for b in iter_batches(shards[4], columns=["id", "value"])) == 100
    with pytest.raises(SchemaError, match=r"six/f3\.parquet differs from .*six/f0\.parquet"):
        list(iter_batches(shards[3], columns=["id", "value"]))
