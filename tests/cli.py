"""The real ``embedrec`` CLI in a child process, as a user runs it: the tests that need a process of its own (a kill,
a lock held by another process, the exit path) use these instead of each defining a runner
(``from cli import EMBEDREC, run_cli``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

EMBEDREC = [sys.executable, "-m", "embedrec.cli"]
"""The command line of the CLI under this interpreter (the tests' environment puts the repository on its path)."""


def run_cli(args: Sequence[object], cwd: Path, *, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """Run ``embedrec ARGS`` in ``cwd`` (its default work folder, ./.embedrec, lands there, not in the repository);
    stdout and stderr captured as text."""
    return subprocess.run(EMBEDREC + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
