"""`python -m dataflow run|validate|plan pipeline.yaml [--set key=value ...]`.

The CLI parses, calls the Python API, and maps outcomes to exit codes and one-line messages:

    0    done
    1    the run failed or finished partially (failed shards, quarantined rows), or another error
    2    bad spec or bad arguments: one line per problem on stderr, no traceback, nothing written
    130  interrupted (Ctrl-C or SIGTERM): committed shards are kept; the same command resumes

Progress and messages go to stderr; `--json` puts a machine-readable result on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from typing import Sequence

from .backends import preload_workers
from .exceptions import DataflowError, RunError, SpecError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + line
        print(f"dataflow: error: {message} (see python -m dataflow --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m dataflow", description="Declarative batch-inference pipelines: "
                "the same model over every shard of a Parquet dataset.")
    sub = p.add_subparsers(dest="command", metavar="{run,validate,plan}", parser_class=_Parser)
    sub.required = True
    helps = {"run": "run the pipeline (resumes an interrupted run)",
             "validate": "check the spec only; runs nothing",
             "plan": "list the shards and their sizes; runs no model"}
    for name, text in helps.items():
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("pipeline", help="the pipeline YAML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec value, e.g. --set predict.batch_size=1024 (repeatable)")
        c.add_argument("--json", action="store_true", help="print a JSON result on stdout")
        c.add_argument("--verbose", "-v", action="store_true",
                       help="one report line per shard; tracebacks for unexpected errors")
        if name == "run":
            c.add_argument("--restart", action="store_true",
                           help="clear the output and start over instead of resuming")
            c.add_argument("--address", help="run on a cluster (e.g. ray://host:10001 or auto)")
            c.add_argument("--html-report", nargs="?", const=True, default=None, metavar="PATH",
                           help="write the run's HTML report (default: "
                                ".dataflow/reports/<pipeline>-<run id>.html) and print its path")
            c.add_argument("--trace", metavar="PATH",
                           help="write the run's task timeline to PATH (Chrome trace JSON: open it in "
                                "Perfetto or chrome://tracing) and print its path")
    return p


def main(argv: Sequence[str] | None = None, *, preloaded: bool = False) -> int:
    """`preloaded`: the caller has already started the workers' imports (preload_workers)."""
    args = _parser().parse_args(argv)
    if args.command == "run" and not preloaded:
        preload_workers()
    from .pipeline import Pipeline

    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"runtime.address={args.address}")
    try:
        pipe = Pipeline.from_yaml(args.pipeline, overrides)
    except SpecError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return EXIT_USAGE
    return {"validate": _validate, "plan": _plan, "run": _run}[args.command](pipe, args)


def _validate(pipe, args) -> int:
    s = pipe.spec
    if args.json:
        print(json.dumps({"valid": True, "name": s.name, "pipeline": args.pipeline}))
    else:
        if s.stages:
            model = " -> ".join(st.name for st in s.stages)
        else:
            model = s.model.factory or s.model.path or s.model.setup
        print(f"{args.pipeline}: ok ({s.name}: {_src(s)} -> {model} -> "
              f"{_redact(s.sink.uri) if s.sink else 'no sink'})", file=sys.stderr)
    return EXIT_OK


def _plan(pipe, args) -> int:
    from .progress import Progress
    from .summary import format_bytes

    try:
        shards = pipe.plan(Progress(verbose=args.verbose, bar=False))
        done = pipe.committed()
    except Exception as exc:
        return _error(exc, args)
    if args.json:
        print(json.dumps({"name": pipe.spec.name, "shards": [
            {"index": s.index, "path": s.path, "row_groups": list(s.row_groups) if s.row_groups is not None else None,
             "num_rows": s.num_rows, "num_bytes": s.num_bytes, "estimated": s.estimated,
             "committed": s.index in done} for s in shards]}))
        return EXIT_OK
    print(f"{'shard':>5}  {'rows':>10}  {'size':>9}  {'row groups':<10}  {'state':<9}  path")
    for s in shards:
        rg = "all" if s.row_groups is None else ",".join(map(str, s.row_groups))
        state = "committed" if s.index in done else "to do"
        rows = f"~{s.num_rows:,}" if s.estimated else f"{s.num_rows:,}"
        print(f"{s.index:>5}  {rows:>10}  {format_bytes(s.num_bytes):>9}  {rg:<10}  {state:<9}  {s.path}")
    todo = [s for s in shards if s.index not in done]
    if any(s.estimated for s in shards):
        print("~ estimated from the file's size: the footers of a sample of the files were read")
    print(f"{len(shards)} shards, {sum(s.num_rows for s in shards):,} rows, "
          f"{format_bytes(sum(s.num_bytes for s in shards))}; to do: {len(todo)} shards, "
          f"{sum(s.num_rows for s in todo):,} rows")
    return EXIT_OK


def _run(pipe, args) -> int:
    from .progress import Progress

    # SIGTERM stops as cleanly as Ctrl-C: the committed shards stay, the rerun resumes.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = Progress(verbose=args.verbose, report=pipe.spec.report)
    try:
        summary = pipe.run(restart=args.restart, progress=progress, html_report=args.html_report,
                           trace=args.trace)
    except KeyboardInterrupt:
        _print_report(pipe, args)
        s = pipe.last_summary
        done = (s.shards_done + s.shards_skipped) if s else 0
        total = s.shards if s else "?"
        print(f"dataflow: interrupted: {done} of {total} shards committed to "
              f"{_redact(pipe.spec.sink.uri)}; run the same command again to resume", file=sys.stderr)
        if args.json and s:
            print(json.dumps(s.to_dict()))
        return EXIT_INTERRUPTED
    except RunError as exc:
        _print_report(pipe, args)
        if exc.summary is not None:
            _print_summary(exc.summary, args)
        print(f"dataflow: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        _print_report(pipe, args)
        return _error(exc, args)
    _print_summary(summary, args)
    _print_report(pipe, args)
    return summary.exit_code


def _print_report(pipe, args) -> None:
    # On stderr with the summary: stdout stays the JSON result under --json.
    if pipe.last_report is not None:
        print(f"report: {pipe.last_report}", file=sys.stderr)
    if args.trace:
        if pipe.last_trace is not None:
            print(f"trace: {pipe.last_trace}", file=sys.stderr)
        else:
            print(f"dataflow: no trace written to {args.trace}: the run's session recorded no task "
                  f"timeline (the inline backend runs its tasks in the driver)", file=sys.stderr)


def _print_summary(summary, args) -> None:
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(summary.table(), file=sys.stderr)


def _error(exc: BaseException, args) -> int:
    """Our own errors (and the connectors'/core's) as one line; anything else is a bug and keeps
    its traceback."""
    if isinstance(exc, SpecError):
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return EXIT_USAGE
    ours = isinstance(exc, DataflowError) or type(exc).__module__.split(".")[0] in ("connectors", "core")
    if not ours:
        traceback.print_exception(exc)
        return EXIT_FAILED
    if args.verbose:
        traceback.print_exception(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"dataflow: error: {first}", file=sys.stderr)
    return EXIT_FAILED


def _src(s) -> str:
    p = s.source.parquet
    return _redact(p) if isinstance(p, str) else f"{len(p)} paths"


def _redact(uri: str) -> str:
    """The URI without credentials (s3://KEY:SECRET@bucket/... -> s3://bucket/...)."""
    from connectors.storage import redact

    return redact(uri)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
