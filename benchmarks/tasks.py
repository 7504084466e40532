"""Task runtime benchmark: core against Ray, side by side in one run.

    python benchmarks/tasks.py [--quick] [--timeline-rounds N] [--timeline-only] [--timeline-lasting ROUNDS]

Measures, for each engine (Ray only when `ray` is installed):
  1. init to first task result (seconds)
  2. no-op task round trip, submit + get one at a time (median microseconds)
  3. throughput: 10,000 no-op tasks submitted, then gathered (tasks/s)
  4. 100 tasks each taking a ref to an 800 MB array: wall time and peak memory, as the sum of
     PSS over the driver and every process it started (the array must not be copied per task)
and prints each figure with the ratio core/Ray and the issue's target. Then, core alone:
  5. the timeline's cost: 10,000 no-op tasks with `init(timeline=True)` and with
     `timeline=False`, sessions alternated over rounds in the same run, and in each recording
     session pairs of blocks with the recorder switched off and on (timeline_cost): median
     throughputs, their ratios, the driver's CPU time per task, and in the pairs the CPU time
     per task of the whole process tree (driver and workers: on 2 cores a no-op flood keeps
     both busy, so what the workers spend recording slows it too).
     A pair of 10k-task blocks differs by ~10% here (where 4 busy threads land on 2 cores), so
     the mean of 96 pairs (12 rounds) is known to ±2%: `--timeline-rounds 48` (384 pairs, ~10
     minutes) gets it to ±1%, 160 rounds (~38 minutes) to ±0.6%. The geometric mean of the pair
     ratios is the estimate of a cost by a factor (their mean reads ~0.5% high).
     `--timeline-only` skips 1-4. `--timeline-lasting ROUNDS` also times sessions before and
     after recording in their middle (timeline_lasting): what the recorder keeps must not slow
     what follows.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import threading
import time

import numpy as np

from dataflow.summary import tree_memory  # sum of PSS over this process tree

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


class PeakPss:
    """Samples the sum of PSS over this process and its descendants in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        return tree_memory()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakPss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def run_engine(name: str, api, init_kwargs: dict, sizes: dict) -> dict:
    out: dict = {}

    def noop():
        return None

    def total(a):
        return float(a[::4096].sum())

    t0 = time.perf_counter()
    api.init(**init_kwargs)
    noop_r = api.remote(noop)
    api.get(noop_r.remote())
    out["init_to_first_result_s"] = time.perf_counter() - t0

    for _ in range(50):  # warm both workers
        api.get(noop_r.remote())
    lat = []
    for _ in range(sizes["roundtrips"]):
        t = time.perf_counter()
        api.get(noop_r.remote())
        lat.append(time.perf_counter() - t)
    out["noop_roundtrip_median_us"] = statistics.median(lat) * 1e6

    n = sizes["throughput"]
    t = time.perf_counter()
    api.get([noop_r.remote() for _ in range(n)])
    out["throughput_tasks_per_s"] = n / (time.perf_counter() - t)

    arr = np.random.default_rng(0).random(sizes["array_bytes"] // 8)
    total_r = api.remote(total)
    # Timed without the PSS sampler (reading smaps of processes mapping 800 MB slows their page
    # faults), then the same work again, sampled, for the memory figure.
    t = time.perf_counter()
    ref = api.put(arr)
    results = api.get([total_r.remote(ref) for _ in range(sizes["array_tasks"])])
    out["array_tasks_s"] = time.perf_counter() - t
    assert len(set(results)) == 1
    del ref, results
    with PeakPss() as pss:
        ref = api.put(arr)
        api.get([total_r.remote(ref) for _ in range(sizes["array_tasks"])])
    out["array_tasks_peak_pss_gb"] = pss.peak / 1e9
    out["array_gb"] = arr.nbytes / 1e9
    del ref, arr
    api.shutdown()
    print(f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in out.items()), flush=True)
    return out


def tree_cpu_seconds() -> float:
    """CPU time of this process and its descendants (every thread), from the scheduler's
    nanosecond counts (/proc/<pid>/task/<tid>/schedstat; /proc/<pid>/stat counts 10 ms ticks,
    too coarse for a block of 10k no-op tasks)."""
    import psutil

    total = 0
    procs = [psutil.Process()]
    procs += procs[0].children(recursive=True)
    for proc in procs:
        try:
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):   # gone meanwhile: it was idle
            pass
    return total / 1e9


def timeline_cost(n: int, rounds: int, blocks: int = 8) -> dict:
    """`n` no-op tasks with the timeline recording and without, two ways:

    - sessions: `init(timeline=True)` and `timeline=False` started alternately (off, on, then
      on, off, ...) so that drift of a shared machine hits both: what a user compares. One
      session differs from the next by up to ±12% here (where its threads land on 2 cores),
      more than the effect, so this needs many rounds.
    - in one session: `blocks` pairs of `n` tasks per round with the session's recorder switched
      on and off between them (nothing in flight; the engine's `board.timeline`, which is what
      `init(timeline=...)` sets): the same workers and memory, so each pair's ratio shows the
      recording's cost without the session-to-session spread (±8% a block).

    Reports median throughputs and on/off ratios (medians of the per-pair ratios, and their
    mean with two standard errors), the driver's CPU time per task (also per pair), and per
    pair the CPU time per task of the driver and its workers together (`tree_cpu_seconds`). To
    count instead of time: `valgrind --tool=cachegrind` of a session of n and of 6n tasks, on
    and off, with PYTHONHASHSEED=0."""
    import core
    from core._private import runtime

    def noop():
        return None

    def block(f) -> tuple[float, float, float]:
        tree = tree_cpu_seconds()
        t, c = time.perf_counter(), time.process_time()
        core.get([f.remote() for _ in range(n)])
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        return n / wall, cpu / n * 1e6, (tree_cpu_seconds() - tree) / n * 1e6

    tput: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    inside: list[float] = []
    inside_walls: dict[bool, float] = {False: 0.0, True: 0.0}   # the pairs' blocks' wall time, summed
    inside_cpu: list[float] = []      # the driver's CPU time per task, on/off, per pair
    inside_tree: list[float] = []     # the driver's and its workers' CPU time per task, on/off
    tree_off: list[float] = []        # ... with the recorder off (µs)
    for r in range(rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            core.init(num_cpus=2, timeline=on)
            f = core.remote(noop)
            core.get([f.remote() for _ in range(500)])   # both workers up and warm
            tp, c, _ = block(f)
            tput[on].append(tp)
            cpu[on].append(c)
            if on:
                board = runtime.current().board
                recorder = board.timeline
                for b in range(blocks):
                    got = {}
                    for rec_on in ((False, True) if b % 2 == 0 else (True, False)):
                        board.timeline = recorder if rec_on else None
                        got[rec_on] = block(f)
                    inside.append(got[True][0] / got[False][0])
                    for rec_on in (False, True):
                        inside_walls[rec_on] += n / got[rec_on][0]
                    inside_cpu.append(got[True][1] / got[False][1])
                    inside_tree.append(got[True][2] / got[False][2])
                    tree_off.append(got[False][2])
                board.timeline = recorder
            core.shutdown()
    med = statistics.median
    mean, se = statistics.mean(inside), statistics.stdev(inside) / len(inside) ** 0.5
    logs = [math.log(r) for r in inside]
    log_mean, log_se = statistics.mean(logs), statistics.stdev(logs) / len(logs) ** 0.5
    out = {"throughput_timeline_off": med(tput[False]), "throughput_timeline_on": med(tput[True]),
           "timeline_on_over_off": med(tput[True]) / med(tput[False]),
           # each round's two sessions side by side: drift of a shared machine cancels out
           "timeline_on_over_off_paired": med(on / off for on, off in zip(tput[True], tput[False])),
           "in_session_pairs": len(inside), "in_session_on_over_off": med(inside),
           "in_session_mean": mean, "in_session_mean_2se": 2 * se,
           # the estimate of a cost by a factor: a mean of ratios reads high by about their
           # variance (~0.5% at ±7% a block), a geometric mean does not
           "in_session_geomean": math.exp(log_mean), "in_session_geomean_2se": 2 * log_se * math.exp(log_mean),
           # all the pairs' tasks over all their time, on against off
           "in_session_total": inside_walls[False] / inside_walls[True],
           # the driver is the busy process of a no-op flood: what recording costs it per task
           "in_session_driver_cpu_on_over_off": med(inside_cpu),
           "in_session_driver_cpu_mean": statistics.mean(inside_cpu),
           "in_session_driver_cpu_mean_2se": 2 * statistics.stdev(inside_cpu) / len(inside_cpu) ** 0.5,
           # the workers record too, and share the 2 cores with the driver
           "in_session_tree_cpu_us_per_task_off": med(tree_off),
           "in_session_tree_cpu_on_over_off": med(inside_tree),
           "in_session_tree_cpu_mean": statistics.mean(inside_tree),
           "in_session_tree_cpu_mean_2se": 2 * statistics.stdev(inside_tree) / len(inside_tree) ** 0.5,
           "driver_cpu_us_per_task_off": med(cpu[False]), "driver_cpu_us_per_task_on": med(cpu[True])}
    print("  core timeline: " + ", ".join(f"{k}={v:.4g}" for k, v in out.items()), flush=True)
    return out


def timeline_lasting(n: int, rounds: int) -> dict:
    """Whether recording slows a session after it: sessions (recorder dropped at init) of 3
    blocks of `n` no-op tasks off, 2 blocks in the middle (recorded in kind "rec", not in
    "ctl"), then 3 blocks off; kinds alternated over `rounds`. Reports, as geometric means over
    the sessions of each kind, the wall time of the 3 blocks after over the 3 before
    (post/pre: > 1 in "rec" only if what the recorder kept slowed what followed) and per
    block in the middle over before (mid/pre)."""
    import math

    import core
    from core._private import runtime

    def noop():
        return None

    def blocks(f, k: int) -> float:
        t = time.perf_counter()
        for _ in range(k):
            core.get([f.remote() for _ in range(n)])
        return (time.perf_counter() - t) / k

    logs: dict[str, dict[str, list[float]]] = {"rec": {"post": [], "mid": []}, "ctl": {"post": [], "mid": []}}
    for r in range(rounds):
        for kind in (("rec", "ctl") if r % 2 == 0 else ("ctl", "rec")):
            core.init(num_cpus=2, timeline=True)
            board = runtime.current().board
            recorder, board.timeline = board.timeline, None
            f = core.remote(noop)
            core.get([f.remote() for _ in range(500)])
            pre = blocks(f, 3)
            board.timeline = recorder if kind == "rec" else None
            mid = blocks(f, 2)
            board.timeline = None
            post = blocks(f, 3)
            core.shutdown()
            logs[kind]["post"].append(math.log(post / pre))
            logs[kind]["mid"].append(math.log(mid / pre))
    out = {}
    for kind, got in logs.items():
        for what, v in got.items():
            out[f"{kind}_{what}_over_pre"] = math.exp(statistics.mean(v))
            out[f"{kind}_{what}_2se"] = 2 * statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else math.nan
    print("  core timeline, lasting: " + ", ".join(f"{k}={v:.4g}" for k, v in out.items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--timeline-rounds", type=int, default=12,
                        help="rounds of the timeline's cost (each: 2 sessions, 8 pairs of blocks in one)")
    parser.add_argument("--timeline-only", action="store_true", help="measure the timeline's cost only")
    parser.add_argument("--timeline-lasting", type=int, default=0, metavar="ROUNDS",
                        help="also measure whether recording slows the rest of a session (timeline_lasting)")
    args = parser.parse_args()
    sizes = {"roundtrips": 1000, "throughput": 10_000, "array_bytes": 800 * 10**6, "array_tasks": 100}
    if args.quick:
        sizes = {"roundtrips": 200, "throughput": 2_000, "array_bytes": 80 * 10**6, "array_tasks": 20}

    rounds = 2 if args.quick else args.timeline_rounds
    if not args.timeline_only:
        compare(sizes)
    report_timeline_cost(timeline_cost(sizes["throughput"], rounds=rounds))
    if args.timeline_lasting:
        timeline_lasting(sizes["throughput"], args.timeline_lasting)


def compare(sizes: dict) -> None:
    """Figures 1-4, core and Ray side by side."""
    import core

    results = {"core": run_engine("core", core, {"num_cpus": 2}, sizes)}
    try:
        import ray
    except ImportError:
        ray = None
        print("  ray: not installed (pip install -e '.[ray]'); no comparison")
    if ray is not None:
        import shutil
        import tempfile

        ray_tmp = tempfile.mkdtemp(prefix="ray-bench-")  # Ray's sockets and logs, removed after

        class RayApi:
            init = staticmethod(lambda **kw: ray.init(num_cpus=2, include_dashboard=False,
                                                        _node_ip_address="127.0.0.1", _temp_dir=ray_tmp,
                                                        log_to_driver=False, configure_logging=False))
            remote = staticmethod(ray.remote)
            get = staticmethod(ray.get)
            put = staticmethod(ray.put)
            shutdown = staticmethod(ray.shutdown)
        try:
            results["ray"] = run_engine(f"ray {ray.__version__}", RayApi, {}, sizes)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)

    print()
    print(f"{'figure':<32}{'core':>12}{'ray':>12}{'core/ray':>10}  target")
    targets = {
        "init_to_first_result_s": "<= 1/8 of Ray's",
        "noop_roundtrip_median_us": "<= 1/5 of Ray's",
        "throughput_tasks_per_s": ">= 5x Ray's",
        "array_tasks_s": "faster than Ray",
        "array_tasks_peak_pss_gb": "near one copy of the array",
    }
    for key, target in targets.items():
        c = results["core"][key]
        r = results.get("ray", {}).get(key)
        ratio = f"{c / r:.3f}" if r else "-"
        print(f"{key:<32}{c:>12.4g}{(r if r is not None else float('nan')):>12.4g}{ratio:>10}  {target}")
    print(f"{'array_gb':<32}{results['core']['array_gb']:>12.4g}")


def report_timeline_cost(cost: dict) -> None:
    print()
    print(f"{'core timeline (median)':<32}{'off':>12}{'on':>12}{'on/off':>10}  target")
    print(f"{'throughput_tasks_per_s':<32}{cost['throughput_timeline_off']:>12.4g}"
          f"{cost['throughput_timeline_on']:>12.4g}{cost['timeline_on_over_off']:>10.3f}  >= 0.98 (<= 2% cost)")
    print(f"{'  per round (median)':<32}{'':>12}{'':>12}{cost['timeline_on_over_off_paired']:>10.3f}")
    print(f"{'  in one session, per pair':<32}{'':>12}{cost['in_session_pairs']:>12}"
          f"{cost['in_session_on_over_off']:>10.3f}  median; mean {cost['in_session_mean']:.3f}"
          f" ± {cost['in_session_mean_2se']:.3f}")
    print(f"{'    geometric mean':<32}{'':>12}{'':>12}{cost['in_session_geomean']:>10.3f}"
          f"  ± {cost['in_session_geomean_2se']:.3f}; all their tasks over all their time"
          f" {cost['in_session_total']:.3f}")
    cpu_on, cpu_off = cost["driver_cpu_us_per_task_on"], cost["driver_cpu_us_per_task_off"]
    print(f"{'driver_cpu_us_per_task':<32}{cpu_off:>12.4g}{cpu_on:>12.4g}{cpu_on / cpu_off:>10.3f}")
    print(f"{'  in one session, per pair':<32}{'':>12}{'':>12}{cost['in_session_driver_cpu_on_over_off']:>10.3f}"
          f"  median; mean {cost['in_session_driver_cpu_mean']:.3f} ± {cost['in_session_driver_cpu_mean_2se']:.3f}")
    print(f"{'tree_cpu_per_task, per pair':<32}{'':>12}{'':>12}{cost['in_session_tree_cpu_on_over_off']:>10.3f}"
          f"  median; mean {cost['in_session_tree_cpu_mean']:.3f} ± {cost['in_session_tree_cpu_mean_2se']:.3f}"
          f" (driver and workers)")


if __name__ == "__main__":
    main()
