"""``embedrec evaluate``, ``predict``, ``recommend`` and ``similar``: parse options, call the library, render.

Every command defaults to the work folder's prepared data and its latest model; ``--model DIR`` and ``--data DIR``
override (the policy lives in :mod:`embedrec.serving`). Users and movies are named by raw MovieLens ids, never by
internal indices. File readers are in :mod:`embedrec.data.user_files`, output in :mod:`embedrec.cli.render`. Heavy
imports happen inside the commands, and ``recommend`` / ``predict`` / ``similar`` never import JAX.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from embedrec.cli import render
from embedrec.cli.common import JsonOpt, MovieIdOpt, UserIdOpt, WorkdirOpt, app, handle_errors
from embedrec.cli.progress import progress
from embedrec.errors import ConfigError, UnknownIdError
from embedrec.serving import DEFAULT_CANDIDATES, DEFAULT_MIN_RATINGS

if TYPE_CHECKING:
    import numpy as np

    from embedrec.recommender import Recommender

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Model folder \\[default: the work folder's latest run].", show_default=False),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Prepared data folder \\[default: the work folder's data, else the one the model was trained on].",
        show_default=False,
    ),
]
KOpt = Annotated[
    int, typer.Option("-k", "--k", min=1, help="How many movies to list (more than the catalogue lists all of it).")
]
CandidatesOpt = Annotated[
    int,
    typer.Option(
        "--candidates", min=1, help="Movies per user that the watch output retrieves for the full network to re-rank."
    ),
]
ExhaustiveOpt = Annotated[
    bool,
    typer.Option(
        "--exhaustive", help="Score every movie through the full network (slow; for checking the two-stage ranking)."
    ),
]

AnnOpt = Annotated[
    bool,
    typer.Option(
        "--ann",
        help="Retrieve the candidates from an approximate HNSW index (usearch: pip install 'embedrec\\[ann]') instead "
        "of the exact product over every movie: for catalogues of millions. The index is built when the command "
        "starts (about 20 s per 100,000 movies), so it pays on large batches.",
    ),
]


def _use_ann(scorer: Any, ann: bool, exhaustive: bool) -> None:
    """Turn on the approximate first stage when asked (refused with --exhaustive, or without usearch)."""
    if not ann:
        return
    if exhaustive:
        raise ConfigError("--ann and --exhaustive ask for opposite first stages: pass one of them")
    from embedrec import ann as ann_index

    ann_index.require()
    scorer.ann = True


def _parse_ks(values: list[str]) -> list[int]:
    """``--k 5 --k 10`` or ``--k 5,10``: sorted distinct positive cut-offs."""
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


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option("--split", help="Which held-out split: val or test.")] = "test",
    k: Annotated[
        list[str] | None, typer.Option("--k", "-k", help="Cut-off(s): repeat, or 5,10,20.", show_default="10")
    ] = None,
    relevance: Annotated[
        float | None,
        typer.Option(
            "--relevance",
            help="A held-out rating >= this is relevant.",
            show_default="4 on 1..5 and 0.5..5, else the top quarter of the scale",
        ),
    ] = None,
    max_users: Annotated[
        int | None, typer.Option("--max-users", help="Rank a seeded random subset of users.", min=1)
    ] = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Skip the baseline rows.")] = False,
    candidates: CandidatesOpt = DEFAULT_CANDIDATES,
    exhaustive: ExhaustiveOpt = False,
    ann: AnnOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """RMSE/MAE and full-ranking top-K metrics of the model, beside the baselines on the same split."""
    from embedrec.evaluation import evaluate_model
    from embedrec.scoring import Scorer
    from embedrec.serving import load_model_and_data

    ks = _parse_ks(k or ["10"])
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    loaded = load_model_and_data(workdir=workdir, model=model, data=data, strict=True)
    assert loaded.prepared is not None  # strict loading raises instead
    scorer = Scorer.from_artifact(loaded.artifact)
    _use_ann(scorer, ann, exhaustive)
    if relevance is None:  # the default is shown in the table's title, so it is resolved here
        from embedrec.evaluation import default_relevance

        summary = loaded.prepared.summary
        relevance = default_relevance(float(summary["rating_min"]), float(summary["rating_max"]))
    with progress("evaluate") as on_progress:
        result = evaluate_model(
            scorer,
            loaded.prepared,
            split=split,
            ks=ks,
            relevance=relevance,
            baselines=not no_baselines,
            max_users=max_users,
            candidates=None if exhaustive else candidates,
            on_progress=on_progress,
        )
    render.evaluation(
        result, ks=ks, split=split, relevance=relevance, ranking=scorer.ranking.describe(), json_out=json_out
    )


@app.command("predict")
@handle_errors
def predict_cmd(
    user: UserIdOpt = None,
    movie: MovieIdOpt = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="CSV of userId,movieId pairs to score.")] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Where --input's predictions go (CSV) \\[default: stdout].", show_default=False),
    ] = None,
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Predicted rating of one (user, movie) pair, or of every pair in a CSV file."""
    from embedrec.serving import open_recommender, predict_file

    if input_file is None and (user is None or movie is None):
        raise ConfigError("pass --user U --movie M, or --input pairs.csv")
    if input_file is not None and (user is not None or movie is not None):
        raise ConfigError("--input scores a file; do not combine it with --user/--movie")
    loaded = open_recommender(workdir=workdir, model=model, data=data)
    render.notes(loaded.notes)
    rec = loaded.recommender
    assert rec is not None
    if input_file is None:
        assert user is not None and movie is not None
        rating = float(rec.predict([user], [movie])[0])
        render.prediction(rec, user, movie, rating, json_out=json_out)  # type: ignore[arg-type]
        return
    render.predictions(predict_file(rec, input_file, output), output=output, json_out=json_out)


@app.command("recommend")
@handle_errors
def recommend_cmd(
    user: UserIdOpt = None,
    k: KOpt = 10,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Keep movies the user already rated.")] = False,
    genre: Annotated[str | None, typer.Option("--genre", help="Only movies of this genre, e.g. Comedy.")] = None,
    min_ratings: Annotated[
        int,
        typer.Option(
            "--min-ratings", min=0, help="Skip movies with fewer ratings than this in the data (too few to trust)."
        ),
    ] = DEFAULT_MIN_RATINGS,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    ratings_file: Annotated[
        Path | None,
        typer.Option("--ratings", help="Your own ratings (CSV movieId,rating): recommendations for a new user."),
    ] = None,
    users_file: Annotated[
        Path | None,
        typer.Option("--users-file", help="Batch: a file of user ids (one per line, or a CSV with a userId column)."),
    ] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help="Batch: every user the model knows.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Batch output file (.csv or .parquet).")] = None,
    candidates: CandidatesOpt = DEFAULT_CANDIDATES,
    exhaustive: ExhaustiveOpt = False,
    ann: AnnOpt = False,
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
) -> None:
    """Top-K movies for a user (not yet rated by them), a new user's own ratings, or many users at once."""
    import numpy as np

    from embedrec.data.user_files import check_user_ratings, read_user_ids, read_user_ratings
    from embedrec.recommender import genre_filter
    from embedrec.serving import check_table_path, open_recommender, refuse_overwriting_input

    if fmt not in ("table", "json", "csv"):
        raise ConfigError(f"--format must be table, json or csv, got {fmt!r}")
    genre_filter(genre)  # before the model loads: an empty --genre is refused at once
    if sum((user is not None, ratings_file is not None, users_file is not None, all_users)) != 1:
        raise ConfigError("pass exactly one of --user U, --ratings FILE, --users-file FILE or --all-users")
    batch = users_file is not None or all_users
    if batch:
        if output is None:
            raise ConfigError("batch mode writes a file: pass --output recs.csv (or .parquet)")
        check_table_path(output)
        if users_file is not None:
            refuse_overwriting_input(output, users_file, "--users-file")
    user_ids = read_user_ids(users_file) if users_file is not None else None
    mine = read_user_ratings(ratings_file) if ratings_file is not None else None
    loaded = open_recommender(workdir=workdir, model=model, data=data)
    render.notes(loaded.notes)
    rec = loaded.recommender
    assert rec is not None
    rec.candidates = None if exhaustive else candidates
    _use_ann(rec.scorer, ann, exhaustive)
    options: dict[str, Any] = {"k": k, "filter_seen": not include_seen, "genre": genre, "min_ratings": min_ratings}
    # what an empty list is blamed on: the filters in force, and how to loosen them (a cold-start list has no
    # rated movies to leave out)
    movie_filters = []
    if min_ratings:
        movie_filters.append(f"--min-ratings {min_ratings}: a movie needs {min_ratings} ratings in the data, lower it")
    if genre:
        movie_filters.append(f"--genre {genre}")
    seen_filter = [] if include_seen else ["movies the user rated are left out (--include-seen keeps them)"]
    filters = "; ".join(movie_filters + seen_filter)
    if batch:
        assert output is not None
        _recommend_batch(rec, user_ids, output, options, filters=filters)
    elif mine is not None:
        assert ratings_file is not None
        check_user_ratings(
            mine,
            ratings_file,
            known=rec.movie_vocab.indices(mine["movieId"].to_numpy()) >= 0,
            scale=(rec.scorer.shape.rating_min, rec.scorer.shape.rating_max),
        )
        folded = rec.fold_in(mine)
        render.recommendations(
            rec.records(rec.rank_folded(folded, **options)),
            fmt=fmt,
            title=f"Top {k} for your {len(folded.movie_idx)} ratings, ranked by {rec.ranking.describe()}",
            filters=filters,
        )
    elif user is not None and user in rec.user_vocab:
        render.recommendations(
            rec.records(rec.rank_user(user, **options)),
            fmt=fmt,
            title=f"Top {k} for user {user}, ranked by {rec.ranking.describe()}",
            filters=filters,
        )
    else:
        top, score = rec.rank_popular(k=k, genre=genre, min_ratings=min_ratings)  # a bad filter: its error alone
        render.notes(
            [
                (
                    "note",
                    f"user {user} is not known to the model: showing the most popular well-rated "
                    "movies instead (pass --ratings FILE for personal picks)",
                )
            ]
        )
        render.recommendations(
            rec.movie_records(top, score=score, rating=np.full(len(top), np.nan)),
            fmt=fmt,
            title=f"Top {k} by Bayesian average rating (cold start)",
            filters="; ".join(movie_filters),
        )


def _recommend_batch(
    rec: Recommender, user_ids: np.ndarray | None, output: Path, options: dict[str, Any], *, filters: str
) -> None:
    from embedrec.serving import recommend_to_file

    with progress("recommend") as update:
        summary = recommend_to_file(
            rec,
            user_ids,
            output,
            **options,
            on_progress=lambda done, total: update("all users" if user_ids is None else "users", done, total),
        )
    render.batch_summary(summary, filters=filters)


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
    from embedrec.data.encode import parse_id
    from embedrec.recommender import Recommender
    from embedrec.serving import model_dir

    query = movie.strip()
    if not query:
        raise ConfigError("--movie is empty: pass a movie id or words of its title")
    rec = Recommender(load_model(model_dir(workdir, model)))
    movie_id = parse_id(query)
    if movie_id is None:
        found = rec.find_movies(query)
        if found.empty:
            raise UnknownIdError(f"no movie title contains {query!r}")
        if len(found) > 1:  # list them, then fail: a script must not take the candidates for the answer
            render.candidates(found, query, json_out=json_out)
            listed_all = len(found) <= render.MAX_CANDIDATES
            hint = "pass one of the listed movie ids" if listed_all else "add title words or pass a movie id"
            raise UnknownIdError(f"--movie {query!r} matches {len(found)} titles; {hint}")
        movie_id = int(found["movie_id"].iloc[0])
    table = rec.similar(movie_id, k=k)
    anchor = rec.movies.iloc[rec.movie_vocab.index(movie_id)]
    render.similar(table, movie_id=movie_id, title=anchor["title"], json_out=json_out)
