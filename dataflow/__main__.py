"""`python -m dataflow ...`: see dataflow/cli.py."""

import sys

from .cli import main

sys.exit(main())
