"""Every user's rated movies as CSR, written by ``prepare`` so that one user's question never reads every rating.

Synopsis::

    from embedrec.data import load_prepared
    data = load_prepared(".embedrec/data", lazy=True)      # reads no rating; the index is memory-mapped
    index = data.user_index                                # None for a folder an older embedrec prepared
    index.movies_of(7)                                     # movie_idx the user rated (all splits), sorted
    index.movies_of(7, before_split=2)                     # ... in train and val only
    index.ratings_of(7)                                    # (movie_idx, rating) of each of them; None if not kept
    index.movie_counts, index.movie_rating_sums            # per movie, all splits: min_ratings, top rated

Why: ``recommend --user`` needs the user's seen movies and, for the ``--min-ratings`` filter, each movie's rating
count; at 27M ratings, reading ``ratings.parquet`` for them took seconds of a one-second budget. Sorting by user once
at prepare time (a few seconds at that size) makes each lookup a slice of a memory-mapped array: the pages of that
user's row, nothing else.

Files (in the prepared folder, listed with their dtypes in ``summary.json["user_index"]``, which carries its own
``schema_version``):

- ``user_ratings_indptr.npy``: int64, n_users + 1; user ``u``'s ratings are rows ``indptr[u]:indptr[u + 1]``;
- ``user_ratings_movie_idx.npy``: int32, n_ratings; movie_idx sorted within each user;
- ``user_ratings_split.npy``: int8, n_ratings; each rating's split code (0 train, 1 val, 2 test);
- ``user_ratings_rating.npy``: float32, n_ratings; each rating's value (what the service's user page lists). Folders
  prepared before it existed lack it (``summary.json`` does not list it) and still load: :meth:`UserIndex.ratings_of`
  returns None;
- ``movie_rating_counts.npy``: int64, n_movies; ratings per movie, all splits;
- ``movie_rating_sums.npy``: float64, n_movies; the sum of each movie's ratings (float32 values summed in source
  order, so the top-rated scores equal those computed from ``ratings.parquet``).

They are ``.npy`` rather than ``.npz`` or Parquet because only an uncompressed ``.npy`` can be memory-mapped; they are
read with ``allow_pickle=False``. Never imports JAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedrec.errors import ArtifactError

INDEX_VERSION = 1
INDEX_FILES: dict[str, tuple[str, Any]] = {
    "indptr": ("user_ratings_indptr.npy", np.int64),
    "movie_idx": ("user_ratings_movie_idx.npy", np.int32),
    "split": ("user_ratings_split.npy", np.int8),
    "rating": ("user_ratings_rating.npy", np.float32),
    "movie_counts": ("movie_rating_counts.npy", np.int64),
    "movie_rating_sums": ("movie_rating_sums.npy", np.float64),
}
OPTIONAL_KEYS = ("rating",)  # absent from folders an earlier embedrec prepared (same index version)
FILE_NAMES = tuple(name for name, _ in INDEX_FILES.values())


def n_distinct(idx: np.ndarray, size: int) -> int:
    """How many distinct rows (movies or users, all in ``0..size - 1``) the ratings' ``idx`` touch: a count per row,
    as ``np.unique`` sorts (12x slower on numpy 2.4 at 19M ratings)."""
    return int(np.count_nonzero(np.bincount(idx, minlength=size)))


def build_user_index(
    user_idx: np.ndarray, movie_idx: np.ndarray, rating: np.ndarray, split: np.ndarray, *, n_users: int, n_movies: int
) -> dict[str, np.ndarray]:
    """The index arrays (keys of :data:`INDEX_FILES`) of one prepared data set."""
    key = user_idx.astype(np.int64) * n_movies + movie_idx
    order = np.argsort(key)  # (user, movie) pairs are unique, so the order is fully determined
    del key
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_idx, minlength=n_users), out=indptr[1:])
    return {
        "indptr": indptr,
        "movie_idx": np.ascontiguousarray(movie_idx[order], dtype=np.int32),
        "split": np.ascontiguousarray(split[order], dtype=np.int8),
        "rating": np.ascontiguousarray(rating[order], dtype=np.float32),
        "movie_counts": np.bincount(movie_idx, minlength=n_movies).astype(np.int64),
        "movie_rating_sums": np.bincount(movie_idx, rating.astype(np.float64), minlength=n_movies),
    }


def write_user_index(folder: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write the arrays into ``folder`` (a prepared folder still being written: the folder's rename makes it
    atomic); returns the ``summary.json["user_index"]`` entry that describes them."""
    files = {}
    for key, (name, dtype) in INDEX_FILES.items():
        np.save(folder / name, np.ascontiguousarray(arrays[key], dtype=dtype), allow_pickle=False)
        files[key] = {"file": name, "dtype": np.dtype(dtype).name, "length": int(len(arrays[key]))}
    return {"schema_version": INDEX_VERSION, "files": files}


@dataclass(frozen=True, eq=False)
class UserIndex:
    """The memory-mapped index of one prepared folder (see the module docstring)."""

    path: Path
    indptr: np.ndarray
    movie_idx: np.ndarray
    split: np.ndarray
    movie_counts: np.ndarray
    movie_rating_sums: np.ndarray
    rating: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def rows_of(self, user_idx: int) -> slice:
        """The rows of ``movie_idx`` / ``split`` that hold one user's ratings."""
        if not 0 <= user_idx < self.n_users:
            raise IndexError(f"user_idx {user_idx} is outside 0..{self.n_users - 1}")
        return slice(int(self.indptr[user_idx]), int(self.indptr[user_idx + 1]))

    def movies_of(self, user_idx: int, *, before_split: int | None = None) -> np.ndarray:
        """movie_idx the user rated (sorted, int32); ``before_split``: only those in splits with a smaller code."""
        rows = self.rows_of(user_idx)
        movies = np.array(self.movie_idx[rows])
        n_movies = len(self.movie_counts)
        if movies.size and (int(movies.min()) < 0 or int(movies.max()) >= n_movies):
            raise ArtifactError(
                f"{self.path / INDEX_FILES['movie_idx'][0]}: user {user_idx}'s movies fall outside 0..{n_movies - 1}: "
                "the folder is damaged; run `embedrec prepare` again"
            )
        if before_split is not None:
            movies = movies[np.asarray(self.split[rows]) < before_split]
        return movies

    def split_extent(self, split_code: int) -> tuple[int, int]:
        """(ratings, distinct movies rated) in the split ``split_code``: what training needs to know about the
        catalogue's sparsity before it reads a rating (one pass over two memory-mapped columns)."""
        n_movies = len(self.movie_counts)
        movies = np.asarray(self.movie_idx)[np.asarray(self.split) == split_code]
        if movies.size and (int(movies.min()) < 0 or int(movies.max()) >= n_movies):
            raise ArtifactError(
                f"{self.path / INDEX_FILES['movie_idx'][0]} holds movies outside 0..{n_movies - 1}: the folder is "
                "damaged; run `embedrec prepare` again"
            )
        return len(movies), n_distinct(movies, n_movies)

    def ratings_of(self, user_idx: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(movie_idx, rating) of every rating the user gave (all splits, by movie_idx); None when the folder was
        prepared before the index kept the values."""
        if self.rating is None:
            return None
        rows = self.rows_of(user_idx)
        return self.movies_of(user_idx), np.array(self.rating[rows])


def open_user_index(path: Path, meta: Any, *, n_users: int, n_movies: int, n_ratings: int) -> UserIndex | None:
    """Memory-map the index that ``summary.json["user_index"]`` (``meta``) describes; None when the folder has none
    (prepared by an older embedrec) or one of another version; ArtifactError (one line) when it is damaged.

    Only the ``.npy`` headers are read here, and the lengths checked against the summary; the values are read page by
    page as lookups touch them.
    """
    if not isinstance(meta, dict) or meta.get("schema_version") != INDEX_VERSION:
        return None
    expected = {
        "indptr": n_users + 1,
        "movie_idx": n_ratings,
        "split": n_ratings,
        "rating": n_ratings,
        "movie_counts": n_movies,
        "movie_rating_sums": n_movies,
    }
    listed = meta.get("files")
    arrays = {}
    for key, (name, dtype) in INDEX_FILES.items():
        if key in OPTIONAL_KEYS and not (isinstance(listed, dict) and key in listed):
            continue
        file = path / name
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(
                f"{file} is missing or unreadable ({exc}): the folder is damaged; run `embedrec prepare` again"
            ) from None
        if arr.dtype != np.dtype(dtype) or arr.shape != (expected[key],):
            raise ArtifactError(
                f"{file} holds {arr.dtype}{list(arr.shape)}, summary.json says {np.dtype(dtype).name}"
                f"[{expected[key]}]: the folder is damaged; run `embedrec prepare` again"
            )
        arrays[key] = arr
    indptr = arrays["indptr"]
    if int(indptr[0]) != 0 or int(indptr[-1]) != n_ratings:
        raise ArtifactError(
            f"{path / INDEX_FILES['indptr'][0]} does not span the {n_ratings} ratings: the folder is damaged; "
            "run `embedrec prepare` again"
        )
    return UserIndex(path=path, **arrays)
