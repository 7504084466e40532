"""The NYC taxi pipeline, three ways, on the same files in the same run.

    dataflow   python -m dataflow run pipelines/nyc_taxi.yaml       (model built once, put once)
    ray        the tutorial's Ray Core code: ray.put(model) once, one ray.remote task per shard that
               reads the whole shard with pyarrow; the model builds its 800 MB payload in every call
    plain      a 2-process pool (no framework): each process builds the model once, reads its
               shards' passenger_count with pyarrow, scores and writes Parquet

Each contender is a whole process (`python benchmarks/pipeline.py --contender NAME ...`) timed
from outside, start-up included; peak memory is the largest sum of PSS over its process tree,
sampled with psutil every 0.1 s (PSS counts a page shared by n processes 1/n in each, so the
shared model counts once).

    python benchmarks/pipeline.py                  # local files, 12 shards, 1,710,629 rows
    python benchmarks/pipeline.py --scale 12       # 12x the rows (144 shards of the same size)
    python benchmarks/pipeline.py --s3             # the same files on a moto S3 server (127.0.0.1)
    python benchmarks/pipeline.py --all            # the three above
    python benchmarks/pipeline.py --payload filled # weights that are real memory (see below)

The tutorial's payload is `np.zeros`: the OS maps such pages lazily, so a process that builds it
but never copies it pays nothing, while putting it in an object store (dataflow, or Ray with a
payload built at load time) materializes 800 MB once. `--payload filled` uses np.full(..., 0.5)
in all three contenders, as trained weights would be: real memory wherever the model is built.

The project's modules are compiled to bytecode before the first run, as a regular install
does (pandas, pyarrow and Ray come compiled): with an editable install and
PYTHONDONTWRITEBYTECODE set, each run would compile ~40 of them again, ~0.2 s of CPU.

Data is generated once into benchmarks/results/data/ (connectors.make_nyc_taxi_shards) and
reused. Results are printed and written to benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from dataflow.summary import tree_memory  # sum of PSS over a process tree
from s3_servers import S3Server  # benchmarks/s3_servers.py (this script's folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PIPELINE = os.path.join(ROOT, "pipelines", "nyc_taxi.yaml")
PAYLOAD = 100_000_000  # float64 zeros: the tutorial's 800 MB
FILL = float(os.environ.get("BENCH_FILL", "0") or 0)  # 0: zeros (the tutorial); else np.full


# ---------------------------------------------------------------------------------------------
# contenders (each runs in its own process)


def _pyarrow_fs():
    """pyarrow's S3 filesystem for the moto server named by AWS_ENDPOINT_URL (or None: local)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None
    from pyarrow import fs

    scheme, _, host = endpoint.partition("://")
    return fs.S3FileSystem(endpoint_override=host, scheme=scheme, region="us-east-1",
                           access_key=os.environ["AWS_ACCESS_KEY_ID"],
                           secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def _strip(path: str) -> str:
    return path[len("s3://"):] if path.startswith("s3://") else path


def contender_ray(files: list[str], out: str) -> None:
    """The tutorial ("Batch Prediction with Ray Core"), as written there."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    import ray

    filesystem = _pyarrow_fs()

    def load_model():
        # A dummy model.
        def model(batch: pd.DataFrame) -> pd.DataFrame:
            # Dummy payload so copying the model will actually copy some data
            # across nodes.
            model.payload = np.full(PAYLOAD, FILL) if FILL else np.zeros(PAYLOAD)
            return pd.DataFrame({"score": batch["passenger_count"] >= 2})
        return model

    @ray.remote
    def make_prediction(model, shard_path):
        df = pq.read_table(_strip(shard_path), filesystem=filesystem).to_pandas()
        result = model(df)
        return result

    ray.init(num_cpus=2, _temp_dir=os.path.join(RESULTS, "ray_tmp"), include_dashboard=False)
    # ray.put() the model just once to local object store, and then pass the
    # reference to the remote tasks.
    model = load_model()
    model_ref = ray.put(model)
    result_refs = [make_prediction.remote(model_ref, file) for file in files]
    results = ray.get(result_refs)
    for r in results:
        print("Predictions dataframe size:", len(r), "| Total score for tips:", int(r["score"].sum()))
    ray.shutdown()


_MODEL = None


def _plain_init() -> None:
    global _MODEL
    from examples.nyc_taxi.model import load_trained_model

    _MODEL = load_trained_model(fill=FILL)


def _plain_score(job: tuple[str, str]) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, dest = job
    df = pq.read_table(_strip(path), columns=["passenger_count"], filesystem=_pyarrow_fs()).to_pandas()
    result = _MODEL(df)
    pq.write_table(pa.Table.from_pandas(result, preserve_index=False), dest)
    return len(result), int(result["score"].sum())


def contender_plain(files: list[str], out: str) -> None:
    import multiprocessing

    os.makedirs(out, exist_ok=True)
    jobs = [(f, os.path.join(out, f"part-{i:05d}.parquet")) for i, f in enumerate(files)]
    with multiprocessing.Pool(2, initializer=_plain_init) as pool:
        for n, s in pool.imap_unordered(_plain_score, jobs):
            print(f"Predictions dataframe size: {n} | Total score for tips: {s}")


# ---------------------------------------------------------------------------------------------
# the harness


def measure(cmd: list[str], env: dict, log: str) -> dict:
    """Run `cmd`; wall time from outside (start to exit) and peak PSS of its process tree,
    sampled every 0.1 s by a helper thread so that the wall time is not rounded to a sample."""
    import threading

    import psutil

    peak = [0]
    seen: set = set()
    with open(log, "w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                peak[0] = max(peak[0], tree_memory(root.pid))
                try:
                    seen.update(root.children(recursive=True))
                except psutil.Error:
                    pass
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    # Whatever the run left behind exiting (Ray's raylet, say) must not slow the next run.
    psutil.wait_procs(list(seen), timeout=30)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}); log {log}:\n{tail}")
    return {"wall": wall, "peak_pss": peak[0]}


def compile_bytecode() -> None:
    """Bytecode for every module the contenders import from this checkout (see the docstring)."""
    import compileall

    for folder in ("core", "connectors", "dataflow", "examples"):
        compileall.compile_dir(os.path.join(ROOT, folder), quiet=1)
    compileall.compile_dir(os.path.join(ROOT, "benchmarks"), quiet=1, maxlevels=0)  # not node_modules


def ensure_data(scale: int) -> tuple[str, int]:
    """Local shards for `scale` (12 x scale shards of ~142,552 rows); generated once."""
    import pyarrow.parquet as pq

    dest = os.path.join(RESULTS, "data", f"x{scale}")
    if not glob.glob(os.path.join(dest, "*.parquet")):
        from connectors import make_nyc_taxi_shards

        print(f"generating {12 * scale} shards into {dest} ...", flush=True)
        make_nyc_taxi_shards(dest, shards=12 * scale, scale=scale)
    files = sorted(glob.glob(os.path.join(dest, "*.parquet")))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return dest, rows


def upload(server: S3Server, local_dir: str, bucket: str) -> str:
    """The local shards as s3://bucket/data/*.parquet on `server`."""
    s3 = server.client()
    s3.create_bucket(Bucket=bucket)
    for f in sorted(glob.glob(os.path.join(local_dir, "*.parquet"))):
        s3.upload_file(f, bucket, f"data/{os.path.basename(f)}")
    return f"s3://{bucket}/data/"


def run_config(label: str, data_uri: str, files: list[str], rows: int, extra_env: dict,
               contenders: list[str], repeat: int, fill: float) -> dict:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=ROOT, BENCH_FILL=str(fill),
               **extra_env)
    env.pop("AWS_PROFILE", None)
    files_json = os.path.join(RESULTS, f"files-{label}.json")
    with open(files_json, "w") as f:
        json.dump(files, f)
    # Round-robin: round i runs every contender once, so a slow spell of the host (this one is
    # noisy: the same command varies by +-15% from minute to minute) hits all of them alike; the
    # order rotates, so no contender always runs right after the same one.
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for i in range(repeat):
        for name in contenders[i % len(contenders):] + contenders[:i % len(contenders)]:
            out = os.path.join(RESULTS, "out", label, name)
            shutil.rmtree(out, ignore_errors=True)
            if name == "dataflow":
                cmd = [sys.executable, "-m", "dataflow", "run", PIPELINE, "--set", f"source.parquet={data_uri}",
                       "--set", "source.generate=null", "--set", f"sink.parquet={out}/",
                       "--set", f"runtime.spill={RESULTS}/spill", "--set", f"model.args.fill={fill}",
                       "--restart"]
            else:
                cmd = [sys.executable, os.path.abspath(__file__), "--contender", name, "--files", files_json,
                       "--out", out]
            log = os.path.join(RESULTS, f"{label}-{name}.log")
            runs[name].append(measure(cmd, env, log))
            shutil.rmtree(os.path.join(RESULTS, "ray_tmp"), ignore_errors=True)
    results = {}
    for name in contenders:
        wall = statistics.median(r["wall"] for r in runs[name])
        peak = statistics.median(r["peak_pss"] for r in runs[name])
        results[name] = {"wall": wall, "peak_pss": peak, "rows_per_s": rows / wall, "runs": runs[name]}
        each = " ".join(f"{r['wall']:.2f}" for r in runs[name])
        print(f"  {label:<10} {name:<9} {wall:7.2f} s  {peak / 1e9:6.2f} GB PSS  {rows / wall:>12,.0f} rows/s"
              f"   (runs: {each})", flush=True)
    return {"label": label, "rows": rows, "files": len(files), "results": results}


def ratios(config: dict) -> list[str]:
    r = config["results"]
    lines = []
    if "dataflow" in r and "ray" in r:
        w = r["dataflow"]["wall"] / r["ray"]["wall"]
        m = r["dataflow"]["peak_pss"] / r["ray"]["peak_pss"]
        lines.append(f"  {config['label']}: dataflow/ray wall {w:.2f} (goal <= 0.33), peak PSS {m:.2f} (goal <= 0.6)")
    if "dataflow" in r and "plain" in r:
        w = r["dataflow"]["wall"] / r["plain"]["wall"]
        m = r["dataflow"]["peak_pss"] / r["plain"]["peak_pss"]
        lines.append(f"  {config['label']}: dataflow/plain wall {w:.2f} (goal <= 1.0), peak PSS {m:.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=1, help="rows x SCALE (12 x SCALE shards)")
    p.add_argument("--s3", action="store_true", help="read the shards from a local moto S3 server")
    p.add_argument("--all", action="store_true", help="local x1, S3 x1, and local x12")
    p.add_argument("--only", default="dataflow,ray,plain", help="contenders, comma-separated")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender (median reported)")
    p.add_argument("--payload", choices=["zeros", "filled"], default="zeros",
                   help="the model's 800 MB: the tutorial's np.zeros, or real memory (np.full)")
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.contender:  # inside a measured process
        with open(args.files) as f:
            files = json.load(f)
        {"ray": contender_ray, "plain": contender_plain}[args.contender](files, args.out)
        return

    os.makedirs(RESULTS, exist_ok=True)
    compile_bytecode()
    contenders = [c for c in args.only.split(",") if c]
    plan = [(1, False), (1, True), (12, False)] if args.all else [(args.scale, args.s3)]
    configs = []
    print(f"{'':2}{'config':<10} {'contender':<9} {'wall':>9}  {'peak':>12}  {'throughput':>19}")
    for scale, s3 in plan:
        local, rows = ensure_data(scale)
        local_files = sorted(glob.glob(os.path.join(local, "*.parquet")))
        label = f"{'s3' if s3 else 'local'}-x{scale}" + ("-filled" if args.payload == "filled" else "")
        fill = 0.5 if args.payload == "filled" else 0.0
        if s3:
            with S3Server("moto") as moto:
                uri = upload(moto, local, "taxi")
                files = [f"{uri}{os.path.basename(f)}" for f in local_files]
                configs.append(run_config(label, uri, files, rows, moto.env, contenders, args.repeat, fill))
        else:
            configs.append(run_config(label, local + "/", local_files, rows, {}, contenders, args.repeat, fill))
    print("ratios:")
    for c in configs:
        for line in ratios(c):
            print(line)
    by_label = {c["label"]: c for c in configs}
    if "local-x1" in by_label and "local-x12" in by_label and "dataflow" in by_label["local-x1"]["results"]:
        a, b = by_label["local-x1"]["results"]["dataflow"], by_label["local-x12"]["results"]["dataflow"]
        print(f"  scale 12 vs 1 (dataflow): peak PSS {b['peak_pss'] / a['peak_pss']:.2f}x (goal: flat), "
              f"rows/s {b['rows_per_s'] / a['rows_per_s']:.2f}x (goal: holds)")
    with open(os.path.join(RESULTS, f"pipeline-{args.payload}.json"), "w") as f:
        json.dump(configs, f, indent=2)


if __name__ == "__main__":
    # Run as a script, benchmarks/ comes first on sys.path, where benchmarks/connectors.py would
    # shadow the connectors package: look up the project's packages from the root instead.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [ROOT] + [q for q in sys.path if os.path.abspath(q or ".") != here]
    main()
