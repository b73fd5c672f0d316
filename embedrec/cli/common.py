"""What every command shares: the Typer app, the console, the ``--workdir`` option and error handling."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from embedrec import __version__
from embedrec.errors import EmbedrecError, Terminated, os_error_message


def _flags_show_no_value() -> None:
    """Help lists a flag without a value placeholder (``--json``, not ``--json <bool>``).

    Typer 0.29's rich help prints every option's type, flags included, which reads as if ``--json`` took a value;
    click's plain help and earlier Typer print none for flags. One override of ``TyperOption.display_type_rich``
    fixes it for every command and for ``--help`` itself; options that take a value keep their ``<int>``/``<path>``.
    """
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "flags_show_no_value", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else original(self, ctx)

    display_type_rich.flags_show_no_value = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_value()

app = typer.Typer(
    name="embedrec",
    help="Train the embedding-concat recommender on MovieLens-style ratings, evaluate it honestly, recommend movies.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

WorkdirOpt = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        help="Work folder holding data/ and models/ \\[default: $EMBEDREC_WORKDIR or ./.embedrec].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def raw_id(text: str) -> int:
    """An id option's value read by :func:`embedrec.data.encode.parse_id` (click's int type would read "1_000" as
    1000 and "+5" or " 5" as 5); Typer reports the ValueError as an invalid value of the option, exit 2."""
    from embedrec.data.encode import parse_id

    number = parse_id(text)
    if number is None:
        raise typer.BadParameter(f"expected a whole number in plain digits, like 42 or -7, got {text!r}")
    return number


UserIdOpt = Annotated[int | None, typer.Option("--user", help="Raw user id.", parser=raw_id, metavar="<int>")]
MovieIdOpt = Annotated[int | None, typer.Option("--movie", help="Raw movie id.", parser=raw_id, metavar="<int>")]

_DIST = "Several processes or hosts"
DistributedOpt = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="One process of a run across processes or hosts (jax.distributed): start the same command on every "
        "process; process 0 writes. Without --coordinator: read from the cluster (SLURM, JAX_*).",
        rich_help_panel=_DIST,
    ),
]
CoordinatorOpt = Annotated[
    str | None,
    typer.Option("--coordinator", help="HOST:PORT where process 0 listens.", rich_help_panel=_DIST, show_default=False),
]
NumProcessesOpt = Annotated[
    int | None,
    typer.Option("--num-processes", help="How many processes in all.", rich_help_panel=_DIST, show_default=False),
]
ProcessIdOpt = Annotated[
    int | None,
    typer.Option("--process-id", help="This process: 0..N-1.", rich_help_panel=_DIST, show_default=False),
]
JoinTimeoutOpt = Annotated[
    int, typer.Option("--join-timeout", help="Seconds to wait for every process to join.", rich_help_panel=_DIST)
]


def cluster_of(
    distributed: bool, coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: int
) -> Any:
    """The :class:`embedrec.distributed.Cluster` the options name (checked), or None for a single process."""
    if not distributed and all(v is None for v in (coordinator, num_processes, process_id)):
        return None
    from embedrec.distributed import Cluster

    cluster = Cluster(coordinator, num_processes, process_id, timeout_s=timeout_s)
    cluster.check()  # before any data is read
    return cluster


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one red error line and return the Exit to raise."""
    from rich.markup import escape

    # the message quotes the user's own text (a title, a genre, a file's cell): printed as written, never as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def one_line_usage_error(exc: Any) -> None:
    """Typer's own usage errors (an unknown option, a missing or out-of-range value its parser refuses) as one
    ``error:`` line like every other error, instead of a usage line, a hint and a box; the exit code stays 2.
    Installed over ``typer.rich_utils.rich_format_error`` by :func:`embedrec.cli.main`."""
    if exc.__class__.__name__ == "NoArgsIsHelpError":  # `embedrec` alone: the help was printed, as Typer does
        return
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    fail(" ".join(exc.format_message().split()) + where, exc.exit_code)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_errors(func: F) -> F:
    """Turn library errors into one line and an exit code; bugs keep their traceback.

    Exit codes: 2 for a bad input or option, a path the user gave that cannot be used (permission, read-only disk, a
    file where a folder belongs, text that is not UTF-8), 3 for a diverged training, 74 for a machine fault (disk
    full, I/O error), 130 for Ctrl-C and 143 for SIGTERM. SIGTERM is raised as an exception so the cleanup of
    half-written output runs before the process ends.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return func(*args, **kwargs)
        except EmbedrecError as exc:
            if exc.hard_exit:  # nothing more may run in this process (see errors.LostPeer)
                fail(str(exc), exc.exit_code)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Terminated as exc:
            raise fail("terminated by SIGTERM; partial output was removed", exc.exit_code) from None
        except BrokenPipeError:  # `embedrec ... | head`
            sys.stderr.close()
            raise typer.Exit(0) from None
        except OSError as exc:
            message, code = os_error_message(exc)
            raise fail(message, code) from None
        except UnicodeDecodeError as exc:  # a file the library read as text without naming it
            raise fail(
                f"a file is not valid {exc.encoding} text (bad byte at offset {exc.start}): re-save it as UTF-8", 2
            ) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"embedrec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """embedrec: prepare data, train, evaluate, recommend."""
