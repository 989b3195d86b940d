"""`python -m tests.bench`: see tests/bench/cli.py and docs/benchmark.md."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
