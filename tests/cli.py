"""The real ``embedrec`` CLI in a child process, as a user runs it: the tests that need a process of its own (a kill,
a lock held by another process, the exit path) use these instead of each defining a runner
(``from cli import EMBEDREC, run_cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMBEDREC = [sys.executable, "-m", "embedrec.cli"]
"""The command line of the CLI under this interpreter."""


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment (with ``extra`` over it) and the repository first on ``PYTHONPATH``, so the child
    runs this checkout's embedrec (a second git worktree's tests would otherwise run the one the virtual environment
    installed)."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_cli(args: Sequence[object], cwd: Path, *, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """Run ``embedrec ARGS`` in ``cwd`` (its default work folder, ./.embedrec, lands there, not in the repository);
    stdout and stderr captured as text."""
    return subprocess.run(
        EMBEDREC + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=cli_env()
    )
