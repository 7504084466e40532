"""Re-run the reliability suite (tests/reliability) and write benchmarks/reliability.md: the
faults injected, how many times each test ran, the outcomes, and what each run counted (workers
killed, S3 faults served, objects spilled...; the tests report these with `record_property`).

    python benchmarks/reliability.py                 # the default suite once, 2 xdist workers
    python benchmarks/reliability.py --runs 3        # three times over
    python benchmarks/reliability.py --slow          # with the soak (@pytest.mark.slow)

pytest writes a JUnit XML report per run; this script only reads those reports and counts.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "reliability.md")

# test function -> (area, the fault injected or the input given, the outcome required)
FAULTS = {
    "test_workers_killed_repeatedly_output_identical_to_clean_run":
        ("processes", "SIGKILL a random worker every 0.5-1 s through a whole run",
         "run finishes; output identical row for row to a clean run"),
    "test_driver_killed_then_rerun_resumes_and_leaves_nothing_behind":
        ("processes", "SIGKILL the driver (`python -m dataflow run`) mid-run, run again",
         "workers exit; rerun skips committed shards, computes the rest, identical output; "
         "segments, spill folder, manifest of the dead session removed"),
    "test_store_at_a_quarter_of_the_working_set_spills_and_restores_identically":
        ("memory", "object store at 1/4 of the working set (spill to a folder / S3 on moto)",
         "every object spilled and restored identical"),
    "test_pipeline_with_a_store_at_a_quarter_of_its_working_set":
        ("memory", "pipeline with the store at 1/4 of its working set (slow consumer of stream())",
         "every shard's predictions identical to an unconstrained run"),
    "test_damaged_spill_files_task_results_rebuilt_by_lineage":
        ("memory", "spill files deleted / corrupted (byte flipped) under spilled task results",
         "results rebuilt by lineage, identical"),
    "test_damaged_spill_files_put_objects_raise_object_lost_naming_them":
        ("memory", "spill files deleted / corrupted under spilled `put` objects",
         "ObjectLostError naming the object (and the crc32 mismatch); never wrong data"),
    "test_transient_fault_is_retried_and_output_identical":
        ("S3", "503 SlowDown x2 / one connection dropped mid-read (proxy in front of moto)",
         "retried; output identical"),
    "test_persistent_fault_names_the_uri_then_the_run_resumes":
        ("S3", "503 SlowDown / dropped connections on every read of one object, mid-run",
         "bounded retries, exit 1, one error line naming the URI; rerun resumes, identical"),
    "test_server_gone_mid_run_names_the_uri_then_the_run_resumes":
        ("S3", "S3 endpoint stopped mid-run (connections cut, port closed)",
         "exit 1, one error line naming the URI; endpoint back: rerun resumes, identical"),
    "test_sink_disk_full_clear_error_no_partial_part_then_resume":
        ("disk", "sink on a full 2 MiB tmpfs",
         "exit 1, one line (No space left on device); no partial part; resumes once freed"),
    "test_spill_folder_full_is_a_clear_error_and_nothing_stored_is_lost":
        ("disk", "spill folder on a full 2 MiB tmpfs",
         "ObjectStoreFullError naming the folder; stored objects intact; works once freed"),
    "test_100k_tiny_tasks":
        ("load", "100,000 tiny tasks", "all results right; objects, fds, /dev/shm, RSS flat"),
    "test_pipeline_over_10k_tiny_shards":
        ("load", "a pipeline over 10,000 tiny shards", "10,000 parts, manifest complete; rerun skips all"),
    "test_soak_repeated_runs_leave_memory_fds_and_shm_flat":
        ("load", "soak: pipeline runs back to back for 90 s (slow)", "driver RSS, fds, /dev/shm flat"),
    "test_spec_error_exit_2_one_line_nothing_written":
        ("bad input", "bad spec: YAML syntax, unknown key/section, wrong types, missing factory, "
         "bad batch_format", "exit 2, exactly one stderr line, nothing written"),
    "test_factory_that_raises": ("bad input", "model factory raises", "exit 1, one line; committed parts kept"),
    "test_model_returning_the_wrong_number_of_rows":
        ("bad input", "model returns the wrong number of rows", "exit 1, one line; committed parts kept"),
    "test_batch_format_the_model_cannot_take":
        ("bad input", "batch_format the model cannot take", "exit 1, one line; committed parts kept"),
    "test_unpicklable_closure_names_the_captured_object":
        ("bad input", "model closure over a lock", "exit 1, one line naming 'guard'; committed parts kept"),
    "test_unpicklable_model_attribute_is_named":
        ("bad input", "model object with an RLock attribute", "exit 1, one line naming model.connection"),
    "test_non_parquet_file_among_the_inputs": ("bad input", "a CSV named .parquet", "exit 1, one line naming the file"),
    "test_empty_parquet_file_among_the_inputs": ("bad input", "a 0-byte .parquet", "exit 1, one line naming the file"),
    "test_empty_input_folder": ("bad input", "an empty input folder", "exit 1, one line"),
    "test_input_with_zero_rows_is_valid_and_gives_an_empty_part":
        ("bad input", "a Parquet file with 0 rows (valid)", "exit 0, an empty part"),
    "test_sink_that_exists_with_mode_error":
        ("bad input", "sink exists, mode: error", "exit 1, one line; sink untouched"),
    "test_s3_credentials_denied": ("bad input", "S3 credentials refused", "exit 1, one line: access denied"),
    "test_s3_credentials_missing": ("bad input", "no S3 credentials at all", "exit 1, one line: no AWS credentials found"),
    "test_a_running_session_is_owner_only_and_not_on_the_network":
        ("security", "a live run under umask 000",
         "segments/manifest 0600, dirs 0700; no inet socket; only unnamed Unix socket pairs"),
    "test_spill_files_are_owner_only_under_umask_000":
        ("security", "spilling under umask 000", "spill folder 0700, files 0600"),
    "test_segment_names_are_not_guessable_across_sessions":
        ("security", "three sessions", "16-hex-digit random token per session"),
    "test_no_credential_in_outputs_of_a_run_on_s3":
        ("security", "fake AWS keys/token in env and storage_options; validate/plan/run, --json/--verbose",
         "no secret in any output"),
    "test_no_credential_in_errors": ("security", "fake keys refused by S3", "no secret in the errors"),
    "test_no_credential_from_a_uri_with_userinfo":
        ("security", "s3://KEY:SECRET@bucket/... as source / sink", "no secret in any output"),
    "test_no_credential_in_memory_summary_or_session_manifest":
        ("security", "fake keys, spilling to S3", "no secret in memory_summary(), manifest, reprs"),
}


# What the suite found when it was written, each fixed in the layer at fault.
FIXED = [
    ("core/_private/objects/spill.py", "a short write on a filling disk was taken as complete: the spill file "
     "was truncated and the object lost on restore; writes now loop, so ENOSPC is raised"),
    ("core/_private/local/engine.py", "a lost `put` object's ObjectLostError said \"gone\" even when the spill "
     "file was corrupt; it now carries the store's reason (crc32 mismatch, truncated, missing)"),
    ("connectors/storage.py", "S3 access with no credentials anywhere gave the store's raw error "
     "(moto: INTERNAL_FAILURE); it now says no AWS credentials were found and how to give them"),
    ("connectors/sinks.py", "every commit re-read, re-sorted and re-encoded the whole manifest with "
     "json's pure-Python encoder (indent): 80 ms per commit at 10,000 parts, a 10,000-shard run "
     "quadratic; now the C encoder, and a local sink keeps the manifest it last wrote (checked "
     "by inode, size and mtime): 10,000 shards in about a minute"),
    ("dataflow/cli.py, dataflow/pipeline.py", "the userinfo of s3://KEY:SECRET@bucket/... URIs was "
     "printed by `validate`, the summary's output line, the interrupt message and repr(Pipeline)"),
]


def run_suite(report: str, slow: bool, workers: int) -> int:
    env = dict(os.environ)
    if slow:
        env["DDSF_SLOW"] = "1"
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", "-o", "junit_family=xunit1"]
    if workers > 1:
        cmd += ["-n", str(workers)]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def read_report(path: str) -> list[dict]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"name": name, "function": name.split("[")[0], "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "props": props})
    return cases


def write_markdown(all_runs: list[list[dict]], args) -> str:
    rows: dict[str, dict] = collections.OrderedDict()
    for cases in all_runs:
        for c in cases:
            r = rows.setdefault(c["name"], {"function": c["function"], "outcomes": collections.Counter(),
                                            "seconds": 0.0, "props": collections.defaultdict(list)})
            r["outcomes"][c["outcome"]] += 1
            r["seconds"] += c["seconds"]
            for k, v in c["props"].items():
                r["props"][k].append(v)
    order = list(FAULTS)
    ranked = sorted(rows.items(), key=lambda kv: (order.index(kv[1]["function"])
                                                  if kv[1]["function"] in order else len(order), kv[0]))
    total = collections.Counter()
    lines = [
        "# Reliability report",
        "",
        f"Produced by `python benchmarks/reliability.py{' --slow' if args.slow else ''}"
        f"{f' --runs {args.runs}' if args.runs != 1 else ''}` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({platform.system()}, {os.cpu_count()} CPUs, Python {platform.python_version()}): the suite "
        f"under `tests/reliability/` run {args.runs} time(s) with {args.workers} pytest-xdist workers. Every "
        "fault is real: processes killed with SIGKILL, an HTTP proxy in front of the moto S3 server "
        "answering 503 or cutting connections, files deleted or with a byte flipped, a 2 MiB tmpfs. "
        "Counts are what the tests recorded (`record_property`), per run.",
        "",
        "| area | fault injected / input | outcome required | test | runs | passed | failed | skipped | counts |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in ranked:
        area, fault, outcome = FAULTS.get(r["function"], ("?", "?", "?"))
        o = r["outcomes"]
        runs = sum(o.values())
        total.update(o)
        counts = "; ".join(f"{k} {'/'.join(v)}" for k, v in sorted(r["props"].items()))
        param = name[len(r["function"]):]
        lines.append(f"| {area} | {fault} | {outcome} | `{r['function']}{param}` | {runs} | {o['passed']} | "
                     f"{o['failed']} | {o['skipped']} | {counts} |")
    lines += ["", f"**Total: {sum(total.values())} test runs, {total['passed']} passed, {total['failed']} "
                  f"failed, {total['skipped']} skipped.**"]
    lines += ["", "## Bugs the suite found (fixed)", ""]
    lines += [f"- `{where}`: {what}" for where, what in FIXED]
    if total["skipped"]:
        lines.append("")
        lines.append("Skipped: the soak is `@pytest.mark.slow` (run with `--slow`); the tmpfs tests need "
                     "root to mount.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="times to run the suite")
    parser.add_argument("--slow", action="store_true", help="include @pytest.mark.slow tests (the soak)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (default 2)")
    parser.add_argument("--output", default=OUT)
    args = parser.parse_args()
    all_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            report = os.path.join(tmp, f"run{i}.xml")
            code = run_suite(report, args.slow, args.workers)
            if not os.path.exists(report):
                print(f"pytest wrote no report (exit code {code})", file=sys.stderr)
                return 2
            all_runs.append(read_report(report))
    text = write_markdown(all_runs, args)
    with open(args.output, "w") as f:
        f.write(text)
    print(text)
    failed = sum(1 for cases in all_runs for c in cases if c["outcome"] == "failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
