"""``embedrec prepare`` and ``embedrec download``: parse options, call :mod:`embedrec.data`, render with rich.

Heavy imports (pandas, pyarrow) happen inside the commands so ``embedrec --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from embedrec.cli.common import JsonOpt, WorkdirOpt, app, console, err_console, handle_errors
from embedrec.errors import ConfigError

_SYN = "Synthetic data"
_CSV = "Generic CSV"

_HINT = (
    "For real data: [bold]embedrec download ml-latest-small[/] then [bold]embedrec prepare ml-latest-small[/] "
    "(or pass a MovieLens folder or .zip)."
)


def _summary_table(summary: dict[str, Any], out: Path) -> Any:
    from rich.table import Table

    t = Table(title="Prepared data", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    src, fmt = summary["source"], summary["format"]
    t.add_row("source", src if src == fmt else f"{src} ({fmt})")
    t.add_row("ratings", f"{summary['n_ratings']:,}")
    t.add_row("unique users", f"{summary['n_users']:,}")
    t.add_row("unique movies", f"{summary['n_movies']:,}")
    t.add_row("genre strings", f"{summary['n_genre_strings']:,}")
    t.add_row("genres", f"{summary['n_genres']:,}")
    t.add_row("min rating", f"{summary['rating_min']:g}")
    t.add_row("max rating", f"{summary['rating_max']:g}")
    t.add_row("mean rating", f"{summary['rating_mean']:.3f}")
    scale = _scale_text(summary)
    if scale:
        t.add_row("rating scale", scale)
    sp = summary["split"]
    t.add_row(
        "split",
        f"{sp['method']}: train {summary['n_train']:,} / val {summary['n_val']:,} / test {summary['n_test']:,}",
    )
    dropped = {k: v for k, v in summary["dropped"].items() if v}
    t.add_row("dropped rows", ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in dropped.items()) or "none")
    filtered = {k: v for k, v in summary.get("filtered", {}).items() if v}
    if filtered:
        t.add_row("filtered", ", ".join(f"--{k.replace('_', '-')}: {v:,}" for k, v in filtered.items()))
    t.add_row("written to", str(out))
    return t


def _scale_text(summary: dict[str, Any]) -> str | None:
    """How the ratings' scale was decided (``summary.json``'s ``rating_scale``; None for older folders)."""
    scale = summary.get("rating_scale")
    if not scale:
        return None if "rating_scale" not in summary else "not checked (no --rating-scale)"
    if scale["source"] == "data":
        lo, hi = scale["usual"]
        return (
            f"the data's own: {scale['outside_usual']:,} ratings lie outside {summary['format']}'s usual "
            f"{lo:g}..{hi:g}, so every rating is kept (--rating-scale MIN,MAX checks another)"
        )
    where = "--rating-scale" if scale["source"] == "--rating-scale" else f"{summary['format']}'s usual"
    return f"{scale['min']:g}..{scale['max']:g} ({where}; ratings outside it are dropped)"


@app.command("prepare")
@handle_errors
def prepare_cmd(
    source: Annotated[
        str | None,
        typer.Argument(
            help="MovieLens folder or .zip (ml-100k, ml-1m, ml-10m, ml-20m/25m/32m/latest[-small], RecBole atomic "
            "files), a rating CSV, or a name fetched by `embedrec download`. Omitted: the embedded synthetic data.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder \\[default: <workdir>/data].", show_default=False)
    ] = None,
    workdir: WorkdirOpt = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Generate the synthetic data set.", rich_help_panel=_SYN)
    ] = False,
    users: Annotated[
        int | None,
        typer.Option("--users", help="Synthetic users \\[default: 600].", show_default=False, rich_help_panel=_SYN),
    ] = None,
    movies: Annotated[
        int | None,
        typer.Option("--movies", help="Synthetic movies \\[default: 900].", show_default=False, rich_help_panel=_SYN),
    ] = None,
    ratings: Annotated[
        int | None,
        typer.Option(
            "--ratings", help="Synthetic ratings \\[default: 60000].", show_default=False, rich_help_panel=_SYN
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split (and of the synthetic generator).")] = 42,
    split: Annotated[str, typer.Option("--split", help="random | temporal | leave-last-out.")] = "random",
    test_frac: Annotated[float, typer.Option("--test-frac", help="Fraction of ratings for test.")] = 0.2,
    val_frac: Annotated[float, typer.Option("--val-frac", help="Fraction of ratings for validation.")] = 0.1,
    nrows: Annotated[
        int | None, typer.Option("--nrows", help="Keep only the first N rating rows.", show_default=False)
    ] = None,
    min_user_ratings: Annotated[int, typer.Option("--min-user-ratings", help="Drop users with fewer ratings.")] = 1,
    min_movie_ratings: Annotated[int, typer.Option("--min-movie-ratings", help="Drop movies with fewer ratings.")] = 1,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on any bad row instead of dropping it.")] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="auto | ml-100k | ml-1m | ml-10m | ml-csv | recbole | csv.")
    ] = "auto",
    ratings_file: Annotated[
        str | None,
        typer.Option("--ratings-file", help="Rating file of a generic CSV.", show_default=False, rich_help_panel=_CSV),
    ] = None,
    movies_file: Annotated[
        str | None,
        typer.Option(
            "--movies-file", help="Movies file (movieId,title,genres).", show_default=False, rich_help_panel=_CSV
        ),
    ] = None,
    delimiter: Annotated[
        str, typer.Option("--delimiter", help="Field delimiter ('\\t' for tab).", rich_help_panel=_CSV)
    ] = ",",
    movies_delimiter: Annotated[
        str | None,
        typer.Option(
            "--movies-delimiter",
            help="Field delimiter of the movies file \\[default: --delimiter].",
            show_default=False,
            rich_help_panel=_CSV,
        ),
    ] = None,
    user_col: Annotated[str, typer.Option("--user-col", rich_help_panel=_CSV)] = "userId",
    movie_col: Annotated[str, typer.Option("--movie-col", rich_help_panel=_CSV)] = "movieId",
    rating_col: Annotated[str, typer.Option("--rating-col", rich_help_panel=_CSV)] = "rating",
    time_col: Annotated[
        str,
        typer.Option(
            "--time-col", help="Timestamp column ('' for none; the default may be absent).", rich_help_panel=_CSV
        ),
    ] = "timestamp",
    rating_scale: Annotated[
        str | None,
        typer.Option(
            "--rating-scale",
            help="MIN,MAX: the ratings' scale; ratings outside it are dropped. Default: the layout's usual scale "
            "(MovieLens 0.5..5 or 1..5; a file rated on another scale keeps its own), none for a generic CSV.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read, validate, encode and split ratings into a prepared data set for [bold]train[/]."""
    from embedrec.data.config import PrepareConfig, parse_rating_scale
    from embedrec.workdir import data_dir, downloads_dir, resolve_workdir

    wd = resolve_workdir(workdir)
    target = out if out is not None else data_dir(wd)
    delimiter = _tab(delimiter)
    movies_delimiter = _tab(movies_delimiter) if movies_delimiter is not None else None
    generic = ratings_file is not None or fmt == "csv"
    if source is None and ratings_file is not None:
        source = ratings_file
    sizes_given = any(v is not None for v in (users, movies, ratings))
    if source is not None and (synthetic or sizes_given):
        raise ConfigError("--synthetic/--users/--movies/--ratings cannot be combined with a SOURCE")
    config = PrepareConfig(
        split=split,
        test_frac=test_frac,
        val_frac=val_frac,
        seed=seed,
        nrows=nrows,
        min_user_ratings=min_user_ratings,
        min_movie_ratings=min_movie_ratings,
        strict=strict,
        format="csv" if generic and fmt == "auto" else fmt,
        ratings_file=ratings_file,
        movies_file=movies_file,
        delimiter=delimiter,
        movies_delimiter=movies_delimiter,
        user_col=user_col,
        movie_col=movie_col,
        rating_col=rating_col,
        time_col=time_col or None,
        rating_scale=parse_rating_scale(rating_scale),
    )
    summary = _run_prepare(source, target, config, users, movies, ratings, downloads_dir(wd), quiet=as_json)
    if as_json:
        console.print_json(json.dumps({**summary, "out": str(target)}))
        return
    if summary["format"] == "synthetic":
        g = summary.get("generator", {})
        console.print(
            f"Using the embedded [bold]synthetic[/] MovieLens-like data set ({g.get('n_users')} users, "
            f"{g.get('n_movies')} movies, {g.get('n_ratings')} ratings, seed {g.get('seed')}). {_HINT}"
        )
    console.print(_summary_table(summary, target))
    if any(summary["dropped"].values()):
        console.print("[yellow]Some rows were dropped (counts above); --strict makes them an error.[/]")


def _tab(delimiter: str) -> str:
    """``'\\t'`` as typed in a shell (or ``tab``) is the tab character."""
    return "\t" if delimiter in ("\\t", "tab", "TAB") else delimiter


def _run_prepare(
    source: str | None,
    target: Path,
    config: Any,
    users: int | None,
    movies: int | None,
    ratings: int | None,
    cache_dir: Path,
    *,
    quiet: bool,
) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from embedrec.cli.progress import StepLines
    from embedrec.data.pipeline import prepare, prepare_synthetic

    labels = {
        "read": "reading",
        "clean": "validating and encoding",
        "split": "splitting",
        "write": "writing",
        "done": "done",
    }
    if not quiet and not console.is_terminal:  # a log: one plain line per step instead of a bar nobody sees
        lines = StepLines("prepare", labels)
        if source is None:
            return prepare_synthetic(
                out=target, n_users=users, n_movies=movies, n_ratings=ratings, config=config, on_progress=lines
            )
        return prepare(source, out=target, config=config, on_progress=lines, cache_dir=cache_dir)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task("starting", total=4)

        def on_progress(stage: str, done: int, total: int) -> None:
            progress.update(task, description=labels.get(stage, stage), completed=done, total=total)

        if source is None:
            return prepare_synthetic(
                out=target, n_users=users, n_movies=movies, n_ratings=ratings, config=config, on_progress=on_progress
            )
        return prepare(source, out=target, config=config, on_progress=on_progress, cache_dir=cache_dir)


@app.command("download")
@handle_errors
def download_cmd(
    name: Annotated[
        str,
        typer.Argument(
            help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small or ml-latest.", show_default=False
        ),
    ],
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="Download folder \\[default: $EMBEDREC_CACHE if set, else <workdir>/downloads].",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even when cached.")] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse an archive whose published checksum cannot be fetched or read (by default: a loud warning).",
        ),
    ] = False,
    workdir: WorkdirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch an official MovieLens release from GroupLens (resumable, checksum-verified)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from embedrec.data.downloads import check_name, download
    from embedrec.workdir import downloads_dir, resolve_workdir

    check_name(name)
    cache_dir = cache if cache is not None else downloads_dir(resolve_workdir(workdir))
    with Progress(
        TextColumn(f"{name}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task("download", total=None)

        def on_progress(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        result = download(name, cache_dir=cache_dir, force=force, strict=strict, on_progress=on_progress)
    info = {
        "name": result.name,
        "folder": str(result.folder),
        "zip": str(result.zip_path),
        "downloaded": result.downloaded,
        "verified": result.verified,
        "url": result.url,
        "warning": result.warning,
    }
    if result.warning:
        err_console.print(
            f"[bold yellow]warning:[/] {result.warning} (--strict refuses this)", highlight=False, soft_wrap=True
        )
    if as_json:
        console.print_json(json.dumps(info))
        return
    if not result.downloaded:
        console.print(f"{name} is already in {result.folder} (use --force to fetch it again)")
    else:
        check = "checksum verified" if result.verified else "NOT verified: see the warning above"
        console.print(f"Downloaded {name} to {result.folder} ({check})")
    console.print(f"Next: [bold]embedrec prepare {name}[/]")
