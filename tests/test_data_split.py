"""Splits: proportions, no leakage between splits, the temporal and leave-last-out guarantees, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrec.data import PrepareConfig, load_prepared, prepare_synthetic
from embedrec.data.split import TEST, TRAIN, VAL, assign_split, leave_last_out_split

SIZE = {"n_users": 200, "n_movies": 300, "n_ratings": 12_000}


def _prepare(tmp_path: Path, name: str, **cfg: object):
    out = tmp_path / name
    prepare_synthetic(out=out, seed=3, config=PrepareConfig(**cfg), **SIZE)
    return load_prepared(out)


@pytest.mark.parametrize("method", ["random", "temporal"])
def test_fractions_are_exact(method: str) -> None:
    rng = np.random.default_rng(0)
    n = 10_001
    codes = assign_split(
        rng.integers(0, 50, n), rng.integers(0, 10**9, n), method=method, test_frac=0.2, val_frac=0.1, seed=1
    )
    assert codes.dtype == np.int8
    assert np.bincount(codes, minlength=3).tolist() == [n - 2000 - 1000, 1000, 2000]


def test_random_split_in_prepared_data_has_no_leakage(synthetic_prepared: Path) -> None:
    data = load_prepared(synthetic_prepared)
    s = data.summary
    n = s["n_ratings"]
    assert (s["n_train"], s["n_val"], s["n_test"]) == (
        n - round(0.2 * n) - round(0.1 * n),
        round(0.1 * n),
        round(0.2 * n),
    )
    masks = [data.split_mask(k) for k in ("train", "val", "test")]
    assert (sum(m.astype(int) for m in masks) == 1).all()  # every rating in exactly one split
    keys = data.user_idx.astype(np.int64) * data.n_movies + data.movie_idx
    assert len(np.unique(keys)) == len(keys)  # a (user, movie) pair is never in two splits
    for name, code in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        assert data.split_mask(name).sum() == (data.split == code).sum()
    with pytest.raises(ValueError):
        data.split_mask("validation")


def test_temporal_split_never_trains_on_the_future(tmp_path: Path) -> None:
    data = _prepare(tmp_path, "t", split="temporal", test_frac=0.2, val_frac=0.1)
    ts = data.timestamp
    train, val, test = (ts[data.split_mask(k)] for k in ("train", "val", "test"))
    assert train.max() <= val.min() and val.max() <= test.min()
    assert abs(len(test) / len(ts) - 0.2) < 1e-3
    assert data.summary["split"] == {"method": "temporal", "test_frac": 0.2, "val_frac": 0.1, "seed": 42}


def test_leave_last_out_holds_out_each_users_latest(tmp_path: Path) -> None:
    data = _prepare(tmp_path, "l", split="leave-last-out", val_frac=0.1)
    counts = np.bincount(data.user_idx, minlength=data.n_users)
    test_users = data.user_idx[data.split_mask("test")]
    assert np.array_equal(np.sort(test_users), np.flatnonzero(counts >= 2))  # one test rating per such user
    val_users = data.user_idx[data.split_mask("val")]
    assert np.array_equal(np.sort(val_users), np.flatnonzero(counts >= 3))
    # the test rating is the user's latest, the validation one the latest before it
    for u in np.flatnonzero(counts >= 3)[:50]:
        mine = data.user_idx == u
        t_test = data.timestamp[mine & data.split_mask("test")][0]
        t_val = data.timestamp[mine & data.split_mask("val")][0]
        t_train = data.timestamp[mine & data.split_mask("train")]
        assert t_test >= t_val >= t_train.max()
    assert np.bincount(data.user_idx[data.split_mask("train")], minlength=data.n_users).min() >= 1


def test_leave_last_out_ties_go_to_the_later_row() -> None:
    users = np.array([0, 0, 0, 1, 2, 2], dtype=np.int32)
    ts = np.array([5, 9, 9, 1, 3, 3], dtype=np.int64)
    codes = leave_last_out_split(users, ts, with_val=True)
    assert codes.tolist() == [TRAIN, VAL, TEST, TRAIN, TRAIN, TEST]


def test_same_seed_same_output_different_seed_different_split(tmp_path: Path) -> None:
    a = _prepare(tmp_path, "a")
    b = _prepare(tmp_path, "b")
    c = _prepare(tmp_path, "c", seed=7)
    assert a.fingerprint == b.fingerprint
    for f in ("ratings.parquet", "movies.parquet", "users.parquet", "vocab.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert np.array_equal(a.rating, c.rating) and np.array_equal(a.user_idx, c.user_idx)
    assert not np.array_equal(a.split, c.split)
    assert a.fingerprint != c.fingerprint


def test_zero_fractions_keep_everything_in_train(tmp_path: Path) -> None:
    data = _prepare(tmp_path, "z", test_frac=0.0, val_frac=0.0)
    assert (data.split == TRAIN).all()


def test_time_based_splits_refuse_data_without_timestamps() -> None:
    import numpy as np
    import pytest

    from embedrec.data.split import assign_split
    from embedrec.errors import ConfigError

    users = np.array([0, 0, 1, 1], dtype=np.int32)
    for method in ("temporal", "leave-last-out"):
        with pytest.raises(ConfigError, match="needs timestamps"):
            assign_split(users, np.zeros(4, dtype=np.int64), method=method, test_frac=0.25, val_frac=0.0, seed=0)
    codes = assign_split(users, np.array([1, 2, 3, 4]), method="temporal", test_frac=0.25, val_frac=0.0, seed=0)
    assert codes.tolist() == [0, 0, 0, 2]


def test_a_split_that_leaves_nothing_to_train_on_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """The fractions sum below 1, but 0.99 of 40 ratings rounds to all of them: no prepared set train cannot use."""
    from embedrec.errors import DataError

    config = PrepareConfig(test_frac=0.99, val_frac=0.0)
    with pytest.raises(DataError, match=r"the random split of 40 ratings leaves none to train on \(test 40, val 0\)"):
        prepare_synthetic(out=tmp_path / "out", n_users=20, n_movies=30, n_ratings=40, seed=0, config=config)
    assert not (tmp_path / "out").exists()
