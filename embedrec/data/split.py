"""Train / validation / test assignment of each rating: ``split`` codes 0 = train, 1 = val, 2 = test.

Synopsis::

    codes = assign_split(user_idx, timestamp, method="random", test_frac=0.2, val_frac=0.1, seed=42)

- ``random`` (the original's 80/20): exactly ``round(test_frac * n)`` test and ``round(val_frac * n)`` validation
  ratings, chosen by a seeded shuffle.
- ``temporal``: one global time cut-off; the latest ``test_frac`` of ratings (by timestamp, then row) are test, the
  ``val_frac`` before them validation, so no test rating predates a training rating.
- ``leave-last-out``: each user's latest rating is test (users with at least 2 ratings) and, when ``val_frac > 0``,
  the one before it validation (users with at least 3), so every user keeps training data. The fractions are then
  set by the data, not by the options.

Same inputs and seed, same codes.
"""

from __future__ import annotations

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_CODES = {"train": TRAIN, "val": VAL, "test": TEST}


def _counts(n: int, test_frac: float, val_frac: float) -> tuple[int, int]:
    n_test = int(round(test_frac * n))
    n_val = int(round(val_frac * n))
    n_val = min(n_val, n - n_test)
    return n_test, n_val


def random_split(n: int, *, test_frac: float, val_frac: float, seed: int) -> np.ndarray:
    codes = np.zeros(n, dtype=np.int8)
    n_test, n_val = _counts(n, test_frac, val_frac)
    if n_test + n_val == 0:
        return codes
    codes[:n_test] = TEST
    codes[n_test : n_test + n_val] = VAL
    np.random.default_rng(seed).shuffle(codes)  # shuffling 1-byte codes: no n-sized int64 permutation
    return codes


def temporal_split(timestamp: np.ndarray, *, test_frac: float, val_frac: float) -> np.ndarray:
    n = len(timestamp)
    codes = np.zeros(n, dtype=np.int8)
    n_test, n_val = _counts(n, test_frac, val_frac)
    if n_test + n_val == 0:
        return codes
    order = np.argsort(timestamp, kind="stable")
    if n_test:
        codes[order[n - n_test :]] = TEST
    if n_val:
        codes[order[n - n_test - n_val : n - n_test]] = VAL
    return codes


def leave_last_out_split(user_idx: np.ndarray, timestamp: np.ndarray, *, with_val: bool) -> np.ndarray:
    n = len(user_idx)
    codes = np.zeros(n, dtype=np.int8)
    if n == 0:
        return codes
    order = np.lexsort((np.arange(n), timestamp, user_idx))  # by user, then time, then row
    users = user_idx[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = users[1:] != users[:-1]
    first = np.ones(n, dtype=bool)
    first[1:] = users[1:] != users[:-1]
    # the latest rating of a user with >= 2 ratings -> test
    test_pos = last & ~first
    codes[order[test_pos]] = TEST
    if with_val:
        # the one before it, when it is not the user's first rating
        prev_of_last = np.zeros(n, dtype=bool)
        prev_of_last[:-1] = test_pos[1:]
        val_pos = prev_of_last & ~first
        codes[order[val_pos]] = VAL
    return codes


def assign_split(
    user_idx: np.ndarray,
    timestamp: np.ndarray,
    *,
    method: str,
    test_frac: float,
    val_frac: float,
    seed: int,
) -> np.ndarray:
    """Split codes (int8) for each rating; see the module docstring for the methods.

    The time-based methods refuse data without timestamps (all zero): ordering by row would look like a temporal
    split and silently not be one.
    """
    if method in ("temporal", "leave-last-out") and len(timestamp) and not np.any(timestamp):
        from embedrec.errors import ConfigError

        raise ConfigError(
            f"--split {method} needs timestamps, and this data has none: use --split random, or name "
            "the time column with --time-col"
        )
    if method == "random":
        return random_split(len(user_idx), test_frac=test_frac, val_frac=val_frac, seed=seed)
    if method == "temporal":
        return temporal_split(timestamp, test_frac=test_frac, val_frac=val_frac)
    if method == "leave-last-out":
        return leave_last_out_split(user_idx, timestamp, with_val=val_frac > 0)
    raise ValueError(f"unknown split method {method!r}")
