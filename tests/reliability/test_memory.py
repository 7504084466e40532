"""The object store under pressure and with its spill files damaged, on a live session.

- A store a quarter of the working set: every result is spilled and restored, to a local folder
  and to S3 (moto), and comes back identical; directly on `core`, and through a pipeline whose
  consumer is slower than its workers (sixteen shard results in flight).
- Spill files deleted or corrupted while their objects are spilled (local folder and S3): task
  results are rebuilt by lineage and come back right; a `put` object raises ObjectLostError
  naming it (and, when the file is corrupt, saying so: crc32 checksums); never wrong data.
  (tests/core/test_objects.py covers a deleted local spill file; tests/core/test_object_store.py
  covers corruption at the store level.)
"""

from __future__ import annotations

import os

import boto3
import numpy as np
import pytest

import core
from core.exceptions import ObjectLostError

MiB = 2**20
OBJECT = 2 * MiB          # each object
COUNT = 32                # 64 MiB of objects ...
CAPACITY = 16 * MiB       # ... through a 16 MiB store


@pytest.fixture(params=["local", "s3"])
def spill(request, tmp_path):
    if request.param == "local":
        return {"uri": str(tmp_path / "spill"), "min_spilling_size": 0}
    bucket = request.getfixturevalue("s3_bucket")
    return {"uri": f"s3://{bucket}/spill", "min_spilling_size": 0}


@pytest.fixture
def session(spill):
    core.init(num_cpus=2, object_store_memory=CAPACITY, spill=spill)
    try:
        yield core
    finally:
        core.shutdown()


@core.remote
def make(i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 2**62, OBJECT // 8, dtype=np.int64)


def expected(i):
    return np.random.default_rng(i).integers(0, 2**62, OBJECT // 8, dtype=np.int64)


def store():
    from core._private.runtime import current as current_runtime

    return current_runtime().store


def spilled_locations():
    """(object id, spill location) of every spilled object."""
    st = store()
    return [(e.object_id, st._objects[bytes.fromhex(e.object_id)].loc)
            for e in st.entries() if e.where == "spilled"]


def damage(loc, how: str) -> None:
    """Flip a byte in the middle of the object, or delete its whole spill file."""
    url = loc.file.url
    if url.startswith("s3://"):
        bucket, _, key = url.removeprefix("s3://").partition("/")
        s3 = boto3.client("s3")
        if how == "delete":
            s3.delete_object(Bucket=bucket, Key=key)
            return
        data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[loc.offset + loc.length // 2] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        return
    if how == "delete":
        if os.path.exists(url):
            os.unlink(url)
        return
    with open(url, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


def test_store_at_a_quarter_of_the_working_set_spills_and_restores_identically(session, record_property):
    refs = [make.remote(i) for i in range(COUNT)]
    ready, _ = core.wait(refs, num_returns=COUNT, timeout=300)
    assert len(ready) == COUNT
    usage = store().usage()
    record_property("objects_spilled", str(usage["num_spilled"]))
    assert usage["num_spilled"] >= COUNT // 2 and usage["total_spilled_bytes"] >= 3 * CAPACITY
    for i, ref in enumerate(refs):
        assert np.array_equal(core.get(ref, timeout=120), expected(i)), i
    assert store().usage()["total_restored_bytes"] >= 3 * CAPACITY


@pytest.mark.parametrize("how", ["delete", "corrupt"])
def test_damaged_spill_files_task_results_rebuilt_by_lineage(session, how, record_property):
    refs = [make.remote(i) for i in range(12)]
    core.wait(refs, num_returns=12, timeout=300)
    spilled = spilled_locations()
    assert len(spilled) >= 4
    record_property("objects_damaged", str(len(spilled)))
    for _, loc in spilled:
        damage(loc, how)
    for i, ref in enumerate(refs):
        assert np.array_equal(core.get(ref, timeout=120), expected(i)), i


@pytest.mark.parametrize("how", ["delete", "corrupt"])
def test_damaged_spill_files_put_objects_raise_object_lost_naming_them(session, how, record_property):
    refs = [core.put(expected(i)) for i in range(12)]
    spilled = dict(spilled_locations())
    assert len(spilled) >= 4
    record_property("objects_damaged", str(len(spilled)))
    for loc in spilled.values():
        damage(loc, how)
    for i, ref in enumerate(refs):
        if ref.hex() not in spilled:
            assert np.array_equal(core.get(ref), expected(i))
            continue
        with pytest.raises(ObjectLostError) as info:
            core.get(ref)
        message = str(info.value)
        assert ref.hex() in message and "core.put" in message
        if how == "corrupt":
            assert "corrupt (crc32 mismatch" in message, message
        # still lost, still the same clear error: never wrong data
        with pytest.raises(ObjectLostError, match=ref.hex()):
            core.get(ref)


# ─── the same through a pipeline ────────────────────────────────────────────────────────────────
KEEP = ["trip_distance", "fare_amount"]


def stream_all(data, spill_uri: str, capacity: str | None, slow_consumer: bool):
    """Every shard's predictions through Pipeline.stream(), sorted by shard."""
    import time

    import pyarrow as pa

    from dataflow import Pipeline

    p = Pipeline(source={"parquet": data, "columns": ["passenger_count"]},
                 model={"factory": "tests.reliability.models:tip_model", "args": {"payload_mb": 1}},
                 predict={"batch_size": 4096, "keep_columns": KEEP},
                 runtime={"num_cpus": 2, "max_in_flight": 16, "spill": spill_uri,
                          **({"object_store_memory": capacity} if capacity else {})})
    frames = []
    for frame in p.stream(format="pyarrow"):
        # a private copy: a zero-copy view would pin its object in the store for good
        frames.append(pa.Table.from_pydict(frame.to_pydict(), schema=frame.schema))
        del frame
        if slow_consumer:
            time.sleep(0.2)                  # results pile up in the store meanwhile
    return sorted(frames, key=lambda t: t["trip_distance"][0].as_py())


def test_pipeline_with_a_store_at_a_quarter_of_its_working_set(spill, tmp_path, record_property):
    """Sixteen shards in flight, each result about 1 MiB, consumed slowly: a working set of
    about 16 MiB through a 4 MiB store. Every result comes back identical to an unconstrained
    run."""
    from .conftest import make_data

    # ~128,000 rows a shard: results of ~1 MiB of their own (read directly, a result no longer
    # keeps the whole decoded row group alive, which made 0.2 of this enough before c5ad6b5)
    data = make_data(tmp_path / "data", shards=16, scale=1.2)
    reference = stream_all(data, str(tmp_path / "ref-spill"), None, slow_consumer=False)
    core.init(num_cpus=2, object_store_memory=4 * MiB, spill=spill)
    try:
        got = stream_all(data, spill["uri"], None, slow_consumer=True)
        usage = store().usage()
    finally:
        core.shutdown()
    record_property("bytes_spilled", str(usage["total_spilled_bytes"]))
    assert usage["total_spilled_bytes"] >= 4 * MiB and usage["total_restored_bytes"] > 0, usage
    assert len(got) == len(reference) == 16
    for a, b in zip(got, reference):
        assert a.equals(b)
