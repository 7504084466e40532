"""The NYC taxi pipeline against the no-framework limit and against Ray, in the same run.

    dataflow   python -m dataflow run pipelines/nyc_taxi.yaml       (model built once, in the zygote: workers inherit it)
    plain      a 2-process pool (no framework): each process builds the model once, reads its
               shards' passenger_count with pyarrow, scores and writes Parquet: the limit
    plainfork  the same pool with the model built once in the parent before the fork, so the
               children inherit its pages: weights written once, the fastest hand-written variant
    raydata    Ray Data: read_parquet -> map_batches(TipModel, concurrency=2, num_cpus=0.5) ->
               write_parquet (each of the 2 actors builds the model). With num_cpus=1 per actor
               Ray Data 2.60 hangs on this 2-CPU machine (the actors take both CPUs and the read
               tasks never run), hence 0.5.
    ray        the tutorial's Ray Core code: ray.put(model) once, one ray.remote task per shard that
               reads the whole shard with pyarrow; the model builds its 800 MB payload in every call

The model's 800 MB of weights are real memory by default (`--payload filled`: np.full(..., 0.5),
as trained weights are). `--payload zeros` is the tutorial's variant, np.zeros: the OS maps such
pages lazily, so a process that builds it but never copies it pays nothing, while putting it in
an object store (dataflow, or Ray with a payload built at load time) materializes 800 MB once.

`--weights` adds the weights-from-a-file runs: a 1 GB file of random float32 tensors (written once,
by torch.save and by safetensors), loaded as `model.path` (each dataflow worker maps it) against a
plain pool whose children each map it themselves (torch.load(mmap=True), safetensors load_file);
both touch every weight once per worker (benchmarks/weights_model.py). `-none` contenders map a
file of one 4-byte tensor the same way: the no-model baseline that "one copy" is added to.

Each contender is a whole process (`python benchmarks/pipeline.py --contender NAME ...`) timed
from outside, start-up included; peak memory is the largest sum of PSS over its process tree,
sampled with psutil every 0.1 s (PSS counts a page shared by n processes 1/n in each, so the
shared model counts once). Rounds alternate: each round runs every contender once (who goes
first rotates, the rest is shuffled); medians are reported, and the median of each round's
ratio. A first round (`--warm-up 1`, the default) is run and not counted: the first run after
the machine sat idle pays for cold memory and a cold page cache, and without it that run is
always dataflow's.

    python benchmarks/pipeline.py                  # local files, 12 shards, filled weights, 5 rounds
    python benchmarks/pipeline.py --scale 12       # 12x the rows (144 shards of the same size)
    python benchmarks/pipeline.py --s3             # the same files on a moto S3 server (127.0.0.1)
    python benchmarks/pipeline.py --all            # the three above
    python benchmarks/pipeline.py --payload zeros  # the tutorial's np.zeros weights
    python benchmarks/pipeline.py --weights --only none   # only the 1 GB weights-file runs

`--warm-memory GB` touches and frees that much memory in a throwaway process before each run
(untimed). On this VM (virtio-balloon with free-page reporting) a page the guest freed a while ago
has been handed back to the host, and touching it again costs 5-20x a recently freed one: the
same `np.full` of 800 MB takes 0.1 s or 2 s depending on what ran before it, which makes every
wall time with filled weights a lottery. With a warm-up every run starts with the same supply of
warm pages (a host that runs jobs back to back); without it (the default) runs see whatever
the previous one left.

The project's modules are compiled to bytecode before the first run, as a regular install
does (pandas, pyarrow and Ray come compiled): with an editable install and
PYTHONDONTWRITEBYTECODE set, each run would compile ~40 of them again, ~0.2 s of CPU.

Data is generated once into benchmarks/results/data/ (connectors.make_nyc_taxi_shards) and
reused. Results are printed and written to benchmarks/results/pipeline-<payload>.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
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
PAYLOAD_MB = float(os.environ.get("BENCH_PAYLOAD_MB", "800"))  # 0: the no-model baseline
WEIGHTS = os.environ.get("BENCH_WEIGHTS", "")  # a weights file each plain worker maps
WEIGHT_FORMATS = {"torch": "w.pt", "safetensors": "w.safetensors", "none": "w0.pt"}
WEIGHTS_CONTENDERS = ["dataflow-torch", "plain-torch", "dataflow-safetensors", "plain-safetensors",
                      "dataflow-none", "plain-none"]
RAY_TMP = os.path.join("/tmp", f"ddsf-bench-ray-{os.getuid()}")  # outside the data folders (Ray
# Data's file listing trips over Ray's own log files when they sit beside the data)
BATCH_SIZE = 262144  # pipelines/nyc_taxi.yaml's predict.batch_size: a whole shard per call


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

    ray.init(num_cpus=2, _temp_dir=RAY_TMP, include_dashboard=False)
    # ray.put() the model just once to local object store, and then pass the
    # reference to the remote tasks.
    model = load_model()
    model_ref = ray.put(model)
    result_refs = [make_prediction.remote(model_ref, file) for file in files]
    results = ray.get(result_refs)
    for r in results:
        print("Predictions dataframe size:", len(r), "| Total score for tips:", int(r["score"].sum()))
    ray.shutdown()


def contender_raydata(files: list[str], out: str) -> None:
    """Ray Data, as its batch inference guide writes it: a callable class in an actor pool."""
    import ray

    from examples.nyc_taxi.model import TipModel

    filesystem = _pyarrow_fs()
    ray.init(num_cpus=2, _temp_dir=RAY_TMP, include_dashboard=False)
    ds = ray.data.read_parquet([_strip(f) for f in files] if filesystem else files,
                               filesystem=filesystem).select_columns(["passenger_count"])
    # num_cpus=0.5: with 1 CPU per actor, Ray Data 2.60 hangs on 2 CPUs (see the docstring).
    ds = ds.map_batches(TipModel, fn_constructor_kwargs={"payload_mb": PAYLOAD_MB, "fill": FILL},
                        concurrency=2, num_cpus=0.5, batch_size=BATCH_SIZE, batch_format="pandas")
    ds.write_parquet(out)
    ray.shutdown()


_MODEL = None


def _plain_init() -> None:
    global _MODEL
    if WEIGHTS:
        from benchmarks.weights_model import WeightsTip, load

        fmt = "safetensors" if WEIGHTS.endswith(".safetensors") else "torch"
        _MODEL = WeightsTip(load(WEIGHTS, fmt))
        return
    from examples.nyc_taxi.model import load_trained_model

    _MODEL = load_trained_model(payload_mb=PAYLOAD_MB, fill=FILL)


def _plain_score(job: tuple[str, str]) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, dest = job
    df = pq.read_table(_strip(path), columns=["passenger_count"], filesystem=_pyarrow_fs()).to_pandas()
    result = _MODEL(df)
    pq.write_table(pa.Table.from_pandas(result, preserve_index=False), dest)
    return len(result), int(result["score"].sum())


def contender_plainfork(files: list[str], out: str) -> None:
    """The plain pool with the model built once in the parent, before the fork: the children
    inherit its pages, so the weights are written once (the fastest hand-written variant)."""
    global _MODEL
    from examples.nyc_taxi.model import load_trained_model

    _MODEL = load_trained_model(payload_mb=PAYLOAD_MB, fill=FILL)
    _pool(files, out, initializer=None)


def contender_plain(files: list[str], out: str) -> None:
    if WEIGHTS:  # imported once before the fork, as dataflow's zygote does for a .pt model.path
        import torch  # noqa: F401
    _pool(files, out, initializer=_plain_init)


def _pool(files: list[str], out: str, initializer) -> None:
    import multiprocessing

    os.makedirs(out, exist_ok=True)
    jobs = [(f, os.path.join(out, f"part-{i:05d}.parquet")) for i, f in enumerate(files)]
    with multiprocessing.Pool(2, initializer=initializer) as pool:
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


def ensure_weights(gb: float) -> str:
    """A `gb` GB weights file in each format (WEIGHT_FORMATS), random float32 tensors of 256 MB
    each (seeded), written once; returns the folder."""
    import numpy as np

    dest = os.path.join(RESULTS, "data", f"weights-{gb:g}gb")
    os.makedirs(dest, exist_ok=True)
    import torch
    from safetensors.torch import save_file

    # The no-model baseline: the same code path (torch, a mapped file), one 4-byte tensor.
    torch.save({"layer0.weight": torch.zeros(1)}, os.path.join(dest, WEIGHT_FORMATS["none"]))
    if all(os.path.exists(os.path.join(dest, n)) for n in WEIGHT_FORMATS.values()):
        return dest
    print(f"writing {gb:g} GB weights files into {dest} ...", flush=True)
    rng = np.random.default_rng(17)
    per = 64 * 2**20  # float32 values per tensor: 256 MB
    tensors, left = {}, int(gb * 1e9) // 4
    while left > 0:
        n = min(per, left)
        tensors[f"layer{len(tensors)}.weight"] = torch.from_numpy(rng.standard_normal(n, dtype=np.float32))
        left -= n
    torch.save(tensors, os.path.join(dest, WEIGHT_FORMATS["torch"]))
    save_file(tensors, os.path.join(dest, WEIGHT_FORMATS["safetensors"]))
    return dest


def weights_pipeline(weights_dir: str, fmt: str) -> str:
    """pipelines/nyc_taxi.yaml with `model.path` a weights file and WeightsTip as predict.fn."""
    import yaml

    with open(PIPELINE) as f:
        spec = yaml.safe_load(f)
    spec["model"] = {"path": os.path.join(weights_dir, WEIGHT_FORMATS[fmt])}
    spec["predict"]["fn"] = "benchmarks.weights_model:WeightsTip"
    path = os.path.join(RESULTS, f"nyc_taxi_{fmt}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    return path


def command(name: str, data_uri: str, files_json: str, out: str, fill: float,
            weights_dir: str | None) -> tuple[list[str], dict]:
    """The command line and extra environment of contender `name`."""
    kind, _, fmt = name.partition("-")  # dataflow, dataflow-torch, plain-safetensors, plain-none ...
    env: dict = {}
    if kind == "dataflow":
        spec = weights_pipeline(weights_dir, fmt) if fmt in WEIGHT_FORMATS else PIPELINE
        cmd = [sys.executable, "-m", "dataflow", "run", spec, "--set", f"source.parquet={data_uri}",
               "--set", "source.generate=null", "--set", f"sink.parquet={out}/",
               "--set", f"runtime.spill={RESULTS}/spill", "--restart"]
        if fmt not in WEIGHT_FORMATS:
            cmd += ["--set", f"model.args.fill={fill}"]
        return cmd, env
    if fmt in WEIGHT_FORMATS:
        env["BENCH_WEIGHTS"] = os.path.join(weights_dir, WEIGHT_FORMATS[fmt])
    if fmt:
        env["OMP_NUM_THREADS"] = "1"  # one torch thread per worker, as dataflow's workers have
    return [sys.executable, os.path.abspath(__file__), "--contender", kind, "--files", files_json,
            "--out", out], env


def warm_memory(gb: float) -> None:
    """Touch and free `gb` of memory in a throwaway process (see the docstring: --warm-memory)."""
    if gb > 0:
        subprocess.run([sys.executable, "-c", f"import numpy; numpy.ones({int(gb * 1e9) // 8})"], check=True)


def run_config(label: str, data_uri: str, files: list[str], rows: int, extra_env: dict,
               contenders: list[str], repeat: int, fill: float, weights_dir: str | None = None,
               warm_gb: float = 0.0, warm_up: int = 1) -> dict:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=ROOT, BENCH_FILL=str(fill),
               **extra_env)
    env.pop("AWS_PROFILE", None)
    files_json = os.path.join(RESULTS, f"files-{label}.json")
    with open(files_json, "w") as f:
        json.dump(files, f)
    # Round-robin: round i runs every contender once, so a slow spell of the host (this one is
    # noisy: the same command varies by +-15% from minute to minute) hits all of them alike. The
    # first rotates and the rest is shuffled (seeded): a plain rotation keeps each contender right
    # after the same one, and the run after the Ray tutorial's (10 GB freed) was always dataflow's.
    # Round 0 is a warm-up, not counted: the first run after an idle spell pays for pages the VM
    # handed back to the host meanwhile (seconds for 800 MB, see the docstring) and for a cold
    # page cache, and without it that run is always the first contender's.
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for i in range(repeat + warm_up):
        first = contenders[i % len(contenders)]    # each contender leads as many rounds
        rest = [c for c in contenders if c != first]
        for name in [first] + random.Random(i).sample(rest, len(rest)):
            out = os.path.join(RESULTS, "out", label, name)
            shutil.rmtree(out, ignore_errors=True)
            cmd, more_env = command(name, data_uri, files_json, out, fill, weights_dir)
            log = os.path.join(RESULTS, f"{label}-{name}.log")
            warm_memory(warm_gb)
            run = measure(cmd, {**env, **more_env}, log)
            if i >= warm_up:
                runs[name].append(run)
            shutil.rmtree(RAY_TMP, ignore_errors=True)
    results = {}
    for name in contenders:
        wall = statistics.median(r["wall"] for r in runs[name])
        peak = statistics.median(r["peak_pss"] for r in runs[name])
        results[name] = {"wall": wall, "peak_pss": peak, "rows_per_s": rows / wall, "runs": runs[name]}
        each = " ".join(f"{r['wall']:.2f}" for r in runs[name])
        print(f"  {label:<16} {name:<20} {wall:7.2f} s  {peak / 1e9:6.2f} GB PSS  {rows / wall:>12,.0f} rows/s"
              f"   (runs: {each})", flush=True)
    config = {"label": label, "rows": rows, "files": len(files), "results": results}
    if weights_dir:
        config["weights_bytes"] = os.path.getsize(os.path.join(weights_dir, WEIGHT_FORMATS["torch"]))
    return config


def ratios(config: dict) -> list[str]:
    """The issue's figures: dataflow against the limit (plain) and against Ray, as ratios."""
    r, label = config["results"], config["label"]
    lines = []

    def pair(a: str, b: str, wall_goal: str, pss_goal: str = "") -> None:
        if a in r and b in r:
            w = r[a]["wall"] / r[b]["wall"]
            m = r[a]["peak_pss"] / r[b]["peak_pss"]
            # the same round's two runs side by side: what a slow spell of the host does cancels
            paired = statistics.median(x["wall"] / y["wall"] for x, y in zip(r[a]["runs"], r[b]["runs"]))
            lines.append(f"  {label}: {a}/{b} wall {w:.2f} (goal {wall_goal}; per round {paired:.2f}), "
                         f"peak PSS {m:.2f}" + (f" (goal {pss_goal})" if pss_goal else ""))

    # issue 17's "plain pool" is the one that builds the model before forking (plainfork)
    pair("dataflow", "plainfork", "<= 1.05" if config["files"] <= 12 else "<= 1.0", "<= 1.1")
    pair("dataflow", "plain", "none: each child builds its own copy")
    pair("dataflow", "raydata", "<= 0.15", "<= 0.5")
    pair("dataflow", "ray", "<= 0.15")
    for fmt in ("torch", "safetensors"):
        pair(f"dataflow-{fmt}", f"plain-{fmt}", "<= 1.05")
        for kind in ("dataflow", "plain"):  # peak PSS against one copy + the no-model baseline
            name, base = f"{kind}-{fmt}", f"{kind}-none"
            if name in r and base in r:
                one_copy = config["weights_bytes"] + r[base]["peak_pss"]
                lines.append(f"  {label}: {name} peak PSS {r[name]['peak_pss'] / 1e9:.2f} GB = "
                             f"{r[name]['peak_pss'] / one_copy:.2f} x (one copy "
                             f"{config['weights_bytes'] / 1e9:.2f} GB + {base} {r[base]['peak_pss'] / 1e9:.2f} GB)"
                             f" (goal <= 1.1)")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=1, help="rows x SCALE (12 x SCALE shards)")
    p.add_argument("--s3", action="store_true", help="read the shards from a local moto S3 server")
    p.add_argument("--all", action="store_true", help="local x1, S3 x1, and local x12")
    p.add_argument("--only", default="dataflow,plain,plainfork,raydata,ray",
                   help="contenders, comma-separated (dataflow, plain, plainfork, raydata, ray; 'none': skip "
                        "these runs, e.g. with --weights)")
    p.add_argument("--repeat", type=int, default=5, help="rounds (medians reported; the issue's figures want >= 5)")
    p.add_argument("--payload", choices=["filled", "zeros"], default="filled",
                   help="the model's 800 MB: real memory (np.full, as trained weights), or the tutorial's "
                        "np.zeros variant")
    p.add_argument("--weights", action="store_true",
                   help="also: weights from a file (torch.save and safetensors) against a plain pool "
                        "whose children each map it, and the no-model baselines")
    p.add_argument("--weights-gb", type=float, default=1.0, help="size of the weights file (GB)")
    p.add_argument("--warm-memory", type=float, default=0.0, metavar="GB",
                   help="touch and free GB of memory before each run (untimed): every run starts with "
                        "the same warm pages (see the docstring)")
    p.add_argument("--warm-up", type=int, default=1, metavar="ROUNDS",
                   help="rounds run first and not counted (default 1: see the docstring)")
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.contender:  # inside a measured process
        with open(args.files) as f:
            files = json.load(f)
        {"ray": contender_ray, "raydata": contender_raydata, "plain": contender_plain,
         "plainfork": contender_plainfork}[args.contender](files, args.out)
        return

    os.makedirs(RESULTS, exist_ok=True)
    compile_bytecode()
    contenders = [c for c in args.only.split(",") if c and c != "none"]
    plan = [(1, False), (1, True), (12, False)] if args.all else [(args.scale, args.s3)]
    fill = 0.5 if args.payload == "filled" else 0.0
    suffix = "" if args.payload == "filled" else "-zeros"  # the tutorial's variant, labelled
    configs = []
    print(f"{'':2}{'config':<16} {'contender':<20} {'wall':>9}  {'peak':>12}  {'throughput':>19}")
    for scale, s3 in plan if contenders else []:
        local, rows = ensure_data(scale)
        local_files = sorted(glob.glob(os.path.join(local, "*.parquet")))
        label = f"{'s3' if s3 else 'local'}-x{scale}{suffix}"
        if s3:
            with S3Server("moto") as moto:
                uri = upload(moto, local, "taxi")
                files = [f"{uri}{os.path.basename(f)}" for f in local_files]
                configs.append(run_config(label, uri, files, rows, moto.env, contenders, args.repeat, fill,
                                          warm_gb=args.warm_memory, warm_up=args.warm_up))
        else:
            configs.append(run_config(label, local + "/", local_files, rows, {}, contenders, args.repeat, fill,
                                      warm_gb=args.warm_memory, warm_up=args.warm_up))
    if args.weights:
        local, rows = ensure_data(1)
        weights_dir = ensure_weights(args.weights_gb)
        configs.append(run_config(f"local-x1-file{args.weights_gb:g}gb", local + "/",
                                  sorted(glob.glob(os.path.join(local, "*.parquet"))), rows, {},
                                  WEIGHTS_CONTENDERS, args.repeat, 0.0, weights_dir, warm_gb=args.warm_memory,
                                  warm_up=args.warm_up))
    print("ratios:")
    for c in configs:
        for line in ratios(c):
            print(line)
    by_label = {c["label"]: c for c in configs}
    x1, x12 = by_label.get(f"local-x1{suffix}"), by_label.get(f"local-x12{suffix}")
    if x1 and x12 and "dataflow" in x1["results"]:
        a, b = x1["results"]["dataflow"], x12["results"]["dataflow"]
        print(f"  scale 12 vs 1 (dataflow): peak PSS {b['peak_pss'] / a['peak_pss']:.2f}x (goal: flat), "
              f"rows/s {b['rows_per_s'] / a['rows_per_s']:.2f}x (goal: holds)")
    name = f"pipeline-{args.payload}" + ("-weights" if args.weights else "") + ("-warm" if args.warm_memory else "")
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(configs, f, indent=2)


if __name__ == "__main__":
    # Run as a script, benchmarks/ comes first on sys.path, where benchmarks/connectors.py would
    # shadow the connectors package: look up the project's packages from the root instead.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [ROOT] + [q for q in sys.path if os.path.abspath(q or ".") != here]
    main()
