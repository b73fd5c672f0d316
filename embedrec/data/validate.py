"""Drop (and count) bad rating rows, encode ids densely, apply the minimum-count filters.

Synopsis::

    clean = clean_ratings(raw, config=PrepareConfig())
    clean.user_idx, clean.movie_idx, clean.rating, clean.timestamp, clean.user_ids, clean.movies
    clean.dropped   # {"bad_rating": 3, "bad_timestamp": 0, "unknown_movie": 1, "duplicate": 2}

Bad rows inside an otherwise good file are dropped, never guessed at: a NaN or out-of-scale rating, an unparsable
timestamp, a movie id without a metadata row, and repeated (user, movie) pairs, of which the latest rating is kept
(latest timestamp; the later row on a tie). With ``strict`` any of them is a DataError naming the first offending line.

The scale a rating is checked against is ``--rating-scale`` when given, else the layout's usual scale (MovieLens's
0.5..5 or 1..5). A file in a MovieLens or RecBole layout may hold ratings on another scale (0..1, 1..10, -10..10):
when at least :data:`OTHER_SCALE_MIN_ROWS` ratings and :data:`OTHER_SCALE_MIN_SHARE` of them lie outside the usual
scale, they are the data's own scale, not bad rows, and every rating is kept (``CleanRatings.scale`` says so, and
``prepare`` prints it); a few stray values in a file on the usual scale are still dropped as bad.

Duplicates are found by sorting one int64 key per row (``user_idx * n_movies + movie_idx``), which is several times
faster and leaner than ``DataFrame.duplicated``; the full argsort only runs when a duplicate exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.data.config import PrepareConfig
from embedrec.data.encode import compact, dense_index, lookup_index
from embedrec.data.layouts import RawData
from embedrec.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

OTHER_SCALE_MIN_ROWS = 20
OTHER_SCALE_MIN_SHARE = 0.01
DROP_REASONS = ("bad_rating", "bad_timestamp", "unknown_movie", "duplicate")
_DESCRIBE = {
    "bad_rating": "a missing, non-finite or out-of-scale rating",
    "bad_timestamp": "an unparsable timestamp",
    "unknown_movie": "a movie id with no row in the movies file",
    "duplicate": "a repeated (user, movie) pair",
    "duplicate_movie_row": "a movie id listed twice in the movies file",
}


@dataclass
class CleanRatings:
    """Encoded, filtered ratings. ``movies`` has one row per ``movie_idx`` in order; ``user_ids[user_idx]`` is raw."""

    user_idx: np.ndarray
    movie_idx: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    movies: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    n_read: int = 0
    # the scale the ratings were checked against: {"min", "max", "source"} ("--rating-scale" or "format"), or
    # {"min": None, "max": None, "source": "data", "usual": [lo, hi], "outside_usual": n} when the file's ratings
    # were on another scale than its layout's usual one; None without a scale (a generic CSV without --rating-scale)
    scale: dict[str, Any] | None = None


def _strict_error(reason: str, count: int, file: str, line: int | None, detail: str = "") -> DataError:
    where = f"{file}, line {line}" if line is not None else file
    more = f" ({count} such rows in all)" if count > 1 else ""
    return DataError(
        f"{where}: {_DESCRIBE[reason]}{detail}{more}; fix the data or run without --strict to drop such rows"
    )


def _dedupe_movies(movies: pd.DataFrame, *, strict: bool, file: str) -> tuple[pd.DataFrame, int]:
    """Sort the movie table by raw id; keep the first row of a repeated id."""
    dup = movies["movie_id"].duplicated(keep="first").to_numpy()
    n_dup = int(dup.sum())
    if n_dup and strict:
        raise _strict_error("duplicate_movie_row", n_dup, file, None)
    if n_dup:
        movies = movies.loc[~dup]
    return movies.sort_values("movie_id", kind="stable").reset_index(drop=True), n_dup


def _latest_duplicates(key: np.ndarray, timestamp: np.ndarray) -> np.ndarray | None:
    """Positions (into ``key``) of rows to drop because a later rating of the same pair exists; None when none."""
    sorted_key = np.sort(key)
    if not np.any(sorted_key[1:] == sorted_key[:-1]):
        return None
    del sorted_key
    order = np.argsort(key, kind="stable")
    ks = key[order]
    same = ks[1:] == ks[:-1]
    del ks
    in_group = np.zeros(len(order), dtype=bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    rows = order[in_group]  # every row of a repeated pair
    del order, in_group, same
    # sort those rows by (key, timestamp, row): the last of each key is the one to keep
    sub = rows[np.lexsort((rows, timestamp[rows], key[rows]))]
    sub_key = key[sub]
    last = np.ones(len(sub), dtype=bool)
    last[:-1] = sub_key[1:] != sub_key[:-1]
    return np.sort(sub[~last])


def clean_ratings(raw: RawData, *, config: PrepareConfig) -> CleanRatings:
    """Validate, encode and filter ``raw``; see the module docstring for the rules."""
    r = raw.ratings
    n = len(r)
    movies, n_dup_movies = _dedupe_movies(raw.movies, strict=config.strict, file=raw.movies_file)
    dropped = {k: 0 for k in DROP_REASONS}
    if n_dup_movies:
        dropped["duplicate_movie_row"] = n_dup_movies

    line_of = r.line_of  # counts the file's lines again: only on the error paths below
    bad = ~np.isfinite(r.rating)
    scale: dict[str, Any] | None = None
    if raw.rating_scale is not None:
        lo, hi = raw.rating_scale
        with np.errstate(invalid="ignore"):
            outside = (r.rating < lo) | (r.rating > hi)
        n_outside = int(outside.sum())
        finite = n - int(bad.sum())
        if (
            raw.scale_source == "format"
            and n_outside >= OTHER_SCALE_MIN_ROWS
            and n_outside >= OTHER_SCALE_MIN_SHARE * finite
        ):  # the data's own scale, not stray values: keep them
            scale = {"min": None, "max": None, "source": "data", "usual": [lo, hi], "outside_usual": n_outside}
        else:
            bad |= outside
            scale = {"min": lo, "max": hi, "source": raw.scale_source or "format"}
        del outside
    dropped["bad_rating"] = int(bad.sum())
    if dropped["bad_rating"] and config.strict:
        pos = int(np.argmax(bad))
        on = f", scale {raw.rating_scale[0]:g}..{raw.rating_scale[1]:g}" if raw.rating_scale else ""
        raise _strict_error(
            "bad_rating", dropped["bad_rating"], r.file, line_of(pos), f" ({float(r.rating[pos]):g}{on})"
        )
    keep = ~bad
    del bad
    if r.bad_timestamp is not None:
        bad_ts = r.bad_timestamp & keep
        dropped["bad_timestamp"] = int(bad_ts.sum())
        if dropped["bad_timestamp"] and config.strict:
            raise _strict_error("bad_timestamp", dropped["bad_timestamp"], r.file, line_of(int(np.argmax(bad_ts))))
        keep &= ~r.bad_timestamp
        del bad_ts
        r.bad_timestamp = None

    movie_ids = movies["movie_id"].to_numpy(dtype=np.int64)
    midx = lookup_index(r.movie_id, movie_ids)
    unknown = (midx < 0) & keep
    dropped["unknown_movie"] = int(unknown.sum())
    if dropped["unknown_movie"] and config.strict:
        pos = int(np.argmax(unknown))
        line = line_of(pos)
        raise DataError(
            f"{r.file}{f', line {line}' if line is not None else ''}: movie id {int(r.movie_id[pos])} has no row in "
            f"{raw.movies_file}"
            + (f" ({dropped['unknown_movie']} such rows in all)" if dropped["unknown_movie"] > 1 else "")
            + "; fix the data or run without --strict to drop such rows"
        )
    keep &= midx >= 0
    del unknown
    r.movie_id = np.zeros(0, dtype=np.int64)

    uidx, user_ids = dense_index(r.user_id)
    r.user_id = np.zeros(0, dtype=np.int64)

    if not keep.all():
        kept_pos = np.flatnonzero(keep)
        uidx, midx = uidx[kept_pos], midx[kept_pos]
        rating, timestamp = r.rating[kept_pos], r.timestamp[kept_pos]
    else:
        kept_pos = None
        rating, timestamp = r.rating, r.timestamp
    r.rating = r.timestamp = np.zeros(0)
    del keep
    if len(uidx) == 0:
        hint = ""
        if dropped.get("bad_timestamp") and max(dropped, key=lambda k: dropped[k]) == "bad_timestamp":
            hint = (
                ": timestamps must be Unix times in seconds (a date like 2020-01-31 is not one); convert them, or "
                "read the file as a generic CSV without them (--format csv --time-col '')"
            )
        raise DataError(f"{r.file}: no valid ratings left after dropping bad rows ({_fmt_counts(dropped)}){hint}")

    key = uidx.astype(np.int64) * np.int64(len(movie_ids)) + midx
    dup = _latest_duplicates(key, timestamp)
    del key
    if dup is not None:
        dropped["duplicate"] = len(dup)
        if config.strict:
            pos = int(kept_pos[dup[0]]) if kept_pos is not None else int(dup[0])
            raise _strict_error("duplicate", len(dup), r.file, line_of(pos))
        keep2 = np.ones(len(uidx), dtype=bool)
        keep2[dup] = False
        uidx, midx, rating, timestamp = uidx[keep2], midx[keep2], rating[keep2], timestamp[keep2]
    del kept_pos

    filtered = {"min_user_ratings": 0, "min_movie_ratings": 0}
    if config.min_user_ratings > 1 or config.min_movie_ratings > 1:
        for _ in range(100):
            ucount = np.bincount(uidx, minlength=len(user_ids))
            mcount = np.bincount(midx, minlength=len(movie_ids))
            ok = (ucount[uidx] >= config.min_user_ratings) & (mcount[midx] >= config.min_movie_ratings)
            if ok.all():
                break
            filtered["min_user_ratings"] += int((ucount[uidx] < config.min_user_ratings).sum())
            filtered["min_movie_ratings"] += int(((ucount[uidx] >= config.min_user_ratings) & ~ok).sum())
            uidx, midx, rating, timestamp = uidx[ok], midx[ok], rating[ok], timestamp[ok]
        if len(uidx) == 0:
            raise DataError(
                f"no ratings left after --min-user-ratings {config.min_user_ratings} / --min-movie-ratings "
                f"{config.min_movie_ratings}: lower them"
            )

    uidx, old_users = compact(uidx, n=len(user_ids))
    midx, old_movies = compact(midx, n=len(movie_ids))
    movies = movies.iloc[old_movies].reset_index(drop=True)
    return CleanRatings(
        user_idx=uidx,
        movie_idx=midx,
        rating=np.ascontiguousarray(rating, dtype=np.float32),
        timestamp=np.ascontiguousarray(timestamp, dtype=np.int64),
        user_ids=user_ids[old_users],
        movies=movies,
        dropped=dropped,
        filtered=filtered,
        n_read=n,
        scale=scale,
    )


def _fmt_counts(counts: dict[str, int]) -> str:
    parts = [f"{k}: {v}" for k, v in counts.items() if v]
    return ", ".join(parts) or "none"
