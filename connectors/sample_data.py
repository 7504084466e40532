"""Synthetic NYC taxi trips shaped exactly like the public 2009 sample, for tests and demos.

The public sample (``s3://anonymous@air-example-data/ursa-labs-taxi-data/
downsampled_2009_full_year_data.parquet/``) has 1,710,629 rows and the columns of `SCHEMA`.
`make_nyc_taxi_shards` writes that many rows (times `scale`) as N Parquet shards, every value
drawn with vectorized numpy from distributions close to the 2009 yellow-cab data:

    pickup time   uniform over 2009, weighted by hour of day (quiet at 4-6 am)
    distance      log-normal, median about 1.6 miles, capped at 50
    duration      distance / a log-normal speed (about 11 mph in Manhattan traffic)
    coordinates   around Midtown Manhattan; about 2 % are (0, 0) as in the raw data
    fare          the 2009 meter: $2.50 + $2.00 a mile + waiting time, in 10-cent steps
    tip           about 20 % of the fare on card payments, none on cash

Each shard draws from its own generator seeded with ``(seed, shard index)``: the output depends
only on the arguments, and shard 3 is the same whether 4 or 12 shards are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .storage import fsspec_filesystem

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["NYC_TAXI_ROWS", "make_nyc_taxi_shards", "nyc_taxi_schema", "nyc_taxi_table"]

NYC_TAXI_ROWS = 1_710_629  # rows in the public 2009 sample
ROW_GROUP_SIZE = 65_536

_YEAR_START = np.datetime64("2009-01-01T00:00:00", "us")
_YEAR_SECONDS = 365 * 24 * 3600
# Relative trip counts by hour of day (0..23), after the 2009 trip records.
_HOURLY = np.array([5.6, 4.3, 3.3, 2.4, 1.8, 1.5, 2.4, 3.9, 4.6, 4.6, 4.3, 4.4,
                    4.7, 4.7, 4.8, 4.6, 4.1, 4.7, 5.7, 6.1, 5.7, 5.5, 5.6, 5.6])
_VENDORS = (np.array(["VTS", "CMT", "DDS"]), np.array([0.50, 0.47, 0.03]))
_PAYMENTS = (np.array(["CASH", "Cash", "CREDIT", "Credit", "No Charge", "Dispute"]),
             np.array([0.41, 0.30, 0.15, 0.125, 0.01, 0.005]))
_PASSENGERS = (np.arange(7, dtype=np.int8),
               np.array([0.01, 0.69, 0.15, 0.045, 0.02, 0.075, 0.01]))


def nyc_taxi_schema() -> pa.Schema:
    """The column names and types of the public 2009 sample."""
    import pyarrow as pa

    f32 = pa.float32()
    return pa.schema([
        ("vendor_id", pa.string()),
        ("pickup_at", pa.timestamp("us")),
        ("dropoff_at", pa.timestamp("us")),
        ("passenger_count", pa.int8()),
        ("trip_distance", f32),
        ("pickup_longitude", f32),
        ("pickup_latitude", f32),
        ("rate_code_id", pa.string()),
        ("store_and_fwd_flag", pa.string()),
        ("dropoff_longitude", f32),
        ("dropoff_latitude", f32),
        ("payment_type", pa.string()),
        ("fare_amount", f32),
        ("extra", f32),
        ("mta_tax", f32),
        ("tip_amount", f32),
        ("tolls_amount", f32),
        ("total_amount", f32),
    ])


def nyc_taxi_table(rows: int, *, seed: int = 0, shard: int = 0) -> pa.Table:
    """`rows` synthetic trips, drawn from the generator seeded with ``(seed, shard)``."""
    import pyarrow as pa

    rng = np.random.default_rng([seed, shard])
    pickup = _pickup_times(rng, rows)
    distance = np.minimum(rng.lognormal(0.5, 0.75, rows), 50.0)
    speed_mph = np.clip(rng.lognormal(np.log(11.0), 0.35, rows), 2.0, 45.0)
    minutes = distance / speed_mph * 60 + rng.exponential(1.0, rows)
    dropoff = pickup + (np.round(minutes * 60) * 1_000_000).astype("timedelta64[us]")
    pick_lon, pick_lat, drop_lon, drop_lat = _coordinates(rng, rows, distance)
    payment = _choice(rng, _PAYMENTS, rows)
    fare, extra, mta_tax, tip, tolls = _amounts(rng, rows, distance, minutes, pickup, payment)
    columns = {
        "vendor_id": _choice(rng, _VENDORS, rows),
        "pickup_at": pickup,
        "dropoff_at": dropoff,
        "passenger_count": _choice(rng, _PASSENGERS, rows),
        "trip_distance": distance,
        "pickup_longitude": pick_lon,
        "pickup_latitude": pick_lat,
        "rate_code_id": pa.nulls(rows, pa.string()),  # never filled in the 2009 records
        "store_and_fwd_flag": _store_and_forward(rng, rows),
        "dropoff_longitude": drop_lon,
        "dropoff_latitude": drop_lat,
        "payment_type": payment,
        "fare_amount": fare,
        "extra": extra,
        "mta_tax": mta_tax,
        "tip_amount": tip,
        "tolls_amount": tolls,
        "total_amount": fare + extra + mta_tax + tip + tolls,
    }
    schema = nyc_taxi_schema()
    return pa.table([_column(columns[f.name], f.type) if not isinstance(
        columns[f.name], pa.Array) else columns[f.name] for f in schema], schema=schema)


def make_nyc_taxi_shards(dest: str, *, shards: int = 12, rows_per_shard: int | None = None,
                         scale: float = 1.0, seed: int = 0, storage_options: dict | None = None
                         ) -> list[str]:
    """Write `shards` Parquet files of synthetic trips under `dest`; returns their URIs.

    By default the shards hold 1,710,629 × `scale` rows in total, split as evenly as possible
    (12 shards: 142,552 or 142,553 rows each). With `rows_per_shard`, each shard holds
    ``round(rows_per_shard * scale)`` rows. Files are ``part-00000.parquet``, ... in `dest`
    (a local folder or any fsspec URI), with row groups of 65,536 rows.
    """
    import pyarrow.parquet as pq

    counts = shard_row_counts(shards, rows_per_shard=rows_per_shard, scale=scale)
    fs, location = fsspec_filesystem(dest, storage_options)
    root = location.path.rstrip("/")
    if location.protocol == "file":
        fs.makedirs(root, exist_ok=True)
    uris = []
    for index, rows in enumerate(counts):
        path = f"{root}/part-{index:05d}.parquet"
        table = nyc_taxi_table(rows, seed=seed, shard=index)
        with fs.open(path, "wb") as file:
            pq.write_table(table, file, row_group_size=ROW_GROUP_SIZE)
        uris.append(location.uri(path))
    return uris


def shard_row_counts(shards: int, *, rows_per_shard: int | None = None,
                     scale: float = 1.0) -> list[int]:
    """Rows in each shard: pure arithmetic behind `make_nyc_taxi_shards`."""
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer, found {shards!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, found {scale!r}")
    if rows_per_shard is not None:
        return [max(0, round(rows_per_shard * scale))] * shards
    total = round(NYC_TAXI_ROWS * scale)
    base, remainder = divmod(total, shards)
    return [base + (1 if i < remainder else 0) for i in range(shards)]


def _choice(rng: np.random.Generator, values_and_weights: tuple[np.ndarray, np.ndarray],
            rows: int) -> np.ndarray:
    values, weights = values_and_weights
    return values[rng.choice(len(values), size=rows, p=weights / weights.sum())]


def _pickup_times(rng: np.random.Generator, rows: int) -> np.ndarray:
    day = rng.integers(0, 365, rows)
    hour = rng.choice(24, size=rows, p=_HOURLY / _HOURLY.sum())
    second = rng.integers(0, 3600, rows)
    seconds = day * 86400 + hour * 3600 + second
    return np.sort(_YEAR_START + (seconds * 1_000_000).astype("timedelta64[us]"))


def _coordinates(rng: np.random.Generator, rows: int, distance: np.ndarray
                 ) -> tuple[np.ndarray, ...]:
    pick_lon = rng.normal(-73.978, 0.025, rows)
    pick_lat = rng.normal(40.754, 0.028, rows)
    angle = rng.uniform(0, 2 * np.pi, rows)
    # About 52 miles per degree of longitude and 69 per degree of latitude at 40.7° N;
    # streets make the drive about 1.3 times the straight line.
    straight = distance / 1.3
    drop_lon = pick_lon + straight * np.cos(angle) / 52.4
    drop_lat = pick_lat + straight * np.sin(angle) / 69.0
    missing = rng.random(rows) < 0.02  # GPS failures are recorded as 0.0 in the raw data
    for column in (pick_lon, pick_lat, drop_lon, drop_lat):
        column[missing] = 0.0
    return pick_lon, pick_lat, drop_lon, drop_lat


def _amounts(rng: np.random.Generator, rows: int, distance: np.ndarray, minutes: np.ndarray,
             pickup: np.ndarray, payment: np.ndarray) -> tuple[np.ndarray, ...]:
    waiting_minutes = np.maximum(minutes - distance / 12.0 * 60, 0)
    fare = np.round(2.5 + 2.0 * distance + 0.2 * waiting_minutes, 1)
    hour = (pickup - pickup.astype("datetime64[D]")).astype("timedelta64[h]").astype(int)
    night = (hour >= 20) | (hour < 6)
    peak = (hour >= 16) & (hour < 20)
    extra = np.where(night, 0.5, np.where(peak, 1.0, 0.0)) * (rng.random(rows) < 0.9)
    # The MTA surcharge started on 2009-03-01 and the meters followed over a few months.
    mta_tax = np.where(pickup >= np.datetime64("2009-03-01"), 0.5, 0.0) * (rng.random(rows) < 0.8)
    card = np.isin(payment, ["CREDIT", "Credit"])
    tip = np.where(card, np.round(fare * rng.normal(0.2, 0.05, rows).clip(0, 0.5), 2), 0.0)
    tolls = np.where(rng.random(rows) < 0.04, rng.choice([4.15, 4.57, 5.5], size=rows), 0.0)
    return fare, extra, mta_tax, tip, tolls


def _store_and_forward(rng: np.random.Generator, rows: int) -> pa.Array:
    import pyarrow as pa

    draw = rng.random(rows)
    values = np.where(draw < 0.001, "1", "0")
    return pa.array(values, mask=draw > 0.02, type=pa.string())  # mostly not recorded


def _column(values: np.ndarray, type: pa.DataType) -> pa.Array:
    import pyarrow as pa

    if pa.types.is_floating(type):
        values = values.astype(type.to_pandas_dtype())  # float64 maths, float32 storage
    return pa.array(values, type=type)
