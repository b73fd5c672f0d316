"""Raw ids -> dense indices, in O(n) when the ids are small non-negative integers (as in MovieLens).

Synopsis::

    idx, uniques = dense_index(np.array([10, 3, 10, 7]))   # idx [2, 0, 2, 1], uniques [3, 7, 10]
    new_idx, kept = compact(idx, n=3, keep=np.array([True, False, True, True]))

Indices follow the sorted raw ids, so they are deterministic whatever the row order. A lookup table replaces the
sort-based ``np.unique`` when the id range is small enough; both give identical results.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import numpy as np

LOOKUP_MAX_ID = 1 << 25  # ids below this use a lookup table (at most 128 MB of int32)

PLAIN_INT = r"-?[0-9]+"
"""What an id written as text must be: ASCII decimal digits with an optional leading minus, what Arrow's int64 CSV
reader takes when ``prepare`` reads the ratings. Python's ``int()`` takes more ("1_000", "+5", " 7", "\u0663")."""
_PLAIN_INT = re.compile(PLAIN_INT)
_INT_STR_DIGITS = 4000  # int() refuses longer digit strings (sys.get_int_max_str_digits); Decimal reads them
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def fits_int64(number: int) -> bool:
    """Whether an exact integer id can be stored (ids are int64 everywhere)."""
    return INT64_MIN <= number <= INT64_MAX


def dense_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(idx int32, uniques int64)`` with ``uniques[idx] == ids`` and ``uniques`` sorted."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < LOOKUP_MAX_ID:
        present = np.zeros(hi + 1, dtype=bool)
        present[ids] = True
        uniques = np.flatnonzero(present).astype(np.int64)
        table = np.full(hi + 1, -1, dtype=np.int32)
        table[uniques] = np.arange(len(uniques), dtype=np.int32)
        return table[ids], uniques
    uniques, inverse = np.unique(ids, return_inverse=True)
    return inverse.astype(np.int32).reshape(-1), uniques.astype(np.int64)


def lookup_index(ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Position of each id in the sorted array ``known``, or -1 when absent (int32)."""
    if len(ids) == 0 or len(known) == 0:
        return np.full(len(ids), -1, dtype=np.int32)
    lo, hi = int(ids.min()), int(ids.max())
    few = len(ids) * 16 < len(known)  # a table of every known id costs more than binary searches for a few
    if not few and lo >= 0 and hi < LOOKUP_MAX_ID and int(known.min()) >= 0 and int(known.max()) < LOOKUP_MAX_ID:
        size = max(hi, int(known.max())) + 1
        table = np.full(size, -1, dtype=np.int32)
        table[known] = np.arange(len(known), dtype=np.int32)
        return table[ids]
    pos = np.searchsorted(known, ids)
    pos_c = np.minimum(pos, len(known) - 1)
    return np.where(known[pos_c] == ids, pos_c, -1).astype(np.int32)


def lookup_ids(known: np.ndarray, ids: Any) -> np.ndarray:
    """Index of each raw id (any array-like) in the sorted ``known`` ids; -1 for unknown or non-integral values.

    The one raw-id -> index lookup that the prepared data and the recommender share: ``"42"`` and ``42.0`` find
    movie 42, ``"abc"``, ``4.5`` and NaN find nothing. Strings and Python integers are read exactly, never through
    float64, so ``"9007199254740993"`` is not taken for 9007199254740992.
    """
    values = ids if isinstance(ids, np.ndarray) else list(ids) if not np.isscalar(ids) else [ids]
    arr = np.asarray(values)
    if arr.dtype.kind in "US" and not isinstance(ids, np.ndarray):  # numpy wrote a mixed list's 42.0 as "42.0"
        arr = np.asarray(values, dtype=object)
    if arr.dtype.kind in "iu":
        flat = arr.astype(np.int64, copy=False).ravel()
        return lookup_index(flat, known).reshape(arr.shape)
    out = np.full(arr.shape, -1, dtype=np.int32)
    if arr.dtype.kind == "f":
        valid = np.isfinite(arr) & (np.mod(arr, 1) == 0) & (np.abs(arr) < 2.0**62)
        out[valid] = lookup_index(arr[valid].astype(np.int64), known)
        return out
    exact = [exact_int(v) for v in arr.ravel()]
    valid = np.array([v is not None and fits_int64(v) for v in exact], dtype=bool).reshape(arr.shape)
    values = np.array([v for v in exact if v is not None and fits_int64(v)], dtype=np.int64)
    out[valid] = lookup_index(values, known)
    return out


def parse_id(text: str) -> int | None:
    """``text`` as an id when it is a plain decimal integer (:data:`PLAIN_INT`: "42", "-7", "007"), else None.

    The one parser of ids written as text: query strings, path parameters, CLI options, the CSV files of ``predict``
    and ``recommend``. Nothing is stripped or reinterpreted: "1_000", "+5", " 7", "42.0", "1e3", "0x10" and other
    scripts' digits are not ids (``int()`` would read several of them as another number). Callers check the range.
    """
    if not _PLAIN_INT.fullmatch(text):
        return None
    return int(text) if len(text) <= _INT_STR_DIGITS else int(Decimal(text))


def exact_int(value: Any) -> int | None:
    """``value`` as an exact integer id (42, 42.0, "42", " 42 "), or None when it is not one.

    Numbers are ids when they are whole; text is read by :func:`parse_id` once the whitespace around it is stripped
    (as a CSV cell's is, and as ``prepare`` reads them), so "42.0" and "1_000" are not ids.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    return parse_id(str(value).strip())


def compact(idx: np.ndarray, *, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber ``idx`` (values in 0..n-1) densely, keeping order: ``(new_idx int32, old index of each new one)``."""
    present = np.bincount(idx, minlength=n) > 0
    old = np.flatnonzero(present)
    if len(old) == n:
        return idx.astype(np.int32, copy=False), old
    table = np.full(n, -1, dtype=np.int32)
    table[old] = np.arange(len(old), dtype=np.int32)
    return table[idx], old


def genre_vocab(
    genre_strings_per_movie: list[str], *, none: str
) -> tuple[list[str], np.ndarray, list[list[str]], list[str]]:
    """Whole genre strings and single genres of the movies.

    Returns ``(genre_strings sorted, genre_str_idx per movie int32, genre list per movie, single genres sorted)``;
    the string ``none`` (``(no genres listed)``) is a genre string with an empty genre list.
    """
    strings = sorted(set(genre_strings_per_movie))
    pos = {s: i for i, s in enumerate(strings)}
    str_idx = np.fromiter((pos[s] for s in genre_strings_per_movie), dtype=np.int32, count=len(genre_strings_per_movie))
    split = {s: ([] if s == none else s.split("|")) for s in strings}
    lists = [list(split[s]) for s in genre_strings_per_movie]
    singles = sorted({g for s in strings for g in split[s]})
    return strings, str_idx, lists, singles
