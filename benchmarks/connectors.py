"""Benchmark: our Parquet reader against plain pyarrow, on disk and on a local S3 server.

    python benchmarks/connectors.py [--repeat 5] [--small-files 1000]

1. writes the 12 default NYC taxi shards (1,710,629 rows) into a temp folder;
2. starts a moto S3 server on 127.0.0.1 (a free port) in a process of its own, as any S3
   endpoint is, and uploads them;
3. times reading every shard, one column and all columns, with `connectors.read_shard`
   (after `plan_shards`) and with `pyarrow.parquet.read_table` on the same files, in the same
   run, alternating the two, best of `--repeat`;
4. times `plan_shards` over 1,000 small Parquet objects on each S3 server: stock moto; moto
   with its per-request scan of its own package folder cached (a change to the stand-in
   server's speed only); and s3rver (a Node.js S3 server), when installed with
   `npm install --prefix benchmarks s3rver@3.7.1`. Twice: as planned by default (one LIST and
   the footers of 16 files; the other shards are estimated from their listed sizes and check
   their schema when read), and with `footers="all"` (one LIST and one footer GET per file),
   with the server's CPU time per request, which is where that time goes on moto (a few ms of
   Python per request, one request at a time under its global lock);
5. prints a table of times and ratios ours/pyarrow. Targets: ratio <= 1.1; planning < 2 s.

Everything it creates lives in a temp folder and the server processes, both gone at exit.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from pyarrow import fs as pafs  # noqa: E402

from connectors import make_nyc_taxi_shards, plan_shards, read_shard  # noqa: E402
from s3_servers import S3Server, have_s3rver  # noqa: E402  (benchmarks/)

BUCKET = "bench"
ONE_COLUMN = ["passenger_count"]


def best_of(repeat: int, func: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(repeat: int, ours: Callable[[], object], theirs: Callable[[], object]
            ) -> tuple[float, float]:
    """Best times of both, measured in alternation so load changes hit both alike."""
    ours_times, theirs_times = [], []
    for _ in range(repeat):
        theirs_times.append(best_of(1, theirs))
        ours_times.append(best_of(1, ours))
    return min(ours_times), min(theirs_times)


def planning_cases(server: S3Server, count: int) -> list[tuple[str, float, None]]:
    """Best of 3 plans of `count` small objects: as planned by default (the footers of a sample
    of 16 files, the rest estimated from their listed sizes), and with every footer read, with
    the server's CPU time per request."""
    server.activate()
    prefix = small_files(server.client(), count)
    rows = []
    for footers in ("auto", "all"):
        times, cpu = [], []
        for _ in range(3):
            before, start = server.cpu_seconds(), time.perf_counter()
            assert len(plan_shards(prefix, footers=footers)) == count
            times.append(time.perf_counter() - start)
            cpu.append(server.cpu_seconds() - before)
        if footers == "auto":
            what = "16 footers, the rest estimated"
        else:
            per_request = min(cpu) / (count + 1) * 1e3          # the footers and one LIST
            what = f"footers='all'; server {per_request:.1f} ms CPU/req"
        rows.append((f"plan {count} small files, S3 ({server.kind}; {what})", min(times), None))
    return rows


def reading_cases(label: str, uri: str, paths: list[str], filesystem: pafs.FileSystem | None,
                  repeat: int) -> list[tuple[str, float, float]]:
    shards = plan_shards(uri)
    assert len(shards) == len(paths)
    rows = []
    for what, columns in (("1 column", ONE_COLUMN), ("all columns", None)):
        def ours() -> int:
            return sum(read_shard(s, columns=columns).num_rows for s in shards)

        def theirs() -> int:
            return sum(pq.read_table(p, columns=columns, filesystem=filesystem).num_rows
                       for p in paths)

        assert ours() == theirs() == 1_710_629
        rows.append((f"read 12 shards, {what}, {label}", *compare(repeat, ours, theirs)))
    return rows


def upload(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.glob("*.parquet")):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")


def small_file_bytes() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]}), buffer)
    return buffer.getvalue()


def write_small_files(folder: Path, count: int) -> Path:
    folder.mkdir()
    body = small_file_bytes()
    for i in range(count):
        (folder / f"f{i:05d}.parquet").write_bytes(body)
    return folder


def small_files(client, count: int) -> str:
    body = small_file_bytes()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=BUCKET, Key=f"small/f{i:05d}.parquet",
                                                  Body=body), range(count)))
    return f"s3://{BUCKET}/small/"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--small-files", type=int, default=1000)
    args = parser.parse_args()

    results: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="bench-connectors-") as tmp:
        folder = Path(tmp) / "taxi"
        start = time.perf_counter()
        make_nyc_taxi_shards(str(folder))
        print(f"generated 12 shards in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        local_paths = [str(p) for p in sorted(folder.glob("*.parquet"))]
        results += reading_cases("disk", str(folder), local_paths, None, args.repeat)
        small = write_small_files(Path(tmp) / "small", args.small_files)
        results.append((f"plan {args.small_files} small files, disk (our own overhead)",
                        best_of(3, lambda: plan_shards(str(small))), None))

        with S3Server("moto", bucket=BUCKET) as server:
            server.activate()
            upload(server.client(), folder, "taxi")
            arrow_s3 = pafs.S3FileSystem(endpoint_override=server.url.split("://")[1],
                                         scheme="http", region="us-east-1")
            s3_paths = [f"{BUCKET}/taxi/{Path(p).name}" for p in local_paths]
            results += reading_cases("S3", f"s3://{BUCKET}/taxi/", s3_paths, arrow_s3,
                                     args.repeat)
            results += planning_cases(server, args.small_files)
        kinds = ["moto-cached"] + (["s3rver"] if have_s3rver() else [])
        for kind in kinds:
            with S3Server(kind, bucket=BUCKET) as server:
                results += planning_cases(server, args.small_files)
        if "s3rver" not in kinds:
            print("s3rver not installed (npm install --prefix benchmarks s3rver@3.7.1): "
                  "planning measured on moto only", file=sys.stderr)

    print(f"{'case':<78} {'ours s':>8} {'pyarrow s':>10} {'ours/pyarrow':>13}")
    for case, ours, theirs in results:
        ratio = f"{ours / theirs:.2f}x" if theirs else ("target < 2 s" if "S3" in case else "")
        theirs_text = f"{theirs:.3f}" if theirs else "-"
        print(f"{case:<78} {ours:>8.3f} {theirs_text:>10} {ratio:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
