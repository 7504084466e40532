"""Planning and reading Parquet from local disk: shapes of plans, projection, filters, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from connectors import SchemaError, Shard, SourceError, iter_batches, plan_shards, read_shard

from .conftest import small_table, write_files


# --------------------------------------------------------------------------- planning


def test_folder_plans_one_shard_per_file_and_skips_hidden_files(local_dataset: Path):
    shards = plan_shards(str(local_dataset))

    assert [Path(s.path).name for s in shards] == ["f0.parquet", "f1.parquet", "f2.parquet"]
    assert [s.index for s in shards] == [0, 1, 2]
    assert all(s.row_groups is None and s.num_rows == 100 for s in shards)
    assert all(s.file_size == Path(s.path).stat().st_size for s in shards)


def test_single_file_glob_and_list_give_the_same_files(local_dataset: Path):
    one = plan_shards(str(local_dataset / "f1.parquet"))
    globbed = plan_shards(str(local_dataset / "f[12].parquet"))
    listed = plan_shards([str(local_dataset / "f2.parquet"), str(local_dataset / "f0.parquet")])

    assert [Path(s.path).name for s in one] == ["f1.parquet"]
    assert [Path(s.path).name for s in globbed] == ["f1.parquet", "f2.parquet"]
    assert [Path(s.path).name for s in listed] == ["f2.parquet", "f0.parquet"]


def test_file_uri_scheme_and_trailing_slash_are_accepted(local_dataset: Path):
    assert len(plan_shards(f"file://{local_dataset}/")) == 3


def test_row_group_sharding_gives_one_shard_per_row_group(local_dataset: Path):
    shards = plan_shards(str(local_dataset), shard_by="row_group")

    assert len(shards) == 12
    assert [s.row_groups for s in shards[:4]] == [(0,), (1,), (2,), (3,)]
    assert all(s.num_rows == 25 for s in shards)
    assert sum(read_shard(s).num_rows for s in shards) == 300


def test_target_rows_groups_consecutive_row_groups_without_passing_the_target(
        local_dataset: Path):
    shards = plan_shards(str(local_dataset), shard_by="row_group", target_rows=60)

    assert [s.row_groups for s in shards[:2]] == [(0, 1), (2, 3)]
    assert [s.num_rows for s in shards] == [50] * 6
    ids = pa.concat_tables(read_shard(s, columns=["id"]) for s in shards)["id"].to_pylist()
    assert ids == list(range(300))


def test_filters_drop_row_groups_whose_statistics_exclude_them(local_dataset: Path):
    shards = plan_shards(str(local_dataset), filters=[("id", ">=", 180)])

    assert [Path(s.path).name for s in shards] == ["f1.parquet", "f2.parquet"]
    assert shards[0].row_groups == (3,) and shards[0].num_rows == 25
    assert shards[1].row_groups is None


def test_projected_columns_shrink_the_byte_estimate(local_dataset: Path):
    everything = plan_shards(str(local_dataset))[0]
    one_column = plan_shards(str(local_dataset), columns=["id"])[0]

    assert 0 < one_column.num_bytes < everything.num_bytes


def test_shards_pickle_small_and_carry_no_credentials(s3_server, s3_dataset):
    shards = plan_shards(s3_dataset, storage_options={"key": "testing", "secret": "s3cr3t-value"})
    data = pickle.dumps(shards)

    assert pickle.loads(data) == shards
    assert len(data) < 200 * len(shards)
    assert b"s3cr3t-value" not in data and "s3cr3t-value" not in repr(shards)


def test_bad_arguments_raise_value_errors(local_dataset: Path):
    with pytest.raises(ValueError, match="shard_by must be 'file' or 'row_group', found 'rows'"):
        plan_shards(str(local_dataset), shard_by="rows")
    with pytest.raises(ValueError, match="target_rows must be a positive integer"):
        plan_shards(str(local_dataset), shard_by="row_group", target_rows=0)
    with pytest.raises(ValueError, match="columns must be a list of column names"):
        plan_shards(str(local_dataset), columns="id")
    with pytest.raises(ValueError, match="filters must be a pyarrow.compute.Expression"):
        plan_shards(str(local_dataset), filters=[("id",)])


# --------------------------------------------------------------------------- reading


def test_read_shard_projects_columns(local_dataset: Path):
    table = read_shard(plan_shards(str(local_dataset))[1], columns=["name", "id"])

    assert table.column_names == ["name", "id"]
    assert table["id"].to_pylist() == list(range(100, 200))


def test_read_shard_applies_list_and_expression_filters_to_rows(local_dataset: Path):
    shard = plan_shards(str(local_dataset))[0]

    listed = read_shard(shard, filters=[("id", "<", 10), ("name", "!=", "n3")])
    expression = read_shard(shard, filters=(pc.field("id") >= 95))

    assert listed["id"].to_pylist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert expression["id"].to_pylist() == [95, 96, 97, 98, 99]


def test_read_shard_of_row_groups_reads_only_those_rows(local_dataset: Path):
    shard = plan_shards(str(local_dataset), shard_by="row_group")[5]  # f1, row group 1

    assert read_shard(shard)["id"].to_pylist() == list(range(125, 150))


def test_read_shard_matches_pyarrow_read_table(local_dataset: Path):
    shard = plan_shards(str(local_dataset))[2]

    assert read_shard(shard).equals(pq.read_table(shard.path))


def test_iter_batches_yields_exact_batch_sizes_across_row_groups(local_dataset: Path):
    shard = plan_shards(str(local_dataset))[0]

    batches = list(iter_batches(shard, batch_size=40, columns=["id"]))

    assert [b.num_rows for b in batches] == [40, 40, 20]
    assert pa.Table.from_batches(batches)["id"].to_pylist() == list(range(100))


def test_iter_batches_with_filter_regroups_the_remaining_rows(local_dataset: Path):
    shard = plan_shards(str(local_dataset))[0]

    even = pc.field("id").isin(list(range(0, 100, 2)))
    batches = list(iter_batches(shard, batch_size=16, filters=even))

    assert [b.num_rows for b in batches] == [16, 16, 16, 2]
    assert pa.Table.from_batches(batches)["id"].to_pylist() == list(range(0, 100, 2))


def test_iter_batches_of_a_local_file_reads_what_the_dataset_scan_reads(tmp_path: Path):
    # Without filters a local file is read by pq.ParquetFile (half the CPU); a filter that keeps
    # every row takes the dataset scan: both give the same batches, columns in the asked order,
    # extension types and the pandas metadata (which to_pandas reads) kept.
    import numpy as np
    import pandas as pd

    path = tmp_path / "f.parquet"
    tensors = pa.FixedShapeTensorArray.from_numpy_ndarray(np.arange(40, dtype=np.float32).reshape(10, 2, 2))
    frame = pd.DataFrame({"id": range(10), "name": list("abcdefghij")}, index=range(100, 110))
    table = pa.Table.from_pandas(frame, preserve_index=True)
    pq.write_table(table.append_column("t", tensors), path, row_group_size=4)
    keep_all = pc.field("id") >= 0
    for shard in plan_shards(str(path), shard_by="row_group"):
        for columns in (None, ["name", "id"], ["t"]):
            direct = list(iter_batches(shard, batch_size=3, columns=columns))
            scanned = list(iter_batches(shard, batch_size=3, columns=columns, filters=keep_all))
            assert [b.num_rows for b in direct] == [b.num_rows for b in scanned]
            for a, b in zip(direct, scanned):
                assert a.equals(b) and a.schema.metadata == b.schema.metadata


def test_iter_batches_of_a_file_changed_after_planning_names_it(tmp_path: Path):
    good = write_files(tmp_path, count=1)[0]
    shard = plan_shards(str(good))[0]
    pq.write_table(pa.table({"other": [1]}), good)
    with pytest.raises(SchemaError, match=rf"{good} has no column 'id'"):
        list(iter_batches(shard, columns=["id"]))
    good.write_bytes(b"not parquet")
    with pytest.raises(SourceError, match=rf"cannot read the Parquet footer of {good}: not a valid Parquet"):
        list(iter_batches(shard, columns=["id"]))
    good.unlink()
    with pytest.raises(SourceError, match=rf"cannot read the Parquet footer of {good}: not found"):
        list(iter_batches(shard, columns=["id"]))


def test_iter_batches_rejects_a_non_positive_batch_size(local_dataset: Path):
    shard = plan_shards(str(local_dataset))[0]
    with pytest.raises(ValueError, match="batch_size must be a positive integer, found 0"):
        next(iter_batches(shard, batch_size=0))


# --------------------------------------------------------------------------- errors


def test_missing_path_raises_source_error_naming_it(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(SourceError, match=rf"Parquet source {missing} not found: no such file"):
        plan_shards(str(missing))


def test_folder_without_parquet_files_raises_source_error_listing_what_was_found(
        tmp_path: Path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "_SUCCESS").write_text("")
    with pytest.raises(SourceError,
                       match=rf"no Parquet files under {tmp_path}: .*found 1 other file\(s\): "
                             r"notes.csv"):
        plan_shards(str(tmp_path))


def test_empty_list_of_uris_raises_source_error():
    with pytest.raises(SourceError, match=r"expected a URI or a non-empty list of URIs"):
        plan_shards([])


def test_corrupt_file_raises_source_error_naming_the_file(tmp_path: Path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + b"\x00" * 100 + b"garbage!")
    with pytest.raises(SourceError,
                       match=rf"cannot read the Parquet footer of {bad}: not a valid Parquet "
                             r"file \(corrupt or truncated\?\)"):
        plan_shards(str(tmp_path))


def test_truncated_file_raises_source_error_naming_the_file(tmp_path: Path):
    good = write_files(tmp_path, count=1)[0]
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=rf"{good}: not a valid Parquet file"):
        plan_shards(str(good))


def test_file_truncated_after_planning_raises_source_error_when_read(tmp_path: Path):
    good = write_files(tmp_path, count=1)[0]
    shard = plan_shards(str(good))[0]
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(SourceError, match=rf"cannot read the Parquet footer of {good}"):
        read_shard(shard)


def test_missing_requested_column_raises_schema_error_listing_the_columns(
        local_dataset: Path):
    with pytest.raises(SchemaError,
                       match=r"f0.parquet has no column 'tip': expected the requested columns "
                             r"\['id', 'tip'\], found \['id', 'value', 'name'\]"):
        plan_shards(str(local_dataset), columns=["id", "tip"])
    shard = plan_shards(str(local_dataset))[0]
    with pytest.raises(SchemaError, match=r"f0.parquet has no column 'tip'"):
        read_shard(shard, columns=["tip"])


def test_filter_on_a_missing_column_raises_schema_error(local_dataset: Path):
    with pytest.raises(SchemaError, match=r"cannot apply filters .*f0.parquet: .*No match for "
                                          r"FieldRef.Name\(tip\)"):
        plan_shards(str(local_dataset), filters=[("tip", ">", 1)])


def test_mismatched_schemas_raise_schema_error_naming_both_files(tmp_path: Path):
    pq.write_table(small_table(0, 10), tmp_path / "a.parquet")
    other = small_table(10, 10).set_column(1, "value", pa.array(["x"] * 10))
    pq.write_table(other, tmp_path / "b.parquet")

    with pytest.raises(SchemaError,
                       match=r"mismatched schemas: .*b.parquet differs from .*a.parquet: column "
                             r"'value' is string, expected double"):
        plan_shards(str(tmp_path))
    # Columns both files share in the same type are still readable together.
    assert len(plan_shards(str(tmp_path), columns=["id", "name"])) == 2


def test_read_shard_rejects_something_that_is_not_a_shard():
    with pytest.raises(TypeError, match="expected a Shard from plan_shards, found str"):
        read_shard("/tmp/x.parquet")


def test_shard_is_frozen():
    shard = Shard(index=0, path="/x.parquet", row_groups=None, num_rows=1, num_bytes=1)
    with pytest.raises(AttributeError):
        shard.index = 3


def test_files_differing_only_in_nullability_and_metadata_plan_together(tmp_path: Path):
    table = small_table(0, 5)
    pq.write_table(table, tmp_path / "a.parquet")
    strict = table.cast(pa.schema([pa.field(f.name, f.type, nullable=False) for f in table.schema],
                                  metadata={b"writer": b"other"}))
    pq.write_table(strict, tmp_path / "b.parquet")

    assert len(plan_shards(str(tmp_path))) == 2
