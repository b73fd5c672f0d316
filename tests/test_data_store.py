"""The prepared-folder contract other modules code against: files, columns, dtypes, vocabularies, lookups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrec.data import load_prepared
from embedrec.errors import UnknownIdError

SUMMARY_KEYS = {
    "schema_version",
    "format",
    "source",
    "n_ratings",
    "n_users",
    "n_movies",
    "n_genre_strings",
    "n_genres",
    "rating_min",
    "rating_max",
    "rating_mean",
    "n_train",
    "n_val",
    "n_test",
    "split",
    "dropped",
    "fingerprint",
    "created",
}


def test_files_and_schemas(synthetic_prepared: Path) -> None:
    p = synthetic_prepared
    assert pq.read_schema(p / "ratings.parquet").remove_metadata() == pa.schema(
        [
            ("user_idx", pa.int32()),
            ("movie_idx", pa.int32()),
            ("rating", pa.float32()),
            ("timestamp", pa.int64()),
            ("split", pa.int8()),
        ]
    )
    assert pq.read_schema(p / "movies.parquet").remove_metadata() == pa.schema(
        [
            ("movie_idx", pa.int32()),
            ("movie_id", pa.int64()),
            ("title", pa.string()),
            ("year", pa.int32()),
            ("genres", pa.string()),
            ("genre_str_idx", pa.int32()),
            ("genre_list", pa.list_(pa.string())),
        ]
    )
    assert pq.read_schema(p / "users.parquet").remove_metadata() == pa.schema(
        [("user_idx", pa.int32()), ("user_id", pa.int64())]
    )
    vocab = json.loads((p / "vocab.json").read_text())
    assert vocab["schema_version"] == 1
    assert vocab["genres"] == sorted(vocab["genres"]) and vocab["genre_strings"] == sorted(vocab["genre_strings"])
    summary = json.loads((p / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["schema_version"] == 1 and summary["format"] == "synthetic"
    assert summary["split"] == {"method": "random", "test_frac": 0.2, "val_frac": 0.1, "seed": 42}
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == summary["n_ratings"] == 20_000
    assert len(summary["fingerprint"]) == 16 and int(summary["fingerprint"], 16) >= 0


def test_loaded_arrays_and_counts(synthetic_prepared: Path) -> None:
    d = load_prepared(synthetic_prepared)
    s = d.summary
    for arr, dtype in (
        (d.user_idx, np.int32),
        (d.movie_idx, np.int32),
        (d.rating, np.float32),
        (d.timestamp, np.int64),
        (d.split, np.int8),
        (d.user_ids, np.int64),
    ):
        assert arr.dtype == dtype
    assert (d.n_users, d.n_movies, d.n_genres, d.n_genre_strings) == (
        s["n_users"],
        s["n_movies"],
        s["n_genres"],
        s["n_genre_strings"],
    )
    # dense indices: every index used, none out of range
    assert np.array_equal(np.unique(d.user_idx), np.arange(d.n_users))
    assert np.array_equal(np.unique(d.movie_idx), np.arange(d.n_movies))
    # indices follow sorted raw ids
    assert (np.diff(d.user_ids) > 0).all() and (np.diff(d.movies["movie_id"].to_numpy()) > 0).all()
    assert d.movies["movie_idx"].tolist() == list(range(d.n_movies))
    assert (float(d.rating.min()), float(d.rating.max())) == (s["rating_min"], s["rating_max"])
    assert abs(float(d.rating.mean()) - s["rating_mean"]) < 1e-4
    assert d.fingerprint == s["fingerprint"]


def test_movie_table_and_genre_vocab(synthetic_prepared: Path) -> None:
    d = load_prepared(synthetic_prepared)
    m = d.movies
    assert str(m["year"].dtype) == "Int32"
    assert not m["title"].str.contains(r"\(\d{4}\)$").any()  # the year suffix was split off
    idx = d.movie_genre_str_idx()
    assert idx.dtype == np.int32 and idx.shape == (d.n_movies,)
    assert [d.genre_strings[i] for i in idx] == m["genres"].tolist()
    assert set(m["genres"]) == set(d.genre_strings)  # only genre strings of kept movies
    hot = d.movie_genre_multi_hot()
    assert hot.shape == (d.n_movies, d.n_genres) and hot.dtype == np.float32
    for row, genres, glist in zip(hot[:50], m["genres"][:50], m["genre_list"][:50]):
        expected = [] if genres == "(no genres listed)" else genres.split("|")
        assert list(glist) == expected
        assert sorted(d.genres[i] for i in np.flatnonzero(row)) == sorted(expected)


def test_id_lookups(synthetic_prepared: Path) -> None:
    d = load_prepared(synthetic_prepared)
    uid = int(d.user_ids[17])
    assert d.user_vocab.index(uid) == 17
    mid = int(d.movies["movie_id"].iloc[5])
    assert d.movie_vocab.index(mid) == 5
    with pytest.raises(UnknownIdError, match="user 999999 is not known"):
        d.user_vocab.index(999_999)
    with pytest.raises(UnknownIdError, match="movie -4 is not known"):
        d.movie_vocab.index(-4)
    assert d.user_vocab.indices(np.array([uid, 999_999, int(d.user_ids[0])])).tolist() == [17, -1, 0]
    assert d.movie_vocab.indices([mid, 10**12]).tolist() == [5, -1]
    assert d.user_vocab.indices(np.array([], dtype=np.int64)).shape == (0,)


def test_ml100k_ids_are_raw_movielens_ids(ml100k_prepared: Path) -> None:
    d = load_prepared(ml100k_prepared)
    assert d.user_vocab.index(1) == 0 and d.movie_vocab.index(1) == 0
    toy = d.movies.iloc[d.movie_vocab.index(1)]
    assert (toy["title"], int(toy["year"]), list(toy["genre_list"])) == (
        "Toy Story",
        1995,
        ["Animation", "Children's", "Comedy"],
    )
    assert pd.isna(d.movies.iloc[d.movie_vocab.index(267)]["year"])


def test_raw_id_lookup_accepts_any_array_like() -> None:
    import numpy as np

    from embedrec.data.encode import lookup_ids

    known = np.array([1, 5, 42, 10**12])  # a huge id must not size a lookup table
    got = lookup_ids(known, [42, "42", 42.0, "abc", 4.5, float("nan"), 10**12, -3])
    assert got.tolist() == [2, 2, 2, -1, -1, -1, 3, -1]
    # text is an id only in plain decimal digits: int() would read "0_42" and "+42" as 42, Decimal "42.0" and "4.2e1"
    texts = [" 42 ", "0042", "0_42", "+42", "42.0", "4.2e1", "\u0664\u0662", "0x2a", "42\n0", "-"]
    assert lookup_ids(known, texts).tolist() == [2, 2, -1, -1, -1, -1, -1, -1, -1, -1]
    assert lookup_ids(known, ["1" * 5000]).tolist() == [-1]  # longer than int() reads: out of range, no error
    assert lookup_ids(known, np.array([[1, 5], [7, 42]])).tolist() == [[0, 1], [-1, 2]]
    assert lookup_ids(known, []).shape == (0,)


# ---------------------------------------------------------------------------------------------------------------
# the per-user index (what `recommend --user` reads instead of every rating)
# ---------------------------------------------------------------------------------------------------------------
def test_the_user_index_holds_each_users_movies_and_the_movie_totals(synthetic_prepared: Path) -> None:
    d = load_prepared(synthetic_prepared)
    index = d.user_index
    assert index is not None
    meta = json.loads((synthetic_prepared / "summary.json").read_text())["user_index"]
    assert meta["schema_version"] == 1 and meta["files"]["movie_idx"]["length"] == d.summary["n_ratings"]
    for u in (0, 1, 57, d.n_users - 1):
        mine = d.user_idx == u
        assert index.movies_of(u).tolist() == sorted(d.movie_idx[mine].tolist())
        before_test = mine & (d.split < 2)
        assert index.movies_of(u, before_split=2).tolist() == sorted(d.movie_idx[before_test].tolist())
    order = np.lexsort((d.movie_idx, d.user_idx))
    np.testing.assert_array_equal(index.split, d.split[order])
    np.testing.assert_array_equal(index.rating, d.rating[order])
    for u in (0, d.n_users - 1):
        ratings = index.ratings_of(u)
        assert ratings is not None
        mine = np.flatnonzero(d.user_idx == u)
        expected = dict(zip(d.movie_idx[mine].tolist(), d.rating[mine].tolist()))
        assert dict(zip(ratings[0].tolist(), ratings[1].tolist())) == expected
    np.testing.assert_array_equal(index.movie_counts, np.bincount(d.movie_idx, minlength=d.n_movies))
    np.testing.assert_array_equal(
        index.movie_rating_sums, np.bincount(d.movie_idx, d.rating.astype(np.float64), minlength=d.n_movies)
    )
    with pytest.raises(IndexError):
        index.movies_of(d.n_users)


def test_a_lazy_load_reads_no_rating_and_no_movie_until_one_is_used(synthetic_prepared: Path) -> None:
    d = load_prepared(synthetic_prepared, lazy=True)
    assert d._read == {} and d.user_index is not None
    assert isinstance(d.user_index.movie_idx, np.memmap)
    eager = load_prepared(synthetic_prepared)
    assert set(eager._read) == {"ratings", "movies", "users"}
    np.testing.assert_array_equal(d.rating, eager.rating)  # first use reads them
    assert set(d._read) == {"ratings"} and (d.n_movies, d.n_users) == (eager.n_movies, eager.n_users)
    pd.testing.assert_frame_equal(d.movies, eager.movies)
    np.testing.assert_array_equal(d.user_ids, eager.user_ids)
    assert set(d._read) == {"ratings", "movies", "users"}


def test_split_extent_comes_from_the_summary_or_the_index_without_reading_a_rating_and_equals_the_ratings(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    import shutil

    from embedrec.errors import ArtifactError

    def copy(name: str, *, summary_counts: bool) -> Path:
        folder = tmp_path / name
        shutil.copytree(synthetic_prepared, folder, dirs_exist_ok=True)
        if not summary_counts:  # as an embedrec before n_movies_rated prepared it
            summary = json.loads((folder / "summary.json").read_text())
            del summary["n_movies_rated"]
            (folder / "summary.json").write_text(json.dumps(summary))
        return folder

    eager = load_prepared(synthetic_prepared)
    without = load_prepared(_without_index(copy("old", summary_counts=False), tmp_path / "older"), lazy=True)
    index_only = copy("index-only", summary_counts=False)
    for code in (0, 1, 2):
        movies = eager.movie_idx[eager.split == code]
        expected = (len(movies), len(np.unique(movies)))
        for folder in (synthetic_prepared, index_only):
            lazy = load_prepared(folder, lazy=True)
            assert lazy.split_extent(code) == expected
            assert lazy._read == {}  # training chose its settings before the ratings were read
        assert eager.split_extent(code) == expected == without.split_extent(code)
    assert 0 < expected[1] < eager.n_movies  # the test split misses some movies: a count, not the catalogue

    # the summary's counts are prepare's own: the index is not read for them (a damaged one serves no settings)
    bad = copy("bad", summary_counts=True)
    np.save(bad / "user_ratings_split.npy", np.zeros_like(np.load(bad / "user_ratings_split.npy")))
    assert load_prepared(bad, lazy=True).split_extent(0) == load_prepared(synthetic_prepared).split_extent(0)
    summary = json.loads((bad / "summary.json").read_text())
    summary["n_movies_rated"]["train"] = eager.n_movies + 1
    (bad / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ArtifactError, match=r"summary.json says the train split has \d+ ratings of \d+ movies"):
        load_prepared(bad, lazy=True).split_extent(0)

    # without them, a damaged index is refused
    bad = copy("bad-index", summary_counts=False)
    damaged = np.load(bad / "user_ratings_movie_idx.npy")
    damaged[3] = eager.n_movies
    np.save(bad / "user_ratings_movie_idx.npy", damaged)
    with pytest.raises(ArtifactError, match=r"user_ratings_movie_idx.npy holds movies outside 0\.\.\d+.*prepare"):
        load_prepared(bad, lazy=True).split_extent(int(np.load(bad / "user_ratings_split.npy")[3]))
    bad = copy("bad-split", summary_counts=False)
    np.save(bad / "user_ratings_split.npy", np.zeros_like(np.load(bad / "user_ratings_split.npy")))  # all "train"
    with pytest.raises(ArtifactError, match=r"user_ratings_split.npy puts \d+ ratings in the train split.*damaged"):
        load_prepared(bad, lazy=True).split_extent(0)


def test_planning_a_run_counts_the_train_split_once(
    synthetic_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings that follow the data and the check that the model fits both ask for the train split's counts;
    a folder prepared before summary.json listed them counts them from the index (~0.5 s at full scale), once."""
    import shutil

    from embedrec.data.user_index import UserIndex
    from embedrec.runs import _plan_run

    folder = Path(shutil.copytree(synthetic_prepared, tmp_path / "old"))
    summary = json.loads((folder / "summary.json").read_text())
    del summary["n_movies_rated"]
    (folder / "summary.json").write_text(json.dumps(summary))
    counted: list[int] = []
    count = UserIndex.split_extent
    monkeypatch.setattr(UserIndex, "split_extent", lambda index, code: counted.append(code) or count(index, code))
    plan = _plan_run(folder, out=None, workdir=tmp_path / "wd", preset="default", overrides=None, resume=False)
    assert counted == [0] and plan.prepared.split_extent(0) == load_prepared(synthetic_prepared).split_extent(0)
    assert counted == [0]


def test_timestamps_are_read_on_first_use_from_the_file_opened_at_load(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    import shutil

    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    shutil.copytree(synthetic_prepared, folder)
    expected = pq.read_table(folder / "ratings.parquet", columns=["timestamp"]).column(0).to_numpy()
    d = load_prepared(folder)
    assert "timestamp" not in d._read and len(d.user_idx) == len(expected)  # training on a random split reads none
    (folder / "ratings.parquet").unlink()  # as when `prepare` replaces the folder: the opened version is read
    np.testing.assert_array_equal(d.timestamp, expected)
    assert d.timestamp.dtype == np.int64 and d.ratings_file.closed  # both reads done: the descriptor is released


def test_the_movie_table_is_read_while_another_thread_reads_the_ratings(synthetic_prepared: Path) -> None:
    """Training initialises the model (which needs the movie table) while the main thread reads the ratings."""
    from concurrent.futures import ThreadPoolExecutor

    d = load_prepared(synthetic_prepared, lazy=True)
    with d._read_locks["ratings"], ThreadPoolExecutor(1) as pool:  # as while the ratings are being read
        movies = pool.submit(lambda: d.movies).result(timeout=30)
        assert len(movies) == d.n_movies and "ratings" not in d._read


def test_an_index_prepared_before_it_kept_the_rating_values_still_loads(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    import shutil

    older = tmp_path / "older"
    shutil.copytree(synthetic_prepared, older)
    (older / "user_ratings_rating.npy").unlink()
    summary = json.loads((older / "summary.json").read_text())
    del summary["user_index"]["files"]["rating"]
    (older / "summary.json").write_text(json.dumps(summary))
    index = load_prepared(older, lazy=True).user_index
    assert index is not None and index.rating is None and index.ratings_of(0) is None
    assert index.movies_of(0).tolist() == load_prepared(synthetic_prepared).user_index.movies_of(0).tolist()


def _without_index(src: Path, dst: Path) -> Path:
    """A copy of a prepared folder as an embedrec before the per-user index wrote it."""
    import shutil

    shutil.copytree(src, dst)
    for f in dst.glob("*.npy"):
        f.unlink()
    summary = json.loads((dst / "summary.json").read_text())
    del summary["user_index"]
    (dst / "summary.json").write_text(json.dumps(summary))
    return dst


def test_a_folder_prepared_before_the_index_still_loads(synthetic_prepared: Path, tmp_path: Path) -> None:
    old = load_prepared(_without_index(synthetic_prepared, tmp_path / "old"), lazy=True)
    assert old.user_index is None
    np.testing.assert_array_equal(old.movie_idx, load_prepared(synthetic_prepared).movie_idx)


def test_a_damaged_index_is_one_clear_error(synthetic_prepared: Path, tmp_path: Path) -> None:
    import shutil

    from embedrec.errors import ArtifactError

    bad = tmp_path / "bad"
    shutil.copytree(synthetic_prepared, bad)
    np.save(bad / "user_ratings_movie_idx.npy", np.zeros(5, np.int32))
    with pytest.raises(ArtifactError, match=r"user_ratings_movie_idx.npy holds int32\[5\].*prepare"):
        load_prepared(bad, lazy=True)
    (bad / "user_ratings_movie_idx.npy").unlink()
    with pytest.raises(ArtifactError, match="user_ratings_movie_idx.npy is missing or unreadable"):
        load_prepared(bad)


def test_int_column_reads_arrow_buffers_of_any_chunking_and_refuses_nulls_and_floats() -> None:
    from embedrec.data.store import int_column

    chunked = pa.chunked_array([pa.array([9, 1, 2, 3], pa.int32()).slice(1), pa.array([], pa.int32()), [7, 8]])
    table = pa.Table.from_arrays(
        [chunked, pa.chunked_array([[1, None, 3, 4, 5]], pa.int64()), pa.chunked_array([[1.0, 2, 3, 4, 5]])],
        names=["ids", "gaps", "floats"],
    )
    got = int_column(table, "ids")
    assert got.dtype == np.int64 and got.tolist() == [1, 2, 3, 7, 8] and got.flags.c_contiguous
    assert int_column(table, "ids", np.int32).dtype == np.int32
    assert int_column(table.slice(0, 0), "ids").tolist() == []
    with pytest.raises(ValueError, match="gaps holds 1 missing values"):
        int_column(table, "gaps")
    with pytest.raises(ValueError, match="floats holds double values"):
        int_column(table, "floats")


def test_a_summary_that_counts_more_movies_rated_than_ratings_in_a_split_is_refused(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    """Each movie rated in a split needs a rating there: 300 movies rated by 200 ratings is impossible, and training
    would adapt to it (0.7 ratings a movie: a "sparse catalogue" for dense data) instead of saying the folder is
    damaged."""
    import shutil

    from embedrec.errors import ArtifactError

    folder = tmp_path / "data"
    shutil.copytree(synthetic_prepared, folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_movies"] >= 300 and summary["n_train"] > 300
    summary["n_train"], summary["n_movies_rated"]["train"] = 200, 300
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ArtifactError, match=r"summary.json says the train split has 200 ratings of 300 movies"):
        load_prepared(folder, lazy=True).split_extent(0)


def test_users_rated_counts_the_users_with_a_rating_in_a_split(synthetic_prepared: Path, tmp_path: Path) -> None:
    """Under a time-based split many users have no training rating; training's per-user counts are over those who
    do. prepare writes the count per split; an older folder answers every user; an impossible count is refused."""
    import shutil

    from embedrec.data import PrepareConfig, prepare_synthetic
    from embedrec.errors import ArtifactError

    out = tmp_path / "temporal"
    config = PrepareConfig(split="temporal")
    prepare_synthetic(out=out, n_users=300, n_movies=400, n_ratings=20_000, seed=0, config=config)
    eager = load_prepared(out)
    for code in (0, 1, 2):
        assert load_prepared(out, lazy=True).users_rated(code) == len(np.unique(eager.user_idx[eager.split == code]))
    assert load_prepared(out, lazy=True).users_rated(0) < eager.n_users  # the latest ratings' new users

    folder = tmp_path / "old"
    shutil.copytree(synthetic_prepared, folder)
    summary = json.loads((folder / "summary.json").read_text())
    del summary["n_users_rated"]  # as an embedrec before the count prepared it
    (folder / "summary.json").write_text(json.dumps(summary))
    assert load_prepared(folder, lazy=True).users_rated(0) == summary["n_users"]
    summary["n_users_rated"] = {"train": summary["n_users"] + 1, "val": 1, "test": 1}
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ArtifactError, match=r"summary.json says the train split has \d+ ratings by 301 users"):
        load_prepared(folder, lazy=True).users_rated(0)
