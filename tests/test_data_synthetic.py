"""The synthetic generator: exact sizes, MovieLens-like shape, planted genre tastes, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedrec.data import PrepareConfig, load_prepared, prepare, prepare_synthetic
from embedrec.data.synthetic import GENRES, SEED_SCALE, generate, generate_world, write_ml_latest
from embedrec.errors import ConfigError


@pytest.fixture(scope="module")
def default_world() -> tuple[pd.DataFrame, pd.DataFrame, object]:
    return generate_world(n_users=600, n_movies=900, n_ratings=60_000, seed=0)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = generate(n_users=100, n_movies=150, n_ratings=3000, seed=5)
    b = generate(n_users=100, n_movies=150, n_ratings=3000, seed=5)
    c = generate(n_users=100, n_movies=150, n_ratings=3000, seed=6)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert not a[0]["rating"].equals(c[0]["rating"])


def test_exact_sizes_unique_pairs_and_layout(default_world) -> None:
    ratings, movies, _ = default_world
    assert list(ratings.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert list(movies.columns) == ["movieId", "title", "genres"]
    assert len(ratings) == 60_000 and len(movies) == 900
    assert ratings["userId"].nunique() == 600
    assert not ratings.duplicated(["userId", "movieId"]).any()
    assert set(ratings["movieId"]) <= set(movies["movieId"])
    # ordered by user, then movie, like ml-latest's ratings.csv
    key = ratings["userId"].to_numpy() * 10**7 + ratings["movieId"].to_numpy()
    assert (np.diff(key) > 0).all()


def test_ratings_look_like_movielens(default_world) -> None:
    ratings, movies, _ = default_world
    r = ratings["rating"].to_numpy()
    assert set(np.unique(r).tolist()) == {x / 2 for x in range(1, 11)}  # half stars 0.5..5.0
    assert 3.35 < r.mean() < 3.65
    assert (r == 4.0).mean() > (r == 4.5).mean()  # whole stars are more common, as in MovieLens
    years = movies["title"].str.extract(r"\((\d{4})\)$")[0].astype(int)
    assert years.between(1920, 2023).all()
    assert all(re.fullmatch(r"[A-Z][\w' ,]+ \(\d{4}\)", t) for t in movies["title"])
    genres = {g for s in movies["genres"] for g in s.split("|")}
    assert genres <= set(GENRES) | {"(no genres listed)"}
    ts = pd.to_datetime(ratings["timestamp"], unit="s")
    assert ts.min() >= pd.Timestamp("1996-01-01") and ts.max() <= pd.Timestamp("2024-01-01")
    release = ratings["movieId"].map(dict(zip(movies["movieId"], years)))
    assert (ts.dt.year >= release).all()


def test_popularity_and_activity_are_heavy_tailed(default_world) -> None:
    ratings, _, _ = default_world
    per_movie = ratings.groupby("movieId").size().sort_values(ascending=False).to_numpy()
    assert per_movie[: len(per_movie) // 20].sum() > 0.2 * len(ratings)  # top 5% of movies: over 20% of ratings
    per_user = ratings.groupby("userId").size()
    assert per_user.max() > 5 * per_user.median()


def test_genre_tastes_are_planted(default_world) -> None:
    ratings, movies, world = default_world
    scifi = GENRES.index("Sci-Fi")
    fans = np.flatnonzero(world.favourites[:, scifi]) + 1  # user ids are 1..n
    assert len(fans) >= 20  # a Sci-Fi lover exists often (about 6% of users)
    is_scifi = ratings["movieId"].map(dict(zip(movies["movieId"], movies["genres"].str.contains("Sci-Fi"))))
    is_fan = ratings["userId"].isin(fans)
    r = ratings["rating"]
    # fans rate Sci-Fi far above non-fans, and above the movies of no favourite genre of theirs
    has = np.stack([movies["genres"].str.contains(g, regex=False).to_numpy() for g in GENRES], axis=1)
    movie_row = ratings["movieId"].map(dict(zip(movies["movieId"], range(len(movies))))).to_numpy()
    any_favourite = (world.favourites[ratings["userId"].to_numpy() - 1] & has[movie_row]).any(axis=1)
    assert r[is_fan & is_scifi].mean() - r[~is_fan & is_scifi & ~any_favourite].mean() > 0.55
    assert r[is_fan & is_scifi].mean() - r[is_fan & ~any_favourite].mean() > 0.55
    # and most of what they watch is in their favourite genres: several times the Sci-Fi share of non-fans
    assert is_scifi[is_fan].mean() > 4 * is_scifi[~is_fan].mean()


@pytest.mark.slow
def test_seed_scale_genre_strings_near_the_original() -> None:
    ratings, movies = generate(seed=0, **SEED_SCALE)
    assert len(ratings) == 2_000_000
    assert ratings["userId"].nunique() == 20_510 and len(movies) == 25_448
    assert 1_290 <= movies["genres"].nunique() <= 1_430  # the original had about 1,357


def test_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--users"):
        generate(n_users=0, n_movies=10, n_ratings=10, seed=0)
    with pytest.raises(ConfigError, match="too dense"):
        generate(n_users=10, n_movies=10, n_ratings=90, seed=0)


def test_synthetic_goes_through_the_same_pipeline_as_csv(tmp_path: Path) -> None:
    sizes = {"n_users": 150, "n_movies": 200, "n_ratings": 5000}
    direct = prepare_synthetic(out=tmp_path / "direct", seed=2, config=PrepareConfig(), **sizes)
    ratings, movies = generate(seed=2, **sizes)
    write_ml_latest(tmp_path / "csv", ratings, movies)
    lines = (tmp_path / "csv" / "ratings.csv").read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp"
    assert all(re.fullmatch(r"\d+,\d+,[0-5]\.[05],\d+", line) for line in lines[1:])
    via_csv = prepare(tmp_path / "csv", out=tmp_path / "via", config=PrepareConfig())
    assert via_csv["format"] == "ml-csv" and direct["format"] == "synthetic"
    assert via_csv["fingerprint"] == direct["fingerprint"]
    a, b = load_prepared(tmp_path / "direct"), load_prepared(tmp_path / "via")
    pd.testing.assert_frame_equal(a.movies, b.movies)


def test_prepare_without_source_is_the_synthetic_default(tmp_path: Path) -> None:
    s = prepare(None, out=tmp_path / "d", config=PrepareConfig(seed=1))
    assert s["format"] == "synthetic" and s["source"] == "synthetic"
    assert (s["n_users"], s["n_movies"], s["n_ratings"]) == (600, 900, 60_000)
    assert s["generator"]["seed"] == 1
