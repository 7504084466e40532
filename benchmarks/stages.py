"""A three-stage pipeline against the no-framework limit and against Ray Data, in the same run.

    parse (tokenize: stateless) -> model (Sentiment: stateful, ~500 MB of real weights, a pool of
    2 actors) -> post (to_label: stateless), over the review shards (examples/reviews), to Parquet.

    dataflow        python -m dataflow run pipelines/reviews.yaml (weights built once in the
                    driver, put once; both actors map the same pages)
    plain           the limit: a 2-process multiprocessing pool forked after the parent built the
                    weights (the children share its pages); each reads a shard with pyarrow,
                    runs the three functions and writes its part
    raydata         Ray Data: read_parquet().map_batches(tokenize).map_batches(Sentiment,
                    fn_constructor_args=[weights], concurrency=2, num_cpus=0.5)
                    .map_batches(to_label).write_parquet(). With num_cpus=1 per actor Ray Data
                    2.60 never finishes on 2 CPUs (the actors hold both, the read tasks starve):
                    0.5 is its fastest setting that finishes here.
    fused/unfused   dataflow with the model as a function stage (tokenize -> sentiment(weights,
                    batch) -> to_label): all three fuse into one task per shard; `unfused` runs the
                    same with runtime.fuse=false (three tasks per shard, blocks through the store)
    dataflow-12     dataflow on the first 12 shards: peak memory should not grow with the shards

Each contender is a whole process timed from outside (start-up included); peak memory is the
largest sum of PSS over its process tree, sampled every 0.1 s. Rounds rotate the order; medians.

    python benchmarks/stages.py                 # 144 shards x 2,000 reviews, 3 rounds
    python benchmarks/stages.py --rounds 1 --only dataflow,plain
    python benchmarks/stages.py --rounds 1 --only dataflow,plain --shards 48    # a smaller run, for profiling
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DATA = os.path.join(RESULTS, "reviews-data")
PIPELINE = os.path.join(ROOT, "pipelines", "reviews.yaml")
MB = 500
SHARDS, ROWS = 144, 2000
CONTENDERS = ["dataflow", "plain", "raydata", "fused", "unfused", "dataflow-12"]


# ---------------------------------------------------------------------------------------------
# contenders that are not a CLI run (each in its own process)

def plain(data: str, out: str) -> None:
    import glob
    import multiprocessing as mp

    from examples.reviews import model as m

    global _WEIGHTS
    _WEIGHTS = m.load_weights(dim=16, mb=MB)  # before the fork: the children share the pages
    files = sorted(glob.glob(os.path.join(data, "part-*.parquet")))
    os.makedirs(out, exist_ok=True)
    with mp.get_context("fork").Pool(2) as pool:
        for _ in pool.imap_unordered(_plain_shard, [(f, out) for f in files]):
            pass


_WEIGHTS = None
_MODEL = None


def _plain_shard(args) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from dataflow.batches import block_table
    from examples.reviews import model as m

    global _MODEL
    if _MODEL is None:
        _MODEL = m.Sentiment(_WEIGHTS)
    path, out = args
    t = pq.read_table(path, columns=["review_id", "text"])
    batch = {"review_id": t["review_id"].to_numpy(), "text": t["text"].to_numpy(zero_copy_only=False)}
    tok = m.tokenize(batch, max_length=16)
    parts = [_MODEL({k: v[i:i + 1024] for k, v in tok.items()}) for i in range(0, len(tok["review_id"]), 1024)]
    scored = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    res = m.to_label(scored, threshold=0.05)
    tmp = os.path.join(out, "." + os.path.basename(path))
    pq.write_table(block_table(res), tmp)
    os.replace(tmp, os.path.join(out, os.path.basename(path)))


def raydata(data: str, out: str) -> None:
    import ray

    from examples.reviews import model as m

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=f"/tmp/ddsf-bench-ray-{os.getuid()}")
    ray.data.DataContext.get_current().enable_progress_bars = False
    weights = m.load_weights(dim=16, mb=MB)
    (ray.data.read_parquet(data, columns=["review_id", "text"])
     .map_batches(m.tokenize, fn_kwargs={"max_length": 16})
     .map_batches(m.Sentiment, fn_constructor_args=[weights], concurrency=2, num_cpus=0.5, batch_size=1024)
     .map_batches(m.to_label, fn_kwargs={"threshold": 0.05})
     .write_parquet(out))
    ray.shutdown()


def command(name: str, data: str, out: str) -> list[str]:
    if name in ("plain", "raydata"):
        return [sys.executable, __file__, "--contender", name, "--data", data, "--out", out]
    sets = {"source.parquet": data + "/", "sink.parquet": out + "/", "sink.mode": "overwrite",
            "stages.1.model.args.mb": MB, "runtime.object_store_memory": "2GB"}
    args = [sys.executable, "-m", "dataflow", "run", PIPELINE, "--json"]
    if name in ("fused", "unfused"):
        sets.update({"stages.1.fn": "examples.reviews.model:sentiment", "stages.1.concurrency": "null",
                     "runtime.fuse": str(name == "fused").lower()})
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    if name in ("fused", "unfused"):
        args += ["--set", "stages.1.fn_constructor_kwargs={}"]
    return args


# ---------------------------------------------------------------------------------------------
# measuring

def measure(cmd: list[str]) -> dict:
    from dataflow.summary import tree_memory

    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_memory(proc.pid))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    wall = time.monotonic() - start
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall": wall, "peak_pss": peak[0]}


def prepare(shards: int) -> tuple[str, str]:
    from examples.reviews.data import make_reviews

    full = os.path.join(DATA, f"{shards}x{ROWS}")
    if not os.path.exists(full):
        make_reviews(full + ".tmp", shards=shards, rows=ROWS, seed=1)
        os.replace(full + ".tmp", full)
    twelve = os.path.join(DATA, f"12of{shards}")
    if not os.path.exists(twelve):
        os.makedirs(twelve + ".tmp", exist_ok=True)
        for i in range(12):
            name = f"part-{i:05d}.parquet"
            shutil.copy(os.path.join(full, name), os.path.join(twelve + ".tmp", name))
        os.replace(twelve + ".tmp", twelve)
    return full, twelve


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contender")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default=",".join(CONTENDERS))
    p.add_argument("--shards", type=int, default=SHARDS, help=f"review shards (default {SHARDS}; dataflow-12 takes 12 of them)")
    a = p.parse_args()
    if a.contender:
        {"plain": plain, "raydata": raydata}[a.contender](a.data, a.out)
        return
    full, twelve = prepare(a.shards)
    names = a.only.split(",")
    runs: dict[str, list] = {n: [] for n in names}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            out = os.path.join(RESULTS, "stages-out", name)
            shutil.rmtree(out, ignore_errors=True)
            m = measure(command(name, twelve if name == "dataflow-12" else full, out))
            runs[name].append(m)
            print(f"round {r + 1} {name:<12} wall {m['wall']:6.2f} s  peak PSS {m['peak_pss'] / 1e6:7.0f} MB", flush=True)
    med = {n: {k: statistics.median(x[k] for x in v) for k in ("wall", "peak_pss")} for n, v in runs.items()}
    ratios = {}
    if "dataflow" in med and "plain" in med:
        ratios["dataflow/plain wall"] = med["dataflow"]["wall"] / med["plain"]["wall"]
    if "dataflow" in med and "raydata" in med:
        ratios["dataflow/raydata wall"] = med["dataflow"]["wall"] / med["raydata"]["wall"]
        ratios["dataflow/raydata peak PSS"] = med["dataflow"]["peak_pss"] / med["raydata"]["peak_pss"]
    if "fused" in med and "unfused" in med:
        ratios["fused/unfused wall"] = med["fused"]["wall"] / med["unfused"]["wall"]
    if "dataflow" in med and "dataflow-12" in med:
        ratios["peak PSS 144/12 shards"] = med["dataflow"]["peak_pss"] / med["dataflow-12"]["peak_pss"]
    print("\nmedians:")
    for n, v in med.items():
        print(f"  {n:<12} wall {v['wall']:6.2f} s  peak PSS {v['peak_pss'] / 1e6:7.0f} MB")
    print("ratios:")
    for k, v in ratios.items():
        print(f"  {k:<26} {v:.2f}x")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "stages.json"), "w") as f:
        json.dump({"medians": med, "ratios": ratios, "runs": runs, "shards": a.shards, "rows": ROWS, "mb": MB}, f, indent=1)


if __name__ == "__main__":
    main()
