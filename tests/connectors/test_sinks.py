"""Sinks: one contract suite run against a local folder and an S3 prefix, then MemorySink.

Each backend fixture gives the sink URI and a `listing()` of the file names under it, so the
tests check what a reader of the destination would actually see.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from connectors import MemorySink, SchemaError, SinkError, StorageError, open_sink

from .conftest import small_table


@dataclass
class Destination:
    uri: str
    listing: Callable[[], list[str]]  # names of every file under uri, relative to it
    read: Callable[[str], bytes]  # bytes of a file, by relative name


@pytest.fixture(params=["local", "s3"])
def dest(request, tmp_path: Path) -> Destination:
    if request.param == "local":
        root = tmp_path / "out"
        return Destination(
            str(root),
            lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            if root.exists() else [],
            lambda name: (root / name).read_bytes())
    client = request.getfixturevalue("s3_client")
    bucket = request.getfixturevalue("s3_bucket")

    def listing() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/")
        return sorted(o["Key"][4:] for page in pages for o in page.get("Contents", []))

    return Destination(f"s3://{bucket}/out", listing,
                       lambda name: client.get_object(Bucket=bucket, Key=f"out/{name}")["Body"]
                       .read())


def manifest(dest: Destination) -> dict:
    return json.loads(dest.read("_manifest.json"))


# --------------------------------------------------------------------------- formats


def test_parquet_part_has_a_deterministic_name_and_reads_back(dest: Destination):
    sink = open_sink(dest.uri)

    uri = sink.write_part(7, small_table(0, 10))

    assert uri == f"{dest.uri}/part-00007.parquet"
    assert dest.listing() == ["_manifest.json", "part-00007.parquet"]
    assert pq.read_table(io.BytesIO(dest.read("part-00007.parquet"))).equals(small_table(0, 10))


def test_csv_part_reads_back_with_a_header(dest: Destination):
    open_sink(dest.uri, format="csv").write_part(0, small_table(0, 5))

    table = pacsv.read_csv(io.BytesIO(dest.read("part-00000.csv")))
    assert table.column_names == ["id", "value", "name"]
    assert table["id"].to_pylist() == [0, 1, 2, 3, 4]


def test_jsonl_part_has_one_json_object_per_row(dest: Destination):
    table = small_table(0, 3).append_column(
        "at", pa.array([0, 1, 2], pa.timestamp("us")))
    open_sink(dest.uri, format="jsonl").write_part(2, table)

    lines = dest.read("part-00002.jsonl").decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[1]) == {"id": 1, "value": 0.5, "name": "n1",
                                    "at": "1970-01-01T00:00:00.000001"}


def test_streamed_part_concatenates_batches(dest: Destination):
    sink = open_sink(dest.uri)
    part = sink.open_part(3)
    for start in (0, 10, 20):
        part.write(small_table(start, 10).to_batches()[0])

    assert part.commit() == 30
    ids = pq.read_table(io.BytesIO(dest.read("part-00003.parquet")))["id"].to_pylist()
    assert ids == list(range(30))


def test_batch_with_another_schema_is_refused_and_nothing_is_committed(dest: Destination):
    sink = open_sink(dest.uri)
    with sink.open_part(1) as part:
        part.write(small_table(0, 5))
        with pytest.raises(SchemaError, match=r"part .*part-00001.parquet: a batch has columns "
                                              r"\[id: int64\], but the part was started with "
                                              r"\[id: int64, value: double, name: string\]"):
            part.write(small_table(5, 5).select(["id"]))

    assert "part-00001.parquet" not in dest.listing()
    assert sink.committed() == {}


def test_empty_part_is_committed_with_zero_rows(dest: Destination):
    sink = open_sink(dest.uri)

    sink.write_part(4, small_table(0, 0))

    assert sink.committed() == {4: 0}


# --------------------------------------------------------------------------- atomic commit


def test_uncommitted_part_leaves_nothing_under_its_final_name(dest: Destination):
    sink = open_sink(dest.uri)
    part = sink.open_part(5)
    part.write(small_table(0, 1000))
    # The process "crashes" here: no commit, no abort.

    assert not any(name.startswith("part-") for name in dest.listing())
    assert all(name.startswith("_") for name in dest.listing())
    assert open_sink(dest.uri).committed() == {}
    part.abort()  # close the "crashed" part's file here, not whenever it is garbage-collected


def test_aborted_part_leaves_no_file_at_all(dest: Destination):
    sink = open_sink(dest.uri)
    part = sink.open_part(5)
    part.write(small_table(0, 10))

    part.abort()

    assert dest.listing() == []


def test_exception_inside_a_part_context_aborts_it(dest: Destination):
    sink = open_sink(dest.uri)
    with pytest.raises(RuntimeError, match="model failed"):
        with sink.open_part(6) as part:
            part.write(small_table(0, 10))
            raise RuntimeError("model failed")

    assert dest.listing() == []


def test_committed_part_cannot_be_written_again(dest: Destination):
    part = open_sink(dest.uri).open_part(0)
    part.write(small_table(0, 1))
    part.commit()

    with pytest.raises(SinkError, match=r"part .*part-00000.parquet was already committed"):
        part.write(small_table(0, 1))


# --------------------------------------------------------------------------- manifest and modes


def test_manifest_records_committed_parts_with_row_counts(dest: Destination):
    sink = open_sink(dest.uri)
    sink.write_part(0, small_table(0, 10))
    sink.write_part(2, small_table(0, 20))

    assert sink.committed() == {0: 10, 2: 20}
    assert manifest(dest)["parts"] == {"part-00000.parquet": {"shard": 0, "rows": 10},
                                       "part-00002.parquet": {"shard": 2, "rows": 20}}
    assert manifest(dest)["format"] == "parquet"


def test_resume_reports_parts_committed_by_an_earlier_run(dest: Destination):
    open_sink(dest.uri).write_part(1, small_table(0, 10))

    rerun = open_sink(dest.uri, mode="resume")

    assert rerun.committed() == {1: 10}
    rerun.write_part(2, small_table(0, 5))
    assert open_sink(dest.uri).committed() == {1: 10, 2: 5}


def test_resume_forgets_a_part_whose_file_was_deleted(dest: Destination, tmp_path: Path):
    sink = open_sink(dest.uri)
    sink.write_part(1, small_table(0, 10))
    sink.write_part(2, small_table(0, 10))
    if dest.uri.startswith("s3://"):
        from connectors.storage import fsspec_filesystem

        fs, location = fsspec_filesystem(dest.uri)
        fs.rm(f"{location.path}/part-00001.parquet")
    else:
        Path(dest.uri, "part-00001.parquet").unlink()

    assert open_sink(dest.uri).committed() == {2: 10}


def test_overwrite_clears_the_destination_first(dest: Destination):
    first = open_sink(dest.uri)
    first.write_part(0, small_table(0, 10))
    first.write_quarantine(1, small_table(0, 1))

    sink = open_sink(dest.uri, mode="overwrite")

    assert dest.listing() == []
    assert sink.committed() == {}


def test_error_mode_refuses_a_destination_with_files(dest: Destination):
    open_sink(dest.uri).write_part(0, small_table(0, 10))

    with pytest.raises(SinkError, match=r"sink .*out already holds 2 file\(s\) \(_manifest.json, "
                                        r"part-00000.parquet\); mode='error' refuses"):
        open_sink(dest.uri, mode="error")


def test_error_mode_accepts_an_empty_destination(dest: Destination):
    open_sink(dest.uri, mode="error").write_part(0, small_table(0, 1))

    assert dest.listing() == ["_manifest.json", "part-00000.parquet"]


def test_append_adds_parts_next_to_existing_ones(dest: Destination):
    open_sink(dest.uri).write_part(0, small_table(0, 10))

    sink = open_sink(dest.uri, mode="append", run_id="run2")
    assert sink.committed() == {}
    sink.write_part(0, small_table(10, 10))

    assert dest.listing() == ["_manifest.json", "part-00000-run2.parquet", "part-00000.parquet"]
    assert sink.committed() == {0: 10}
    assert open_sink(dest.uri).committed() == {0: 10}


def test_resume_refuses_a_destination_written_in_another_format(dest: Destination):
    open_sink(dest.uri, format="csv").write_part(0, small_table(0, 1))

    with pytest.raises(SinkError, match=r"holds csv parts \(per _manifest.json\), but this sink "
                                        r"writes parquet"):
        open_sink(dest.uri, format="parquet")


def test_quarantine_goes_under_an_underscore_folder_and_the_manifest(dest: Destination):
    sink = open_sink(dest.uri, format="csv")

    uri = sink.write_quarantine(3, small_table(0, 4))

    assert uri == f"{dest.uri}/_quarantine/part-00003.parquet"
    assert dest.listing() == ["_manifest.json", "_quarantine/part-00003.parquet"]
    assert manifest(dest)["quarantine"] == {
        "_quarantine/part-00003.parquet": {"shard": 3, "rows": 4}}
    assert sink.committed() == {}


def test_closed_sink_refuses_new_parts(dest: Destination):
    with open_sink(dest.uri) as sink:
        sink.write_part(0, small_table(0, 1))

    with pytest.raises(SinkError, match=r"sink .*out is closed"):
        sink.open_part(1)


def test_corrupt_manifest_raises_sink_error_naming_it(tmp_path: Path):
    (tmp_path / "_manifest.json").write_text("{not json")

    with pytest.raises(SinkError, match=rf"{tmp_path}/_manifest.json is not a valid manifest"):
        open_sink(str(tmp_path))


def test_bad_format_and_mode_raise_value_errors(tmp_path: Path):
    with pytest.raises(ValueError, match=r"format must be one of \['csv', 'jsonl', 'parquet'\], "
                                         r"found 'xml'"):
        open_sink(str(tmp_path), format="xml")
    with pytest.raises(ValueError, match=r"mode must be one of .*found 'replace'"):
        open_sink(str(tmp_path), mode="replace")


def test_sink_in_a_missing_bucket_raises_a_connector_error_naming_it(s3_server):
    sink = open_sink("s3://no-such-bucket-y/out")
    with pytest.raises(SinkError, match=r"cannot (write|commit) s3://no-such-bucket-y/out/"
                                        r"part-00000.parquet: not found \(NoSuchBucket"):
        sink.write_part(0, small_table(0, 1))


def test_sink_with_denied_credentials_raises_storage_error(s3_bucket, s3_auth_enforced):
    with pytest.raises(StorageError, match=rf"cannot open the sink at s3://{s3_bucket}/out: "
                                           r"access denied \(InvalidAccessKeyId"):
        open_sink(f"s3://{s3_bucket}/out")


def test_sink_repr_has_no_credentials(s3_bucket):
    sink = open_sink(f"s3://{s3_bucket}/out", storage_options={"key": "testing",
                                                             "secret": "testing-secret"})
    assert "testing-secret" not in repr(sink)


# --------------------------------------------------------------------------- MemorySink


def test_memory_sink_streams_committed_batches_to_the_callback():
    seen: list[pa.RecordBatch] = []
    sink = MemorySink(seen.append)

    part = sink.open_part(0)
    part.write(small_table(0, 5))
    part.write(small_table(5, 5))
    assert seen == []  # nothing before the commit
    part.commit()

    assert [b.num_rows for b in seen] == [5, 5]
    assert sink.committed() == {0: 10}


def test_memory_sink_drops_aborted_parts():
    seen: list[pa.RecordBatch] = []
    sink = MemorySink(seen.append)
    with sink.open_part(0) as part:
        part.write(small_table(0, 5))

    assert seen == [] and sink.committed() == {}


def test_memory_sink_without_callback_keeps_tables():
    sink = MemorySink()
    sink.write_part(2, small_table(0, 3))
    sink.write_quarantine(4, small_table(0, 1))

    assert sink.tables[2].equals(small_table(0, 3))
    assert sink.quarantined[4].num_rows == 1
    assert sink.committed() == {2: 3}


def test_memory_sink_refuses_a_batch_of_another_schema():
    part = MemorySink().open_part(0)
    part.write(small_table(0, 1))
    with pytest.raises(SchemaError, match=r"part memory://part-00000.parquet: a batch has "
                                          r"columns \[id: int64\]"):
        part.write(small_table(0, 1).select(["id"]))


def test_large_part_in_a_multipart_upload_is_invisible_until_committed(s3_client, s3_bucket):
    import os

    # s3fs uploads in blocks (50 MiB by default); 5 MiB, the S3 minimum, keeps the test small.
    sink = open_sink(f"s3://{s3_bucket}/big", storage_options={"default_block_size": 5 * 2**20})
    noise = pa.table({"blob": pa.array([os.urandom(1024) for _ in range(7 * 1024)],
                                       pa.binary())})  # 7 MiB that does not compress
    part = sink.open_part(0)
    part.write(noise)  # more than one 5 MiB block: a multipart upload is under way

    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="big/").get("Contents", [])
    assert listed == []
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")

    part.commit()
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["big/_manifest.json", "big/part-00000.parquet"]
    body = s3_client.get_object(Bucket=s3_bucket, Key="big/part-00000.parquet")["Body"].read()
    assert pq.read_table(io.BytesIO(body)).num_rows == 7 * 1024


def test_parts_committed_from_several_threads_all_reach_the_manifest(dest: Destination):
    from concurrent.futures import ThreadPoolExecutor

    sink = open_sink(dest.uri)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: sink.write_part(i, small_table(0, i + 1)), range(8)))

    assert open_sink(dest.uri).committed() == {i: i + 1 for i in range(8)}


def test_two_sinks_on_one_destination_in_one_process_keep_every_entry(dest: Destination):
    from concurrent.futures import ThreadPoolExecutor

    sinks = [open_sink(dest.uri), open_sink(dest.uri)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: sinks[i % 2].write_part(i, small_table(0, 1)), range(8)))

    assert sorted(open_sink(dest.uri).committed()) == list(range(8))


# --------------------------------------------------------------------------- staged parts

_STAGE_IN_A_CHILD = """
import pickle, sys
import pyarrow as pa
stager = pickle.loads(sys.stdin.buffer.read())
staged = stager.write(7, pa.table({"id": list(range(5))}))
sys.stdout.buffer.write(pickle.dumps(staged))
"""


def _stage_in_another_process(stager) -> object:
    import pickle
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _STAGE_IN_A_CHILD], input=pickle.dumps(stager),
                          capture_output=True, check=True)
    return pickle.loads(done.stdout)


def test_part_staged_in_another_process_appears_only_when_committed(dest: Destination):
    sink = open_sink(dest.uri)
    staged = _stage_in_another_process(sink.stager("run1"))

    assert staged.rows == 5 and staged.name == "part-00007.parquet"
    assert dest.listing() == [staged.temp] and staged.temp.startswith("_tmp-part-00007.parquet.run1-")
    assert sink.committed() == {}

    uri = sink.commit_staged(staged)

    assert uri.endswith("/part-00007.parquet")
    assert dest.listing() == ["_manifest.json", "part-00007.parquet"]
    assert pq.read_table(io.BytesIO(dest.read("part-00007.parquet")))["id"].to_pylist() == [0, 1, 2, 3, 4]
    assert open_sink(dest.uri).committed() == {7: 5}


def test_discard_staged_removes_one_tokens_leftovers_or_every_temporary_file(dest: Destination):
    sink = open_sink(dest.uri)
    sink.write_part(0, small_table(0, 3))
    mine, theirs = sink.stager("mine"), sink.stager("theirs")
    mine.write(1, small_table(0, 3))
    mine.write(1, small_table(0, 3))  # a retried shard: two temporary files
    theirs.write(2, small_table(0, 3))

    removed = sink.discard_staged("mine")

    assert len(removed) == 2 and all(".mine-" in name for name in removed)
    assert [n for n in dest.listing() if n.startswith("_tmp-")] == [
        n for n in dest.listing() if ".theirs-" in n]
    assert len(sink.discard_staged()) == 1
    assert dest.listing() == ["_manifest.json", "part-00000.parquet"]


def test_staged_parts_in_append_mode_carry_the_runs_suffix(dest: Destination):
    open_sink(dest.uri).write_part(0, small_table(0, 2))
    sink = open_sink(dest.uri, mode="append", run_id="r2")

    sink.commit_staged(sink.stager("t").write(0, small_table(0, 4)))

    assert "part-00000-r2.parquet" in dest.listing() and "part-00000.parquet" in dest.listing()
    assert sink.committed() == {0: 4}


def test_stager_token_must_be_alphanumeric(tmp_path: Path):
    with pytest.raises(ValueError, match="token must be a non-empty alphanumeric"):
        open_sink(str(tmp_path / "out")).stager("a-b")


# A delay longer than any machine's uptime: the sink must not compare it with the absolute value
# of time.monotonic() (seconds since boot on Linux; minutes on a fresh machine).
FOREVER_S = 1e9


def test_deferred_records_share_a_manifest_write_and_reach_it_on_close(dest: Destination,
                                                                       monkeypatch):
    from connectors import _file_sink

    monkeypatch.setattr(_file_sink, "MANIFEST_DELAY_S", FOREVER_S)
    sink = open_sink(dest.uri)
    stager = sink.stager("t")
    sink.commit_staged(stager.write(0, small_table(0, 2)), defer_manifest=True)  # first: written
    for i in (1, 2):
        sink.commit_staged(stager.write(i, small_table(0, 2)), defer_manifest=True)

    assert "part-00002.parquet" in dest.listing()
    assert sink.committed() == {0: 2, 1: 2, 2: 2}  # this sink knows its pending records
    assert open_sink(dest.uri).committed() == {0: 2}  # the manifest does not, yet

    sink.close()

    assert open_sink(dest.uri).committed() == {0: 2, 1: 2, 2: 2}
    assert not flushers(), "close() leaves no flusher thread behind"


def flushers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("FileSink flusher")]


def wait_for_manifest(dest: Destination, want: dict[int, int]) -> None:
    """Poll what a new reader of the destination sees until it is `want` (a liveness bound,
    not a timing assertion: the flusher has MANIFEST_DELAY_S, the bound is minutes)."""
    deadline = time.monotonic() + 120
    while (seen := open_sink(dest.uri).committed()) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == want


def test_a_deferred_record_reaches_the_manifest_with_no_later_commit_or_close(
        dest: Destination, monkeypatch):
    from connectors import _file_sink

    # Long enough that the second commit surely comes within it of the first manifest write
    monkeypatch.setattr(_file_sink, "MANIFEST_DELAY_S", 1.0)
    sink = open_sink(dest.uri)
    stager = sink.stager("t")
    first, second = stager.write(0, small_table(0, 2)), stager.write(1, small_table(0, 3))
    sink.commit_staged(first, defer_manifest=True)   # written at once (nothing written lately)
    sink.commit_staged(second, defer_manifest=True)  # deferred: only the flusher writes it now

    wait_for_manifest(dest, {0: 2, 1: 3})
    sink.close()
    assert not flushers()


def test_commits_from_several_threads_all_reach_the_manifest_and_never_vanish(
        tmp_path: Path, monkeypatch):
    from connectors import _file_sink

    monkeypatch.setattr(_file_sink, "MANIFEST_DELAY_S", 0.002)  # the flusher writes all the time
    sink = open_sink(str(tmp_path / "out"))
    stager = sink.stager("t")
    staged = [stager.write(i, small_table(0, i % 5)) for i in range(120)]
    seen: list[dict[int, int]] = []
    stop = threading.Event()

    def watch() -> None:  # each committed() answer must hold every shard an earlier one held
        while not stop.is_set():
            seen.append(sink.committed())

    def commit(part_of_them: list) -> None:
        for s in part_of_them:
            sink.commit_staged(s, defer_manifest=True)

    watcher = threading.Thread(target=watch)
    watcher.start()
    committers = [threading.Thread(target=commit, args=(staged[k::4],)) for k in range(4)]
    for t in committers:
        t.start()
    for t in committers:
        t.join()
    stop.set()
    watcher.join()
    sink.close()

    assert open_sink(str(tmp_path / "out")).committed() == {i: i % 5 for i in range(120)}
    for earlier, later in zip(seen, seen[1:]):
        assert earlier.items() <= later.items()
    assert not flushers()


def test_a_failed_flusher_write_keeps_the_records_and_tries_again(tmp_path: Path,
                                                                   monkeypatch):
    from connectors import _file_sink

    monkeypatch.setattr(_file_sink, "MANIFEST_DELAY_S", 0.5)
    dest = Destination(str(tmp_path / "out"), list, lambda name: b"")
    sink = open_sink(dest.uri)
    stager = sink.stager("t")
    sink.commit_staged(stager.write(0, small_table(0, 2)), defer_manifest=True)  # written
    real, failures = sink._fs.pipe_file, []

    def disk_full_once(path, data, **kwargs):  # the flusher's first manifest write fails
        if not failures:
            failures.append(path)
            raise OSError(28, "No space left on device")
        return real(path, data, **kwargs)

    monkeypatch.setattr(sink._fs, "pipe_file", disk_full_once)
    sink.commit_staged(stager.write(1, small_table(0, 2)), defer_manifest=True)  # deferred

    wait_for_manifest(dest, {0: 2, 1: 2})
    assert failures  # the record outlived a failed write
    sink.close()
    assert not flushers()
