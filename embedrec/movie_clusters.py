"""Movie clusters learned from the ratings: a genre-like input for catalogues that have no genres.

A bare ratings file (``userId,movieId,rating``, no movies file) gives the network's genre input nothing to say, and
on a sparse catalogue that input is what carries a movie with a handful of ratings: it shares what its genre-mates
learned. :func:`movie_clusters` gives such a catalogue a stand-in learned from who rated what in the train split:

1. movie factors: a rank-``rank`` randomized SVD (Halko et al., with power iterations) of the binary user x movie
   matrix, each user's row scaled by ``1 / sqrt(degree)`` so heavy raters do not dominate;
2. spherical k-means (k-means++ seeding, the best of ``KMEANS_RESTARTS`` runs) of the L2-normalised factors into
   ``k`` clusters;
3. each movie's input is its cluster (one slot, weight 1); a movie with no training ratings gets weight 0, the
   zero vector, as a movie with no genres does.

Numpy and ``scipy.sparse`` only (no JAX): :func:`embedrec.train.initialise` computes it from the train split, never
from val or test, and the assignment is written into the model's ``genre_idx`` / ``genre_w`` weights, so serving,
evaluation and fold-in read it from the artifact. The same ratings and seed give the same clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POWER_ITERATIONS = 3
KMEANS_ITERATIONS = 25
KMEANS_RESTARTS = 5


@dataclass(frozen=True)
class MovieClusters:
    """Per-movie cluster slots, shaped like a genre input: (n_movies, 1) indices and (n_movies, 1) weights."""

    idx: np.ndarray  # int32
    weight: np.ndarray  # float32: 1 for a movie with training ratings, 0 for one without
    n_clusters: int


def item_factors(
    users: np.ndarray, movies: np.ndarray, *, n_users: int, n_movies: int, rank: int, seed: int
) -> np.ndarray:
    """(n_movies, r) movie factors of the degree-normalised binary interaction matrix, r = min(rank, sizes)."""
    import scipy.sparse as sp

    pairs = np.unique(np.asarray(users, np.int64) * n_movies + np.asarray(movies, np.int64))
    u, m = pairs // n_movies, pairs % n_movies
    degree = np.bincount(u, minlength=n_users).astype(np.float64)
    values = 1.0 / np.sqrt(degree[u])
    x = sp.csr_matrix((values, (u, m)), shape=(n_users, n_movies))
    r = max(1, min(rank, n_users, n_movies))
    width = min(r + 8, n_users, n_movies)  # oversampling
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(x @ rng.standard_normal((n_movies, width)))[0]
    for _ in range(POWER_ITERATIONS):
        q = np.linalg.qr(x.T @ q)[0]
        q = np.linalg.qr(x @ q)[0]
    # x ~ q q^T x = q (u_b s v^T): the movie factors are the rows of v s
    _, s, vt = np.linalg.svd(np.asarray((x.T @ q).T), full_matrices=False)
    return (vt[:r].T * s[:r]).astype(np.float64)


def spherical_kmeans(points: np.ndarray, k: int, *, seed: int, restarts: int = KMEANS_RESTARTS) -> np.ndarray:
    """Cluster labels of ``points`` (rows L2-normalised here) by cosine k-means with k-means++ seeding: of
    ``restarts`` runs from different seedings, the one whose points lie closest to their centres (the largest sum of
    cosines)."""
    best_labels, best_fit = np.zeros(len(points), np.int64), -np.inf
    for r in range(max(1, restarts)):
        labels, fit = _kmeans(points, k, seed=seed * 1000 + r)
        if fit > best_fit:
            best_labels, best_fit = labels, fit
    return best_labels


def _kmeans(points: np.ndarray, k: int, *, seed: int) -> tuple[np.ndarray, float]:
    """One run of spherical k-means: the labels and the sum of each point's cosine to its centre."""
    rng = np.random.default_rng(seed)
    n = len(points)
    x = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    k = max(1, min(k, n))
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    dist = np.maximum(1.0 - x @ centres[0], 0.0)
    for j in range(1, k):
        total = dist.sum()
        pick = rng.choice(n, p=dist / total) if total > 0 else rng.integers(n)
        centres[j] = x[pick]
        dist = np.minimum(dist, np.maximum(1.0 - x @ centres[j], 0.0))
    labels = np.full(n, -1)
    for _ in range(KMEANS_ITERATIONS):
        new = np.argmax(x @ centres.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c = members.sum(axis=0)
                centres[j] = c / max(np.linalg.norm(c), 1e-12)
            else:  # an empty cluster restarts at the point farthest from its centre
                far = int(np.argmin(np.einsum("nd,nd->n", x, centres[labels])))
                centres[j] = x[far]
    return labels, float(np.einsum("nd,nd->n", x, centres[labels]).sum())


def movie_clusters(
    users: np.ndarray,
    movies: np.ndarray,
    *,
    n_users: int,
    n_movies: int,
    k: int,
    rank: int = 32,
    seed: int = 0,
) -> MovieClusters:
    """The cluster of each of ``n_movies`` movies from the (user, movie) training pairs (see the module doc)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    idx = np.zeros((n_movies, 1), np.int32)
    weight = np.zeros((n_movies, 1), np.float32)
    rated = np.unique(np.asarray(movies, np.int64))
    if len(rated) == 0:
        return MovieClusters(idx, weight, k)
    factors = item_factors(users, movies, n_users=n_users, n_movies=n_movies, rank=rank, seed=seed)
    idx[rated, 0] = spherical_kmeans(factors[rated], k, seed=seed)
    weight[rated, 0] = 1.0
    return MovieClusters(idx, weight, k)
