"""`python -m dataflow ...`: see dataflow/cli.py."""

import atexit
import os
import sys

# `run` starts the workers' imports before this process imports the CLI (argparse and the
# rest, ~15 ms on the critical path of every run: the workers' imports are the longest part).
_run = sys.argv[1:2] == ["run"]
if _run:
    from .backends import preload_workers

    preload_workers()

from .cli import main  # noqa: E402

code = main(preloaded=_run)
# Leave without the interpreter's teardown of pyarrow and pandas (~0.06 s of a 0.5 s run): by now
# every file is written and closed and the session is shut down; the atexit handlers still run.
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
