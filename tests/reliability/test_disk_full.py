"""A full disk under the sink and under the spill folder: a real, size-limited tmpfs
(`mount -t tmpfs -o size=2m`, which needs root; skipped otherwise), unmounted after the test.

- Sink: the run stops with exit code 1 and one error line saying the device is full and naming
  the part; no partial file under a final name (every part-* is complete and in the manifest);
  once space is freed the same command resumes and the output equals a clean run's.
- Spill folder: a put that must spill raises ObjectStoreFullError naming the folder and the
  cause; everything stored before comes back intact once memory is freed (never wrong data); a task whose result cannot be stored fails
  with the same error; after space is freed, puts and tasks work again.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

import core
from core.exceptions import ObjectStoreFullError, TaskError

from .conftest import assert_identical, dataflow, make_data, manifest, one_error_line, write_pipeline


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at tmp_path/disk."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(mnt, leave: int) -> str:
    """A ballast file leaving about `leave` bytes free on the mount."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    path = os.path.join(mnt, "ballast")
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return path


def test_sink_disk_full_clear_error_no_partial_part_then_resume(tmp_path, small_disk, record_property):
    make_data(tmp_path / "data", shards=6, scale=0.02)
    clean = write_pipeline(tmp_path / "clean.yaml", sink__parquet="clean/", runtime__num_cpus=1)
    assert dataflow("run", clean, cwd=tmp_path).returncode == 0
    part = os.path.getsize(tmp_path / "clean" / "part-00000.parquet")
    out = small_disk / "out"
    spec = write_pipeline(tmp_path / "p.yaml", sink__parquet=str(out) + "/", runtime__num_cpus=1,
                          runtime__max_in_flight=1)
    ballast = fill(small_disk, leave=2 * part + 16 * 1024)
    r = dataflow("run", spec, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr)
    assert "No space left on device" in line and str(out) in line, line
    committed = manifest(out)
    assert len(committed) < 6
    record_property("shards_committed_before_full", str(len(committed)))
    parts = sorted(n for n in os.listdir(out) if n.startswith("part-"))
    assert parts == [f"part-{i:05d}.parquet" for i in sorted(committed)]   # nothing half-written
    for name in parts:
        assert pq.read_table(out / name).num_rows == committed[int(name[5:10])]

    os.unlink(ballast)
    r = dataflow("run", spec, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["shards_skipped"] == len(committed) and s["shards_done"] == 6 - len(committed)
    assert_identical(out, tmp_path / "clean")
    assert sorted(os.listdir(out)) == ["_manifest.json"] + [f"part-{i:05d}.parquet" for i in range(6)]


def test_spill_folder_full_is_a_clear_error_and_nothing_stored_is_lost(small_disk):
    MiB = 2**20
    core.init(num_cpus=1, object_store_memory=4 * MiB,
              spill={"uri": str(small_disk / "spill"), "min_spilling_size": 0})
    try:
        refs = []
        with pytest.raises(ObjectStoreFullError) as info:
            for i in range(16):                     # 16 MiB: 4 in memory, 1 on disk, no more
                refs.append(core.put(np.full(MiB // 8, i)))
        message = str(info.value)
        assert str(small_disk / "spill") in message and "No space left on device" in message
        assert 4 <= len(refs) < 16
        from core._private.runtime import current as current_runtime

        assert current_runtime().store.usage()["total_spilled_bytes"] >= MiB   # it did spill
        # What was stored is intact. A spilled object needs memory to come back, and memory is
        # full of objects that cannot spill: reading it is the same clear error, never wrong data.
        for i, ref in enumerate(refs):
            try:
                assert (core.get(ref) == i).all()
            except ObjectStoreFullError as exc:
                assert "No space left on device" in str(exc)
        kept = refs[:2]
        del refs                                    # memory comes back: every object reads right
        for i, ref in enumerate(kept):
            assert (core.get(ref) == i).all()

        @core.remote
        def make(i):
            return np.full(MiB // 8, i)

        with pytest.raises(TaskError) as info:
            core.get([make.remote(100 + i) for i in range(4)])
        assert isinstance(info.value.cause, ObjectStoreFullError), info.value
        assert "No space left on device" in str(info.value.cause)

        del kept, ref, info                         # space comes back: work goes on
        assert [int(core.get(make.remote(i))[0]) for i in range(8)] == list(range(8))
    finally:
        core.shutdown()
    assert os.listdir(small_disk) in ([], ["spill"])
    assert not os.path.exists(small_disk / "spill") or os.listdir(small_disk / "spill") == []
