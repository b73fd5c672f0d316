"""Negative sampling: the seen filter never lets a rated movie be a negative; samplers and seeds are reproducible."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedrec.data import load_prepared
from embedrec.data.split import TRAIN
from embedrec.sampling import (
    MAX_FILTER_BITS,
    filter_bits,
    maybe_seen,
    maybe_seen_np,
    mix_seed,
    pair_hash,
    pair_hash_np,
    popularity_cdf,
    sample_negatives,
    seen_filter,
)


@pytest.fixture(scope="module")
def prepared(synthetic_prepared: Path):
    return load_prepared(synthetic_prepared)


def test_sampled_negatives_never_include_a_rated_movie(prepared) -> None:
    """The Bloom filter the step uses flags every training pair, so no positive is ever scored as a negative; the
    few unrated pairs it also flags (about 1 in 64) are only dropped from the loss."""
    train_rows = prepared.split == TRAIN
    u, m = prepared.user_idx[train_rows], prepared.movie_idx[train_rows]
    bits = jnp.asarray(seen_filter(u, m))
    assert bool(np.asarray(maybe_seen(bits, jnp.asarray(u), jnp.asarray(m))).all())
    rng = np.random.default_rng(0)
    cu = rng.integers(0, prepared.n_users, 50_000)
    cm = rng.integers(0, prepared.n_movies, 50_000)
    rated = set(zip(u.tolist(), m.tolist()))
    unrated = np.array([(a, b) not in rated for a, b in zip(cu.tolist(), cm.tolist())])
    flagged = np.asarray(maybe_seen(bits, jnp.asarray(cu), jnp.asarray(cm)))
    assert flagged[~unrated].all()
    assert flagged[unrated].mean() < 0.03
    # exactly the bits of setting each pair's bit one by one
    one_by_one = np.zeros_like(np.asarray(bits))
    h = pair_hash_np(u, m) & np.uint32(one_by_one.size * 32 - 1)
    np.bitwise_or.at(one_by_one, h >> np.uint32(5), np.uint32(1) << (h & np.uint32(31)))
    np.testing.assert_array_equal(np.asarray(bits), one_by_one)


@pytest.mark.parametrize(("n_pairs", "n_bits"), [(1, 32), (100, 32), (5_000, 1 << 10), (50_000, 1 << 16), (0, 64)])
def test_a_crowded_seen_filter_holds_exactly_the_bits_of_its_pairs(n_pairs: int, n_bits: int) -> None:
    """The filter scatters each word's last pair and ORs in the others: with many pairs per word (a small
    ``n_bits``, or past 2**26 pairs) and repeated pairs it must still hold every pair's bit and no other."""
    rng = np.random.default_rng(n_pairs)
    u = rng.integers(0, 3_000, n_pairs)
    m = rng.integers(0, 500, n_pairs)
    u, m = np.concatenate([u, u[: n_pairs // 10]]), np.concatenate([m, m[: n_pairs // 10]])  # some pairs twice
    expected = np.zeros(n_bits // 32, np.uint32)
    h = pair_hash_np(u, m) & np.uint32(n_bits - 1)
    np.bitwise_or.at(expected, h >> np.uint32(5), np.uint32(1) << (h & np.uint32(31)))
    np.testing.assert_array_equal(seen_filter(u, m, n_bits=n_bits), expected)


def test_the_seen_filter_stops_at_the_32_bit_hash_range_past_67m_pairs() -> None:
    """Past 2**26 pairs 64 bits per pair would need more than 2**32 bits, which a uint32 mask cannot hold (the
    filter used to crash with an OverflowError there); it stays at 2**32, where every hash bit addresses it."""
    assert filter_bits(1_000) == 1 << 16
    assert filter_bits(1 << 26) == 1 << 32
    assert filter_bits((1 << 26) + 1) == MAX_FILTER_BITS == 1 << 32
    assert filter_bits(10_000_000_000) == 1 << 32
    rng = np.random.default_rng(3)
    u = rng.integers(0, 300_000, 20_000)
    m = rng.integers(0, 90_000, 20_000)
    words = seen_filter(u, m, n_bits=MAX_FILTER_BITS)  # what 70M pairs get; zero pages cost no memory until set
    assert words.size == (1 << 32) // 32
    assert maybe_seen_np(words, u, m).all()
    # each distinct 32-bit hash sets its own bit: no mask folded two hashes onto one bit
    assert int(np.bitwise_count(words).sum()) == np.unique(pair_hash_np(u, m)).size
    cu, cm = rng.integers(0, 300_000, 20_000), rng.integers(0, 90_000, 20_000)
    assert maybe_seen_np(words, cu, cm).mean() < 0.001
    with pytest.raises(ValueError, match="power of two"):
        seen_filter(u, m, n_bits=(1 << 32) * 2)


def test_the_numpy_and_jax_filter_lookups_agree(prepared) -> None:
    train_rows = prepared.split == TRAIN
    u, m = prepared.user_idx[train_rows], prepared.movie_idx[train_rows]
    words = seen_filter(u, m)
    rng = np.random.default_rng(4)
    cu, cm = rng.integers(0, prepared.n_users, 20_000), rng.integers(0, prepared.n_movies, 20_000)
    np.testing.assert_array_equal(
        maybe_seen_np(words, cu, cm), np.asarray(maybe_seen(jnp.asarray(words), jnp.asarray(cu), jnp.asarray(cm)))
    )


def test_the_numpy_and_jax_pair_hashes_agree() -> None:
    rng = np.random.default_rng(1)
    u = rng.integers(0, 2**31, 10_000)
    m = rng.integers(0, 2**31, 10_000)
    np.testing.assert_array_equal(
        pair_hash_np(u, m), np.asarray(pair_hash(jnp.asarray(u, jnp.uint32), jnp.asarray(m, jnp.uint32)))
    )


def test_popularity_negatives_follow_count_to_the_alpha() -> None:
    train_movies = np.repeat(np.arange(4), [100, 25, 0, 1])
    cdf = popularity_cdf(train_movies, 5, alpha=0.5)
    weights = np.array([10.0, 5.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(cdf, np.cumsum(weights) / weights.sum(), rtol=1e-6)
    neg = np.asarray(sample_negatives(jax.random.key(0), 200_000, n_movies=5, cdf=jnp.asarray(cdf)))
    share = np.bincount(neg, minlength=5) / len(neg)
    np.testing.assert_allclose(share, weights / weights.sum(), atol=0.005)
    assert share[2] == 0 and share[4] == 0  # never-rated movies are never popularity negatives


def test_uniform_negatives_cover_the_catalogue_and_seeds_are_counters() -> None:
    neg = np.asarray(sample_negatives(jax.random.key(mix_seed(1, 2, 3)), 50_000, n_movies=7, cdf=None))
    assert neg.min() == 0 and neg.max() == 6
    assert np.abs(np.bincount(neg) / len(neg) - 1 / 7).max() < 0.01
    assert int(mix_seed(1, 2, 3)) == int(mix_seed(1, 2, 3))
    assert len({int(mix_seed(1, e, s)) for e in range(3) for s in range(50)}) == 150
