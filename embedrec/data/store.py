"""The prepared data set on disk: the only code that writes or reads it.

Synopsis::

    from embedrec.data import load_prepared
    data = load_prepared(".embedrec/data")
    train = data.split_mask("train")
    data.user_idx[train], data.movie_idx[train], data.rating[train]
    data.user_vocab.index(42), data.movie_vocab.indices(np.array([1, 2, 999999]))   # -> int, array([...,-1])

Folder layout (schema_version 1; this is the contract ``train`` and the recommender code against):

- ``ratings.parquet``: ``user_idx`` int32, ``movie_idx`` int32, ``rating`` float32, ``timestamp`` int64 (unix seconds;
  0 when the source has none), ``split`` int8 (0 = train, 1 = val, 2 = test). Rows in source order after filtering.
- ``movies.parquet``: one row per ``movie_idx`` in order 0..n_movies-1: ``movie_idx`` int32, ``movie_id`` int64 (raw),
  ``title`` string (no year suffix), ``year`` Int32 (null when unknown), ``genres`` string (pipe-joined;
  ``(no genres listed)`` when none), ``genre_str_idx`` int32 (index of the whole genre string), ``genre_list``
  list<string> (single genres; empty for none).
- ``users.parquet``: ``user_idx`` int32, ``user_id`` int64, in index order.
- ``vocab.json``: ``{"schema_version": 1, "genres": [single genres, sorted], "genre_strings": [whole strings in
  genre_str_idx order, sorted]}``.
- ``summary.json``: ``schema_version``, ``format``, ``source``, ``n_ratings``, ``n_users``, ``n_movies``,
  ``n_genre_strings``, ``n_genres``, ``rating_min``, ``rating_max``, ``rating_mean``, ``n_train``, ``n_val``,
  ``n_test``, ``split`` {method, test_frac, val_frac, seed}, ``dropped`` {reason: count}, ``filtered`` {filter: count},
  ``n_movies_rated`` and ``n_users_rated`` {split: movies / users with a rating in it}, ``fingerprint``, ``created``
  (ISO time), ``n_read`` (rating rows read), ``user_index`` (what the next item's files hold, with their own
  ``schema_version``). Folders prepared before ``n_movies_rated`` or ``n_users_rated`` existed lack them and still load.
- ``user_ratings_*.npy``, ``movie_rating_*.npy``: every user's rated movies as CSR and per-movie rating counts and
  sums, memory-mapped by :func:`load_prepared` so that serving one user never reads ``ratings.parquet``
  (:mod:`embedrec.data.user_index`). Folders an older embedrec prepared lack them and still load: serving then reads
  every rating, as before, and says that ``prepare`` again makes it fast.

Indices are dense and follow the sorted raw ids; only users and movies with kept ratings are present. The
``fingerprint`` is a blake2b digest (16 hex) of the five rating arrays and the four vocabulary sizes: training stores
it and refuses to resume on different data.

``load_prepared(path, lazy=True)`` reads ``ratings.parquet`` only when a rating array is first used, and
``movies.parquet`` when the movie table is (both files are opened at load time, so a ``prepare`` replacing the folder
meanwhile cannot swap them).

Writing is atomic: everything goes to a hidden sibling folder that replaces ``out`` by rename only when complete, and
``summary.json`` is written last, so an interrupted prepare never leaves a folder that :func:`load_prepared` accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from embedrec.data.split import SPLIT_CODES
from embedrec.data.user_index import FILE_NAMES as INDEX_FILE_NAMES
from embedrec.data.user_index import UserIndex, build_user_index, n_distinct, open_user_index, write_user_index
from embedrec.errors import ArtifactError, ConfigError
from embedrec.locks import folder_lock
from embedrec.tempfiles import name_target, sweep_stale
from embedrec.vocab import Vocabulary

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
CORE_FILES = ("ratings.parquet", "movies.parquet", "users.parquet", "vocab.json", "summary.json")
FILES = CORE_FILES + INDEX_FILE_NAMES  # everything prepare writes (the index is absent in older folders)
RATING_COLUMNS = {"user_idx": "int32", "movie_idx": "int32", "rating": "float32", "timestamp": "int64", "split": "int8"}
_HOW = "run `embedrec prepare` (or pass the folder it wrote)"


def fingerprint(
    user_idx: np.ndarray,
    movie_idx: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    split: np.ndarray,
    *,
    n_users: int,
    n_movies: int,
    n_genres: int,
    n_genre_strings: int,
) -> str:
    """Short digest identifying the encoded ratings (the data a model was trained on)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([len(user_idx), n_users, n_movies, n_genres, n_genre_strings]).encode())
    for arr, dtype in (
        (user_idx, np.int32),
        (movie_idx, np.int32),
        (rating, np.float32),
        (timestamp, np.int64),
        (split, np.int8),
    ):
        h.update(np.ascontiguousarray(arr, dtype=dtype).data.cast("B"))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------ writing
KIND = "embedrec-prepared-data"  # written into summary.json: the marker that lets a later prepare replace the folder


def _is_ours(summary_path: Path) -> bool:
    """Whether ``summary.json`` was written by embedrec's prepare (this version's marker, or an earlier version's
    schema and fingerprint)."""
    try:
        meta = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    if meta.get("kind") == KIND:
        return True
    return (
        meta.get("schema_version") == SCHEMA_VERSION
        and isinstance(meta.get("fingerprint"), str)
        and "n_ratings" in meta
        and "split" in meta
    )


def check_replaceable(out: Path) -> None:
    """Refuse (ConfigError, one line) to replace ``out`` unless it is absent, empty, or a data set embedrec prepared
    that holds nothing else: a user's folder is never deleted because it happens to contain a ``summary.json``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose a new or empty folder")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    foreign = [n for n in names if n not in FILES]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(
            f"--out {out} holds files embedrec did not write ({shown}): choose a new or empty folder "
            "(prepare replaces only a data set it wrote itself)"
        )
    if not _is_ours(out / "summary.json"):
        raise ConfigError(
            f"--out {out} is not a data set embedrec prepared (no embedrec summary.json): choose a new or empty folder"
        )


def write_prepared(
    out: Path,
    *,
    user_idx: np.ndarray,
    movie_idx: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    split: np.ndarray,
    user_ids: np.ndarray,
    movies: pd.DataFrame,
    genres: list[str],
    genre_strings: list[str],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Write one prepared data set atomically; returns the completed summary.

    ``movies`` needs ``movie_id``, ``title``, ``year``, ``genres``, ``genre_str_idx`` and ``genre_list`` in index order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    check_replaceable(out)
    n_users, n_movies = len(user_ids), len(movies)
    summary = dict(summary)
    # what training adapts its settings to, known before it reads a rating
    summary["n_movies_rated"] = {
        name: n_distinct(movie_idx[split == code], n_movies) for name, code in SPLIT_CODES.items()
    }
    summary["n_users_rated"] = {
        name: n_distinct(user_idx[split == code], n_users) for name, code in SPLIT_CODES.items()
    }
    summary["fingerprint"] = fingerprint(
        user_idx,
        movie_idx,
        rating,
        timestamp,
        split,
        n_users=n_users,
        n_movies=n_movies,
        n_genres=len(genres),
        n_genre_strings=len(genre_strings),
    )
    summary["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    summary = {"schema_version": SCHEMA_VERSION, "kind": KIND, **summary}

    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent, out.name)  # what a killed prepare left (a signal is cleaned up below, kill -9 is not)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        ratings = pa.table(
            {
                "user_idx": pa.array(user_idx, pa.int32()),
                "movie_idx": pa.array(movie_idx, pa.int32()),
                "rating": pa.array(rating, pa.float32()),
                "timestamp": pa.array(timestamp, pa.int64()),
                "split": pa.array(split, pa.int8()),
            }
        )
        pq.write_table(
            ratings,
            tmp / "ratings.parquet",
            compression="snappy",
            use_dictionary=["rating", "split"],
            row_group_size=1 << 22,
        )
        del ratings
        index = build_user_index(user_idx, movie_idx, rating, split, n_users=n_users, n_movies=n_movies)
        summary["user_index"] = write_user_index(tmp, index)
        del index
        write_vocabulary(tmp, user_ids=user_ids, movies=movies, genres=genres, genre_strings=genre_strings)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        name_target(exc, tmp, out)  # pyarrow's write errors name no file; the temp name means nothing to the user
        raise
    return summary


def write_vocabulary(
    folder: Path, *, user_ids: np.ndarray, movies: pd.DataFrame, genres: list[str], genre_strings: list[str]
) -> None:
    """Write ``users.parquet``, ``movies.parquet`` and ``vocab.json`` into ``folder``, each atomically: the id maps a
    prepared data set and every model folder trained on it carry (a model folder gets them from the data in memory,
    so a ``prepare`` running meanwhile can never hand a model another data set's vocabulary)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_users, n_movies = len(user_ids), len(movies)
    year = movies["year"].astype("Int32")
    movie_table = pa.table(
        {
            "movie_idx": pa.array(np.arange(n_movies, dtype=np.int32)),
            "movie_id": pa.array(movies["movie_id"].to_numpy(np.int64)),
            "title": pa.array(movies["title"].astype(str).tolist(), pa.string()),
            "year": pa.array(year.to_numpy(dtype="float64", na_value=np.nan), pa.float64(), from_pandas=True).cast(
                pa.int32()
            ),
            "genres": pa.array(movies["genres"].astype(str).tolist(), pa.string()),
            "genre_str_idx": pa.array(movies["genre_str_idx"].to_numpy(np.int32)),
            "genre_list": pa.array([list(g) for g in movies["genre_list"]], pa.list_(pa.string())),
        }
    )
    users = pa.table(
        {"user_idx": pa.array(np.arange(n_users, dtype=np.int32)), "user_id": pa.array(user_ids, pa.int64())}
    )
    vocab = {"schema_version": SCHEMA_VERSION, "genres": list(genres), "genre_strings": list(genre_strings)}
    suffix = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for name, write in (
        ("movies.parquet", lambda f: pq.write_table(movie_table, f)),
        ("users.parquet", lambda f: pq.write_table(users, f)),
        ("vocab.json", lambda f: Path(f).write_text(json.dumps(vocab, indent=1) + "\n", encoding="utf-8")),
    ):
        tmp = folder / f".{name}{suffix}"
        try:
            write(tmp)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an older ``out`` (checked again: only embedrec's own data) is moved
    aside first and then deleted. The two renames happen under the parent's exclusive lock, so a concurrent
    :func:`load_prepared` sees either the old or the new data set, never a mix."""
    old = None
    with folder_lock(out.parent, exclusive=True):
        check_replaceable(out)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True, eq=False)
class PreparedData:
    """A loaded prepared data set: rating arrays, id maps and the movie table. See the module docstring.

    The rating arrays (``user_idx``, ``movie_idx``, ``rating``, ``split``) and the movie table are read from
    ``ratings_file`` and ``movies_file`` on first use when the folder was loaded with ``lazy=True``; ``timestamp`` on
    its own first use, whatever the loading (the file stays open until then);
    ``user_index`` is the memory-mapped per-user index (None for folders prepared before it existed).
    """

    path: Path
    summary: dict[str, Any]
    genres: list[str]
    genre_strings: list[str]
    ratings_file: Any = field(default=None, repr=False)  # an open pyarrow ParquetFile until the arrays are read
    movies_file: Any = field(default=None, repr=False)  # an open pyarrow ParquetFile until the table is read
    users_file: Any = field(default=None, repr=False)  # an open pyarrow ParquetFile until the ids are read
    user_index: UserIndex | None = None
    _read: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _extents: dict[int, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    _read_locks: dict[str, threading.Lock] = field(
        default_factory=lambda: {file: threading.Lock() for file in ("ratings", "movies", "users")},
        init=False,
        repr=False,
    )

    def _once(self, name: str, read: Callable[[], Any], *, file: str) -> Any:
        """``read()`` on first use, then its result: under the lock of the file it reads, because the HTTP service's
        threads may ask at once and the file is closed after the read. One lock per file, so that training's model
        set-up (the movie table) does not wait for the ratings another thread is reading."""
        with self._read_locks[file]:
            if name not in self._read:
                self._read[name] = read()
            return self._read[name]

    @property
    def _ratings(self) -> dict[str, np.ndarray]:
        """The rating arrays, read and checked once."""
        return self._once("ratings", self._read_ratings, file="ratings")

    def _read_ratings(self) -> dict[str, np.ndarray]:
        arrays = _read_rating_arrays(self.path, self.ratings_file, [c for c in RATING_COLUMNS if c != "timestamp"])
        self._close_ratings_file(reading="ratings")
        _check_rating_arrays(self, arrays)
        return arrays

    def _read_timestamps(self) -> np.ndarray:
        """The timestamp column, read on its own first use: only time-based splits and their ranking priors need it,
        and at 27M ratings it was two thirds of reading the rating arrays (int64, ~0.9 of 1.3 s)."""
        stamps = _read_rating_arrays(self.path, self.ratings_file, ["timestamp"])["timestamp"]
        self._close_ratings_file(reading="timestamp")
        return stamps

    def _close_ratings_file(self, *, reading: str) -> None:
        """Close ``ratings.parquet`` once both of its reads are done (``reading`` is finishing now, under the file's
        lock): the descriptor is not held for the object's lifetime, but it is held until then, so that the
        timestamps come from the version the ratings came from even if ``prepare`` replaced the folder since."""
        other = "timestamp" if reading == "ratings" else "ratings"
        if other in self._read:
            self.ratings_file.close()

    def split_extent(self, split_code: int) -> tuple[int, int]:
        """(ratings, distinct movies rated) in the split ``split_code``: training chooses its settings from them
        before it reads 27M ratings. From ``summary.json`` (``n_<split>``, ``n_movies_rated``); for a folder prepared
        before ``n_movies_rated`` existed, from the memory-mapped user index while the ratings are unread (a folder
        loaded with ``lazy=True``: ~0.5 s at full MovieLens scale), else from the rating arrays. Counted once per
        split: planning a run asks twice (the settings that follow the data, then whether the model fits)."""
        if split_code not in self._extents:
            self._extents[split_code] = self._split_extent(split_code)
        return self._extents[split_code]

    def _split_extent(self, split_code: int) -> tuple[int, int]:
        name, listed, rated = self._rated_in_split(split_code, "n_movies_rated", of=self.n_movies, what="of {} movies")
        if _is_count(listed) and rated is not None:
            return listed, rated
        if self.user_index is not None and "ratings" not in self._read:
            extent = self.user_index.split_extent(split_code)
            if isinstance(listed, int) and extent[0] != listed:  # the settings would follow a damaged file silently
                raise ArtifactError(
                    f"{self.path / 'user_ratings_split.npy'} puts {extent[0]} ratings in the {name} split, "
                    f"summary.json says {listed}: the folder is damaged; {_HOW}"
                )
            return extent
        movies = self.movie_idx[self.split == split_code]
        return len(movies), n_distinct(movies, self.n_movies)

    def users_rated(self, split_code: int) -> int:
        """How many users have a rating in the split ``split_code`` (``summary.json``'s ``n_users_rated``): under a
        time-based split many users have none in train, and training's per-user counts are over those who do. A
        folder prepared before the count existed answers every user, ``n_users``."""
        rated = self._rated_in_split(split_code, "n_users_rated", of=self.n_users, what="by {} users")[2]
        return self.n_users if rated is None else rated

    def _rated_in_split(self, split_code: int, key: str, *, of: int, what: str) -> tuple[str, Any, int | None]:
        """(split name, ``n_<split>``, the split's entry of the summary's per-split count ``key``: distinct movies
        or users rated, None when the folder was prepared before it). A count that cannot be (more than the
        catalogue's ``of`` or the split's ratings, or zero beside ratings) is refused; ``what`` names it."""
        name = next(name for name, code in SPLIT_CODES.items() if code == split_code)
        listed = self.summary.get(f"n_{name}")
        per_split = self.summary.get(key)
        rated = per_split.get(name) if isinstance(per_split, dict) else None
        if not _is_count(rated):
            return name, listed, None
        if _is_count(listed) and (rated > min(of, listed) or (rated == 0) != (listed == 0)):
            raise ArtifactError(
                f"{self.path / 'summary.json'} says the {name} split has {listed} ratings {what.format(rated)} "
                f"(of {of}): the folder is damaged; {_HOW}"
            )
        return name, listed, rated

    def read_all(self) -> PreparedData:
        """Read what ``lazy=True`` deferred (the ratings, the movie table, the user ids), checking each; returns
        itself. Files were opened by :func:`load_prepared`, so this reads the version it opened."""
        _ = self._ratings
        _ = self.movies
        _ = self.user_ids
        return self

    @property
    def user_ids(self) -> np.ndarray:
        """Raw user id per user_idx (int64, sorted), read on first use: a model trained on this data carries them."""
        return self._once("users", self._read_user_ids, file="users")

    def _read_user_ids(self) -> np.ndarray:
        where = self.path / "users.parquet"
        if self.users_file is None:
            raise ArtifactError(f"{where} was not opened: load the folder with load_prepared")
        try:
            return int_column(self.users_file.read(columns=["user_id"]), "user_id")
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise ArtifactError(f"{where} is an unreadable Parquet file ({_one_line(exc)}): {_HOW}") from None
        finally:
            self.users_file.close()

    @property
    def movies(self) -> pd.DataFrame:
        """The movie table (see the module docstring), read and checked on first use: serving one user with a model
        trained on this data needs only the model folder's copy."""
        return self._once("movies", self._read_movies, file="movies")

    def _read_movies(self) -> pd.DataFrame:
        where = self.path / "movies.parquet"
        if self.movies_file is None:
            raise ArtifactError(f"{where} was not opened: load the folder with load_prepared")
        try:
            movies = table_frame(self.movies_file.read())
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise ArtifactError(f"{where} is an unreadable Parquet file ({_one_line(exc)}): {_HOW}") from None
        finally:
            self.movies_file.close()
        _check_movies(where, movies, genres=self.genres, n_genre_strings=self.n_genre_strings)
        return movies

    @property
    def user_idx(self) -> np.ndarray:
        return self._ratings["user_idx"]

    @property
    def movie_idx(self) -> np.ndarray:
        return self._ratings["movie_idx"]

    @property
    def rating(self) -> np.ndarray:
        return self._ratings["rating"]

    @property
    def timestamp(self) -> np.ndarray:
        return self._once("timestamp", self._read_timestamps, file="ratings")

    @property
    def split(self) -> np.ndarray:
        return self._ratings["split"]

    @property
    def n_users(self) -> int:
        return int(self.summary["n_users"])  # checked against users.parquet's row count at load

    @property
    def n_movies(self) -> int:
        return int(self.summary["n_movies"])  # checked against movies.parquet's row count at load

    @property
    def n_genres(self) -> int:
        return len(self.genres)

    @property
    def n_genre_strings(self) -> int:
        return len(self.genre_strings)

    @property
    def fingerprint(self) -> str:
        return str(self.summary["fingerprint"])

    @cached_property
    def movie_ids(self) -> np.ndarray:
        """Raw movie id per movie_idx (int64, sorted)."""
        return self.movies["movie_id"].to_numpy(dtype=np.int64)

    def movie_genre_str_idx(self) -> np.ndarray:
        """Whole-genre-string index per movie_idx, shape (n_movies,), int32."""
        return self.movies["genre_str_idx"].to_numpy(dtype=np.int32)

    def movie_year(self) -> np.ndarray:
        """Release year per movie_idx, shape (n_movies,), float64: NaN where unknown."""
        return self.movies["year"].to_numpy(dtype=np.float64, na_value=np.nan)

    def movie_genre_multi_hot(self) -> np.ndarray:
        """One row per movie, one float32 column per single genre (``self.genres`` order): 1.0 when it has it."""
        pos = {g: i for i, g in enumerate(self.genres)}
        out = np.zeros((self.n_movies, self.n_genres), dtype=np.float32)
        for m, glist in enumerate(self.movies["genre_list"]):
            for g in glist:
                out[m, pos[g]] = 1.0
        return out

    @cached_property
    def user_vocab(self) -> Vocabulary:
        """Raw user id <-> user_idx: ``data.user_vocab.index(42)``, ``.indices(ids)`` (-1 for unknown)."""
        return Vocabulary(self.user_ids, kind="user", owner="the prepared data")

    @cached_property
    def movie_vocab(self) -> Vocabulary:
        """Raw movie id <-> movie_idx (movies with kept ratings only)."""
        return Vocabulary(self.movie_ids, kind="movie", owner="the prepared data")

    def split_mask(self, name: str) -> np.ndarray:
        """Boolean mask of the ratings in ``"train"``, ``"val"`` or ``"test"``."""
        if name not in SPLIT_CODES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_CODES)}, got {name!r}")
        return self.split == SPLIT_CODES[name]


def read_table(file: Path, columns: list[str] | None = None) -> Any:
    """A small Parquet table (movies, users) as a pyarrow Table. Read through ``ParquetFile``, which, unlike
    ``pq.read_table``, does not import ``pyarrow.dataset`` (a third of a second of every ``recommend --user``)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(file) as parquet:
        return parquet.read(columns=columns)


def read_table_frame(file: Path) -> pd.DataFrame:
    """A small Parquet table (movies, users) as a DataFrame with the dtypes it was written with
    (:func:`table_frame`)."""
    return table_frame(read_table(file))


def table_frame(table: Any) -> pd.DataFrame:
    """A pyarrow Table of ``movies.parquet`` or ``users.parquet`` as a DataFrame with the dtypes it was written with
    (see :func:`movies_frame`); the genre lists are converted by pyarrow, twice as fast as a Python loop over 86,000
    arrays."""
    lists = table.column("genre_list").to_pylist() if "genre_list" in table.column_names else None
    frame = table.drop_columns(["genre_list"]).to_pandas() if lists is not None else table.to_pandas()
    if lists is not None:
        frame["genre_list"] = lists
    return movies_frame(frame)


def int_column(table: Any, name: str, dtype: Any = np.int64) -> np.ndarray:
    """An integer column of a pyarrow Table as a numpy array of ``dtype``; ValueError when it holds nulls or values
    that are not integers.

    Read straight from Arrow's buffers: ``ChunkedArray.to_numpy()`` imports pandas the first time it runs (half a
    second of a one-shot ``recommend --user``, which needs no pandas)."""
    import pyarrow as pa

    column = table.column(name)
    if not pa.types.is_integer(column.type) or column.null_count:
        problem = f"{column.null_count} missing values" if column.null_count else f"{column.type} values"
        raise ValueError(f"column {name} holds {problem}, expected integers")
    own = np.dtype(str(column.type))  # "int32", "int64", ...
    parts = [
        np.frombuffer(chunk.buffers()[1], dtype=own, count=chunk.offset + len(chunk))[chunk.offset :]
        for chunk in column.chunks
        if len(chunk)
    ]
    values = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.empty(0, own)
    return np.ascontiguousarray(values, dtype=dtype)


def movies_frame(movies: pd.DataFrame) -> pd.DataFrame:
    """A ``movies.parquet`` table as read by pyarrow, with the dtypes it was written with: Parquet's nullable int32
    year arrives as float64 whenever a year is missing (1995.0), and the genre lists as arrays."""
    if "year" in movies:
        movies["year"] = movies["year"].astype("Int32")
    if "genre_list" in movies and len(movies) and not isinstance(movies["genre_list"].iloc[0], list):
        movies["genre_list"] = [list(g) for g in movies["genre_list"]]
    return movies


def load_prepared(path: str | os.PathLike[str], *, lazy: bool = False) -> PreparedData:
    """Load a folder written by ``embedrec prepare``; ArtifactError (one line) when missing, partial or outdated.

    The files are read (or, with ``lazy``, opened) under a shared lock on the parent folder, so a ``prepare``
    replacing the folder meanwhile waits for the read to finish: the result is always one complete version.
    ``lazy`` defers reading the ratings, the movie table and the user ids to their first use: what serving one user
    with a model trained on this data needs (the memory-mapped per-user index) costs milliseconds at any size."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"no prepared data at {path}: {_HOW}")
    with folder_lock(path.parent, exclusive=False):
        data = _read_prepared(path)
        if not lazy:
            data.read_all()
    return data


def _read_prepared(path: Path) -> PreparedData:
    import pyarrow.parquet as pq

    if not path.is_dir():
        raise ArtifactError(f"no prepared data at {path}: {_HOW}")
    missing = [f for f in CORE_FILES if not (path / f).is_file()]
    if missing:
        raise ArtifactError(f"prepared data at {path} is incomplete (missing {', '.join(missing)}): {_HOW}")
    loaded = {}
    for name in ("summary.json", "vocab.json"):
        try:
            loaded[name] = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path / name} is unreadable JSON ({exc}): {_HOW}") from None
        meta = loaded[name]
        version = meta.get("schema_version") if isinstance(meta, dict) else None
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path / name} has schema_version {version!r}, this embedrec reads {SCHEMA_VERSION}: "
                "prepare the data again with this version"
            )
    summary, vocab = loaded["summary.json"], loaded["vocab.json"]
    for key in ("genres", "genre_strings"):
        if not isinstance(vocab.get(key), list) or not all(isinstance(g, str) for g in vocab[key]):
            raise ArtifactError(f"{path / 'vocab.json'} lacks {key!r} (a list of names): the folder is damaged; {_HOW}")
    numbers = ("n_ratings", "n_users", "n_movies", "n_genres", "n_genre_strings", "rating_min", "rating_max")
    bad = [k for k in numbers if isinstance(summary.get(k), bool) or not isinstance(summary.get(k), (int, float))]
    if bad or not isinstance(summary.get("fingerprint"), str):
        raise ArtifactError(f"{path / 'summary.json'} lacks or garbles {', '.join(bad) or 'fingerprint'}: {_HOW}")
    opened: list[Any] = []
    try:
        for name in ("ratings.parquet", "movies.parquet", "users.parquet"):
            opened.append(pq.ParquetFile(path / name))
        ratings, movies, users = opened
        problem = None
        if not set(RATING_COLUMNS) <= set(ratings.schema_arrow.names) or ratings.metadata.num_rows != summary.get(
            "n_ratings"
        ):
            problem = f"{path / 'ratings.parquet'} does not match summary.json: {_HOW}"
        elif movies.metadata.num_rows != summary.get("n_movies") or users.metadata.num_rows != summary.get("n_users"):
            problem = f"movies/users tables in {path} do not match summary.json: {_HOW}"
        elif "user_id" not in users.schema_arrow.names:
            problem = f"{path / 'users.parquet'} lacks column user_id: {_HOW}"
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        problem = f"prepared data at {path} has an unreadable Parquet file ({_one_line(exc)}): {_HOW}"
    if problem is not None:
        for parquet in opened:
            parquet.close()
        raise ArtifactError(problem)
    try:
        user_index = open_user_index(
            path,
            summary.get("user_index"),
            n_users=int(summary["n_users"]),
            n_movies=int(summary["n_movies"]),
            n_ratings=int(summary["n_ratings"]),
        )
    except BaseException:
        for parquet in opened:
            parquet.close()
        raise
    return PreparedData(
        path=path,
        summary=summary,
        genres=list(vocab["genres"]),
        genre_strings=list(vocab["genre_strings"]),
        ratings_file=ratings,
        movies_file=movies,
        users_file=users,
        user_index=user_index,
    )


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line of printable characters: pyarrow's span several lines (a thrift error and its
    context) and may quote the damaged bytes, and an error is one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())


def _read_rating_arrays(path: Path, ratings_file: Any, columns: list[str]) -> dict[str, np.ndarray]:
    """``columns`` (of :data:`RATING_COLUMNS`) of the already opened ``ratings.parquet``, as contiguous arrays of
    their dtypes."""
    where = path / "ratings.parquet"
    if ratings_file is None:
        raise ArtifactError(f"{where} was not opened: load the folder with load_prepared")
    try:
        table = ratings_file.read(columns=columns)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ArtifactError(
            f"prepared data at {path} has an unreadable Parquet file ({_one_line(exc)}): {_HOW}"
        ) from None
    out = {}
    for name in columns:
        dtype = RATING_COLUMNS[name]
        try:
            out[name] = np.ascontiguousarray(table.column(name).to_numpy(), dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:  # nulls, or values of another type
            raise ArtifactError(f"{where}: column {name} is unusable ({exc}): {_HOW}") from None
    return out


def _check_movies(where: Path, movies: pd.DataFrame, *, genres: list[str], n_genre_strings: int) -> None:
    """Refuse a movie table that disagrees with the vocabularies of its folder (the rating arrays are checked by
    :func:`_check_rating_arrays` when they are read)."""
    if "genre_str_idx" not in movies or "genre_list" not in movies:
        raise ArtifactError(f"{where} lacks genre_str_idx or genre_list: {_HOW}")
    gs = movies["genre_str_idx"].to_numpy()
    if len(gs) and (gs.min() < 0 or gs.max() >= n_genre_strings):
        raise ArtifactError(
            f"{where}: genre_str_idx exceeds the {n_genre_strings} genre "
            f"strings of vocab.json: the folder is damaged; {_HOW}"
        )
    known = set(genres)
    unknown = {g for glist in movies["genre_list"] for g in glist} - known
    if unknown:
        raise ArtifactError(
            f"{where}: genres {sorted(unknown)[:3]} are not in vocab.json: the folder is damaged; {_HOW}"
        )


def _check_rating_arrays(data: PreparedData, arrays: dict[str, np.ndarray]) -> None:
    """Refuse rating arrays that disagree with the vocabularies.

    An out-of-range index would not fail where it is used: JAX clamps it to the last row, so training would go on
    silently on wrong rows and something later would crash. One pass over the arrays costs about 10 ms per million
    ratings.
    """
    where = data.path / "ratings.parquet"
    for name, n in (("user_idx", data.n_users), ("movie_idx", data.n_movies)):
        values = arrays[name]
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= n):
            raise ArtifactError(
                f"{where}: {name} spans {int(values.min())}..{int(values.max())} but there are {n} "
                f"entries in the vocabulary: the folder is damaged; {_HOW}"
            )
    codes = sorted(SPLIT_CODES.values())  # 0, 1, 2: a range check is enough
    split = arrays["split"]
    if len(split) and (int(split.min()) < codes[0] or int(split.max()) > codes[-1]):
        raise ArtifactError(f"{where}: split holds codes other than {codes}: the folder is damaged; {_HOW}")
    if not np.isfinite(arrays["rating"]).all():
        raise ArtifactError(f"{where}: rating holds NaN or infinite values: the folder is damaged; {_HOW}")


def _is_count(value: Any) -> TypeGuard[int]:
    """A non-negative JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
