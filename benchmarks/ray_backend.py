"""The Ray backend benchmark: the NYC taxi pipeline on both backends, and what `core` on Ray costs
over plain Ray code doing the same work.

    python benchmarks/ray_backend.py                 # 12 shards, 1,710,629 rows, 800 MB model payload
    python benchmarks/ray_backend.py --quick         # 4 shards at 1/4 scale, 80 MB payload, 3 reps

Two measurements, in one run:

1. Backend overhead (the target: at most 10%). One Ray instance (started here, 2 CPUs, 127.0.0.1)
   runs the tutorial's pattern ("Batch Prediction with Ray Core") twice per repetition, in
   alternation, on the same shards:
       plain Ray    ray.put(model); [score.remote(model_ref, shard) ...]; ray.get(refs)
       core on Ray  core.put(model); [score.remote(model_ref, shard) ...]; core.get(refs)
   with the same task function (read the shard's passenger_count with pyarrow, score it with the
   model, return the predictions DataFrame). Both warm up once (workers started, function
   exported); the medians of the timed repetitions are compared.

2. The pipeline end to end, each run a whole process timed from outside (start-up included):
       python -m dataflow run pipelines/nyc_taxi.yaml                       (local engine)
       python -m dataflow run pipelines/nyc_taxi.yaml --address local-ray   (Ray backend)
       the tutorial's Ray script (ray.init, put, one task per shard, get, print, shutdown)
   and the two dataflow outputs are checked to be identical.

Data is generated into a temporary folder with `connectors.make_nyc_taxi_shards` and removed at
the end. Results are printed and written to benchmarks/results/ray_backend.json.
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
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PIPELINE = os.path.join(ROOT, "pipelines", "nyc_taxi.yaml")


def score_shard(model, path):
    """The tutorial's task: one shard through the model; returns the predictions DataFrame."""
    import pyarrow.parquet as pq

    df = pq.read_table(path, columns=["passenger_count"]).to_pandas()
    return model(df)


def _ray_init_local() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False)


# ─── 1. backend overhead, in one Ray session ─────────────────────────────────────────────────────
def overhead(files: list[str], payload_mb: float, reps: int) -> dict:
    import ray

    import core
    from examples.nyc_taxi.model import load_trained_model

    _ray_init_local()
    core.init(address="local-ray")   # attaches to the Ray instance started above
    plain_task = ray.remote(score_shard)
    core_task = core.remote(score_shard)

    def plain() -> int:
        model_ref = ray.put(load_trained_model(payload_mb))
        results = ray.get([plain_task.remote(model_ref, f) for f in files])
        return sum(int(r["score"].sum()) for r in results)

    def on_core() -> int:
        model_ref = core.put(load_trained_model(payload_mb))
        results = core.get([core_task.remote(model_ref, f) for f in files])
        return sum(int(r["score"].sum()) for r in results)

    try:
        assert plain() == on_core(), "the two runs scored differently"   # warm-up
        times: dict[str, list[float]] = {"plain_ray": [], "core_on_ray": []}
        for i in range(reps):
            order = [("plain_ray", plain), ("core_on_ray", on_core)]
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    finally:
        core.shutdown()
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"runs_s": times, "median_s": med,
            "overhead": med["core_on_ray"] / med["plain_ray"] - 1.0}


# ─── 2. the pipeline, each contender a whole process ─────────────────────────────────────────────
def tutorial(files: list[str], payload_mb: float) -> None:
    """The tutorial's script on Ray, as a user would write it (model put once)."""
    import ray

    from examples.nyc_taxi.model import load_trained_model

    _ray_init_local()
    make_prediction = ray.remote(score_shard)
    model_ref = ray.put(load_trained_model(payload_mb))
    results = ray.get([make_prediction.remote(model_ref, f) for f in files])
    for r in results:
        print("Predictions dataframe size:", len(r), "| Total score for tips:", int(r["score"].sum()))
    ray.shutdown()


def timed(cmd: list[str], log: str) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=1200)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log) as f:
            raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{f.read()[-3000:]}")
    return wall


def pipelines(data: str, work: str, payload_mb: float, files: list[str]) -> dict:
    import pyarrow.parquet as pq

    base = [sys.executable, "-m", "dataflow", "run", PIPELINE, "--set", f"source.parquet={data}/",
            "--set", f"model.args.payload_mb={payload_mb}", "--set", f"runtime.spill={work}/spill"]
    walls = {
        "dataflow_local": timed(base + ["--set", f"sink.parquet={work}/local/"], f"{work}/local.log"),
        "dataflow_ray": timed(base + ["--set", f"sink.parquet={work}/ray/", "--address", "local-ray"],
                              f"{work}/ray.log"),
        "tutorial_ray": timed([sys.executable, __file__, "--tutorial", json.dumps(files), str(payload_mb)],
                              f"{work}/tutorial.log"),
    }
    local = sorted(glob.glob(f"{work}/local/part-*.parquet"))
    ray_parts = sorted(glob.glob(f"{work}/ray/part-*.parquet"))
    same = len(local) == len(ray_parts) == len(files) and all(
        pq.read_table(a).equals(pq.read_table(b)) for a, b in zip(local, ray_parts))
    return {"wall_s": walls, "outputs_identical": same}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 small shards, 80 MB payload, 3 repetitions")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions of the overhead pair")
    p.add_argument("--tutorial", nargs=2, help=argparse.SUPPRESS)   # child process: files json, payload
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    if args.tutorial:
        tutorial(json.loads(args.tutorial[0]), float(args.tutorial[1]))
        return
    shards, scale, payload_mb, reps = (4, 0.25, 80.0, 3) if args.quick else (12, 1.0, 800.0, 5)
    reps = args.reps or reps

    from connectors import make_nyc_taxi_shards

    work = tempfile.mkdtemp(prefix="ray-backend-bench-")
    try:
        data = os.path.join(work, "data")
        files = [f for f in make_nyc_taxi_shards(data, shards=shards, scale=scale)]
        files = [f[len("file://"):] if f.startswith("file://") else f for f in files]
        print(f"{len(files)} shards, payload {payload_mb:.0f} MB, {reps} repetitions", flush=True)
        result = {"shards": len(files), "scale": scale, "payload_mb": payload_mb, "reps": reps,
                  "overhead": overhead(files, payload_mb, reps)}
        o = result["overhead"]
        print(f"plain Ray    median {o['median_s']['plain_ray']:.3f} s  runs {fmt(o['runs_s']['plain_ray'])}")
        print(f"core on Ray  median {o['median_s']['core_on_ray']:.3f} s  runs {fmt(o['runs_s']['core_on_ray'])}")
        print(f"backend overhead: {o['overhead'] * 100:+.1f}% (target <= +10%)", flush=True)
        result["pipeline"] = pipelines(data, work, payload_mb, files)
        w = result["pipeline"]["wall_s"]
        print(f"pipeline wall (process, start-up included): dataflow local {w['dataflow_local']:.2f} s, "
              f"dataflow on Ray {w['dataflow_ray']:.2f} s, tutorial on Ray {w['tutorial_ray']:.2f} s; "
              f"outputs identical: {result['pipeline']['outputs_identical']}")
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "ray_backend.json"), "w") as f:
            json.dump(result, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fmt(xs: list[float]) -> str:
    return ", ".join(f"{x:.3f}" for x in xs)


if __name__ == "__main__":
    main()
