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
    """Console-script entry point: the command, then the process's end without the interpreter's teardown
    (:func:`exit_without_teardown`)."""
    import typer.rich_utils

    from embedrec.cli.common import one_line_usage_error

    typer.rich_utils.rich_format_error = one_line_usage_error  # type: ignore[assignment]  # looked up per error
    try:
        app()
    except SystemExit as exc:
        exit_without_teardown(exc.code)
    exit_without_teardown(0)


def exit_without_teardown(code: str | int | None) -> None:
    """End the process with ``code`` as ``sys.exit`` would, but skip the interpreter's teardown.

    After a command has imported JAX, Flax, pandas and matplotlib, Python's teardown frees their objects module by
    module: ~1 s of wall time after a training run at full MovieLens scale, with every file already written. The
    exit handlers still run (``atexit``: logging, JAX's own) and the streams are flushed; only when another
    non-daemon thread is still alive (which the normal exit would wait for), or the code is not an exit status,
    does it exit the normal way."""
    import atexit
    import os
    import sys
    import threading

    status = 0 if code is None else code
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not isinstance(status, int) or isinstance(status, bool) or others:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started without that descriptor (`embedrec ... >&-`): Python made it None
            continue
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a closed pipe (`embedrec ... | head`) or a closed stream
            pass
        except OSError as exc:  # output still buffered that the disk refused: the command's result is lost
            if stream is sys.stdout:
                status = status or _output_lost(exc)
    os._exit(status & 0xFF)


def _output_lost(exc: OSError) -> int:
    """Say on stderr that the last of stdout could not be written (a full disk, a failing device); the exit code
    of a machine fault, as when the same write fails while the command runs. The normal exit would report it as
    status 120 and a Python message."""
    from embedrec.cli.common import err_console
    from embedrec.errors import IO_FAULT_EXIT_CODE

    try:
        err_console.print(
            f"[bold red]error:[/] could not write the output to stdout ({exc.strerror or exc}): it is incomplete",
            highlight=False,
            soft_wrap=True,
        )
    except (OSError, ValueError):
        pass
    return IO_FAULT_EXIT_CODE


__all__ = ["app", "exit_without_teardown", "main"]
