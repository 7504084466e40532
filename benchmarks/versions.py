"""Two versions of `core` side by side: the task and object-store figures of an older commit and of
this checkout, measured alternately in one run, with the ratio new/old of each.

    python benchmarks/versions.py                 # old = cf6a744 (before the engine redesign)
    python benchmarks/versions.py --old REV --rounds 4

The old commit is checked out in a temporary `git worktree`; each measurement runs in a child
process whose `sys.path` starts with one tree, so the two versions never share a process. Rounds
go old, new, new, old, old, new, ... (ABBA), so a drift of the machine during the run (another
job, the page cache) weighs on both the same. The figures are those of benchmarks/tasks.py (init
to first result, no-op round trip, 10k tasks/s, 100 tasks on an 800 MB array) and
benchmarks/object_store.py (small put+get, 800 MB put and get), both for core only: their
measuring functions are imported from this checkout's scripts, so both versions run the same
measurement code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_OLD = "cf6a744"

# figure -> (label, which way is better)
FIGURES = {
    "init_to_first_result_s": ("tasks: init to first result (s)", "lower"),
    "noop_roundtrip_median_us": ("tasks: no-op round trip, median (us)", "lower"),
    "throughput_tasks_per_s": ("tasks: 10k no-op tasks (tasks/s)", "higher"),
    "array_tasks_s": ("tasks: 100 tasks on an 800 MB ref (s)", "lower"),
    "small_us": ("store: small put+get, median (us)", "lower"),
    "put_gbs": ("store: put 800 MB, median (GB/s)", "higher"),
    "get_ms": ("store: get 800 MB, median (ms)", "lower"),
    "init_s": ("store: init to first put+get (s)", "lower"),
}


def child(tree: str) -> None:
    """One measurement of the `core` found in `tree`, printed as one RESULT line."""
    sys.path.insert(0, tree)
    sys.path.insert(1, str(BENCH))
    import core

    assert Path(core.__file__).resolve().is_relative_to(Path(tree).resolve()), core.__file__
    import object_store
    import tasks

    sizes = {"roundtrips": 1000, "throughput": 10_000, "array_bytes": 800 * 10**6, "array_tasks": 100}
    out = tasks.run_engine("core", core, {"num_cpus": 2}, sizes)
    out.update(object_store.measure(object_store.Core(), quick=False))
    print("RESULT " + json.dumps(out), flush=True)


def run_child(tree: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", tree], capture_output=True, text=True,
                          cwd=tree, timeout=1200, env={**os.environ, "PYTHONPATH": tree})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"the run in {tree} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def order(rounds: int) -> list[str]:
    """old, new, new, old, old, new, ...: each version as often first as second."""
    pairs = [("old", "new"), ("new", "old")]
    return [v for i in range(rounds) for v in pairs[i % 2]]


def report(runs: dict[str, list[dict]], old: str, new: str) -> None:
    print(f"\n{'figure':42}{'old ' + old:>16}{'new ' + new:>16}{'new/old':>9}  {'better':>7}  within 5%")
    for key, (label, better) in FIGURES.items():
        o = statistics.median(r[key] for r in runs["old"])
        n = statistics.median(r[key] for r in runs["new"])
        ratio = n / o
        worse_by = (ratio - 1) if better == "lower" else (1 - ratio)
        verdict = "yes" if worse_by <= 0.05 else f"NO ({worse_by:+.1%} worse)"
        print(f"{label:42}{o:>16.4g}{n:>16.4g}{ratio:>9.3f}  {better:>7}  {verdict}")
    print(f"(medians of {len(runs['old'])} runs of each; each run in its own process, ABBA order)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=DEFAULT_OLD, help=f"commit to compare against (default {DEFAULT_OLD})")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each version (default 3)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    new = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "core"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-old-") as tmp:
        old_tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", old_tree, args.old], cwd=REPO, check=True)
        try:
            trees = {"old": old_tree, "new": str(REPO)}
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for version in order(args.rounds):
                print(f"{version} ({args.old if version == 'old' else new}) ...", flush=True)
                runs[version].append(run_child(trees[version]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=REPO, check=False)
    report(runs, args.old, new + ("+dirty" if dirty else ""))


if __name__ == "__main__":
    main()
