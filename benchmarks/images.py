"""Image classification (decode → ResNet-18 → top-5) over the same JPEGs, several ways, same run.

    limit-1x2   by hand, no framework: one process, torch with 2 threads, file by file:
                pyarrow batches → decode → Classifier → top5 → Parquet
    limit-2x1   by hand: two processes (a fork pool over the files), torch with 1 thread each
    default-2x  as limit-2x1, but torch keeps its default thread count (one per core, in each
                process: 2 x 2 threads on 2 cores): the price of not fitting threads
    ray         Ray Data as its docs write batch inference: read_parquet → map_batches(decode)
                → map_batches(Classifier, concurrency=2, num_cpus=0.5) → map_batches(top5)
                → write_parquet (num_cpus=1 per actor deadlocks Ray Data 2.60 on 2 CPUs: the
                actors hold both and the decode tasks never run)
    dataflow    python -m dataflow run on the image_classify pipeline (stages: decode →
                classify, a pool of 2 → top5 → Parquet); skipped, saying why, when this dataflow
                cannot run `stages:` yet. Its torch threads are fitted: each actor's share of the
                cores (num_cpus 0.5 → 1 thread)
    dataflow-2t the same run with `num_threads: 2` on the classify stage: torch's own default
                here (one thread per core, in each of the 2 actors), to price fitted threads

Every contender runs the same functions (examples/images/stages.py) on the same files and maps
the same weights file (examples/images/resnet.py, seeded). "The limit" is the better of the two
by-hand contenders. Each contender is a whole process timed from outside, start-up included;
images/s = images / wall; peak memory is the largest sum of PSS over its process tree, sampled
every 0.1 s (a page shared by n processes counts 1/n in each: the mapped weights count once).
Rounds run every contender once each, in a rotating order; medians are reported.

    python benchmarks/images.py                          # 512 images, 3 rounds
    python benchmarks/images.py --images 64 --rounds 3   # a quick look
    python benchmarks/images.py --only limit-2x1,ray

Data and weights are made once into benchmarks/results/images/; results are printed and
written to benchmarks/results/images.json.
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
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
WORK = os.path.join(RESULTS, "images")
PIPELINE_CANDIDATES = (os.path.join(ROOT, "pipelines", "image_classify.yaml"),
                       os.path.join(ROOT, "examples", "images", "image_classify.yaml"))
CONTENDERS = ("limit-1x2", "limit-2x1", "default-2x", "ray", "dataflow", "dataflow-2t")
DATAFLOWS = ("dataflow", "dataflow-2t")
LIMITS = ("limit-1x2", "limit-2x1")
BATCH = 32
IMAGES_PER_FILE = 64


# ---------------------------------------------------------------------------------------------
# contenders (each runs in its own process: `--contender NAME`)


def _score_file(clf, path: str, dest: str) -> int:
    """One file by hand: batches of BATCH images through decode → clf → top5, one Parquet out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from examples.images.stages import decode, top5

    parts = []
    for rb in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=["image_id", "image"]):
        batch = {"image_id": rb.column(0).to_numpy(), "image": rb.column(1).to_numpy(zero_copy_only=False)}
        parts.append(pa.table(top5(clf(decode(batch)))))
    table = pa.concat_tables(parts)
    pq.write_table(table, os.path.join(dest, os.path.basename(path)))
    return table.num_rows


_CLF = None


def _pool_init(weights: str, threads: int | None) -> None:
    global _CLF
    from examples.images.stages import Classifier

    _CLF = Classifier(weights, num_threads=threads)


def _pool_score(job: tuple[str, str]) -> int:
    return _score_file(_CLF, *job)


def contender_by_hand(files: list[str], weights: str, out: str, processes: int, threads: int | None) -> None:
    os.makedirs(out, exist_ok=True)
    if processes == 1:
        _pool_init(weights, threads)
        done = sum(_score_file(_CLF, f, out) for f in files)
    else:
        import multiprocessing

        # Nothing here has imported torch yet: the children start its thread pools afresh.
        with multiprocessing.get_context("fork").Pool(processes, _pool_init, (weights, threads)) as pool:
            done = sum(pool.imap_unordered(_pool_score, [(f, out) for f in files], chunksize=1))
    print(f"{done} images")


def contender_ray(files: list[str], weights: str, out: str) -> None:
    import ray

    from examples.images.stages import Classifier, decode, top5

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.path.join(RESULTS, "ray_tmp"),
             _node_ip_address="127.0.0.1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = (ray.data.read_parquet(files)
          .map_batches(decode, batch_format="numpy", batch_size=BATCH)
          .map_batches(Classifier, fn_constructor_args=(weights,), concurrency=2, num_cpus=0.5,
                       batch_size=BATCH, batch_format="numpy")
          .map_batches(top5, batch_format="numpy"))
    ds.write_parquet(out)
    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# the harness


def measure(cmd: list[str], env: dict, log: str) -> dict:
    """Run `cmd`; wall time from outside (start to exit) and peak PSS of its process tree."""
    import psutil

    from dataflow.summary import tree_memory  # sum of PSS over a process tree

    peak, seen = [0], set()
    with open(log, "w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_memory(proc.pid))
                try:
                    seen.update(psutil.Process(proc.pid).children(recursive=True))
                except psutil.Error:
                    pass
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    psutil.wait_procs(list(seen), timeout=30)  # what a run leaves exiting must not slow the next
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}); log {log}:\n{tail}")
    return {"wall": wall, "peak_pss": peak[0]}


def ensure_inputs(images: int) -> tuple[list[str], str]:
    """The data set (files of 64 images, at least 4 files) and the weights file, made once."""
    from examples.images.make_data import make_image_shards
    from examples.images.resnet import ensure_weights

    dest = os.path.join(WORK, f"data-{images}")
    if not os.path.exists(dest):
        # At least 4 files, so that a small run still gives both processes (and both actors) work.
        make_image_shards(dest, images=images, files=min(images, max(4, images // IMAGES_PER_FILE)), seed=0)
    weights = ensure_weights(os.path.join(WORK, "resnet18.safetensors"), seed=0)
    return sorted(glob.glob(os.path.join(dest, "*.parquet"))), weights


def dataflow_spec(data: str, weights: str, env: dict) -> tuple[str | None, str]:
    """The pipeline's YAML pointed at the benchmark's data and weights (generation off), or
    (None, why) when this dataflow cannot run it."""
    import yaml

    source = next((p for p in PIPELINE_CANDIDATES if os.path.exists(p)), None)
    if source is None:
        return None, "no image_classify.yaml in pipelines/ or examples/images/"
    spec = yaml.safe_load(open(source))
    spec["source"]["parquet"] = data + "/"
    spec["source"].pop("generate", None)
    for stage in spec.get("stages", []):
        if stage.get("model"):
            stage["model"] = {"path": weights}
    spec["runtime"]["spill"] = os.path.join(RESULTS, "spill")
    path = os.path.join(WORK, "image_classify.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    r = subprocess.run([sys.executable, "-m", "dataflow", "validate", path], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"this dataflow cannot run the pipeline yet (no stages?): {r.stderr.strip()}"
    return path, ""


def command(name: str, files_json: str, weights: str, out: str, spec: str | None) -> list[str]:
    if name in DATAFLOWS:
        threads = ["--set", "stages.1.num_threads=2"] if name == "dataflow-2t" else []
        return [sys.executable, "-m", "dataflow", "run", spec, "--set", f"sink.parquet={out}/", "--restart", *threads]
    return [sys.executable, os.path.abspath(__file__), "--contender", name, "--files", files_json,
            "--weights", weights, "--out", out]


def count_rows(out: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True)
               if not os.path.basename(p).startswith(("_", ".")))


def run(contenders: list[str], images: int, rounds: int) -> dict:
    files, weights = ensure_inputs(images)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=ROOT)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # each contender sets its own threads
        env.pop(var, None)
    files_json = os.path.join(WORK, "files.json")
    with open(files_json, "w") as f:
        json.dump(files, f)
    spec = None
    if any(c in DATAFLOWS for c in contenders):
        spec, why = dataflow_spec(os.path.dirname(files[0]), weights, env)
        if spec is None:
            print(f"  dataflow: skipped: {why}", flush=True)
            contenders = [c for c in contenders if c not in DATAFLOWS]
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for i in range(rounds):
        for name in contenders[i % len(contenders):] + contenders[:i % len(contenders)]:
            out = os.path.join(RESULTS, "out", "images", name)
            shutil.rmtree(out, ignore_errors=True)
            r = measure(command(name, files_json, weights, out, spec), env, os.path.join(WORK, f"{name}.log"))
            rows = count_rows(out)
            if rows != images:
                raise SystemExit(f"{name} wrote {rows} rows for {images} images; see {WORK}/{name}.log")
            runs[name].append(r)
            print(f"    round {i + 1} {name:<11} {r['wall']:6.2f} s  {images / r['wall']:6.2f} images/s  "
                  f"{r['peak_pss'] / 1e9:5.2f} GB PSS", flush=True)
            shutil.rmtree(os.path.join(RESULTS, "ray_tmp"), ignore_errors=True)
    results = {}
    for name in contenders:
        wall = statistics.median(r["wall"] for r in runs[name])
        results[name] = {"wall": wall, "images_per_s": images / wall,
                         "peak_pss": statistics.median(r["peak_pss"] for r in runs[name]), "runs": runs[name]}
    return {"images": images, "files": len(files), "rounds": rounds, "results": results}


def report(res: dict) -> list[str]:
    r = res["results"]
    lines = [f"{res['images']} images in {res['files']} files, medians of {res['rounds']} rounds:",
             f"  {'contender':<11} {'images/s':>9} {'wall':>8} {'peak PSS':>9}"]
    for name, x in r.items():
        lines.append(f"  {name:<11} {x['images_per_s']:9.2f} {x['wall']:7.2f}s {x['peak_pss'] / 1e9:7.2f}GB")
    limits = [n for n in LIMITS if n in r]
    limit = max(limits, key=lambda n: r[n]["images_per_s"]) if limits else None
    lines.append("ratios (images/s):")
    if limit:
        lines.append(f"  the limit: {limit} ({r[limit]['images_per_s']:.2f} images/s)")
        for name in ("dataflow", "ray"):
            if name in r:
                goal = " (goal >= 0.95)" if name == "dataflow" else ""
                lines.append(f"  {name}/limit {r[name]['images_per_s'] / r[limit]['images_per_s']:.2f}{goal}")
    if "dataflow" in r and "ray" in r:
        lines.append(f"  dataflow/ray {r['dataflow']['images_per_s'] / r['ray']['images_per_s']:.2f} (goal > 1), "
                     f"peak PSS dataflow/ray {r['dataflow']['peak_pss'] / r['ray']['peak_pss']:.2f} (goal <= 0.6)")
    if "default-2x" in r and "limit-2x1" in r:
        lines.append(f"  torch default threads / fitted (2 processes): "
                     f"{r['default-2x']['images_per_s'] / r['limit-2x1']['images_per_s']:.2f}")
    if "dataflow-2t" in r and "dataflow" in r:
        lines.append(f"  dataflow, torch default threads / fitted: "
                     f"{r['dataflow-2t']['images_per_s'] / r['dataflow']['images_per_s']:.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=512, help="images in the data set (files of 64, at least 4)")
    p.add_argument("--rounds", type=int, default=3, help="runs per contender (medians reported)")
    p.add_argument("--only", default=",".join(CONTENDERS), help="contenders, comma-separated")
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.contender:  # inside a measured process
        with open(args.files) as f:
            files = json.load(f)
        if args.contender == "ray":
            contender_ray(files, args.weights, args.out)
        else:
            processes, threads = {"limit-1x2": (1, 2), "limit-2x1": (2, 1), "default-2x": (2, None)}[args.contender]
            contender_by_hand(files, args.weights, args.out, processes, threads)
        return

    contenders = [c for c in args.only.split(",") if c]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contender(s) {', '.join(sorted(unknown))}; known: {', '.join(CONTENDERS)}")
    os.makedirs(WORK, exist_ok=True)
    res = run(contenders, args.images, args.rounds)
    lines = report(res)
    print("\n".join(lines))
    with open(os.path.join(RESULTS, "images.json"), "w") as f:
        json.dump(res | {"report": lines}, f, indent=2)


if __name__ == "__main__":
    # Run as a script, benchmarks/ comes first on sys.path, where benchmarks/connectors.py would
    # shadow the connectors package: look up the project's packages from the root instead.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [ROOT] + [q for q in sys.path if os.path.abspath(q or ".") != here]
    main()
