"""The small CSV files a user hands to ``predict`` and ``recommend``: (user, movie) pairs, their own ratings, user ids.

Synopsis::

    from embedrec.data.user_files import read_pairs, read_user_ids, read_user_ratings
    pairs = read_pairs(Path("pairs.csv"))          # DataFrame userId, movieId: the text as written
    mine = read_user_ratings(Path("mine.csv"))     # DataFrame movieId (int64), rating (float64)
    users = read_user_ids(Path("users.txt"))       # int64 array: one id a line, or a CSV with a userId column

Headers are matched case-insensitively and without underscores (``movieId``, ``movie_id``, ``MOVIEID``). Ids are read
as exact integers, never through float64: 9007199254740993 stays itself. An id is a plain decimal integer
(:func:`~embedrec.data.encode.parse_id`, the spaces around a cell ignored): ``1.5``, ``42.0``, ``1_000`` and ``+5`` are
not ids. Every bad
input is a :class:`~embedrec.errors.DataError` naming the option, the file and the line (the header is line 1).
``option`` is the flag that named the file, so the message reads in the user's terms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedrec.data.encode import exact_int, fits_int64
from embedrec.data.readers import lines_of_rows
from embedrec.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


def read_pairs(path: Path, *, option: str = "--input") -> pd.DataFrame:
    """userId, movieId columns as the stripped text of the file: the recommender reads each id exactly and reports
    what it cannot find (or is not an integer) as unknown, row by row, instead of failing the whole file."""
    import pandas as pd

    frame = _read_text_csv(path, option)
    cols = _columns(frame, "userid", "movieid", path=path, option=option)
    return pd.DataFrame({"userId": frame[cols["userid"]].str.strip(), "movieId": frame[cols["movieid"]].str.strip()})


def read_user_ratings(path: Path, *, option: str = "--ratings") -> pd.DataFrame:
    """movieId (int64) and rating (float64) of one new user's ratings; refuses a non-integer id or a non-number."""
    import pandas as pd

    frame = _read_text_csv(path, option)
    cols = _columns(frame, "movieid", "rating", path=path, option=option)
    if frame.empty:
        raise DataError(f"{option}: {path} has no ratings")
    movie_ids = _integer_ids(
        frame[cols["movieid"]].tolist(), path=path, option=option, what="movieId", line_of=lambda i: _line(path, i)
    )
    ratings = pd.to_numeric(frame[cols["rating"]].str.strip(), errors="coerce")
    bad = ratings.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{option}: {path}{_at(path, row)}: rating {frame[cols['rating']].iloc[row]!r} is not a number")
    repeated = pd.Series(movie_ids).duplicated(keep=False).to_numpy()
    if repeated.any():  # two ratings of one movie: which one the user meant is not ours to guess
        twice = movie_ids[int(repeated.argmax())]
        first, second = (int(r) for r in np.flatnonzero(movie_ids == twice)[:2])
        lines = _lines(path, [first, second])
        where = f" lines {lines[0]} and {lines[1]}" if None not in lines else ""
        raise DataError(f"{option}: {path}{where} both rate movie {twice}: keep one of the two rows")
    return pd.DataFrame({"movieId": movie_ids, "rating": ratings.to_numpy(np.float64)})


def check_user_ratings(
    mine: pd.DataFrame,
    path: Path,
    *,
    known: np.ndarray,
    scale: tuple[float, float],
    option: str = "--ratings",
) -> None:
    """DataError naming the file and line of the first rating a model cannot fold in: a movie it does not know
    (``known`` is False for it; :func:`read_user_ratings`' row order) or a rating outside its ``scale``."""
    unknown = np.flatnonzero(~np.asarray(known, dtype=bool))
    if unknown.size:
        row = int(unknown[0])
        more = f" (and {unknown.size - 1} more)" if unknown.size > 1 else ""
        raise DataError(
            f"{option}: {path}{_at(path, row)}: movie {int(mine['movieId'].iloc[row])} is not known to the model"
            f"{more}: it was not in the data the model was trained on; remove the row, or retrain with it"
        )
    lo, hi = scale
    values = mine["rating"].to_numpy(np.float64)
    outside = np.flatnonzero(~np.isfinite(values) | (values < lo) | (values > hi))
    if outside.size:
        row = int(outside[0])
        raise DataError(
            f"{option}: {path}{_at(path, row)}: rating {values[row]:g} is outside the model's rating scale "
            f"{lo:g}..{hi:g}"
        )


def read_user_ids(path: Path, *, option: str = "--users-file") -> np.ndarray:
    """User ids (int64): one per line (text after a comma ignored), or a CSV whose header has a userId column."""
    if not path.is_file():
        raise DataError(f"{option}: {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{option}: {path} is not UTF-8 text ({exc})") from None
    first = next((line for line in lines if line.strip()), "")
    # a header names its columns; a first id that is a number in another notation ("1_000", "+5") is a bad id, not a
    # header, but a header's name may hold digits (pandas' "Unnamed: 0" index column, "user2")
    header = bool(first) and not _reads_as_number(first.split(",")[0])
    if header:
        frame = _read_text_csv(path, option)
        column = _columns(frame, "userid", path=path, option=option)["userid"]
        values = frame[column].tolist()
    else:
        values = [line.split(",")[0] for line in lines]
    keep = [i for i, v in enumerate(values) if str(v).strip()]
    ids = _integer_ids(
        [values[i] for i in keep],
        path=path,
        option=option,
        what="user id",
        line_of=(lambda i: _line(path, keep[i])) if header else (lambda i: keep[i] + 1),
    )
    if ids.size == 0:
        raise DataError(f"{option}: {path} holds no user ids")
    return ids


def _reads_as_number(text: str) -> bool:
    """Whether ``text`` is a number in some notation Python reads (42, 1_000, +5, 5.0, 1e3, 0x10): the first line of
    a users file that starts with one is an id (a bad one unless in plain digits), not a header."""
    text = text.strip()
    if not any(ch.isdigit() for ch in text):  # "nan", "inf" are header names here
        return False
    for read in (int, float, lambda t: int(t, 0)):
        try:
            read(text)
        except ValueError:
            continue
        return True
    return False


def _read_text_csv(path: Path, option: str) -> pd.DataFrame:
    """Every cell as text (no type guessing: ids must not pass through float64)."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{option}: {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())  # pandas' tokenizer messages end in a newline
        raise DataError(
            f"{option}: {path} is not a readable CSV ({detail}): save it as comma-separated text with one header "
            "row and the same number of fields on every row"
        ) from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the extra leading fields of a long row as an index
        raise DataError(
            f"{option}: {path}{_at(path, 0)} has more fields than the header's {len(frame.columns)}: give every row "
            "the header's fields (a value holding a comma must be quoted)"
        )
    return frame


def _columns(frame: pd.DataFrame, *wanted: str, path: Path, option: str) -> dict[str, str]:
    """{normalised name: header as written} of the ``wanted`` columns (normalised: lower case, no ``_``)."""
    found = {str(c).strip().lower().replace("_", ""): str(c) for c in frame.columns}
    missing = [w for w in wanted if w not in found]
    if missing:
        names = {"userid": "userId", "movieid": "movieId", "rating": "rating"}
        raise DataError(
            f"{option}: {path} needs a header with {' and '.join(names[w] for w in wanted)} "
            f"column(s), found {', '.join(map(str, frame.columns)) or 'none'}"
        )
    return {w: found[w] for w in wanted}


def _lines(path: Path, rows: list[int]) -> list[int | None]:
    """The lines of ``path`` holding data rows ``rows`` of :func:`_read_text_csv`'s frame: pandas skips blank lines
    (and lines of only spaces), so this counts them again (error paths only). None: the file changed or is gone."""
    return lines_of_rows(path, rows, skip=1, spaces_blank=True, quoted=",")


def _line(path: Path, row: int) -> int | None:
    return _lines(path, [row])[0]


def _at(path: Path, row: int) -> str:
    line = _line(path, row)
    return f" line {line}" if line is not None else ""


def _integer_ids(
    values: list[object], *, path: Path, option: str, what: str, line_of: Callable[[int], int | None]
) -> np.ndarray:
    """``values`` as int64 ids; DataError naming the line (``line_of(i)``) of the first one that is not an integer
    or too large."""
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        number = exact_int(value)
        if number is None or not fits_int64(number):
            line = line_of(i)
            where = f" line {line}" if line is not None else ""
            if number is None:
                raise DataError(f"{option}: {path}{where}: {what} {str(value).strip()!r} is not an integer")
            raise DataError(f"{option}: {path}{where}: {what} {number} is out of range (ids are 64-bit integers)")
        out[i] = number
    return out
