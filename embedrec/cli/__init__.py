"""The ``embedrec`` command line: parse, call the library, render with rich.

Each command group lives in its own module and registers itself on :data:`app`. Nothing heavy (jax, flax, pandas) is
imported at module level here, so ``embedrec --help`` is instant.
"""

from __future__ import annotations

from embedrec.cli import data_cmds as _data_cmds  # noqa: F401  (registers prepare, download)
from embedrec.cli import rec_cmds as _rec_cmds  # noqa: F401  (registers evaluate, predict, recommend, similar)
from embedrec.cli import serve_cmd as _serve_cmd  # noqa: F401  (registers serve)
from embedrec.cli import train_cmds as _train_cmds  # noqa: F401  (registers train, info)
from embedrec.cli import tune_cmd as _tune_cmd  # noqa: F401  (registers tune)
from embedrec.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
