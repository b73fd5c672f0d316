"""The prepare pipeline: read -> validate and encode -> split -> write, the same for real and synthetic data.

Synopsis::

    from embedrec.data import PrepareConfig, prepare, prepare_synthetic
    summary = prepare("ml-latest-small.zip", out=Path("work/data"), config=PrepareConfig(split="temporal"))
    summary = prepare_synthetic(out=Path("work/data"), n_users=600, n_movies=900, n_ratings=60_000, seed=0)

``on_progress(stage, done, total)`` is called as each stage starts (stages: read, clean, split, write) and once more
with ``done == total`` at the end, so a caller can draw a progress bar without this module printing anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.data.config import PrepareConfig
from embedrec.data.layouts import NO_GENRES, RawData, normalise_genres, split_title_year
from embedrec.data.readers import RatingArrays
from embedrec.errors import ConfigError, DataError

if TYPE_CHECKING:
    from embedrec.data.validate import CleanRatings

ProgressFn = Callable[[str, int, int], None]
STAGES = ("read", "clean", "split", "write")


def _report(on_progress: ProgressFn | None, stage: str) -> None:
    if on_progress is not None:
        on_progress(stage, STAGES.index(stage) if stage in STAGES else len(STAGES), len(STAGES))


def prepare_raw(
    raw: RawData,
    *,
    out: Path,
    config: PrepareConfig,
    source: str,
    on_progress: ProgressFn | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Clean, split and write ``raw`` (already read); returns the summary written to ``summary.json``."""
    from embedrec.data.validate import clean_ratings

    _report(on_progress, "clean")
    fmt = raw.format
    clean = clean_ratings(raw, config=config)
    del raw
    return _prepare_clean(clean, fmt=fmt, out=out, config=config, source=source, on_progress=on_progress, extra=extra)


def _prepare_clean(
    clean: CleanRatings,
    *,
    fmt: str,
    out: Path,
    config: PrepareConfig,
    source: str,
    on_progress: ProgressFn | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Split and write ``clean`` (already validated)."""
    from embedrec.data.encode import genre_vocab
    from embedrec.data.split import TEST, TRAIN, VAL, assign_split
    from embedrec.data.store import write_prepared

    _report(on_progress, "split")
    split = assign_split(
        clean.user_idx,
        clean.timestamp,
        method=config.split,
        test_frac=config.test_frac,
        val_frac=config.val_frac,
        seed=config.seed,
    )
    movies = clean.movies
    genre_strings, str_idx, lists, genres = genre_vocab(movies["genres"].tolist(), none=NO_GENRES)
    movies = movies.assign(genre_str_idx=str_idx, genre_list=lists)
    counts = np.bincount(split, minlength=3)
    if counts[TRAIN] == 0:  # rounding or a time-based split can leave nothing, though the fractions sum below 1
        raise DataError(
            f"the {config.split} split of {len(split):,} ratings leaves none to train on (test {counts[TEST]:,}, val "
            f"{counts[VAL]:,}): lower --test-frac / --val-frac, or prepare more ratings"
        )
    rating = clean.rating
    summary: dict[str, Any] = {
        "format": fmt,
        "source": source,
        "n_ratings": int(len(rating)),
        "n_users": int(len(clean.user_ids)),
        "n_movies": int(len(movies)),
        "n_genre_strings": len(genre_strings),
        "n_genres": len(genres),
        "rating_min": float(rating.min()),
        "rating_max": float(rating.max()),
        "rating_mean": round(float(rating.mean(dtype=np.float64)), 6),
        "rating_scale": clean.scale,
        "n_train": int(counts[TRAIN]),
        "n_val": int(counts[VAL]),
        "n_test": int(counts[TEST]),
        "split": config.split_info(),
        "dropped": {k: int(v) for k, v in clean.dropped.items()},
        "filtered": {k: int(v) for k, v in clean.filtered.items()},
        "n_read": int(clean.n_read),
        "nrows": config.nrows,
        "min_user_ratings": config.min_user_ratings,
        "min_movie_ratings": config.min_movie_ratings,
    }
    if extra:
        summary.update(extra)
    _report(on_progress, "write")
    summary = write_prepared(
        Path(out),
        user_idx=clean.user_idx,
        movie_idx=clean.movie_idx,
        rating=rating,
        timestamp=clean.timestamp,
        split=split,
        user_ids=clean.user_ids,
        movies=movies,
        genres=genres,
        genre_strings=genre_strings,
        summary=summary,
    )
    _report(on_progress, "done")
    return summary


def prepare(
    source: str | os.PathLike[str] | None,
    *,
    out: Path,
    config: PrepareConfig | None = None,
    on_progress: ProgressFn | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Prepare ``source`` (folder, .zip, rating file or downloaded release name) into ``out``.

    ``source=None`` prepares the embedded synthetic data set at its default size. ``cache_dir`` is where
    ``embedrec download`` put releases (for a release name as source).
    """
    from embedrec.data.layouts import read_layout
    from embedrec.data.sources import open_source
    from embedrec.data.validate import clean_ratings

    config = config or PrepareConfig()
    if source is None:
        return prepare_synthetic(out=out, config=config, on_progress=on_progress)
    _report(on_progress, "read")
    with open_source(source, config=config, cache_dir=cache_dir) as (layout, name):
        raw = read_layout(layout, config=config)
        # validated while the rating file is still there (an archive's is unpacked only for now): a --strict error
        # counts its lines again to name the bad row's, and names the archive, not the temporary folder
        _report(on_progress, "clean")
        fmt = raw.format
        clean = clean_ratings(raw, config=config)
        del raw
    extra = {"source_path": str(Path(source).resolve()) if Path(source).exists() else None}
    return _prepare_clean(clean, fmt=fmt, out=out, config=config, source=name, on_progress=on_progress, extra=extra)


def raw_from_frames(ratings: Any, movies: Any, *, fmt: str, file: str) -> RawData:
    """Wrap ml-latest style frames (userId, movieId, rating, timestamp / movieId, title, genres) as RawData."""
    import pandas as pd

    title, year = split_title_year(movies["title"])
    movie_table = pd.DataFrame(
        {
            "movie_id": movies["movieId"].to_numpy(np.int64),
            "title": title.to_numpy(dtype=object),
            "year": pd.array(year, dtype="Int32"),
            "genres": normalise_genres(movies["genres"]).to_numpy(dtype=object),
        }
    ).astype({"title": str, "genres": str})
    arrays = RatingArrays(
        user_id=ratings["userId"].to_numpy(np.int64),
        movie_id=ratings["movieId"].to_numpy(np.int64),
        rating=ratings["rating"].to_numpy(np.float32),
        timestamp=ratings["timestamp"].to_numpy(np.int64),
        bad_timestamp=None,
        file=file,
        first_line=2,
    )
    return RawData(format=fmt, ratings=arrays, movies=movie_table, movies_file=file, rating_scale=(0.5, 5.0))


def prepare_synthetic(
    *,
    out: Path,
    n_users: int | None = None,
    n_movies: int | None = None,
    n_ratings: int | None = None,
    seed: int | None = None,
    config: PrepareConfig | None = None,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Generate the synthetic MovieLens-like data set and prepare it like real data.

    Sizes default to the demo size (600 users, 900 movies, 60,000 ratings). ``seed`` drives the generator
    (default: ``config.seed``, which also drives the split).
    """
    from embedrec.data import synthetic

    config = config or PrepareConfig()
    if config.format not in ("auto",):
        raise ConfigError("--format does not apply to the synthetic data set (leave it at auto)")
    n_users = synthetic.DEFAULT_USERS if n_users is None else n_users
    n_movies = synthetic.DEFAULT_MOVIES if n_movies is None else n_movies
    n_ratings = synthetic.DEFAULT_RATINGS if n_ratings is None else n_ratings
    seed = config.seed if seed is None else seed
    _report(on_progress, "read")
    ratings, movies = synthetic.generate(n_users=n_users, n_movies=n_movies, n_ratings=n_ratings, seed=seed)
    if config.nrows is not None:
        ratings = ratings.iloc[: config.nrows]
    raw = raw_from_frames(ratings, movies, fmt="synthetic", file="<synthetic>")
    del ratings, movies
    generator = {"n_users": n_users, "n_movies": n_movies, "n_ratings": n_ratings, "seed": seed}
    return prepare_raw(
        raw,
        out=out,
        config=config,
        source="synthetic",
        on_progress=on_progress,
        extra={"generator": generator},
    )
