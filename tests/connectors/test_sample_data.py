"""Synthetic NYC taxi shards: the public sample's shape, realistic values, determinism."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from connectors import make_nyc_taxi_shards, plan_shards
from connectors.sample_data import NYC_TAXI_ROWS, nyc_taxi_table, shard_row_counts

COLUMNS = ["vendor_id", "pickup_at", "dropoff_at", "passenger_count", "trip_distance",
           "pickup_longitude", "pickup_latitude", "rate_code_id", "store_and_fwd_flag",
           "dropoff_longitude", "dropoff_latitude", "payment_type", "fare_amount", "extra",
           "mta_tax", "tip_amount", "tolls_amount", "total_amount"]


def test_default_split_has_exactly_the_rows_of_the_public_sample():
    counts = shard_row_counts(12)

    assert sum(counts) == NYC_TAXI_ROWS == 1_710_629
    assert set(counts) == {142_552, 142_553}


def test_scale_and_rows_per_shard_set_the_row_counts():
    assert sum(shard_row_counts(4, scale=0.01)) == 17_106
    assert shard_row_counts(3, rows_per_shard=1000, scale=2) == [2000, 2000, 2000]
    with pytest.raises(ValueError, match="shards must be a positive integer, found 0"):
        shard_row_counts(0)


def test_shards_have_the_columns_and_types_of_the_public_sample(tmp_path: Path):
    paths = make_nyc_taxi_shards(str(tmp_path), shards=3, rows_per_shard=5000, seed=1)

    assert [Path(p).name for p in paths] == ["part-00000.parquet", "part-00001.parquet",
                                             "part-00002.parquet"]
    table = pq.read_table(paths[0])
    assert table.column_names == COLUMNS
    types = {f.name: f.type for f in table.schema}
    assert types["vendor_id"] == types["payment_type"] == pa.string()
    assert types["pickup_at"] == types["dropoff_at"] == pa.timestamp("us")
    assert types["passenger_count"] == pa.int8()
    assert all(pa.types.is_floating(types[c]) for c in COLUMNS[12:] + ["trip_distance"])
    assert sum(s.num_rows for s in plan_shards(str(tmp_path))) == 15_000


def test_values_are_realistic():
    table = nyc_taxi_table(50_000, seed=3)

    assert set(table["vendor_id"].unique().to_pylist()) == {"VTS", "CMT", "DDS"}
    assert 1.2 < pc.mean(table["passenger_count"]).as_py() < 2.2
    assert 1.0 < pc.approximate_median(table["trip_distance"]).as_py() < 2.5
    assert pc.all(pc.greater(table["dropoff_at"], table["pickup_at"])).as_py()
    assert pc.min(table["fare_amount"]).as_py() >= 2.5
    total = pc.add(pc.add(table["fare_amount"], table["tip_amount"]),
                   pc.add(pc.add(table["extra"], table["mta_tax"]), table["tolls_amount"]))
    assert pc.max(pc.abs(pc.subtract(total, table["total_amount"]))).as_py() < 0.01
    cash = pc.equal(table["payment_type"], "CASH")
    assert pc.max(pc.filter(table["tip_amount"], cash)).as_py() == 0
    years = pc.year(table["pickup_at"]).unique().to_pylist()
    assert years == [2009]
    assert table["rate_code_id"].null_count == 50_000


def test_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path: Path):
    def digest(folder: Path, seed: int) -> str:
        paths = make_nyc_taxi_shards(str(folder), shards=2, rows_per_shard=2000, seed=seed)
        return hashlib.sha256(b"".join(Path(p).read_bytes() for p in paths)).hexdigest()

    assert digest(tmp_path / "a", 7) == digest(tmp_path / "b", 7)
    assert digest(tmp_path / "c", 8) != digest(tmp_path / "a", 7)


def test_a_shard_does_not_depend_on_how_many_shards_are_written():
    assert nyc_taxi_table(100, seed=5, shard=2).equals(nyc_taxi_table(100, seed=5, shard=2))
    assert not nyc_taxi_table(100, seed=5, shard=2).equals(nyc_taxi_table(100, seed=5, shard=3))


def test_shards_can_be_written_to_s3(s3_bucket):
    paths = make_nyc_taxi_shards(f"s3://{s3_bucket}/taxi", shards=2, rows_per_shard=100)

    assert paths == [f"s3://{s3_bucket}/taxi/part-00000.parquet",
                     f"s3://{s3_bucket}/taxi/part-00001.parquet"]
    assert [s.num_rows for s in plan_shards(f"s3://{s3_bucket}/taxi/")] == [100, 100]


def test_make_data_cli_writes_the_shards(tmp_path: Path):
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "examples.nyc_taxi.make_data", "--out", str(tmp_path),
         "--shards", "2", "--scale", "0.001", "--seed", "0"],
        cwd=root, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert f"wrote 2 shards to {tmp_path}" in result.stdout
    assert sum(pq.read_metadata(p).num_rows for p in tmp_path.glob("*.parquet")) == 1711
