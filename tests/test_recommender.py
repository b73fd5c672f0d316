"""The Recommender facade: filters, cold start, batches, unknown ids, similar movies, and no JAX on its path.

The model is the *planted* one of tests/planted.py (numpy weights, no training). The numpy forward pass itself is
tested in test_scoring.py, fold-in in test_fold_in.py, ``evaluate_model`` in test_evaluation.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from planted import planted, prepared, rec  # noqa: F401  (fixtures)

from embedrec.errors import ConfigError, UnknownIdError


# ---------------------------------------------------------------------------------------------------------------
# recommend
# ---------------------------------------------------------------------------------------------------------------
def test_recommend_excludes_seen_and_is_sorted(rec, prepared) -> None:
    user_id = int(prepared.user_ids[3])
    seen = set(prepared.movie_ids[prepared.movie_idx[prepared.user_idx == 3]].tolist())
    top = rec.recommend(user_id, k=20, min_ratings=0)
    assert list(top.columns) == ["movie_id", "title", "year", "genres", "score", "rating"]
    assert len(top) == 20 and not seen & set(top["movie_id"].tolist())
    assert np.all(np.diff(top["score"].to_numpy()) <= 1e-6)
    with_seen = rec.recommend(user_id, k=400, filter_seen=False, min_ratings=0)
    assert seen <= set(with_seen["movie_id"].tolist())
    # the shown rating is the model's prediction for that pair
    np.testing.assert_allclose(
        top["rating"].to_numpy(), rec.predict([user_id] * 20, top["movie_id"].to_numpy()), rtol=1e-5
    )


def test_recommend_honours_genre_and_min_ratings(rec) -> None:
    counts = rec.rating_counts()
    top = rec.recommend(5, k=10, genre="comedy", min_ratings=20)
    assert len(top) == 10
    assert all("Comedy" in g.split("|") for g in top["genres"])
    assert all(counts[rec.movie_vocab.index(m)] >= 20 for m in top["movie_id"])
    with pytest.raises(ConfigError, match="unknown genre"):
        rec.recommend(5, genre="Space Opera")
    assert rec.recommend(5, k=10, min_ratings=10**9).empty


def test_recommend_many_matches_single_user_calls(rec) -> None:
    users = rec.user_ids[:40]
    many = rec.recommend_many(users, k=5, genre="Drama", min_ratings=3, workers=2)
    assert list(many.columns) == ["user_id", "rank", "movie_id", "score", "rating"]
    for u in users[[0, 17, 39]]:
        one = rec.recommend(int(u), k=5, genre="Drama", min_ratings=3)
        got = many[many["user_id"] == u]
        assert got["movie_id"].tolist() == one["movie_id"].tolist()
        np.testing.assert_allclose(got["score"], one["score"], rtol=1e-5)
    with pytest.raises(UnknownIdError):
        rec.recommend_many([int(users[0]), 10**9], k=5)


def test_unknown_ids_and_cold_start(rec) -> None:
    with pytest.raises(UnknownIdError, match="user 999999999"):
        rec.recommend(999_999_999)
    with pytest.raises(UnknownIdError, match="movie"):
        rec.predict([int(rec.user_ids[0])], [10**9])
    ratings, reasons = rec.predict_known(
        [int(rec.user_ids[0]), 10**9, 10**9], [int(rec.movie_ids[0]), int(rec.movie_ids[1]), 10**9]
    )
    assert np.isfinite(ratings[0]) and np.isnan(ratings[1:]).all()
    assert list(reasons) == ["", "unknown user", "unknown user and movie"]
    user, movie = str(rec.user_ids[0]), str(rec.movie_ids[0])
    ratings, reasons = rec.predict_known(
        [user, "abc", f"{user}.0", "1.5", f" {user} ", f"+{user}", "1_0"],
        ["x", movie, movie, str(10**12), movie, movie, movie],
    )
    assert list(reasons) == [
        "movie id 'x' is not an integer",
        "user id 'abc' is not an integer",
        f"user id '{user}.0' is not an integer",  # text is an id only in plain digits (a float 42.0 is 42)
        "user id '1.5' is not an integer and unknown movie",  # 10**12 is an integer id the model does not know
        "",  # the spaces around a CSV cell are not part of it
        f"user id '+{user}' is not an integer",
        "user id '1_0' is not an integer",  # int() reads it as 10
    ]
    assert np.isfinite(ratings[[4]]).all() and np.isnan(ratings[[0, 1, 2, 3, 5, 6]]).all()
    popular = rec.popular(k=5)
    assert len(popular) == 5 and popular["rating"].isna().all()
    assert np.all(np.diff(popular["score"].to_numpy()) <= 0)


def test_k_beyond_the_catalogue_is_clamped_to_it(rec) -> None:
    n_movies = len(rec.movie_ids)
    users = rec.user_ids[:3]
    many = rec.recommend_many(users, k=10**9, filter_seen=False, min_ratings=0)
    assert len(many) == 3 * n_movies and many["rank"].max() == n_movies
    assert len(rec.recommend(int(users[0]), k=10**9, filter_seen=False, min_ratings=0)) == n_movies
    assert len(rec.similar(int(rec.movie_ids[0]), k=10**9)) == n_movies - 1
    with pytest.raises(ConfigError, match="-k must be at least 1"):
        rec.recommend(int(users[0]), k=0)


def test_wrong_argument_types_raise_the_documented_errors(rec) -> None:
    """A string, None, NaN, 2.5 or True for a count, a bad genre or ids that are no ids: ConfigError or
    UnknownIdError naming the value, never numpy's ValueError/OverflowError or an AttributeError, and never a count
    truncated (k=2.5 listed 2) or an id truncated (recommend_many([1.5]) listed user 1's movies)."""
    user = int(rec.user_ids[0])
    for bad in ("3", None, float("nan"), 2.5, True):
        with pytest.raises(ConfigError, match="-k must be a whole number"):
            rec.recommend(user, k=bad)
        with pytest.raises(ConfigError, match="--min-ratings must be a whole number"):
            rec.recommend(user, min_ratings=bad)
    with pytest.raises(ConfigError, match="--min-ratings must be at least 0"):
        rec.popular(min_ratings=-1)
    assert len(rec.recommend(user, k=np.int64(3), min_ratings=np.int32(0))) == 3  # numpy integers are counts
    assert len(rec.similar(int(rec.movie_ids[0]), k=3.0)) == 3  # and so is a whole float
    with pytest.raises(ConfigError, match="--genre must be a genre name"):
        rec.recommend(user, genre=5)
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="--genre is empty"):
            rec.recommend(user, genre=empty)  # "" was no filter at all
        with pytest.raises(ConfigError, match="--genre is empty"):
            rec.popular(genre=empty)
    with pytest.raises(ConfigError, match="a title search takes words"):
        rec.find_movies(5)
    for bad_id in (1.5, float("nan"), None, 2**70, "abc"):
        with pytest.raises(UnknownIdError, match="1 user id"):
            rec.recommend_many([user, bad_id], k=2)
    with pytest.raises(ConfigError, match="a list or 1-d array of user ids"):
        rec.recommend_many(user, k=2)
    with pytest.raises(UnknownIdError, match="is not one user id"):
        rec.recommend([user])
    assert [user] not in rec.user_vocab
    # ids of any integer type, text in plain digits, or a pandas Series (its index ignored) name the same users
    users = rec.user_ids[:3]
    ref = rec.recommend_many(users, k=2)
    series = pd.Series(users.astype(np.int32), index=[7, 8, 9])
    for ids in (series, [str(u) for u in users], users.astype(np.uint32), [float(u) for u in users]):
        got = rec.recommend_many(ids, k=2)
        pd.testing.assert_frame_equal(got, ref)
    np.testing.assert_array_equal(
        rec.predict(series, pd.Series([int(rec.movie_ids[0])] * 3)), rec.predict(users, [int(rec.movie_ids[0])] * 3)
    )


def test_similar_and_title_search(rec) -> None:
    movie_id = int(rec.movie_ids[10])
    sim = rec.similar(movie_id, k=5)
    assert len(sim) == 5 and movie_id not in set(sim["movie_id"])
    assert np.all(np.diff(sim["similarity"].to_numpy()) <= 1e-7)
    title = str(rec.movies["title"].iloc[10])
    found = rec.find_movies(title.upper())
    assert movie_id in set(found["movie_id"])
    assert rec.find_movies("zzzz no such words").empty


def test_title_search_prefers_exact_titles_even_when_several_share_one(rec) -> None:
    saved = rec.movies["title"].copy()
    try:
        rec.movies.loc[rec.movies.index[[3, 7]], "title"] = "Hamlet"  # MovieLens has several films titled so
        rec.movies.loc[rec.movies.index[5], "title"] = "Hamlet 2"
        assert set(rec.find_movies("hamlet")["movie_id"]) == {int(rec.movie_ids[3]), int(rec.movie_ids[7])}
        assert set(rec.find_movies("Hamlet 2")["movie_id"]) == {int(rec.movie_ids[5])}
        assert len(rec.find_movies("haml")) == 3  # no exact title: every title holding the words
    finally:
        rec.movies["title"] = saved


# ---------------------------------------------------------------------------------------------------------------
# No JAX on the recommend path
# ---------------------------------------------------------------------------------------------------------------
def test_recommend_path_never_imports_jax(planted: Path, synthetic_prepared: Path) -> None:
    code = (
        "import sys\n"
        "from embedrec.cli import app\n"
        "try:\n"
        f"    app(['recommend', '--user', '3', '--model', {str(planted)!r}, '--data', {str(synthetic_prepared)!r},"
        " '--format', 'json'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "for name in ('jax', 'jaxlib', 'flax', 'optax'):\n"
        "    assert name not in sys.modules, name + ' was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 10


def test_one_users_recommendations_and_a_prediction_never_import_pandas(
    planted: Path, synthetic_prepared: Path
) -> None:
    """pandas costs half a second of a one-shot process: one user's list (every format, a genre filter, the
    cold-start list) and one pair's prediction read the model's Arrow movie table instead, and print what the
    library's DataFrame methods give."""
    from embedrec.artifacts import load_model
    from embedrec.data import load_prepared
    from embedrec.recommender import Recommender

    prepared = load_prepared(synthetic_prepared)
    user, movie = int(prepared.user_ids[3]), int(prepared.movie_ids[0])
    where = ["--model", str(planted), "--data", str(synthetic_prepared)]
    runs = [
        ["recommend", "--user", str(user), "--format", "json", *where],
        ["recommend", "--user", str(user), "--format", "json", "--genre", "drama", "-k", "4", *where],
        ["recommend", "--user", "999999999", "--format", "json", *where],
        ["recommend", "--user", str(user), *where],
        ["predict", "--user", str(user), "--movie", str(movie), *where],
    ]
    stdout = _cli_in_one_process(
        runs, after_each="print('\\n#####')\n", after_all="assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    outputs = stdout.split("\n#####\n")
    rec = Recommender(load_model(planted), prepared)

    def records(table: Any) -> list[dict[str, Any]]:
        rows = table.rename(columns={"movie_id": "movieId"})[["movieId", "title", "year", "genres", "score", "rating"]]
        return [{k: (None if v is pd.NA or v != v else v) for k, v in r.items()} for r in rows.to_dict("records")]

    assert json.loads(outputs[0]) == records(rec.recommend(user))
    assert json.loads(outputs[1]) == records(rec.recommend(user, k=4, genre="Drama"))
    assert json.loads(outputs[2]) == records(rec.popular(k=10))
    assert f"Top 10 for user {user}" in outputs[3]
    title = rec.movies["title"].iloc[0]
    assert f"movie {movie} ({title}" in outputs[4]


def test_fold_in_and_predict_never_import_jax(planted: Path, synthetic_prepared: Path, tmp_path: Path) -> None:
    from embedrec.data import load_prepared

    prepared = load_prepared(synthetic_prepared)
    mine = tmp_path / "mine.csv"
    mine.write_text("movieId,rating\n" + "".join(f"{m},4\n" for m in prepared.movie_ids[:5]))
    where = ["--model", str(planted), "--data", str(synthetic_prepared)]
    runs = [
        ["recommend", "--ratings", str(mine), "--format", "json", *where],
        [
            "predict",
            "--user",
            str(int(prepared.user_ids[0])),
            "--movie",
            str(int(prepared.movie_ids[0])),
            "--json",
            *where,
        ],
    ]
    stdout = _cli_in_one_process(
        runs,
        after_all="for name in ('jax', 'jaxlib', 'flax', 'optax'):\n"
        "    assert name not in sys.modules, name + ' was imported'\n",
    )
    assert '"rating"' in stdout


# ---------------------------------------------------------------------------------------------------------------
# one user's request reads the per-user index, never every rating; folders without it take the old path
# ---------------------------------------------------------------------------------------------------------------
def test_one_users_request_reads_no_rating_and_matches_the_full_read(
    planted: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    from embedrec.artifacts import load_model
    from embedrec.data import load_prepared
    from embedrec.recommender import Recommender

    old_folder = tmp_path / "old"  # the same data as an embedrec before the per-user index wrote it
    shutil.copytree(synthetic_prepared, old_folder)
    for f in old_folder.glob("*.npy"):
        f.unlink()
    summary = json.loads((old_folder / "summary.json").read_text())
    del summary["user_index"]
    (old_folder / "summary.json").write_text(json.dumps(summary))
    slow = Recommender(load_model(planted), load_prepared(old_folder))
    lazy = load_prepared(synthetic_prepared, lazy=True)
    fast = Recommender(load_model(planted), lazy)
    for u in (0, 5, 77):
        user = int(lazy.user_ids[u])
        for options in ({}, {"genre": "Drama", "min_ratings": 10}, {"filter_seen": False}):
            a, b = fast.recommend(user, k=15, **options), slow.recommend(user, k=15, **options)
            assert a["movie_id"].tolist() == b["movie_id"].tolist()
        np.testing.assert_array_equal(fast.seen_mask(u), slow.seen_mask(u))
    np.testing.assert_array_equal(fast.rating_counts(), slow.rating_counts())
    a, b = fast.popular(k=20), slow.popular(k=20)
    assert a["movie_id"].tolist() == b["movie_id"].tolist() and a["score"].tolist() == b["score"].tolist()
    assert set(lazy._read) == {"users"}  # the test's own lookups: nothing above read the ratings or the movies
    many_fast = fast.recommend_many(lazy.user_ids[:30], k=5)
    assert many_fast["movie_id"].tolist() == slow.recommend_many(lazy.user_ids[:30], k=5)["movie_id"].tolist()


def _cli_in_one_process(runs: list[list[str]], *, after_each: str = "", after_all: str = "") -> str:
    """Run several embedrec commands in one fresh Python process (so its imports can be checked after them, in
    ``after_all``); each must exit 0. Returns the process's stdout."""
    code = (
        "import sys\n"
        "from embedrec.cli import app\n"
        f"for args in {runs!r}:\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        + "".join("    " + line + "\n" for line in after_each.splitlines())
        + after_all
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
