"""Format detection and parsing: the same small data written in every MovieLens layout reads back identically."""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedrec.data import PrepareConfig, load_prepared, prepare
from embedrec.data.layouts import ML100K_GENRES, detect_layout, split_title_year
from embedrec.errors import ConfigError, DataError

# (movie id, title, year, genres); a comma and a latin-1 character in titles, a movie without year or genres
MOVIES = [
    (1, "Toy Story", 1995, ["Animation", "Comedy"]),
    (2, "American President, The", 1995, ["Comedy", "Drama", "Romance"]),
    (5, "Misérables, Les", 1995, ["Drama", "War"]),
    (10, "Unknown Film", None, []),
    (32, "Twelve Monkeys (a.k.a. 12 Monkeys)", 1995, ["Mystery", "Sci-Fi", "Thriller"]),
    (99, "Never Rated", 2001, ["Horror"]),
]
# (user id, movie id, rating, timestamp); integer ratings so every scale accepts them
RATINGS = [
    (1, 1, 4, 964982703),
    (1, 2, 3, 964981247),
    (1, 32, 5, 964982224),
    (2, 1, 5, 964983815),
    (2, 5, 2, 964982931),
    (3, 10, 1, 964982400),
    (3, 32, 4, 964980868),
    (7, 2, 3, 964982176),
]
NO_SPLIT = PrepareConfig(test_frac=0.0, val_frac=0.0)


def _title_with_year(title: str, year: int | None) -> str:
    return f"{title} ({year})" if year else title


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS))
    lines = []
    for mid, title, year, genres in MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        date = f"01-Jan-{year}" if year else ""
        lines.append(f"{mid}|{_title_with_year(title, year)}|{date}||http://us.imdb.com/M/title-exact?x|{flags}\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return folder


def write_dat(folder: Path, *, ml1m: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in RATINGS))
    text = "".join(
        f"{mid}::{_title_with_year(title, year)}::{'|'.join(genres) or '(no genres listed)'}\n"
        for mid, title, year, genres in MOVIES
    )
    (folder / "movies.dat").write_bytes(text.encode("latin-1" if ml1m else "utf-8"))
    if ml1m:
        (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    else:
        (folder / "tags.dat").write_text("15::4973::excellent!::1215184630\n")
    return folder


def write_ml_csv(folder: Path, ratings: list[tuple] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ratings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        w.writerows([(u, m, float(r), t) for u, m, r, t in (ratings or RATINGS)])
    with open(folder / "movies.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["movieId", "title", "genres"])
        for mid, title, year, genres in MOVIES:
            w.writerow([mid, _title_with_year(title, year), "|".join(genres) or "(no genres listed)"])
    return folder


def write_recbole(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS)
    (folder / "ml-100k.inter").write_text(inter)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    item += "".join(f"{mid}\t{title}\t{year or ''}\t{' '.join(genres)}\n" for mid, title, year, genres in MOVIES)
    (folder / "ml-100k.item").write_text(item)
    return folder


WRITERS = {
    "ml-100k": write_ml100k,
    "ml-1m": lambda f: write_dat(f, ml1m=True),
    "ml-10m": lambda f: write_dat(f, ml1m=False),
    "ml-csv": write_ml_csv,
    "recbole": write_recbole,
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_layout_is_detected_and_reads_the_same_data(fmt: str, tmp_path: Path) -> None:
    src = WRITERS[fmt](tmp_path / "src")
    assert detect_layout(src, config=NO_SPLIT).format == fmt
    summary = prepare(src, out=tmp_path / "out", config=NO_SPLIT)
    assert summary["format"] == fmt
    data = load_prepared(tmp_path / "out")

    # users and movies: only those with ratings, indices follow sorted raw ids
    assert data.user_ids.tolist() == [1, 2, 3, 7]
    rated = [m for m in MOVIES if m[0] != 99]
    assert data.movies["movie_id"].tolist() == [m[0] for m in rated]
    assert data.movies["title"].tolist() == [m[1] for m in rated]
    assert data.movies["year"].tolist() == [m[2] if m[2] else pd.NA for m in rated]
    assert [list(g) for g in data.movies["genre_list"]] == [m[3] for m in rated]
    assert data.movies["genres"].tolist()[3] == "(no genres listed)"

    # ratings in file order, encoded
    uid = {u: i for i, u in enumerate([1, 2, 3, 7])}
    mid = {m[0]: i for i, m in enumerate(rated)}
    assert data.user_idx.tolist() == [uid[r[0]] for r in RATINGS]
    assert data.movie_idx.tolist() == [mid[r[1]] for r in RATINGS]
    assert data.rating.tolist() == [float(r[2]) for r in RATINGS]
    assert data.timestamp.tolist() == [r[3] for r in RATINGS]
    assert summary["n_genres"] == len({g for m in rated for g in m[3]})
    assert summary["n_genre_strings"] == len(rated)
    assert sum(summary["dropped"].values()) == 0


def test_ml_dat_layouts_are_told_apart_by_users_dat(tmp_path: Path) -> None:
    assert detect_layout(write_dat(tmp_path / "a", ml1m=True), config=NO_SPLIT).format == "ml-1m"
    assert detect_layout(write_dat(tmp_path / "b", ml1m=False), config=NO_SPLIT).format == "ml-10m"


def test_ml10m_and_csv_accept_half_stars_ml1m_does_not(tmp_path: Path) -> None:
    rows = RATINGS + [(9, 1, 4.5, 964982703)]
    write_ml_csv(tmp_path / "csv", ratings=rows)
    s = prepare(tmp_path / "csv", out=tmp_path / "o1", config=NO_SPLIT)
    assert s["n_ratings"] == len(rows) and s["rating_max"] == 5.0
    # 0.5 is on the ml-10m / csv scale (0.5..5) but below the ml-1m scale (1..5)
    src = write_dat(tmp_path / "m1", ml1m=True)
    with open(src / "ratings.dat", "a") as fh:
        fh.write("9::1::0.5::964982703\n")
    s = prepare(src, out=tmp_path / "o2", config=NO_SPLIT)
    assert s["dropped"]["bad_rating"] == 1 and s["n_ratings"] == len(RATINGS)
    assert s["rating_scale"] == {"min": 1.0, "max": 5.0, "source": "format"}  # one stray value is not a scale


# 50 ratings on a 1..10 scale (each user rates the five rated movies), 25 of them above MovieLens's 5
OTHER_SCALE = [
    (u, m, (3 * u + 7 * i) % 10 + 1, 964_980_000 + 100 * u + i)
    for u in range(1, 11)
    for i, m in enumerate((1, 2, 5, 10, 32))
]


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_a_layout_rated_on_another_scale_keeps_every_rating(fmt: str, tmp_path: Path) -> None:
    """A MovieLens- or RecBole-shaped folder whose ratings are on its own 1..10 scale loses none of them: dropping
    the half above the layout's usual 5 as bad rows would silently train on the lower half. The summary says the
    scale is the data's own and how many ratings lay outside the usual one."""
    globals()["RATINGS"], saved = OTHER_SCALE, RATINGS
    try:
        src = WRITERS[fmt](tmp_path / "src")
    finally:
        globals()["RATINGS"] = saved
    s = prepare(src, out=tmp_path / "out", config=NO_SPLIT)
    above = sum(r > 5 for _, _, r, _ in OTHER_SCALE)
    assert s["format"] == fmt and above == 25
    assert s["n_ratings"] == len(OTHER_SCALE) and s["dropped"]["bad_rating"] == 0
    assert (s["rating_min"], s["rating_max"]) == (1.0, 10.0)
    assert s["rating_scale"]["source"] == "data" and s["rating_scale"]["outside_usual"] == above
    assert sorted(load_prepared(tmp_path / "out").rating.tolist()) == sorted(float(r) for _, _, r, _ in OTHER_SCALE)
    # the user's --rating-scale is the scale on any layout (it was ignored outside generic CSVs)
    s = prepare(src, out=tmp_path / "out2", config=PrepareConfig(test_frac=0.0, val_frac=0.0, rating_scale=(1, 8)))
    assert s["dropped"]["bad_rating"] == sum(r > 8 for _, _, r, _ in OTHER_SCALE) > 0
    assert s["rating_scale"] == {"min": 1.0, "max": 8.0, "source": "--rating-scale"} and s["rating_max"] == 8.0


def test_zip_with_top_folder_and_nested_folder(tmp_path: Path) -> None:
    src = write_ml_csv(tmp_path / "ml-latest-small")
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"ml-latest-small/{f.name}")
        zf.writestr("ml-latest-small/README.txt", "readme")
    s = prepare(archive, out=tmp_path / "out", config=NO_SPLIT)
    assert (s["format"], s["source"], s["n_ratings"]) == ("ml-csv", "ml-latest-small", len(RATINGS))
    # a folder that wraps the data in one sub-folder (as archives unpack)
    wrapper = tmp_path / "wrap"
    write_ml100k(wrapper / "ml-100k")
    assert prepare(wrapper, out=tmp_path / "out2", config=NO_SPLIT)["format"] == "ml-100k"


def test_two_recbole_data_sets_in_one_folder_are_refused_by_name(tmp_path: Path) -> None:
    """embedrec never picks one of two data sets silently, RecBole's atomic files included (a.inter was read before)."""
    src = write_recbole(tmp_path / "src")
    for f in list(src.iterdir()):
        shutil.copy(f, src / f.name.replace(f.stem, "other"))
    with pytest.raises(DataError, match=r"holds 2 data sets \(recbole ml-100k\.inter, recbole other\.inter\)"):
        prepare(src, out=tmp_path / "out", config=NO_SPLIT)
    (src / "other.item").unlink()
    (src / "ml-100k.item").rename(src / "items.item")  # no pairs by name, two .inter files: still two data sets
    with pytest.raises(DataError, match="holds 2 data sets"):
        prepare(src, out=tmp_path / "out", config=NO_SPLIT)
    (src / "other.inter").unlink()  # one .inter beside one .item of another name: that one data set
    assert prepare(src, out=tmp_path / "out", config=NO_SPLIT)["format"] == "recbole"


def test_a_recbole_item_file_may_name_its_genres_genre(tmp_path: Path) -> None:
    """RecBole's atomic-file docs write ml-1m.item's genres as `genre:token_seq`; they were dropped without a word."""
    src = write_recbole(tmp_path / "src")
    with_class = prepare(src, out=tmp_path / "out", config=NO_SPLIT)
    item = src / "ml-100k.item"
    item.write_text(item.read_text().replace("class:token_seq", "genre:token_seq", 1))
    with_genre = prepare(src, out=tmp_path / "out2", config=NO_SPLIT)
    assert with_genre["n_genres"] == with_class["n_genres"] > 0


def test_forced_format_that_does_not_match_is_an_error(tmp_path: Path) -> None:
    src = write_ml_csv(tmp_path / "src")
    with pytest.raises(DataError, match="ml-100k layout"):
        prepare(src, out=tmp_path / "out", config=PrepareConfig(format="ml-100k"))


def test_generic_csv_with_own_columns_delimiter_scale_and_no_movies_file(tmp_path: Path) -> None:
    f = tmp_path / "scores.txt"
    f.write_text("uid;iid;score;when\n10;100;7;1000\n10;200;11;1001\n20;100;3;1002\n20;300;9.5;1003\n")
    cfg = PrepareConfig(
        format="csv",
        delimiter=";",
        user_col="uid",
        movie_col="iid",
        rating_col="score",
        time_col="when",
        rating_scale=(1.0, 10.0),
        test_frac=0.0,
        val_frac=0.0,
    )
    s = prepare(f, out=tmp_path / "out", config=cfg)
    assert s["format"] == "csv"
    assert s["n_ratings"] == 3 and s["dropped"]["bad_rating"] == 1  # 11 is outside 1..10
    assert (s["rating_min"], s["rating_max"]) == (3.0, 9.5)
    data = load_prepared(tmp_path / "out")
    assert data.movies["title"].tolist() == ["movie 100", "movie 300"]
    assert data.genres == [] and data.genre_strings == ["(no genres listed)"]


def test_generic_csv_without_time_column_gets_zero_timestamps(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("u,m,r\n1,1,3\n2,1,4\n")
    cfg = PrepareConfig(format="csv", user_col="u", movie_col="m", rating_col="r", time_col=None)
    prepare(f, out=tmp_path / "out", config=cfg)
    assert load_prepared(tmp_path / "out").timestamp.tolist() == [0, 0]


def test_generic_csv_may_lack_the_default_time_column_but_not_a_named_one(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("userId,movieId,rating\n1,1,3\n2,1,4\n2,2,5\n")
    prepare(f, out=tmp_path / "out", config=PrepareConfig(format="csv", test_frac=0.0, val_frac=0.0))
    assert load_prepared(tmp_path / "out").timestamp.tolist() == [0, 0, 0]
    with pytest.raises(DataError, match="no column 'when'.*--time-col"):
        prepare(f, out=tmp_path / "out2", config=PrepareConfig(format="csv", time_col="when"))
    with pytest.raises(ConfigError, match="--split temporal needs timestamps"):
        prepare(f, out=tmp_path / "out3", config=PrepareConfig(format="csv", split="temporal"))


def test_generic_csv_with_movies_file(tmp_path: Path) -> None:
    src = write_ml_csv(tmp_path / "src")
    (src / "ratings.csv").rename(src / "my_ratings.csv")
    (src / "movies.csv").rename(src / "my_movies.csv")
    cfg = PrepareConfig(
        format="csv",
        ratings_file=str(src / "my_ratings.csv"),
        movies_file=str(src / "my_movies.csv"),
        test_frac=0.0,
        val_frac=0.0,
    )
    s = prepare(src / "my_ratings.csv", out=tmp_path / "out", config=cfg)
    assert s["n_movies"] == 5
    assert load_prepared(tmp_path / "out").movies["title"].tolist()[1] == "American President, The"


@pytest.mark.parametrize(
    ("raw", "title", "year"),
    [
        ("Toy Story (1995)", "Toy Story", 1995),
        ("Toy Story (1995) ", "Toy Story", 1995),
        ("Babylon 5", "Babylon 5", None),
        ("Fawlty Towers (1975-1979)", "Fawlty Towers", 1975),
        ("Stranger Things (2016-)", "Stranger Things", 2016),
        (
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            "City of Lost Children, The (Cité des enfants perdus, La)",
            1995,
        ),
        ("1984 (1984)", "1984", 1984),
    ],
)
def test_title_and_year_are_split(raw: str, title: str, year: int | None) -> None:
    t, y = split_title_year(pd.Series([raw]))
    assert t.iloc[0] == title
    assert pd.isna(y.iloc[0]) if year is None else int(y.iloc[0]) == year


def test_nrows_keeps_the_first_rows(tmp_path: Path) -> None:
    src = write_ml_csv(tmp_path / "src")
    s = prepare(src, out=tmp_path / "out", config=PrepareConfig(nrows=3, test_frac=0.0, val_frac=0.0))
    assert s["n_ratings"] == 3 and s["n_read"] == 3
    assert load_prepared(tmp_path / "out").user_ids.tolist() == [1]
    # the same through the .dat reader (which transforms bytes first)
    src = write_dat(tmp_path / "dat", ml1m=True)
    assert prepare(src, out=tmp_path / "o2", config=PrepareConfig(nrows=5))["n_ratings"] == 5


def test_min_rating_filters_are_applied_until_stable(tmp_path: Path) -> None:
    rows = RATINGS + [(2, 2, 4, 964982000), (3, 1, 3, 964982001)]
    src = write_ml_csv(tmp_path / "src", ratings=rows)
    s = prepare(
        src,
        out=tmp_path / "out",
        config=PrepareConfig(min_user_ratings=2, min_movie_ratings=2, test_frac=0.0, val_frac=0.0),
    )
    data = load_prepared(tmp_path / "out")
    users, counts = np.unique(data.user_idx, return_counts=True)
    assert counts.min() >= 2
    assert np.bincount(data.movie_idx).min() >= 2
    assert s["filtered"]["min_user_ratings"] + s["filtered"]["min_movie_ratings"] == len(rows) - s["n_ratings"]
    # user 7 (one rating) and movies 5 and 10 (one rating each) are gone
    assert data.user_ids.tolist() == [1, 2, 3]
    assert data.movies["movie_id"].tolist() == [1, 2, 32]
    assert s["n_ratings"] == 7


def test_filters_that_remove_everything_are_an_error(tmp_path: Path) -> None:
    src = write_ml_csv(tmp_path / "src")  # removing the sparse rows cascades until nothing is left
    with pytest.raises(DataError, match="no ratings left.*--min-user-ratings"):
        prepare(src, out=tmp_path / "out", config=PrepareConfig(min_user_ratings=2, min_movie_ratings=2))
    assert not (tmp_path / "out").exists()


def test_a_layout_file_as_source_reads_its_folder(tmp_path: Path) -> None:
    src = write_ml_csv(tmp_path / "ml-latest-small")
    s = prepare(src / "ratings.csv", out=tmp_path / "out", config=NO_SPLIT)
    assert (s["format"], s["source"], s["n_movies"]) == ("ml-csv", "ml-latest-small", 5)
    # a lone ratings.csv without movies.csv is read as a generic CSV
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,5\n")
    assert prepare(lone / "ratings.csv", out=tmp_path / "o2", config=NO_SPLIT)["format"] == "csv"
