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
   exported); the medians of the timed repetitions are compared, for the whole run and for the
   task phase alone (putting 800 MB into Ray's store varies from 0.05 s to 1 s with whether Ray
   reuses pages or maps fresh ones, whoever calls it). Per-call costs are measured too: 2000
   trivial tasks submitted and got, 2000 small put+get round trips, 5 times each.

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


def _identity(x):
    return x


def _ray_init_local() -> str:
    """Start Ray as the backend's "local-ray" does; returns its private temp folder."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ddsf-bench-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False, _temp_dir=temp_dir)
    return temp_dir


# ─── 1. backend overhead, in one Ray session ─────────────────────────────────────────────────────
def overhead(files: list[str], payload_mb: float, reps: int) -> dict:
    import ray

    import core
    from examples.nyc_taxi.model import load_trained_model

    temp_dir = _ray_init_local()
    core.init(address="local-ray")   # attaches to the Ray instance started above
    variants = {"plain_ray": (ray.put, ray.remote(score_shard), ray.get),
                "core_on_ray": (core.put, core.remote(score_shard), core.get)}

    def run(name: str) -> tuple[float, float, int]:
        """(seconds to put the model, seconds for the shard tasks, total score)"""
        put, task, get = variants[name]
        model = load_trained_model(payload_mb)
        start = time.perf_counter()
        model_ref = put(model)
        put_done = time.perf_counter()
        results = get([task.remote(model_ref, f) for f in files])
        tasks_done = time.perf_counter()
        return put_done - start, tasks_done - put_done, sum(int(r["score"].sum()) for r in results)

    def calls(name: str, n: int = 2000) -> tuple[float, float]:
        """(microseconds per trivial task submitted and got, per small put+get)"""
        put, _, get = variants[name]
        task = tiny[name]
        start = time.perf_counter()
        get([task.remote(i) for i in range(n)])
        tasks = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(n):
            get(put(i))
        return tasks / n * 1e6, (time.perf_counter() - start) / n * 1e6

    tiny = {"plain_ray": ray.remote(_identity), "core_on_ray": core.remote(_identity)}
    try:
        assert run("plain_ray")[2] == run("core_on_ray")[2], "the two scored differently"   # warm-up
        calls("plain_ray", 200), calls("core_on_ray", 200)
        per_call: dict[str, dict[str, list[float]]] = {n: {"task_us": [], "put_get_us": []} for n in variants}
        for i in range(5):
            for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
                task_us, put_get_us = calls(name)
                per_call[name]["task_us"].append(task_us)
                per_call[name]["put_get_us"].append(put_get_us)
        times: dict[str, dict[str, list[float]]] = {n: {"put": [], "tasks": [], "total": []} for n in variants}
        for i in range(reps):
            for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
                put_s, tasks_s, _ = run(name)
                times[name]["put"].append(put_s)
                times[name]["tasks"].append(tasks_s)
                times[name]["total"].append(put_s + tasks_s)
    finally:
        core.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    calls_med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in per_call.items()}
    return {"runs_s": times, "median_s": med, "per_call_median_us": calls_med,
            "overhead": med["core_on_ray"]["total"] / med["plain_ray"]["total"] - 1.0,
            "overhead_tasks": med["core_on_ray"]["tasks"] / med["plain_ray"]["tasks"] - 1.0}


# ─── 2. the pipeline, each contender a whole process ─────────────────────────────────────────────
def tutorial(files: list[str], payload_mb: float) -> None:
    """The tutorial's script on Ray, as a user would write it (model put once)."""
    import ray

    from examples.nyc_taxi.model import load_trained_model

    temp_dir = _ray_init_local()
    make_prediction = ray.remote(score_shard)
    model_ref = ray.put(load_trained_model(payload_mb))
    results = ray.get([make_prediction.remote(model_ref, f) for f in files])
    for r in results:
        print("Predictions dataframe size:", len(r), "| Total score for tips:", int(r["score"].sum()))
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def timed(cmd: list[str], log: str) -> tuple[float, str]:
    """(wall seconds from outside, the process's stdout); stderr goes to `log`."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=f, text=True, timeout=1200)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log) as f:
            raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{f.read()[-3000:]}")
    return wall, proc.stdout


def pipelines(data: str, work: str, payload_mb: float, files: list[str]) -> dict:
    import pyarrow.parquet as pq

    base = [sys.executable, "-m", "dataflow", "run", PIPELINE, "--json", "--set", f"source.parquet={data}/",
            "--set", f"model.args.payload_mb={payload_mb}", "--set", f"runtime.spill={work}/spill"]
    walls, summaries = {}, {}
    for name, extra in (("dataflow_local", []), ("dataflow_ray", ["--address", "local-ray"])):
        sink = name.split("_")[1]
        walls[name], out = timed(base + ["--set", f"sink.parquet={work}/{sink}/", *extra], f"{work}/{name}.log")
        summary = json.loads(out)
        assert summary["status"] == "done" and summary["shards_done"] == len(files), summary
        summaries[name] = {k: summary[k] for k in ("rows", "shards_done", "wall_time", "rows_per_second")}
    walls["tutorial_ray"], out = timed([sys.executable, __file__, "--tutorial", json.dumps(files), str(payload_mb)],
                                       f"{work}/tutorial.log")
    assert out.count("Predictions dataframe size") == len(files), out
    local = sorted(glob.glob(f"{work}/local/part-*.parquet"))
    ray_parts = sorted(glob.glob(f"{work}/ray/part-*.parquet"))
    same = len(local) == len(ray_parts) == len(files) and all(
        pq.read_table(a).equals(pq.read_table(b)) for a, b in zip(local, ray_parts))
    return {"wall_s": walls, "dataflow_summaries": summaries, "outputs_identical": same}


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
    shards, scale, payload_mb, reps = (4, 0.25, 80.0, 3) if args.quick else (12, 1.0, 800.0, 15)
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
        for name, label in (("plain_ray", "plain Ray  "), ("core_on_ray", "core on Ray")):
            m = o["median_s"][name]
            print(f"{label}  median total {m['total']:.3f} s (put {m['put']:.3f} s, tasks {m['tasks']:.3f} s); "
                  f"totals {fmt(o['runs_s'][name]['total'])}")
        print(f"backend overhead: {o['overhead'] * 100:+.1f}% of the total (target <= +10%), "
              f"{o['overhead_tasks'] * 100:+.1f}% of the task phase", flush=True)
        c = o["per_call_median_us"]
        print(f"per call (median of 5 x 2000): trivial task plain Ray {c['plain_ray']['task_us']:.0f} us, "
              f"core on Ray {c['core_on_ray']['task_us']:.0f} us; small put+get plain Ray "
              f"{c['plain_ray']['put_get_us']:.0f} us, core on Ray {c['core_on_ray']['put_get_us']:.0f} us", flush=True)
        result["pipeline"] = pipelines(data, work, payload_mb, files)
        w = result["pipeline"]["wall_s"]
        sm = result["pipeline"]["dataflow_summaries"]
        print(f"pipeline wall (process, start-up included): dataflow local {w['dataflow_local']:.2f} s, "
              f"dataflow on Ray {w['dataflow_ray']:.2f} s, tutorial on Ray {w['tutorial_ray']:.2f} s; "
              f"outputs identical: {result['pipeline']['outputs_identical']}")
        print(f"dataflow run time (its own summary, after start-up): local {sm['dataflow_local']['wall_time']:.2f} s, "
              f"Ray {sm['dataflow_ray']['wall_time']:.2f} s for {sm['dataflow_ray']['rows']:,} rows")
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "ray_backend.json"), "w") as f:
            json.dump(result, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fmt(xs: list[float]) -> str:
    return ", ".join(f"{x:.3f}" for x in xs)


if __name__ == "__main__":
    main()
