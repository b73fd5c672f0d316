"""MovieLens layouts: detect which one a folder holds, and read it into one common shape.

Synopsis::

    layout = detect_layout(Path("ml-latest-small"), config=PrepareConfig())
    raw = read_layout(layout, config=PrepareConfig())
    raw.format, raw.ratings.user_id, raw.movies  # "ml-csv", int64 array, DataFrame[movie_id,title,year,genres]

Formats (the ``--format`` names):

- ``ml-100k``: ``u.data`` (tab-separated user, item, rating, time; no header) and ``u.item`` (pipe-separated, latin-1,
  19 genre flags). Scale 1..5.
- ``ml-1m`` / ``ml-10m``: ``ratings.dat`` and ``movies.dat`` with ``::`` separators; ml-1m also has ``users.dat``.
  Scales 1..5 and 0.5..5.
- ``ml-csv``: ml-20m, ml-25m, ml-32m, ml-latest, ml-latest-small: ``ratings.csv`` and ``movies.csv`` (quoted titles).
  Scale 0.5..5.
- ``recbole``: RecBole atomic files ``*.inter`` + ``*.item`` (tab-separated, ``name:type`` headers). Scale 1..5.
- ``csv``: any rating file, with column names, delimiter and scale from the config; movies file optional.

A layout's scale is its usual one: ``--rating-scale`` replaces it on any layout, and a file whose ratings are on
another scale (many ratings outside the usual one: a MovieLens-shaped export of other data, a RecBole data set
rated 1..10) keeps them all (:func:`embedrec.data.validate.clean_ratings`).

Every reader returns genres as one pipe-joined string per movie (``(no genres listed)`` when none) and the title
without its `` (YEAR)`` suffix, the year in its own nullable column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedrec.data.config import DEFAULT_TIME_COL, PrepareConfig
from embedrec.data.encode import dense_index, fits_int64, parse_id
from embedrec.data.readers import (
    RatingArrays,
    RatingColumns,
    check_text_file,
    guess_delimiter,
    header_fields,
    line_of_row,
    missing_column_error,
    read_rating_columns,
    read_text,
)
from embedrec.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

NO_GENRES = "(no genres listed)"
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
SCALES: dict[str, tuple[float, float]] = {
    "ml-100k": (1.0, 5.0),
    "ml-1m": (1.0, 5.0),
    "ml-10m": (0.5, 5.0),
    "ml-csv": (0.5, 5.0),
    "recbole": (1.0, 5.0),
}
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


@dataclass(frozen=True)
class Layout:
    """Which files of a source to read, and as what."""

    format: str
    ratings: Path
    movies: Path | None
    folder: Path
    root: Path | None = None  # the folder the user named (an archive's unpacked root), for advice on file names


@dataclass
class RawData:
    """A source read into memory, before validation: ratings as arrays, movies as a small table."""

    format: str
    ratings: RatingArrays
    movies: pd.DataFrame  # movie_id int64, title str, year Int32, genres str
    movies_file: str
    rating_scale: tuple[float, float] | None
    # where rating_scale came from: "--rating-scale" (the user's), "format" (the layout's usual scale, which a file
    # in that layout with ratings on another scale overrides: see embedrec.data.validate) or None (no scale)
    scale_source: str | None = None


# ---------------------------------------------------------------------------------------------------------- detection
def _candidates(folder: Path) -> list[Path]:
    """The folder itself and its visible sub-folders (archives wrap their files in one)."""
    return [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _recbole_in(cand: Path) -> list[tuple[Path, Path]]:
    """Every RecBole data set in ``cand``: each ``X.inter`` with its ``X.item``; a lone ``.inter`` beside a lone
    ``.item`` of another name is one data set too. Several are all returned, so the caller can refuse to pick."""
    inters = sorted(cand.glob("*.inter"))
    paired = [(inter, inter.with_suffix(".item")) for inter in inters if inter.with_suffix(".item").is_file()]
    if paired:
        return paired
    items = sorted(cand.glob("*.item"))
    if len(inters) == 1 and len(items) == 1:
        return [(inters[0], items[0])]
    return [(inter, items[0]) for inter in inters] if items else []


def _layouts_in(folder: Path, fmt: str) -> list[Layout]:
    """Every layout of format ``fmt`` (``auto``: any) found in ``folder`` or one of its sub-folders."""
    checks: list[tuple[str, tuple[str, ...]]] = [
        ("ml-100k", ("u.data", "u.item")),
        ("ml-dat", ("ratings.dat", "movies.dat")),
        ("ml-csv", ("ratings.csv", "movies.csv")),
    ]
    found: list[Layout] = []
    for cand in _candidates(folder):
        for name, files in checks:
            if fmt not in ("auto", name) and not (name == "ml-dat" and fmt in ("ml-1m", "ml-10m")):
                continue
            if all((cand / n).is_file() for n in files):
                if name == "ml-dat":
                    name = fmt if fmt != "auto" else ("ml-1m" if (cand / "users.dat").is_file() else "ml-10m")
                found.append(
                    Layout(format=name, ratings=cand / files[0], movies=cand / files[1], folder=cand, root=folder)
                )
        if fmt in ("auto", "recbole"):
            for inter, item in _recbole_in(cand):
                found.append(Layout(format="recbole", ratings=inter, movies=item, folder=cand, root=folder))
    return found


def detect_layout(folder: Path, *, config: PrepareConfig) -> Layout:
    """Find the layout of ``folder`` (``config.format`` forces one); a clear error when nothing, or more than one
    data set, matches: embedrec never picks one of two data sets silently."""
    fmt = config.format
    if fmt == "csv":
        return _generic_layout(folder, config)
    if not folder.is_dir():
        raise DataError(f"source {folder} is not a folder, a .zip or a rating file")
    found = _layouts_in(folder, fmt)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        where = ", ".join(
            f"{lay.format} {lay.ratings.relative_to(folder).as_posix()}"
            if lay.format == "recbole"
            else f"{lay.format} in {lay.folder.relative_to(folder).as_posix() or '.'}/"
            for lay in found[:6]
        )
        raise DataError(
            f"{folder} holds {len(found)} data sets ({where}): pass the folder of the one you want (unzip an archive "
            "first), or choose with --format"
        )
    if fmt != "auto":
        want = {
            "ml-100k": "u.data + u.item",
            "ml-1m": "ratings.dat + movies.dat",
            "ml-10m": "ratings.dat + movies.dat",
            "ml-csv": "ratings.csv + movies.csv",
            "recbole": "*.inter + *.item",
        }[fmt]
        raise DataError(f"{folder} does not hold the {fmt} layout (expected {want})")
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
    raise DataError(
        f"{folder}: no MovieLens layout found (looked for u.data + u.item, ratings.dat + movies.dat, "
        f"ratings.csv + movies.csv, *.inter + *.item; found {present}); for other data use --format csv "
        "--ratings-file FILE"
    )


def _generic_layout(source: Path, config: PrepareConfig) -> Layout:
    base = source if source.is_dir() else source.parent
    if config.ratings_file:
        ratings = _beside(config.ratings_file, base, "--ratings-file")
    elif source.is_file():
        ratings = source
    else:
        raise DataError(f"--format csv needs --ratings-file FILE (or SOURCE as the rating file); got folder {source}")
    movies = _beside(config.movies_file, base, "--movies-file") if config.movies_file else None
    return Layout(format="csv", ratings=ratings, movies=movies, folder=ratings.parent)


def _beside(given: str, base: Path, option: str) -> Path:
    """A relative ``--ratings-file``/``--movies-file``: the file in the current folder, else the one in SOURCE's
    folder ``base``; when both exist and differ, which one was meant is unknown, and embedrec does not guess."""
    path = Path(given)
    if path.is_absolute():
        return path
    inside = base / path
    if not path.exists():
        return inside if inside.exists() else path
    if inside.exists() and not os.path.samefile(path, inside):
        raise DataError(
            f"{option} {given} names two files, {path.resolve()} in the current folder and {inside} beside SOURCE: "
            "pass the path of the one you mean"
        )
    return path


# ------------------------------------------------------------------------------------------------------------ helpers
def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Heat (1995)"`` -> (``"Heat"``, 1995); titles without a year keep their text and get a null year."""
    import pandas as pd

    titles = titles.fillna("").astype(str).str.strip()
    parts = titles.str.extract(_TITLE_YEAR)
    has = parts["year"].notna()
    title = titles.where(~has, parts["title"].astype(str))
    year = pd.to_numeric(parts["year"], errors="coerce").astype("Int32")
    return title, year


def normalise_genres(genres: pd.Series, *, sep: str = "|", drop: tuple[str, ...] = ()) -> pd.Series:
    """Any genre separator -> pipe-joined string; empty -> ``(no genres listed)``. Order is kept as given."""
    drop_set = set(drop) | {NO_GENRES, ""}

    def one(text: object) -> str:
        if not isinstance(text, str):
            return NO_GENRES
        items = [g.strip() for g in text.split(sep)]
        kept = [g for g in items if g and g not in drop_set]
        return "|".join(dict.fromkeys(kept)) or NO_GENRES

    import pandas as pd

    return pd.Series([one(g) for g in genres], index=genres.index, dtype=object).astype(str)


def _movies_frame(movie_id: np.ndarray, title: pd.Series, year: pd.Series, genres: pd.Series) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "movie_id": np.asarray(movie_id, dtype=np.int64),
            "title": title.to_numpy(dtype=object),
            "year": pd.array(year, dtype="Int32"),
            "genres": genres.to_numpy(dtype=object),
        }
    ).astype({"title": str, "genres": str})


def _int_ids(values: list[str], *, path: Path, line_of: Callable[[int], int | None]) -> np.ndarray:
    """``values`` as int64 movie ids, read as the ratings' ids are (:func:`~embedrec.data.encode.parse_id`: plain
    digits, the spaces around them ignored); DataError naming the line (``line_of(i)``) of the first that is not one
    (``int()`` took "1_000" for 1000, and an id beyond 64 bits was an OverflowError traceback)."""
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        number = parse_id(v.strip())
        if number is None or not fits_int64(number):
            line = line_of(i)
            where = f", line {line}" if line is not None else ""
            kind = "an integer" if number is None else "within 64 bits (ids are 64-bit integers)"
            raise DataError(f"{path}{where}: movie id {v!r} is not {kind}")
        out[i] = number
    return out


_LINE_END = re.compile(r"\r\n|\r|\n")


def _text_lines(text: str) -> list[str]:
    """``text`` split at line ends only (``str.splitlines`` also splits at U+0085, which a Windows-1252 ellipsis
    read as latin-1 is, and at form feeds), so the numbers match an editor's lines and pyarrow's."""
    lines = _LINE_END.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


# ------------------------------------------------------------------------------------------------------ movie readers
def read_movies_csv(path: Path, *, id_col: str = "movieId", delimiter: str = ",") -> pd.DataFrame:
    """``movies.csv`` (movieId,title,genres; quoted titles may hold commas), UTF-8."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    head = check_text_file(path, what="movies")
    found = header_fields(head, path=path, delimiter=delimiter)
    for col in (id_col, "title"):
        if col not in found:
            raise missing_column_error(path, col, found, delimiter, None)
    types = {id_col: pa.string(), "title": pa.string()}
    if "genres" in found:
        types["genres"] = pa.string()
    try:
        table = pacsv.read_csv(
            str(path),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=list(types), strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        if "invalid UTF8" in str(exc):
            raise DataError(f"{path} is not valid UTF-8 text: re-save it as UTF-8") from None
        raise DataError(f"{path}: cannot parse ({str(exc).splitlines()[0]})") from None
    df = table.to_pandas()
    if df.empty:
        raise DataError(f"{path} has a header but no movie rows")
    ids = _int_ids(list(df[id_col]), path=path, line_of=lambda i: line_of_row(path, i, skip=1, quoted=delimiter))
    title, year = split_title_year(df["title"])
    genres = normalise_genres(df["genres"]) if "genres" in df else normalise_genres(df["title"].map(lambda _: ""))
    return _movies_frame(ids, title, year, genres)


def read_movies_dat(path: Path) -> pd.DataFrame:
    """``movies.dat`` (``MovieID::Title::Genres``): UTF-8, or latin-1 as in ml-1m."""
    import pandas as pd

    text = read_text(path, what="movies", encodings=("utf-8", "latin-1"))
    ids, titles, genres, lines = [], [], [], []
    for no, line in enumerate(_text_lines(text), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3:
            raise DataError(f"{path}, line {no}: expected MovieID::Title::Genres, got {line[:60]!r}")
        ids.append(parts[0])
        titles.append(parts[1])
        genres.append(parts[2])
        lines.append(no)
    ids_arr = _int_ids(ids, path=path, line_of=lines.__getitem__)
    title, year = split_title_year(pd.Series(titles, dtype=object))
    return _movies_frame(ids_arr, title, year, normalise_genres(pd.Series(genres, dtype=object)))


def read_movies_u_item(path: Path) -> pd.DataFrame:
    """ml-100k ``u.item``: pipe-separated, id|title|release date|video date|url|19 genre flags.

    GroupLens ships it in latin-1; a re-saved UTF-8 copy is read as UTF-8 (latin-1 would turn its accents into
    mojibake). Real latin-1 accents are never valid UTF-8, so trying UTF-8 first cannot misread the original.
    """
    import pandas as pd

    text = read_text(path, what="movies", encodings=("utf-8", "latin-1"))
    ids, titles, dates, genres, lines = [], [], [], [], []
    for no, line in enumerate(_text_lines(text), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 5 + len(ML100K_GENRES):
            raise DataError(
                f"{path}, line {no}: expected {5 + len(ML100K_GENRES)} '|'-separated fields, got {len(parts)}"
            )
        flags = parts[5 : 5 + len(ML100K_GENRES)]
        ids.append(parts[0])
        titles.append(parts[1])
        dates.append(parts[2])
        genres.append("|".join(g for g, f in zip(ML100K_GENRES, flags) if f.strip() == "1" and g != "unknown"))
        lines.append(no)
    ids_arr = _int_ids(ids, path=path, line_of=lines.__getitem__)
    title, year = split_title_year(pd.Series(titles, dtype=object))
    release = pd.to_numeric(pd.Series(dates, dtype=object).str.extract(r"(\d{4})\s*$")[0], errors="coerce")
    year = year.fillna(release.astype("Int32"))
    return _movies_frame(ids_arr, title, year, normalise_genres(pd.Series(genres, dtype=object)))


def read_movies_recbole(path: Path) -> pd.DataFrame:
    """RecBole ``.item``: tab-separated with ``name:type`` headers; ``class`` (or ``genre``) holds space-separated
    genres."""
    import pandas as pd

    text = read_text(path, what="movies", encodings=("utf-8", "latin-1"))
    rows = _text_lines(text)
    header = [h.split(":", 1)[0].strip() for h in rows[0].split("\t")]
    for col in ("item_id", "movie_title"):
        if col not in header:
            raise missing_column_error(path, col, header, "\t", None)
    pos = {name: header.index(name) for name in header}
    # RecBole's ml-100k ships the genres as `class`; its atomic-file docs (ml-1m) name them `genre`
    genre_col = next((name for name in ("class", "genre", "genres") if name in pos), None)
    ids, titles, years, genres, lines = [], [], [], [], []
    for no, line in enumerate(rows[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(header):
            raise DataError(f"{path}, line {no}: expected {len(header)} tab-separated fields, got {len(parts)}")
        ids.append(parts[pos["item_id"]])
        titles.append(parts[pos["movie_title"]])
        years.append(parts[pos["release_year"]] if "release_year" in pos else "")
        genres.append(parts[pos[genre_col]] if genre_col is not None else "")
        lines.append(no)
    if not ids:
        raise DataError(f"{path} has a header but no item rows")
    ids_arr = _int_ids(ids, path=path, line_of=lines.__getitem__)
    title, title_year = split_title_year(pd.Series(titles, dtype=object))
    year = pd.to_numeric(pd.Series(years, dtype=object), errors="coerce").astype("Int32").fillna(title_year)
    return _movies_frame(
        ids_arr, title, year, normalise_genres(pd.Series(genres, dtype=object), sep=" ", drop=("unknown",))
    )


def placeholder_movies(movie_ids: np.ndarray) -> pd.DataFrame:
    """Metadata for a generic rating file without a movies file: ``movie <id>``, no year, no genres."""
    import pandas as pd

    ids = dense_index(np.asarray(movie_ids))[1]  # np.unique: 20 s over 27M ratings on numpy 2.4, this 0.3 s
    title = pd.Series([f"movie {i}" for i in ids], dtype=object)
    return _movies_frame(
        ids, title, pd.Series([None] * len(ids), dtype="Int32"), pd.Series([NO_GENRES] * len(ids), dtype=object)
    )


# ------------------------------------------------------------------------------------------------------------ reading
def read_layout(layout: Layout, *, config: PrepareConfig) -> RawData:
    """Read ratings and movies of ``layout``; errors name the file and line."""
    fmt = layout.format
    nrows = config.nrows
    if fmt == "ml-100k":
        ratings = read_rating_columns(
            layout.ratings,
            columns=RatingColumns("user", "item", "rating", "time"),
            delimiter="\t",
            header=False,
            names=["user", "item", "rating", "time"],
            nrows=nrows,
            quoting=False,
            row_format="user id, item id, rating, timestamp, separated by tabs (ml-100k's u.data)",
        )
        movies = read_movies_u_item(layout.movies)  # type: ignore[arg-type]
    elif fmt in ("ml-1m", "ml-10m"):
        check_text_file(layout.ratings, what="ratings")
        data = layout.ratings.read_bytes().replace(b"::", b"\t")
        ratings = read_rating_columns(
            layout.ratings,
            columns=RatingColumns("user", "item", "rating", "time"),
            delimiter="\t",
            header=False,
            names=["user", "item", "rating", "time"],
            nrows=nrows,
            data=data,
            quoting=False,
            row_format=f"UserID::MovieID::Rating::Timestamp ({fmt}'s ratings.dat)",
        )
        del data
        movies = read_movies_dat(layout.movies)  # type: ignore[arg-type]
    elif fmt == "ml-csv":
        _check_ml_csv_header(layout)
        ratings = read_rating_columns(
            layout.ratings,
            columns=RatingColumns("userId", "movieId", "rating", "timestamp"),
            delimiter=",",
            header=True,
            nrows=nrows,
            row_format="userId,movieId,rating,timestamp (the ml-csv layout's ratings.csv)",
        )
        movies = read_movies_csv(layout.movies)  # type: ignore[arg-type]
    elif fmt == "recbole":
        head = check_text_file(layout.ratings, what="ratings")
        raw_names = header_fields(head, path=layout.ratings, delimiter="\t")
        names = [h.split(":", 1)[0] for h in raw_names]
        for col in ("user_id", "item_id", "rating"):
            if col not in names:
                raise missing_column_error(layout.ratings, col, names, "\t", None)
        data = layout.ratings.read_bytes().split(b"\n", 1)[1] if b"\n" in head else b""
        ratings = read_rating_columns(
            layout.ratings,
            columns=RatingColumns("user_id", "item_id", "rating", "timestamp" if "timestamp" in names else None),
            delimiter="\t",
            header=False,
            names=names,
            nrows=nrows,
            data=data,
            quoting=False,
            time_as_float=True,
            row_format=f"the {len(names)} tab-separated fields its header names",
            line_offset=1,
        )
        movies = read_movies_recbole(layout.movies)  # type: ignore[arg-type]
    elif fmt == "csv":
        opts = {"user": "--user-col", "movie": "--movie-col", "rating": "--rating-col", "time": "--time-col"}
        # the default time column is not asked for by name: a file without it simply has no timestamps
        columns = RatingColumns(
            config.user_col,
            config.movie_col,
            config.rating_col,
            config.time_col or None,
            time_optional=config.time_col == DEFAULT_TIME_COL,
        )
        _check_generic_delimiters(layout, config)
        ratings = read_rating_columns(
            layout.ratings,
            columns=columns,
            delimiter=config.delimiter,
            header=True,
            nrows=nrows,
            options=opts,
        )
        if layout.movies is not None:
            movies = read_movies_csv(
                layout.movies, id_col=_movie_id_col(layout.movies, config), delimiter=_movies_delimiter(config)
            )
        else:
            movies = placeholder_movies(ratings.movie_id)
        return RawData(
            format=fmt,
            ratings=ratings,
            movies=movies,
            movies_file=str(layout.movies or layout.ratings),
            rating_scale=config.rating_scale,
            scale_source="--rating-scale" if config.rating_scale is not None else None,
        )
    else:  # pragma: no cover - detect_layout only returns the formats above
        raise DataError(f"unknown format {fmt!r}")
    if config.rating_scale is not None:  # the user's scale, on any layout
        scale, source = config.rating_scale, "--rating-scale"
    else:
        scale, source = SCALES[fmt], "format"
    return RawData(
        format=fmt,
        ratings=ratings,
        movies=movies,
        movies_file=str(layout.movies),
        rating_scale=scale,
        scale_source=source,
    )


ML_CSV_COLUMNS = ("userId", "movieId", "rating", "timestamp")


def _check_ml_csv_header(layout: Layout) -> None:
    """An ml-csv ``ratings.csv`` has exactly MovieLens' columns, comma-separated; one that differs (no timestamps,
    other names, another delimiter) is readable as a generic CSV, and the error says how: the ``--delimiter`` and
    ``--*-col`` options apply to that layout only."""
    head = check_text_file(layout.ratings, what="ratings")
    found = header_fields(head, path=layout.ratings, delimiter=",")
    missing = [col for col in ML_CSV_COLUMNS if col not in found]
    movies_found: list[str] = []
    if layout.movies is not None:
        movies_found = header_fields(check_text_file(layout.movies, what="movies"), path=layout.movies, delimiter=",")
    movies_guess = guess_delimiter(movies_found, ",") if "movieId" not in movies_found else None
    if not missing and movies_guess is None:
        return
    generic = "--format csv " + " ".join(
        f"{flag} {_shell_word(_source_relative(path, layout))}"
        for flag, path in (("--ratings-file", layout.ratings), ("--movies-file", layout.movies))
        if path is not None
    )
    if not missing:
        assert layout.movies is not None and movies_guess is not None
        raise missing_column_error(
            layout.movies,
            "movieId",
            movies_found,
            ",",
            None,
            hint=f"; it seems to use {movies_guess!r} as delimiter, and the ml-csv layout is comma-separated: read "
            f"it as the generic CSV layout, pass {generic} --movies-delimiter {_shell_word(movies_guess)}",
        )
    guess = guess_delimiter(found, ",")
    if guess is not None:
        hint = (
            f"; it seems to use {guess!r} as delimiter, and the ml-csv layout is comma-separated: read it as the "
            f"generic CSV layout, pass {generic} --delimiter {_shell_word(guess)}"
            + (" --movies-delimiter ," if "movieId" in movies_found else "")
        )
    elif missing == ["timestamp"]:
        hint = (
            "; the ml-csv layout needs one: to read ratings without timestamps, pass the generic CSV layout: "
            f"{generic} (its timestamp column is optional)"
        )
    else:
        hint = (
            f"; the ml-csv layout needs {', '.join(ML_CSV_COLUMNS)}: for other column names pass the generic CSV "
            f"layout, {generic}, with --user-col, --movie-col, --rating-col and --time-col naming yours"
        )
    raise missing_column_error(layout.ratings, missing[0], found, ",", None, hint=hint)


def _source_relative(path: Path, layout: Layout) -> str:
    """``path`` as ``--ratings-file``/``--movies-file`` should name it beside the same SOURCE: relative to the
    folder (or archive) the user passed, where the generic layout looks first."""
    if layout.root is not None:
        try:
            return path.relative_to(layout.root).as_posix()
        except ValueError:
            pass
    return str(path)


def _shell_word(text: str) -> str:
    import shlex

    return "'\\t'" if text == "\t" else shlex.quote(text)


def _movies_delimiter(config: PrepareConfig) -> str:
    return config.movies_delimiter if config.movies_delimiter is not None else config.delimiter


def _movie_id_col(path: Path, config: PrepareConfig) -> str:
    head = check_text_file(path, what="movies")
    found = header_fields(head, path=path, delimiter=_movies_delimiter(config))
    return config.movie_col if config.movie_col in found else "movieId"


def _check_generic_delimiters(layout: Layout, config: PrepareConfig) -> None:
    """A header read as one field under its delimiter, that another delimiter would split: the advice names each
    file's delimiter and the flags that read both, since ``--delimiter`` applies to the movies file too unless
    ``--movies-delimiter`` is given (a TSV rating file beside a CSV movies file is common)."""
    r_sep, m_sep = config.delimiter, _movies_delimiter(config)
    r_found = header_fields(check_text_file(layout.ratings, what="ratings"), path=layout.ratings, delimiter=r_sep)
    r_guess = guess_delimiter(r_found, r_sep) if config.user_col not in r_found else None
    m_found: list[str] = []
    m_guess = None
    if layout.movies is not None:
        m_found = header_fields(check_text_file(layout.movies, what="movies"), path=layout.movies, delimiter=m_sep)
        if not {config.movie_col, "movieId", "title"} & set(m_found):
            m_guess = guess_delimiter(m_found, m_sep)
    if r_guess is None and m_guess is None:
        return
    r_new, m_new = r_guess or r_sep, m_guess or m_sep
    flags = []
    if r_new != r_sep:
        flags.append(f"--delimiter {_shell_word(r_new)}")
    if layout.movies is not None and (config.movies_delimiter or r_new) != m_new:
        flags.append(f"--movies-delimiter {_shell_word(m_new)}")
    fix = f"pass {' '.join(flags)}"
    if r_guess is not None:
        also = f", and the movies file {layout.movies} {m_new!r}" if layout.movies is not None else ""
        raise missing_column_error(
            layout.ratings,
            config.user_col,
            r_found,
            r_sep,
            None,
            hint=f"; it seems to use {r_new!r} as delimiter{also}: {fix}",
        )
    assert layout.movies is not None
    raise missing_column_error(
        layout.movies,
        "movieId",  # what read_movies_csv asks for when the header names neither it nor --movie-col
        m_found,
        m_sep,
        None,
        hint=f"; it seems to use {m_new!r} as delimiter, and the ratings file {layout.ratings} {r_sep!r}: {fix}",
    )
