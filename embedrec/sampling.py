"""Negative sampling for the watch output: shared negatives per batch, and a Bloom filter of the rated pairs.

Synopsis::

    bits = seen_filter(train_user_idx, train_movie_idx)          # numpy, once per run
    cdf = popularity_cdf(train_movie_idx, n_movies, alpha=0.5)   # for sampling="popularity"
    neg = sample_negatives(key, 64, n_movies=n_movies, cdf=cdf)  # inside the jitted step
    weight = 1 - maybe_seen(bits, users[:, None], neg[None, :])  # (B, K): rated movies take no negative loss

A batch shares its K negatives: every positive is scored against all of them with one (B, K) matmul, and only
B + K movie rows are gathered and updated (not B * K). Randomness is counter-based (:func:`mix_seed` of run seed,
epoch and step), so a resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from embedrec.model import hash_u32

_USER_MULT, _MOVIE_MULT = 0x9E3779B1, 0x85EBCA77


def pair_hash_np(users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """The (user, movie) hash of :func:`pair_hash`, in numpy (uint32 arithmetic wraps the same way)."""
    with np.errstate(over="ignore"):
        x = np.asarray(
            users.astype(np.uint32) * np.uint32(_USER_MULT) ^ movies.astype(np.uint32) * np.uint32(_MOVIE_MULT)
        )
        scratch = np.empty_like(x)  # the rest in place: a seen filter hashes 19M pairs at full MovieLens scale
        for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
            np.right_shift(x, np.uint32(shift), out=scratch)
            x ^= scratch
            x *= np.uint32(mult)
        np.right_shift(x, np.uint32(16), out=scratch)
        x ^= scratch
        return x


def pair_hash(users: jax.Array, movies: jax.Array) -> jax.Array:
    """A 32-bit hash of each (user, movie) pair (:func:`embedrec.model.hash_u32` of a multiplicative mix)."""
    mixed = users.astype(jnp.uint32) * jnp.uint32(_USER_MULT) ^ movies.astype(jnp.uint32) * jnp.uint32(_MOVIE_MULT)
    return hash_u32(mixed)


MAX_FILTER_BITS = 1 << 32
"""The pair hash has 32 bits, so a one-hash filter can address at most 2**32 bits (512 MB of words)."""


def filter_bits(n_pairs: int) -> int:
    """Bits of the seen filter for ``n_pairs`` training pairs: the power of two giving at least 64 bits per pair,
    capped at :data:`MAX_FILTER_BITS`.

    Past 2**26 (67M) pairs the cap holds the bits per pair below 64, so the share of unrated pairs falsely flagged
    grows as ``1 - exp(-n_pairs / 2**32)``: 1.6% at 67M pairs, 6% at 270M, 21% at 1B. A false flag only drops a
    negative from the loss, so training stays correct and loses a little signal; the 2**32 bits it never exceeds
    are what the uint32 masks below (and in :func:`maybe_seen`) can hold.
    """
    wanted = max(10, int(np.ceil(np.log2(max(int(n_pairs), 1) * 64))))
    return min(1 << wanted, MAX_FILTER_BITS)


def seen_filter(user_idx: np.ndarray, movie_idx: np.ndarray, *, n_bits: int | None = None) -> np.ndarray:
    """A one-hash Bloom filter of the training pairs: a uint32 bitset of :func:`filter_bits` bits (``n_bits``, a
    power of two up to 2**32, overrides it).

    The training step asks it whether a sampled negative is one of the user's rated movies. It never says no for a
    rated pair, so no positive is ever used as a negative; a false "seen" (about 1 in 64) only drops that negative
    from the loss. One memory access per pair, where a binary search in the user's sorted row costs ~15.
    """
    n_bits = filter_bits(len(user_idx)) if n_bits is None else int(n_bits)
    if n_bits < 32 or n_bits > MAX_FILTER_BITS or n_bits & (n_bits - 1):
        raise ValueError(f"n_bits must be a power of two from 32 to 2**32, got {n_bits}")
    h = pair_hash_np(user_idx, movie_idx)
    if n_bits < MAX_FILTER_BITS:  # 2**32 bits: every hash bit addresses the filter, nothing to mask
        h &= np.uint32(n_bits - 1)
    words = np.zeros(n_bits // 32, dtype=np.uint32)
    if h.size:
        # sorted, a word's pairs are neighbours (np.bitwise_or.at in hash order took 4-5 s at 19M pairs). A plain
        # scatter of every pair's bit leaves each word its last pair's; the pairs followed by one of the same word
        # (13% at 64 bits a pair) are then OR-reduced per word and added. Reducing all 19M pairs per word instead
        # cost ~30% more (0.77 s against 1.09 s, medians at full MovieLens scale)
        h.sort()
        bits = np.left_shift(np.uint32(1), h & np.uint32(31))
        h >>= np.uint32(5)  # each pair's word, still sorted
        words[h] = bits
        earlier = np.flatnonzero(h[1:] == h[:-1])
        if earlier.size:
            word, bit = h[earlier], bits[earlier]
            starts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
            words[word[starts]] |= np.bitwise_or.reduceat(bit, starts)  # distinct words: no repeat in the index
    return words


def maybe_seen_np(words: np.ndarray, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """:func:`maybe_seen` in numpy (for checks outside the jitted step)."""
    h = pair_hash_np(users, movies)
    if words.size * 32 < MAX_FILTER_BITS:
        h &= np.uint32(words.size * 32 - 1)
    return ((words[(h >> np.uint32(5)).astype(np.int64)] >> (h & np.uint32(31))) & np.uint32(1)) == 1


def maybe_seen(words: jax.Array, users: jax.Array, movies: jax.Array) -> jax.Array:
    """True for every training pair (and ~1/64 of the others): see :func:`seen_filter`."""
    h = pair_hash(users, movies) & jnp.uint32(words.shape[0] * 32 - 1)
    return ((words[(h >> 5).astype(jnp.int32)] >> (h & 31)) & 1) == 1


def popularity_cdf(train_movie_idx: np.ndarray, n_movies: int, *, alpha: float) -> np.ndarray:
    """The cumulative distribution of ``count ** alpha`` over movies, for popularity-weighted negatives."""
    counts = np.bincount(train_movie_idx, minlength=n_movies).astype(np.float64) ** alpha
    return (np.cumsum(counts) / counts.sum()).astype(np.float32)


def sample_negatives(key: jax.Array, k: int, *, n_movies: int, cdf: jax.Array | None) -> jax.Array:
    """``k`` movie indices: uniform, or by inverting ``cdf`` (:func:`popularity_cdf`) when it is given."""
    if cdf is not None:
        neg = jnp.searchsorted(cdf, jax.random.uniform(key, (k,))).astype(jnp.int32)
        return jnp.minimum(neg, n_movies - 1)
    return jax.random.randint(key, (k,), 0, n_movies, jnp.int32)


def mix_seed(*parts: jax.Array | int) -> jax.Array:
    """One uint32 seed from several counters (run seed, epoch, step): FNV-style, cheap inside a jitted step."""
    x = jnp.uint32(0x243F6A88)
    for p in parts:
        x = (x ^ jnp.asarray(p).astype(jnp.uint32)) * jnp.uint32(0x01000193)
        x = x ^ (x >> 15)
    return x
