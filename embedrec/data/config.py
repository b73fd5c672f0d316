"""Settings of ``embedrec prepare``: one frozen dataclass, validated on creation.

Synopsis::

    from embedrec.data.config import PrepareConfig
    cfg = PrepareConfig(split="temporal", test_frac=0.1, val_frac=0.1, seed=7)

Every check raises :class:`~embedrec.errors.ConfigError` naming the command-line option, so the CLI can pass values
through unchanged and the user sees which flag to fix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from embedrec.errors import ConfigError

SPLITS = ("random", "temporal", "leave-last-out")
FORMATS = ("auto", "ml-100k", "ml-1m", "ml-10m", "ml-csv", "recbole", "csv")


def parse_rating_scale(text: str | None) -> tuple[float, float] | None:
    """``"0.5,5"`` -> ``(0.5, 5.0)``; ``None`` or ``""`` -> no scale check."""
    if text is None or not str(text).strip():
        return None
    parts = str(text).split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--rating-scale must be MIN,MAX (two numbers), got {text!r}") from None
    return (lo, hi)


DEFAULT_TIME_COL = "timestamp"
SEED_LIMIT = 2**32 - 1  # the same range as training seeds


@dataclass(frozen=True)
class PrepareConfig:
    """How to read, filter and split the ratings.

    The CSV options (``ratings_file`` .. ``time_col``) matter only for ``format="csv"`` (a generic rating file); the
    MovieLens layouts know their own files and columns. ``rating_scale`` applies to every layout: without it a
    MovieLens or RecBole layout checks its usual scale (see :mod:`embedrec.data.validate`) and a generic CSV none.
    """

    split: str = "random"
    test_frac: float = 0.2
    val_frac: float = 0.1
    seed: int = 42
    nrows: int | None = None
    min_user_ratings: int = 1
    min_movie_ratings: int = 1
    strict: bool = False
    format: str = "auto"
    ratings_file: str | None = None
    movies_file: str | None = None
    delimiter: str = ","
    movies_delimiter: str | None = None  # None: the movies file uses ``delimiter`` too
    user_col: str = "userId"
    movie_col: str = "movieId"
    rating_col: str = "rating"
    time_col: str | None = DEFAULT_TIME_COL  # the default is optional: a file without it has no timestamps
    rating_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        for name, value in (("--test-frac", self.test_frac), ("--val-frac", self.val_frac)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
        if self.test_frac + self.val_frac >= 1.0:
            raise ConfigError(
                f"--test-frac + --val-frac must be below 1 (got {self.test_frac} + {self.val_frac}): "
                "nothing would be left to train on"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_LIMIT:
            raise ConfigError(f"--seed must be a whole number in 0..{SEED_LIMIT}, got {self.seed!r}")
        if self.nrows is not None and (not isinstance(self.nrows, int) or self.nrows < 1):
            raise ConfigError(f"--nrows must be a positive integer, got {self.nrows!r}")
        mins = (("--min-user-ratings", self.min_user_ratings), ("--min-movie-ratings", self.min_movie_ratings))
        for name, value in mins:
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        for flag, sep in (("--delimiter", self.delimiter), ("--movies-delimiter", self.movies_delimiter)):
            if sep is not None and (len(sep) != 1 or sep in '\r\n"'):
                raise ConfigError(f"{flag} must be one character (e.g. ',' ';' or a tab), got {sep!r}")
        cols = (("--user-col", self.user_col), ("--movie-col", self.movie_col), ("--rating-col", self.rating_col))
        for name, column in cols:
            if not column:
                raise ConfigError(f"{name} must name a column")
        named = [self.user_col, self.movie_col, self.rating_col] + ([self.time_col] if self.time_col else [])
        if len(set(named)) < len(named):
            raise ConfigError("--user-col, --movie-col, --rating-col and --time-col must name different columns")
        if self.rating_scale is not None:
            lo, hi = self.rating_scale
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"--rating-scale MIN,MAX needs finite MIN < MAX, got {lo},{hi}")

    def split_info(self) -> dict[str, Any]:
        """The ``split`` block of ``summary.json``."""
        return {"method": self.split, "test_frac": self.test_frac, "val_frac": self.val_frac, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rating_scale"] = list(self.rating_scale) if self.rating_scale else None
        return d
