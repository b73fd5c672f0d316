"""``embedrec evaluate``, ``predict``, ``recommend`` and ``similar``: parse, call :mod:`embedrec.recommender`, render.

Every command defaults to the work folder's prepared data and its latest model; ``--model DIR`` and ``--data DIR``
override. Users and movies are named by raw MovieLens ids, never by internal indices. Heavy imports happen inside
the commands, and ``recommend`` / ``predict`` / ``similar`` never import JAX.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from embedrec.cli.common import JsonOpt, WorkdirOpt, app, console, err_console, handle_errors
from embedrec.errors import ArtifactError, ConfigError, DataError, UnknownIdError

if TYPE_CHECKING:
    import pandas as pd

    from embedrec.artifacts import ModelArtifact
    from embedrec.data.store import PreparedData
    from embedrec.recommender import Recommender

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Model folder \\[default: the work folder's latest run].", show_default=False),
]
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Prepared data folder \\[default: the work folder's data, else the one the model "
                                "was trained on].", show_default=False),
]
KOpt = Annotated[int, typer.Option("-k", "--k", help="How many movies to list.", min=1)]
MIN_RATINGS_DEFAULT = 5  # kept equal to embedrec.recommender.DEFAULT_MIN_RATINGS (not imported: --help stays instant)
MAX_CANDIDATES = 50  # titles listed when --movie words match several movies


# ---------------------------------------------------------------------------------------------------------------
# Shared loading
# ---------------------------------------------------------------------------------------------------------------
def _model_dir(workdir: Path | None, model: Path | None) -> Path:
    from embedrec.workdir import latest_run, resolve_workdir

    return model if model is not None else latest_run(resolve_workdir(workdir))


def _data_dir(workdir: Path | None, data: Path | None, artifact: ModelArtifact) -> Path | None:
    """--data, else the work folder's data, else the folder the model was trained on; None when none exists."""
    from embedrec.workdir import data_dir, resolve_workdir

    if data is not None:
        return data
    local = data_dir(resolve_workdir(workdir))
    if (local / "summary.json").is_file():
        return local
    recorded = artifact.meta.get("data", {}).get("path")
    if recorded and (Path(recorded) / "summary.json").is_file():
        return Path(recorded)
    return None


def _load(workdir: Path | None, model: Path | None, data: Path | None, *, strict: bool
          ) -> tuple[ModelArtifact, PreparedData | None]:
    """The model and its prepared data. ``strict``: data is required and must be the data the model was trained on."""
    from embedrec.artifacts import load_model
    from embedrec.data.store import load_prepared

    artifact = load_model(_model_dir(workdir, model))
    folder = _data_dir(workdir, data, artifact)
    if folder is None:
        if strict:
            raise ArtifactError("no prepared data found: run `embedrec prepare`, or pass --data DIR")
        err_console.print("[yellow]note:[/] no prepared data found: seen movies are not filtered (pass --data DIR)")
        return artifact, None
    prepared = load_prepared(folder)
    if prepared.fingerprint != artifact.fingerprint:
        message = (f"the model {artifact.path} was trained on data {artifact.fingerprint or '?'}, but {folder} is "
                   f"{prepared.fingerprint}")
        if strict:
            raise ArtifactError(f"{message}: evaluating on other data would leak test ratings into training; "
                                "pass the --data the model was trained on, or retrain")
        err_console.print(f"[yellow]warning:[/] {message}; ids are matched by raw id")
    return artifact, prepared


def _recommender(workdir: Path | None, model: Path | None, data: Path | None) -> Recommender:
    from embedrec.recommender import Recommender

    artifact, prepared = _load(workdir, model, data, strict=False)
    return Recommender(artifact, prepared)


def _parse_ks(values: list[str]) -> list[int]:
    ks: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                ks.append(int(part))
            except ValueError:
                raise ConfigError(f"--k: expected integers like 10 or 5,10,20, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k: every K must be a positive integer, got {values}")
    return sorted(set(ks))


def _clean(value: Any) -> Any:
    """A JSON-safe scalar: NaN / NA become null, numpy scalars plain Python."""
    if value is None:
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------
@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option("--split", help="Which held-out split: val or test.")] = "test",
    k: Annotated[list[str] | None, typer.Option("--k", "-k", help="Cut-off(s): repeat, or 5,10,20.",
                                                show_default="10")] = None,
    relevance: Annotated[float | None, typer.Option(
        "--relevance", help="A held-out rating >= this is relevant.",
        show_default="4 on 1..5 and 0.5..5, else the top quarter of the scale")] = None,
    max_users: Annotated[int | None, typer.Option("--max-users", help="Rank a seeded random subset of users.",
                                                  min=1)] = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Skip the baseline rows.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """RMSE/MAE and full-ranking top-K metrics of the model, beside the baselines on the same split."""
    from embedrec.recommender import Scorer, evaluate_model

    ks = _parse_ks(k or ["10"])
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    artifact, prepared = _load(workdir, model, data, strict=True)
    assert prepared is not None
    scorer = Scorer.from_artifact(artifact)
    with err_console.status("evaluating", spinner="dots") if not json_out else _nullcontext():
        if relevance is None:
            from embedrec.evaluation import default_relevance

            relevance = default_relevance(float(prepared.summary["rating_min"]), float(prepared.summary["rating_max"]))
        result = evaluate_model(scorer, prepared, split=split, ks=ks, relevance=relevance,
                                baselines=not no_baselines, max_users=max_users)
    if json_out:
        from embedrec.artifacts import json_text

        console.print_json(json_text(result))
        return
    console.print(_evaluate_table(result, ks=ks, split=split, relevance=relevance, ranking=scorer.ranking.describe()))
    base = result.get("baselines", {}).get("bias", {})
    if "rmse" in base:
        lift = (base["rmse"] - result["rmse"]) / base["rmse"]
        console.print(f"RMSE {result['rmse']:.4f} vs the user + movie bias baseline {base['rmse']:.4f}: "
                      f"{'better' if lift > 0 else 'worse'} by {abs(lift):.1%}", highlight=False)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _evaluate_table(result: dict[str, Any], *, ks: list[int], split: str, relevance: float, ranking: str) -> Any:
    """One row per metric, one column per model or baseline, so many K still fit a terminal."""
    from rich import box
    from rich.table import Table

    from embedrec.metrics import RANKING_METRICS

    columns: list[tuple[str, dict[str, Any]]] = [("model", result)]
    # short headers and a light box keep all nine columns inside an 80-column terminal or CI log
    columns += [(name.replace("_only", ""), m) for name, m in result.get("variants", {}).items()]
    labels = {"global_mean": "mean", "bias": "bias", "popular": "pop", "top_rated": "rated", "ease": "EASE"}
    columns += [(labels.get(name, name), m) for name, m in result.get("baselines", {}).items()]
    table = Table(title=f"{split} split, {result.get('n_users', 0):,} users ranked (relevant: rating >= {relevance:g}; "
                        f"candidates: every movie not rated in an earlier split). The model ranks by {ranking}.",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption="rating / watch: the model ranking by one output alone. Baselines on the same split: mean "
                          "(global mean), bias (user + movie), pop (most popular), rated (top rated, Bayesian "
                          "average), EASE (item-item, closed form)", caption_justify="left")
    table.add_column("metric", style="bold", no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right", style="green" if name == "model" else None, no_wrap=True)
    for metric in ["rmse", "mae"] + [f"{m}@{k}" for k in ks for m in RANKING_METRICS]:
        cells = [f"{m[metric]:.4f}" if metric in m else ("skip" if "skipped" in m else "") for _, m in columns]
        table.add_row(metric, *cells)
    skipped = [f"{name}: {m['skipped']}" for name, m in columns if "skipped" in m]
    if skipped:
        table.caption = f"{table.caption}; " + "; ".join(skipped)
    return table


# ---------------------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------------------
@app.command("predict")
@handle_errors
def predict_cmd(
    user: Annotated[int | None, typer.Option("--user", help="Raw user id.")] = None,
    movie: Annotated[int | None, typer.Option("--movie", help="Raw movie id.")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="CSV of userId,movieId pairs to score.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Where --input's predictions go (CSV) "
                                                                "[default: stdout].")] = None,
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Predicted rating of one (user, movie) pair, or of every pair in a CSV file."""
    if input_file is None:
        if user is None or movie is None:
            raise ConfigError("pass --user U --movie M, or --input pairs.csv")
        rec = _recommender(workdir, model, None if data is None else data)
        rating = float(rec.predict([user], [movie])[0])
        if json_out:
            console.print_json(json.dumps({"userId": user, "movieId": movie, "rating": rating}))
        else:
            console.print(f"user {user}, movie {movie}{_title_suffix(rec, movie)}: predicted rating "
                          f"[bold]{rating:.2f}[/]", highlight=False)
        return
    if user is not None or movie is not None:
        raise ConfigError("--input scores a file; do not combine it with --user/--movie")
    pairs = _read_pairs(input_file)
    rec = _recommender(workdir, model, data)
    ratings, reasons = rec.predict_known(_numeric_ids(pairs["userId"]), _numeric_ids(pairs["movieId"]))
    pairs["prediction"] = [None if r != r else round(float(r), 4) for r in ratings]
    pairs["reason"] = reasons
    n_bad = int((reasons != "").sum())
    if output is None:
        pairs.to_csv(console.file, index=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        pairs.to_csv(output, index=False)
    summary = {"n_pairs": len(pairs), "n_predicted": len(pairs) - n_bad, "n_unknown": n_bad,
               "output": str(output) if output else None}
    if json_out and output is not None:
        console.print_json(json.dumps(summary))
    else:
        err_console.print(f"scored {summary['n_predicted']:,} of {len(pairs):,} pairs"
                          + (f"; {n_bad:,} left empty (unknown user or movie, see the reason column)" if n_bad else "")
                          + (f"; written to {output}" if output else ""), highlight=False)


def _read_pairs(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"--input: {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"--input: {path} is not a readable CSV ({exc})") from None
    cols = {c.strip().lower().replace("_", ""): c for c in frame.columns}
    if "userid" not in cols or "movieid" not in cols:
        raise DataError(f"--input: {path} needs a header with userId and movieId columns, found "
                        f"{', '.join(map(str, frame.columns)) or 'none'}")
    out = pd.DataFrame({"userId": frame[cols["userid"]].str.strip(), "movieId": frame[cols["movieid"]].str.strip()})
    return out


def _numeric_ids(values: pd.Series) -> Any:
    """Ids as float64 (NaN where not a number), which the recommender's lookup treats as unknown when not integral."""
    import pandas as pd

    return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")


def _title_suffix(rec: Recommender, movie_id: int) -> str:
    idx = int(rec.movie_indices([movie_id])[0])
    if idx < 0:
        return ""
    row = rec.movies.iloc[idx]
    year = row.get("year")
    return f" ({row['title']}{'' if year is None or year != year else f', {int(year)}'})"


# ---------------------------------------------------------------------------------------------------------------
# recommend
# ---------------------------------------------------------------------------------------------------------------
@app.command("recommend")
@handle_errors
def recommend_cmd(
    user: Annotated[int | None, typer.Option("--user", help="Raw user id.")] = None,
    k: KOpt = 10,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Keep movies the user already rated.")] = False,
    genre: Annotated[str | None, typer.Option("--genre", help="Only movies of this genre, e.g. Comedy.")] = None,
    min_ratings: Annotated[int, typer.Option(
        "--min-ratings", min=0,
        help="Skip movies with fewer ratings than this in the data (too few to trust).")] = MIN_RATINGS_DEFAULT,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    ratings_file: Annotated[Path | None, typer.Option(
        "--ratings", help="Your own ratings (CSV movieId,rating): recommendations for a new user.")] = None,
    users_file: Annotated[Path | None, typer.Option(
        "--users-file", help="Batch: a file of user ids (one per line, or a CSV with a userId column).")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help="Batch: every user the model knows.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Batch output file (.csv or .parquet).")] = None,
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
) -> None:
    """Top-K movies for a user (not yet rated by them), a new user's own ratings, or many users at once."""
    if fmt not in ("table", "json", "csv"):
        raise ConfigError(f"--format must be table, json or csv, got {fmt!r}")
    modes = sum(x for x in (user is not None, ratings_file is not None, users_file is not None, all_users))
    if modes != 1:
        raise ConfigError("pass exactly one of --user U, --ratings FILE, --users-file FILE or --all-users")
    options = {"k": k, "filter_seen": not include_seen, "genre": genre, "min_ratings": min_ratings}
    if users_file is not None or all_users:
        _recommend_batch(workdir, model, data, users_file, output, options)
        return
    rec = _recommender(workdir, model, data)
    if ratings_file is not None:
        folded = rec.fold_in(_read_user_ratings(ratings_file))
        table = rec.recommend_for(folded, **options)
        title = f"Top {k} for your {len(folded.movie_idx)} ratings"
    elif rec.known_user(user):
        table = rec.recommend(user, **options)
        title = f"Top {k} for user {user}"
    else:
        err_console.print(f"[yellow]note:[/] user {user} is not known to the model: showing the most popular "
                          "well-rated movies instead (pass --ratings FILE for personal picks)", highlight=False)
        table = rec.popular(k=k, genre=genre, min_ratings=min_ratings)
        _render_recs(table, fmt=fmt, title=f"Top {k} by Bayesian average rating (cold start)")
        return
    _render_recs(table, fmt=fmt, title=f"{title}, ranked by {rec.ranking.describe()}")


def _render_recs(table: pd.DataFrame, *, fmt: str, title: str) -> None:
    records = [
        {"movieId": _clean(r.movie_id), "title": _clean(r.title), "year": _clean(r.year), "genres": _clean(r.genres),
         "score": _clean(r.score), "rating": _clean(r.rating)}
        for r in table.itertuples(index=False)
    ]
    if fmt == "json":
        console.print_json(json.dumps(records))
        return
    if fmt == "csv":
        import csv

        writer = csv.DictWriter(console.file, fieldnames=list(records[0]) if records else ["movieId"])
        writer.writeheader()
        writer.writerows(records)
        return
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for col, justify in (("#", "right"), ("movieId", "right"), ("title", "left"), ("year", "right"),
                         ("genres", "left"), ("score", "right"), ("rating", "right")):
        out.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, r in enumerate(records, 1):
        out.add_row(str(i), str(r["movieId"]), str(r["title"]), "" if r["year"] is None else str(r["year"]),
                    str(r["genres"]), f"{r['score']:.3f}", "" if r["rating"] is None else f"{r['rating']:.2f}")
    if not records:
        console.print("[yellow]no movie passes the filters[/]")
        return
    console.print(out)


def _read_user_ratings(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"--ratings: {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"--ratings: {path} is not a readable CSV ({exc})") from None
    cols = {str(c).strip().lower().replace("_", ""): c for c in frame.columns}
    if "movieid" not in cols or "rating" not in cols:
        raise DataError(f"--ratings: {path} needs a header with movieId and rating columns")
    out = pd.DataFrame({"movieId": pd.to_numeric(frame[cols["movieid"]], errors="coerce"),
                        "rating": pd.to_numeric(frame[cols["rating"]], errors="coerce")})
    bad = out.isna().any(axis=1)
    if bad.any():
        raise DataError(f"--ratings: {path} line {int(bad.to_numpy().argmax()) + 2} is not a number pair")
    if out.empty:
        raise DataError(f"--ratings: {path} has no ratings")
    out["movieId"] = out["movieId"].astype("int64")
    return out


def _read_user_ids(path: Path) -> Any:
    import numpy as np
    import pandas as pd

    if not path.is_file():
        raise DataError(f"--users-file: {path} does not exist")
    text = path.read_text(encoding="utf-8").strip().splitlines()
    if text and not text[0].strip().lstrip("-").isdigit():
        frame = pd.read_csv(path)
        cols = {str(c).strip().lower().replace("_", ""): c for c in frame.columns}
        if "userid" not in cols:
            raise DataError(f"--users-file: {path} has a header without a userId column")
        values = frame[cols["userid"]].tolist()
    else:
        values = [line.split(",")[0].strip() for line in text if line.strip()]
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"--users-file: {path} holds a non-integer user id ({exc})") from None


def _recommend_batch(workdir: Path | None, model: Path | None, data: Path | None, users_file: Path | None,
                     output: Path | None, options: dict[str, Any]) -> None:
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if output is None:
        raise ConfigError("batch mode writes a file: pass --output recs.csv (or .parquet)")
    if output.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"--output must end in .csv or .parquet, got {output.name}")
    rec = _recommender(workdir, model, data)
    user_ids = rec.user_ids if users_file is None else _read_user_ids(users_file)
    known = rec.user_indices(user_ids) >= 0
    if not known.all():
        err_console.print(f"[yellow]note:[/] {int((~known).sum()):,} unknown user id(s) skipped, e.g. "
                          f"{int(user_ids[~known][0])}", highlight=False)
    user_ids = np.asarray(user_ids)[known]
    with Progress(TextColumn("recommending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("users", total=len(user_ids))
        table = rec.recommend_many(user_ids, **options,
                                   on_progress=lambda done, total: progress.update(task, completed=done))
    table = table.rename(columns={"user_id": "userId", "movie_id": "movieId"})
    titles = rec.movies.set_index("movie_id")["title"]
    table.insert(3, "title", titles.reindex(table["movieId"]).to_numpy())
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".parquet":
        table.to_parquet(output, index=False)
    else:
        table.to_csv(output, index=False, float_format="%.5g")
    err_console.print(f"wrote top {options['k']} for {len(user_ids):,} users ({len(table):,} rows) to {output}",
                      highlight=False)


# ---------------------------------------------------------------------------------------------------------------
# similar
# ---------------------------------------------------------------------------------------------------------------
@app.command("similar")
@handle_errors
def similar_cmd(
    movie: Annotated[str, typer.Option("--movie", help='A raw movie id, or words of its title ("toy story").')],
    k: KOpt = 10,
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Movies nearest to one movie by cosine similarity of the learned movie embeddings."""
    from embedrec.artifacts import load_model
    from embedrec.recommender import Recommender

    rec = Recommender(load_model(_model_dir(workdir, model)))
    query = movie.strip()
    if not query:
        raise ConfigError("--movie is empty: pass a movie id or words of its title")
    if query.lstrip("-").isdigit():
        movie_id = int(query)
    else:
        found = rec.find_movies(query)
        if found.empty:
            raise UnknownIdError(f"no movie title contains {query!r}")
        if len(found) > 1:  # list them, then fail: a script must not take the candidates for the answer
            _render_candidates(found, query, json_out)
            listed_all = len(found) <= MAX_CANDIDATES
            hint = "pass one of the listed movie ids" if listed_all else "add title words or pass a movie id"
            raise UnknownIdError(f"--movie {query!r} matches {len(found)} titles; {hint}")
        movie_id = int(found["movie_id"].iloc[0])
    table = rec.similar(movie_id, k=k)
    anchor = rec.movies.iloc[rec.movie_index(movie_id)]
    records = [{"movieId": _clean(r.movie_id), "title": _clean(r.title), "year": _clean(r.year),
                "genres": _clean(r.genres), "similarity": _clean(r.similarity)} for r in table.itertuples(index=False)]
    if json_out:
        console.print_json(json.dumps({"movieId": movie_id, "title": _clean(anchor["title"]), "similar": records}))
        return
    from rich.table import Table

    out = Table(title=f"Nearest to {anchor['title']} ({movie_id}) by embedding cosine", title_justify="left")
    for col in ("#", "movieId", "title", "year", "genres", "similarity"):
        out.add_column(col, justify="left" if col in ("title", "genres") else "right")
    for i, r in enumerate(records, 1):
        out.add_row(str(i), str(r["movieId"]), str(r["title"]), "" if r["year"] is None else str(r["year"]),
                    str(r["genres"]), f"{r['similarity']:.3f}")
    console.print(out)


def _render_candidates(found: pd.DataFrame, query: str, json_out: bool) -> None:
    records = [{"movieId": _clean(r.movie_id), "title": _clean(r.title), "year": _clean(r.year)}
               for r in found.head(MAX_CANDIDATES).itertuples(index=False)]
    if json_out:
        console.print_json(json.dumps({"query": query, "candidates": records, "n_candidates": len(found)}))
        return
    console.print(f"{len(found)} titles match {query!r}:", highlight=False)
    for r in records:
        year = "" if r["year"] is None else f" ({r['year']})"
        console.print(f"  {r['movieId']:>8}  {r['title']}{year}", highlight=False)
    if len(found) > len(records):
        console.print(f"  ... and {len(found) - len(records)} more", highlight=False)
