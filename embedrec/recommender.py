"""A trained model with its vocabularies and the user's seen movies: predict, recommend, similar, fold-in, evaluate.

Synopsis::

    from embedrec.recommender import Recommender
    rec = Recommender.load("runs/latest", data="work/data")      # numpy only: never imports JAX
    rec.recommend(42, k=10)                                       # DataFrame: movie_id, title, year, genres, score, rating
    rec.recommend(42, k=10, genre="Comedy", filter_seen=False)
    rec.predict([42, 42], [1, 318])                               # predicted ratings (float32)
    rec.recommend_many(rec.user_ids, k=10)                        # long DataFrame: user_id, rank, movie_id, ...
    rec.similar(1, k=10)                                          # cosine of movie embeddings
    user = rec.fold_in([(260, 5.0), (1196, 4.5)])                 # a new user from a few ratings
    rec.recommend_for(user, k=10)

The numpy fast path (:class:`Scorer`) computes exactly what :mod:`embedrec.model` computes, without JAX. The first
Dense layer is linear over the concatenation ``[u; m; g]``, so ``W·[u; m; g] + b = W_u·u + (W_m·m + W_g·g + b)``;
the bracket is precomputed once per movie (``movie_part``, (n_movies, h1)). Per user only ``W_u·u`` is new, and the
rest of the network runs over every movie at once. One more identity removes a full pass over the (users, movies, h1)
block: ``relu(a + p) = max(a, -p) + p``, so ``relu(a + p)·W_2 = max(a, -p)·W_2 + p·W_2`` and ``p·W_2 + b_2`` is
precomputed per movie too. The watch output is a plain dot product ``u · (m + pooled genres) + watch_bias``.

The ranking score is stored in ``model.json`` under ``"ranking"``: ``{"score": "blend", "beta": b}`` means
``watch_logit + b * predicted_rating``; ``{"score": "rating"}`` ranks by the predicted rating (models without a
watch head). :class:`Ranking` reads it, with a default when the key is absent.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np

from embedrec.config import DataShape, ModelConfig
from embedrec.data.encode import lookup_ids
from embedrec.errors import ArtifactError, ConfigError, DataError, UnknownIdError
from embedrec.metrics import ItemSets, top_k

if TYPE_CHECKING:
    import pandas as pd

    from embedrec.artifacts import ModelArtifact
    from embedrec.data.store import PreparedData

DEFAULT_MIN_RATINGS = 5
"""``recommend`` skips movies with fewer ratings than this in the prepared data. Measured on MovieLens-100K (random
80/20, train counts, full ranking): NDCG@10 is the same at thresholds 0, 3, 5, 10 and 20 for the default model
(0.183) and the seed model (0.051), so the filter costs no measured accuracy; 5 is the smallest threshold that drops
the movies a single enthusiastic rating can lift (a quarter of ML-100K's catalogue) while keeping three quarters of
it open to discovery."""

_PAIR_CHUNK = 1 << 16
_BLOCK_ELEMENTS = 1 << 21  # (users x movies x h1) floats per inner step: ~8 MB, cache-friendly
_USER_BLOCK = 256  # users per outer block of top-K: (256, n_movies) float32 scores at a time

ProgressFn = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------------------------
# The ranking score
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranking:
    """How ``recommend`` orders movies: ``"blend"`` is ``watch_logit + beta * rating``; ``"rating"`` the rating."""

    score: Literal["blend", "rating"] = "rating"
    beta: float = 0.0

    def __post_init__(self) -> None:
        if self.score not in ("blend", "rating"):
            raise ConfigError(f"ranking score must be 'blend' or 'rating', got {self.score!r}")
        if not np.isfinite(self.beta):
            raise ConfigError(f"ranking beta must be a finite number, got {self.beta}")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, has_watch: bool) -> Ranking:
        """The ``"ranking"`` entry of ``model.json``; absent: blend with beta 0 with a watch head, else rating."""
        raw = meta.get("ranking")
        if raw is None:
            return cls("blend", 0.0) if has_watch else cls("rating")
        if not isinstance(raw, Mapping):
            raise ArtifactError(f"model.json 'ranking' must be an object, got {raw!r}")
        ranking = cls(str(raw.get("score", "rating")), float(raw.get("beta", 0.0)))  # type: ignore[arg-type]
        if ranking.score == "blend" and not has_watch:
            raise ArtifactError("model.json asks for the 'blend' ranking but the model has no watch head")
        return ranking

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "beta": self.beta} if self.score == "blend" else {"score": "rating"}

    def describe(self) -> str:
        if self.score == "rating":
            return "predicted rating"
        return "watch logit" if self.beta == 0 else f"watch logit + {self.beta:g} x predicted rating"


# ---------------------------------------------------------------------------------------------------------------
# BLAS threads
# ---------------------------------------------------------------------------------------------------------------
def _openblas_thread_fns() -> tuple[Any, Any] | None:
    """numpy's bundled OpenBLAS get/set-threads functions, or None when numpy uses another BLAS."""
    libs_dir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libs_dir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                               ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with one BLAS thread, restoring the previous count after.

    The scorer's matrix products are small ((movies, 64) x (64, 16)); OpenBLAS's threads cost more than they save
    there (measured 6x slower on 2 busy cores), and we parallelise over users ourselves instead.
    """
    fns = _openblas_thread_fns()
    if fns is None:
        yield
        return
    get, set_ = fns
    before = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(before)


def _n_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------------------
# The numpy fast path
# ---------------------------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


class Scorer:
    """The network's forward pass in numpy, over internal indices, for many users x all movies at once.

    Build it from a model folder (:meth:`from_artifact`) or from weights held in memory (:meth:`from_weights`, e.g.
    by the training loop for a per-epoch validation NDCG). ``weights`` uses the names of
    :mod:`embedrec.artifacts` and must include ``genre_idx`` / ``genre_w``.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], model_cfg: ModelConfig, shape: DataShape,
                 ranking: Ranking | None = None) -> None:
        f32 = np.float32
        d = model_cfg.embedding_dim
        self.shape = shape
        self.model_cfg = model_cfg
        self.user_embedding = np.asarray(weights["user_embedding"], f32)
        self.movie_embedding = np.asarray(weights["movie_embedding"], f32)
        genre_table = np.asarray(weights["genre_embedding"], f32)
        genre_idx = np.asarray(weights["genre_idx"])
        genre_w = np.asarray(weights["genre_w"], f32)
        self.n_users, self.n_movies = self.user_embedding.shape[0], self.movie_embedding.shape[0]
        if self.user_embedding.shape[1] != d or genre_idx.shape[0] != self.n_movies:
            raise ArtifactError("weights do not match the model config (embedding size or movie count differs)")
        self.genre_pooled = np.einsum("mgd,mg->md", genre_table[genre_idx], genre_w).astype(f32)
        self.user_bias = np.asarray(weights["user_bias"], f32)[:, 0] if "user_bias" in weights else None
        self.movie_bias = np.asarray(weights["movie_bias"], f32)[:, 0] if "movie_bias" in weights else None
        self.watch_bias = np.asarray(weights["watch_bias"], f32)[:, 0] if "watch_bias" in weights else None

        layers = []
        i = 0
        while f"head.layers.{i}.kernel" in weights:
            layers.append((np.asarray(weights[f"head.layers.{i}.kernel"], f32),
                           np.asarray(weights[f"head.layers.{i}.bias"], f32)))
            i += 1
        if not layers:
            raise ArtifactError("weights have no hidden Dense layer (head.layers.0.kernel)")
        out_kernel = np.asarray(weights["head.out.kernel"], f32)
        out_bias = np.asarray(weights["head.out.bias"], f32)
        layers.append((out_kernel, out_bias))
        k1, b1 = layers[0]
        self.w_user = k1[:d]
        self.movie_part = (self.movie_embedding @ k1[d:2 * d] + self.genre_pooled @ k1[2 * d:] + b1).astype(f32)
        self.neg_movie_part = -self.movie_part
        k2, b2 = layers[1]
        self.k2 = k2
        self.movie_part2 = (self.movie_part @ k2 + b2).astype(f32)
        self.rest = layers[2:]  # after layer 2; the last entry is the output layer
        self.layers = layers
        self.watch_item = (self.movie_embedding + self.genre_pooled).astype(f32) if self.has_watch else None
        self.ranking = ranking or Ranking.from_meta({}, has_watch=self.has_watch)
        if self.ranking.score == "blend" and not self.has_watch:
            raise ArtifactError("the 'blend' ranking needs a model with a watch head")

    @classmethod
    def from_weights(cls, weights: Mapping[str, np.ndarray], model_cfg: ModelConfig, shape: DataShape,
                     ranking: Ranking | Mapping[str, Any] | None = None) -> Scorer:
        """A scorer over in-memory weights (numpy or anything ``np.asarray`` takes)."""
        if ranking is not None and not isinstance(ranking, Ranking):
            ranking = Ranking.from_meta({"ranking": ranking}, has_watch="watch_bias" in weights)
        return cls(weights, model_cfg, shape, ranking)

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> Scorer:
        ranking = Ranking.from_meta(artifact.meta, has_watch="watch_bias" in artifact.weights)
        return cls(artifact.weights, artifact.model, artifact.shape, ranking)

    @property
    def has_watch(self) -> bool:
        return self.watch_bias is not None

    # -- users ----------------------------------------------------------------------------------------------
    def user_rows(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (B, d), rating biases (B,)) of known users; biases are 0 for models without them."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        bias = self.user_bias[user_idx] if self.user_bias is not None else np.zeros(len(user_idx), np.float32)
        return self.user_embedding[user_idx], bias

    # -- ratings --------------------------------------------------------------------------------------------
    def _scale(self, logit: np.ndarray) -> np.ndarray:
        lo, hi = self.shape.rating_min, self.shape.rating_max
        return (lo + (hi - lo) * _sigmoid(logit)).astype(np.float32)

    def _tail(self, h: np.ndarray) -> np.ndarray:
        """Layers after the second Dense: relu, [Dense, relu]*, output Dense. ``h`` is the 2nd layer's pre-act."""
        if not self.rest:  # the second layer was the output
            return h[..., 0]
        np.maximum(h, 0.0, out=h)
        for kernel, bias in self.rest[:-1]:
            h = h @ kernel
            h += bias
            np.maximum(h, 0.0, out=h)
        kernel, bias = self.rest[-1]
        return (h @ kernel)[..., 0] + bias[0]

    def rating_logits_pairs(self, emb: np.ndarray, bias: np.ndarray, movie_idx: np.ndarray) -> np.ndarray:
        """Rating logits of (user row i, movie_idx[i]) pairs: the plain forward pass."""
        a = emb @ self.w_user + self.movie_part[movie_idx]
        np.maximum(a, 0.0, out=a)
        h = a @ self.k2 + self.layers[1][1]
        logit = self._tail(h)
        logit = logit + bias
        if self.movie_bias is not None:
            logit = logit + self.movie_bias[movie_idx]
        return logit

    def predict_pairs(self, user_idx: np.ndarray, movie_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user_idx[i], movie_idx[i]), in chunks; the ``PredictFn`` of evaluation."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        movie_idx = np.asarray(movie_idx, dtype=np.int64)
        out = np.empty(len(user_idx), dtype=np.float32)
        for s in range(0, len(user_idx), _PAIR_CHUNK):
            emb, bias = self.user_rows(user_idx[s:s + _PAIR_CHUNK])
            out[s:s + _PAIR_CHUNK] = self._scale(self.rating_logits_pairs(emb, bias, movie_idx[s:s + _PAIR_CHUNK]))
        return out

    def rating_logits(self, emb: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """(B, n_movies) rating logits of user rows against every movie (the fast path)."""
        emb = np.atleast_2d(np.asarray(emb, np.float32))
        user_part = emb @ self.w_user
        n, h1 = user_part.shape
        out = np.empty((n, self.n_movies), dtype=np.float32)
        step = max(1, _BLOCK_ELEMENTS // max(1, self.n_movies * h1))
        buf = np.empty((min(step, n), self.n_movies, h1), dtype=np.float32)
        for s in range(0, n, step):
            b = min(step, n - s)
            x = buf[:b]
            np.maximum(user_part[s:s + b, None, :], self.neg_movie_part[None], out=x)  # relu(a+p) - p
            h = (x.reshape(-1, h1) @ self.k2).reshape(b, self.n_movies, -1)
            h += self.movie_part2  # + p·W2 + b2
            out[s:s + b] = self._tail(h)
        out += np.asarray(bias, np.float32)[:, None]
        if self.movie_bias is not None:
            out += self.movie_bias
        return out

    def ratings(self, emb: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """(B, n_movies) predicted ratings."""
        return self._scale(self.rating_logits(emb, bias))

    # -- watch and ranking ----------------------------------------------------------------------------------
    def watch_logits(self, emb: np.ndarray) -> np.ndarray:
        """(B, n_movies) watch logits; needs a watch head."""
        if self.watch_item is None:
            raise ArtifactError("this model has no watch head")
        return np.atleast_2d(np.asarray(emb, np.float32)) @ self.watch_item.T + self.watch_bias

    def scores(self, emb: np.ndarray, bias: np.ndarray, ranking: Ranking | None = None) -> np.ndarray:
        """(B, n_movies) ranking scores of user rows under ``ranking`` (default: the model's own)."""
        ranking = ranking or self.ranking
        if ranking.score == "rating":
            return self.ratings(emb, bias)
        out = self.watch_logits(emb)
        if ranking.beta != 0.0:
            out += np.float32(ranking.beta) * self.ratings(emb, bias)
        return out

    def pair_scores(self, emb: np.ndarray, bias: np.ndarray, movie_idx: np.ndarray,
                    ranking: Ranking | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ranking scores, predicted ratings) of (user row i, movie_idx[i]) pairs."""
        ranking = ranking or self.ranking
        rating = self._scale(self.rating_logits_pairs(emb, bias, movie_idx))
        if ranking.score == "rating":
            return rating, rating
        watch = np.einsum("nd,nd->n", emb, self.watch_item[movie_idx]) + self.watch_bias[movie_idx]
        return (watch + np.float32(ranking.beta) * rating).astype(np.float32), rating

    def score_users(self, user_idx: np.ndarray, ranking: Ranking | None = None, *,
                    workers: int | None = None) -> np.ndarray:
        """(len(user_idx), n_movies) ranking scores of known users; the ``ScoreFn`` of evaluation.

        Users are split across ``workers`` threads (default: the CPUs this process may use) with one BLAS thread
        each; numpy releases the GIL inside every large operation, so the threads run in parallel.
        """
        user_idx = np.asarray(user_idx, dtype=np.int64)
        emb, bias = self.user_rows(user_idx)
        return self._parallel_scores(emb, bias, ranking, workers)

    def _parallel_scores(self, emb: np.ndarray, bias: np.ndarray, ranking: Ranking | None,
                         workers: int | None) -> np.ndarray:
        ranking = ranking or self.ranking
        workers = workers or _n_workers()
        n = len(emb)
        cheap = ranking.score == "blend" and ranking.beta == 0.0
        with single_threaded_blas():
            if cheap or workers == 1 or n < 2:
                return self.scores(emb, bias, ranking)
            out = np.empty((n, self.n_movies), dtype=np.float32)
            parts = np.array_split(np.arange(n), min(workers * 4, n))

            def run(rows: np.ndarray) -> None:
                out[rows[0]:rows[-1] + 1] = self.scores(emb[rows], bias[rows], ranking)

            with ThreadPoolExecutor(min(workers, len(parts))) as pool:
                list(pool.map(run, parts))
            return out


# ---------------------------------------------------------------------------------------------------------------
# Fold-in
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldedUser:
    """A user that the model never saw, fitted from their own ratings: an embedding and a rating bias."""

    embedding: np.ndarray
    bias: float
    movie_idx: np.ndarray  # the movies they rated (excluded from their recommendations)
    loss: float
    steps: int


_FOLD_NEGATIVES = 4096


@dataclass(frozen=True)
class _FoldProblem:
    """What one fold-in reads every step, gathered once in float64."""

    w_user: np.ndarray
    movie_part: np.ndarray  # (n, h1) of the rated movies
    layers: list[tuple[np.ndarray, np.ndarray]]
    movie_bias: np.ndarray | float
    rating: np.ndarray
    watch_pos: np.ndarray | None  # (n, d) watch vectors of the rated movies
    watch_pos_bias: np.ndarray | None
    watch_neg: np.ndarray | None  # (n_neg, d) of unrated movies (all, or a seeded sample)
    watch_neg_bias: np.ndarray | None


def _fold_problem(scorer: Scorer, movie_idx: np.ndarray, rating: np.ndarray, *, seed: int = 0) -> _FoldProblem:
    f64 = np.float64
    movie_idx = np.asarray(movie_idx, dtype=np.int64)
    watch = [None] * 4
    if scorer.has_watch:
        unrated = np.ones(scorer.n_movies, dtype=bool)
        unrated[movie_idx] = False
        neg = np.flatnonzero(unrated)
        if len(neg) > _FOLD_NEGATIVES:  # an unbiased sample of the mean over every unrated movie
            neg = np.sort(np.random.default_rng(seed).choice(neg, _FOLD_NEGATIVES, replace=False))
        watch = [scorer.watch_item[movie_idx].astype(f64), scorer.watch_bias[movie_idx].astype(f64),
                 scorer.watch_item[neg].astype(f64), scorer.watch_bias[neg].astype(f64)]
    return _FoldProblem(
        w_user=scorer.w_user.astype(f64), movie_part=scorer.movie_part[movie_idx].astype(f64),
        layers=[(k.astype(f64), b.astype(f64)) for k, b in scorer.layers[1:]],
        movie_bias=scorer.movie_bias[movie_idx].astype(f64) if scorer.movie_bias is not None else 0.0,
        rating=np.asarray(rating, dtype=f64), watch_pos=watch[0], watch_pos_bias=watch[1], watch_neg=watch[2],
        watch_neg_bias=watch[3])


def fold_in_loss(scorer: Scorer, u: np.ndarray, b: float, movie_idx: np.ndarray, rating: np.ndarray, *,
                 weight_decay: float, watch_weight: float, watch_loss: str = "bce",
                 negatives: int = 4) -> tuple[float, np.ndarray, float]:
    """(loss, d loss / d u, d loss / d b) of one user's fold-in objective (see :func:`fold_in`), in float64."""
    problem = _fold_problem(scorer, movie_idx, rating)
    return _fold_loss(problem, scorer.shape, u, b, weight_decay=weight_decay, watch_weight=watch_weight,
                      watch_loss=watch_loss, negatives=negatives)


def _fold_loss(p: _FoldProblem, shape: DataShape, u: np.ndarray, b: float, *, weight_decay: float,
               watch_weight: float, watch_loss: str = "bce", negatives: int = 4) -> tuple[float, np.ndarray, float]:
    lo, hi = shape.rating_min, shape.rating_max
    n = len(p.rating)
    h = u @ p.w_user + p.movie_part  # (n, h1) pre-activation
    pre_acts = []
    for kernel, bias in p.layers:
        pre_acts.append(h)
        h = np.maximum(h, 0.0) @ kernel + bias
    logit = h[:, 0] + b + p.movie_bias
    sig = 1.0 / (1.0 + np.exp(-logit))
    err = lo + (hi - lo) * sig - p.rating
    loss = float(np.mean(err * err) + weight_decay * (u @ u + b * b))
    g_logit = 2.0 * err / n * (hi - lo) * sig * (1.0 - sig)
    g = g_logit[:, None]
    for pre, (kernel, _) in zip(reversed(pre_acts), reversed(p.layers)):
        g = (g @ kernel.T) * (pre > 0)
    grad_u = (g @ p.w_user.T).sum(axis=0) + 2.0 * weight_decay * u
    grad_b = float(g_logit.sum()) + 2.0 * weight_decay * b
    if p.watch_pos is not None and watch_weight > 0 and len(p.watch_neg):
        pos = p.watch_pos @ u + p.watch_pos_bias
        neg = p.watch_neg @ u + p.watch_neg_bias
        if watch_loss == "softmax":
            # each positive against `negatives` average unrated movies: log(e^pos + k * mean(e^neg)) - pos
            neg_max = float(neg.max())
            neg_exp = np.exp(neg - neg_max)
            log_s = np.log(negatives) + neg_max + np.log(neg_exp.mean())
            lse = np.logaddexp(pos, log_s)
            loss += watch_weight * float(np.mean(lse - pos))
            share = np.exp(pos - lse)  # softmax weight of each positive
            neg_soft = neg_exp / neg_exp.sum()
            grad_u = grad_u + watch_weight * (((share - 1.0) / n) @ p.watch_pos
                                              + float(np.sum(1.0 - share) / n) * (neg_soft @ p.watch_neg))
        else:
            loss += watch_weight * float(np.mean(_softplus(-pos)) + np.mean(_softplus(neg)))
            grad_u = grad_u + watch_weight * ((-_sigmoid(-pos) / n) @ p.watch_pos
                                              + (_sigmoid(neg) / len(neg)) @ p.watch_neg)
    return loss, grad_u, grad_b


def fold_in(scorer: Scorer, movie_idx: np.ndarray, rating: np.ndarray, *, weight_decay: float = 0.05,
            watch_weight: float = 1.0, watch_loss: str = "bce", negatives: int = 4, steps: int = 300,
            lr: float = 0.05, seed: int = 0) -> FoldedUser:
    """Fit a user embedding (and rating bias) to ``rating`` of ``movie_idx``, the rest of the model frozen.

    The loss is the training loss for one user: mean squared rating error + ``weight_decay * (|u|^2 + b^2)`` and,
    with a watch head, ``watch_weight`` times the watch loss the model was trained with (``watch_loss``): binary
    cross-entropy with the rated movies as positives and the unrated movies as negatives, or the sampled softmax of
    each positive against ``negatives`` unrated movies, in expectation. "Unrated movies" are all of them, or a seeded
    sample of 4,096 in larger catalogues (an unbiased estimate of the same mean). Gradients are written out by hand through the small MLP
    (:func:`fold_in_loss`); Adam runs ``steps`` full-batch steps from the mean user: tens of milliseconds.
    """
    movie_idx = np.asarray(movie_idx, dtype=np.int64)
    if movie_idx.size == 0:
        raise DataError("fold-in needs at least one rating")
    problem = _fold_problem(scorer, movie_idx, rating, seed=seed)
    u = scorer.user_embedding.mean(axis=0).astype(np.float64)
    use_bias = scorer.user_bias is not None
    b = float(scorer.user_bias.mean()) if use_bias else 0.0
    m1 = np.zeros(u.size + 1)
    m2 = np.zeros(u.size + 1)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    loss = float("inf")
    for t in range(1, steps + 1):
        loss, grad_u, grad_b = _fold_loss(problem, scorer.shape, u, b, weight_decay=weight_decay,
                                          watch_weight=watch_weight, watch_loss=watch_loss, negatives=negatives)
        grad = np.append(grad_u, grad_b if use_bias else 0.0)
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad * grad
        step = lr * (m1 / (1 - beta1 ** t)) / (np.sqrt(m2 / (1 - beta2 ** t)) + eps)
        u -= step[:-1]
        b -= float(step[-1])
    return FoldedUser(embedding=u.astype(np.float32), bias=float(b), movie_idx=np.unique(movie_idx), loss=loss,
                      steps=steps)


# ---------------------------------------------------------------------------------------------------------------
# The recommender
# ---------------------------------------------------------------------------------------------------------------
class Recommender:
    """A loaded model + vocabularies (+ the prepared data for seen movies and popularity), in raw ids.

    Without ``prepared`` nothing is filtered as seen, ``min_ratings`` does not apply and there is no popularity
    fallback for unknown users (they raise :class:`UnknownIdError`).
    """

    def __init__(self, artifact: ModelArtifact, prepared: PreparedData | None = None, *,
                 ranking: Ranking | None = None) -> None:
        self.artifact = artifact
        self.scorer = Scorer.from_artifact(artifact)
        if ranking is not None:
            self.scorer.ranking = ranking
        self.user_ids = np.asarray(artifact.user_ids, dtype=np.int64)
        self.movies = artifact.movies.reset_index(drop=True)
        self.movie_ids = self.movies["movie_id"].to_numpy(np.int64)
        self.prepared = prepared
        self._seen: ItemSets | None = None
        self._rated: tuple[np.ndarray, np.ndarray] | None = None
        self._counts: np.ndarray | None = None
        self._popularity: np.ndarray | None = None
        if prepared is not None:
            self._index_prepared(prepared)

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], data: str | os.PathLike[str] | None = None) -> Recommender:
        from embedrec.artifacts import load_model

        artifact = load_model(Path(model_dir))
        prepared = None
        if data is not None:
            from embedrec.data.store import load_prepared

            prepared = load_prepared(data)
        return cls(artifact, prepared)

    @property
    def ranking(self) -> Ranking:
        return self.scorer.ranking

    @property
    def fingerprint_matches(self) -> bool:
        return self.prepared is not None and self.prepared.fingerprint == self.artifact.fingerprint

    def _index_prepared(self, prepared: PreparedData) -> None:
        from embedrec.baselines import TopRated
        from embedrec.data.encode import lookup_index

        if self.fingerprint_matches:
            u, m, r = prepared.user_idx, prepared.movie_idx, prepared.rating
        else:  # re-prepared data: map through raw ids, dropping what the model does not know
            u = lookup_index(prepared.user_ids, self.user_ids)[prepared.user_idx]
            m = lookup_index(prepared.movie_ids, self.movie_ids)[prepared.movie_idx]
            keep = (u >= 0) & (m >= 0)
            u, m, r = u[keep], m[keep], prepared.rating[keep]
        n_users, n_movies = len(self.user_ids), len(self.movie_ids)
        self._rated = (np.asarray(u, dtype=np.int32), np.asarray(m, dtype=np.int32))
        self._counts = np.bincount(m, minlength=n_movies)
        if len(u):
            self._popularity = TopRated().fit(u, m, r, n_users=n_users, n_movies=n_movies).scores_
        else:
            self._popularity = np.zeros(n_movies, np.float32)

    def _seen_sets(self) -> ItemSets | None:
        """Every user's rated movies (all splits) as CSR, built on first use by a counting sort (no 2M-key sort)."""
        if self._seen is None and self._rated is not None:
            u, m = self._rated
            counts = np.bincount(u, minlength=len(self.user_ids))
            indptr = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            self._seen = ItemSets(indptr=indptr, indices=m[np.argsort(u, kind="stable")], n_items=len(self.movie_ids))
        return self._seen

    def seen_mask(self, user_idx: int) -> np.ndarray:
        """(n_movies,) True where the user rated the movie in the prepared data; all False without it."""
        out = np.zeros(len(self.movie_ids), dtype=bool)
        if self._seen is not None:
            out[self._seen.indices[self._seen.indptr[user_idx]:self._seen.indptr[user_idx + 1]]] = True
        elif self._rated is not None:
            u, m = self._rated
            out[m[u == user_idx]] = True
        return out

    # -- ids --------------------------------------------------------------------------------------------------
    def user_index(self, user_id: int) -> int:
        idx = int(self.user_indices([user_id])[0])
        if idx < 0:
            raise UnknownIdError(f"user {user_id} is not known to the model ({len(self.user_ids)} users)")
        return idx

    def movie_index(self, movie_id: int) -> int:
        idx = int(self.movie_indices([movie_id])[0])
        if idx < 0:
            raise UnknownIdError(f"movie {movie_id} is not known to the model ({len(self.movie_ids)} movies)")
        return idx

    def user_indices(self, user_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """int32 indices, -1 for unknown ids."""
        return lookup_ids(self.user_ids, user_ids)

    def movie_indices(self, movie_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return lookup_ids(self.movie_ids, movie_ids)

    def known_user(self, user_id: int) -> bool:
        return int(self.user_indices([user_id])[0]) >= 0

    # -- predict ----------------------------------------------------------------------------------------------
    def predict(self, user_ids: Sequence[int] | np.ndarray, movie_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Predicted ratings of (user_ids[i], movie_ids[i]); UnknownIdError names the first unknown id."""
        ratings, reasons = self.predict_known(user_ids, movie_ids)
        bad = np.flatnonzero(reasons != "")
        if bad.size:
            i = int(bad[0])
            raise UnknownIdError(f"cannot predict user {np.asarray(user_ids)[i]}, movie {np.asarray(movie_ids)[i]}: "
                                 f"{reasons[i]} (the model knows {len(self.user_ids):,} users and "
                                 f"{len(self.movie_ids):,} movies)")
        return ratings

    def predict_known(self, user_ids: Sequence[int] | np.ndarray,
                      movie_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ratings with NaN where unknown, reason per row: "" or "unknown user"/"unknown movie"/"unknown user and movie")."""
        u = self.user_indices(user_ids)
        m = self.movie_indices(movie_ids)
        if u.shape != m.shape:
            raise ConfigError(f"{u.size} user ids but {m.size} movie ids")
        ok = (u >= 0) & (m >= 0)
        out = np.full(u.shape, np.nan, dtype=np.float32)
        out[ok] = self.scorer.predict_pairs(u[ok], m[ok])
        reasons = np.full(u.shape, "", dtype=object)
        reasons[(u < 0) & (m >= 0)] = "unknown user"
        reasons[(u >= 0) & (m < 0)] = "unknown movie"
        reasons[(u < 0) & (m < 0)] = "unknown user and movie"
        return out, reasons

    # -- filters ----------------------------------------------------------------------------------------------
    def genre_mask(self, genre: str) -> np.ndarray:
        """Movies having ``genre`` (case-insensitive); ConfigError listing the genres when there is no such genre."""
        lists = self.movies["genre_list"] if "genre_list" in self.movies else \
            self.movies["genres"].astype(str).str.split("|")
        known = sorted({g for gl in lists for g in gl})
        match = [g for g in known if g.lower() == genre.strip().lower()]
        if not match:
            raise ConfigError(f"--genre: unknown genre {genre!r}; known: {', '.join(known)}")
        target = match[0]
        return np.fromiter((target in gl for gl in lists), dtype=bool, count=len(lists))

    def _candidates(self, *, genre: str | None, min_ratings: int) -> np.ndarray:
        """Movies eligible for anyone under the filters (True = may be recommended)."""
        ok = np.ones(len(self.movie_ids), dtype=bool)
        if genre:
            ok &= self.genre_mask(genre)
        if min_ratings > 0 and self._counts is not None:
            ok &= self._counts >= min_ratings
        return ok

    def rating_counts(self) -> np.ndarray | None:
        """Ratings per movie in the prepared data (all splits), or None without it."""
        return self._counts

    # -- recommend --------------------------------------------------------------------------------------------
    def recommend(self, user_id: int, *, k: int = 10, filter_seen: bool = True, genre: str | None = None,
                  min_ratings: int = DEFAULT_MIN_RATINGS) -> pd.DataFrame:
        """Top ``k`` movies for a known user: movie_id, title, year, genres, score (ranking score), rating.

        Unknown users raise :class:`UnknownIdError`; see :meth:`popular` for the cold-start list.
        """
        _check_k(k)
        u = self.user_index(user_id)
        emb, bias = self.scorer.user_rows(np.array([u]))
        exclude = ~self._candidates(genre=genre, min_ratings=min_ratings)
        if filter_seen:
            exclude = exclude | self.seen_mask(u)
        scores = self.scorer.scores(emb, bias)
        return self._table(scores[0], exclude, k, emb[0], float(bias[0]))

    def recommend_for(self, user: FoldedUser, *, k: int = 10, filter_seen: bool = True, genre: str | None = None,
                      min_ratings: int = DEFAULT_MIN_RATINGS) -> pd.DataFrame:
        """Top ``k`` for a folded-in user (see :meth:`fold_in`); their rated movies count as seen."""
        _check_k(k)
        exclude = ~self._candidates(genre=genre, min_ratings=min_ratings)
        if filter_seen:
            exclude[user.movie_idx] = True
        scores = self.scorer.scores(user.embedding[None], np.array([user.bias], np.float32))
        return self._table(scores[0], exclude, k, user.embedding, user.bias)

    def popular(self, *, k: int = 10, genre: str | None = None,
                min_ratings: int = DEFAULT_MIN_RATINGS) -> pd.DataFrame:
        """The cold-start list: Bayesian-average top rated movies (score = that average; rating column empty)."""
        _check_k(k)
        if self._popularity is None:
            raise UnknownIdError("no popularity fallback without the prepared data: pass --data DIR")
        exclude = ~self._candidates(genre=genre, min_ratings=min_ratings)
        top = top_k(self._popularity[None], k, exclude=exclude[None])[0]
        top = top[top >= 0]
        out = self._movie_rows(top)
        out["score"] = self._popularity[top].astype(float)
        out["rating"] = np.nan
        return out

    def _table(self, scores: np.ndarray, exclude: np.ndarray, k: int, emb: np.ndarray, bias: float
               ) -> pd.DataFrame:
        top = top_k(scores[None], k, exclude=exclude[None])[0]
        top = top[top >= 0]
        out = self._movie_rows(top)
        out["score"] = scores[top].astype(float)
        logits = self.scorer.rating_logits_pairs(np.repeat(emb[None], len(top), axis=0),
                                                 np.full(len(top), bias, np.float32), top)
        out["rating"] = self.scorer._scale(logits).astype(float)
        return out

    def _movie_rows(self, movie_idx: np.ndarray) -> pd.DataFrame:
        cols = [c for c in ("movie_id", "title", "year", "genres") if c in self.movies]
        out = self.movies.loc[movie_idx, cols].reset_index(drop=True)
        return out

    def recommend_many(self, user_ids: Sequence[int] | np.ndarray, *, k: int = 10, filter_seen: bool = True,
                       genre: str | None = None, min_ratings: int = DEFAULT_MIN_RATINGS,
                       with_ratings: bool = True, on_progress: ProgressFn | None = None,
                       workers: int | None = None) -> pd.DataFrame:
        """Top ``k`` for many known users: a long table user_id, rank (1..k), movie_id, score[, rating].

        Scores one block of users at a time ((block, n_movies) floats), so memory stays bounded for any number of
        users. Unknown ids raise :class:`UnknownIdError` before any work.
        """
        import pandas as pd

        _check_k(k)
        user_ids = np.asarray(user_ids, dtype=np.int64)
        idx = self.user_indices(user_ids)
        if (idx < 0).any():
            bad = user_ids[idx < 0]
            raise UnknownIdError(f"{bad.size} unknown user id(s), e.g. {int(bad[0])}")
        candidates = self._candidates(genre=genre, min_ratings=min_ratings)
        top = np.empty((len(idx), k), dtype=np.int32)
        for s in range(0, len(idx), _USER_BLOCK):
            batch = idx[s:s + _USER_BLOCK]
            scores = self.scorer.score_users(batch, workers=workers)
            exclude = np.broadcast_to(~candidates, scores.shape)
            seen = self._seen_sets() if filter_seen else None
            if seen is not None:
                exclude = exclude | seen.mask(batch)
            top[s:s + len(batch)] = top_k(scores, k, exclude=exclude)
            if on_progress is not None:
                on_progress(s + len(batch), len(idx))
        rows = np.repeat(np.arange(len(idx)), k)
        flat = top.ravel()
        keep = flat >= 0
        rows, flat = rows[keep], flat[keep]
        emb, bias = self.scorer.user_rows(idx[rows])
        score = np.empty(len(rows), np.float32)
        rating = np.empty(len(rows), np.float32)
        for s in range(0, len(rows), _PAIR_CHUNK):
            chunk = slice(s, s + _PAIR_CHUNK)
            score[chunk], rating[chunk] = self.scorer.pair_scores(emb[chunk], bias[chunk], flat[chunk])
        out = pd.DataFrame({
            "user_id": user_ids[rows],
            "rank": (np.arange(len(idx) * k) % k + 1)[keep],
            "movie_id": self.movie_ids[flat],
            "score": score,
        })
        if with_ratings:
            out["rating"] = rating
        return out

    # -- fold-in ----------------------------------------------------------------------------------------------
    def fold_in(self, ratings: Sequence[tuple[int, float]] | pd.DataFrame, **options: Any) -> FoldedUser:
        """A new user from their own (movie_id, rating) pairs; unknown movies raise :class:`UnknownIdError`."""
        if hasattr(ratings, "columns"):
            movie_ids = ratings["movieId" if "movieId" in ratings else "movie_id"].to_numpy()
            values = ratings["rating"].to_numpy(np.float32)
        else:
            pairs = list(ratings)
            movie_ids = np.array([p[0] for p in pairs], dtype=np.int64)
            values = np.array([p[1] for p in pairs], dtype=np.float32)
        idx = self.movie_indices(movie_ids)
        if (idx < 0).any():
            raise UnknownIdError(f"movie {int(np.asarray(movie_ids)[idx < 0][0])} in the ratings is not known to "
                                 "the model")
        lo, hi = self.scorer.shape.rating_min, self.scorer.shape.rating_max
        if not np.all(np.isfinite(values)) or values.min(initial=lo) < lo or values.max(initial=hi) > hi:
            raise DataError(f"ratings must lie in the model's range {lo:g}..{hi:g}")
        train = self.artifact.train
        options.setdefault("weight_decay", max(train.weight_decay, 0.05))
        options.setdefault("watch_weight", train.watch_weight)
        options.setdefault("watch_loss", getattr(train, "watch_loss", "bce"))
        options.setdefault("negatives", max(int(train.negatives), 1))
        return fold_in(self.scorer, idx, values, **options)

    # -- similar ----------------------------------------------------------------------------------------------
    def find_movies(self, query: str) -> pd.DataFrame:
        """Movies whose title holds every word of ``query`` (case-insensitive); only the exact title matches if any."""
        words = query.lower().split()
        titles = self.movies["title"].astype(str).str.lower()
        hit = np.ones(len(titles), dtype=bool)
        for w in words:
            hit &= titles.str.contains(w, regex=False).to_numpy()
        exact = hit & (titles == query.strip().lower()).to_numpy()
        chosen = exact if exact.any() else hit
        return self._movie_rows(np.flatnonzero(chosen))

    def similar(self, movie_id: int, *, k: int = 10) -> pd.DataFrame:
        """The ``k`` movies whose learned embeddings are closest by cosine similarity (the movie itself excluded)."""
        _check_k(k)
        m = self.movie_index(movie_id)
        emb = self.scorer.movie_embedding
        norms = np.linalg.norm(emb, axis=1)
        sims = (emb @ emb[m]) / np.maximum(norms * norms[m], 1e-12)
        exclude = np.zeros(len(sims), dtype=bool)
        exclude[m] = True
        top = top_k(sims[None], k, exclude=exclude[None])[0]
        top = top[top >= 0]
        out = self._movie_rows(top)
        out["similarity"] = sims[top].astype(float)
        return out


def _check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")


# ---------------------------------------------------------------------------------------------------------------
# Evaluation of a model
# ---------------------------------------------------------------------------------------------------------------
def evaluate_model(scorer: Scorer, prepared: PreparedData, *, split: str = "test", ks: Sequence[int] = (10,),
                   relevance: float | None = None, baselines: bool = True, variants: bool = True,
                   max_users: int | None = None, seed: int = 0,
                   on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Rating error and full-ranking metrics of the model on ``split``, with the baselines on the same split.

    Returns ``{"rmse", "mae", "precision@K", ..., "n_users", "ranking": {...}, "baselines": {...}}`` and, for models
    with a watch head, ``"variants"`` holding the ranking metrics of rating-only and watch-only scores. The model
    must have been trained on ``prepared`` (same fingerprint; the caller checks).

    Candidates are every movie the user has not rated in an earlier split (train for val; train and val for test),
    the same protocol as the baselines, so the rows compare like with like: a val rating is a known watch, so it
    is neither credited nor blamed when ranking for test.
    """
    from embedrec.data.split import SPLIT_CODES
    from embedrec.evaluation import evaluate_baselines, evaluate_ranking, evaluate_ratings

    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    if relevance is None:  # 4 of 1..5, the top quarter of other scales: what training validates with
        from embedrec.evaluation import default_relevance

        relevance = default_relevance(float(prepared.summary["rating_min"]), float(prepared.summary["rating_max"]))
    code = SPLIT_CODES[split]
    held = prepared.split == code
    if not held.any():
        raise DataError(f"the {split} split of {prepared.path} is empty")
    u, m, r = prepared.user_idx, prepared.movie_idx, prepared.rating
    with single_threaded_blas():
        result: dict[str, Any] = dict(evaluate_ratings(scorer.predict_pairs, user_idx=u[held], movie_idx=m[held],
                                                       rating=r[held]))
    seen = prepared.split < code  # train, and val too when evaluating test
    common = dict(train_user_idx=u[seen], train_movie_idx=m[seen], eval_user_idx=u[held],
                  eval_movie_idx=m[held], eval_rating=r[held], n_users=prepared.n_users,
                  n_movies=prepared.n_movies, ks=ks, relevance=relevance, max_users=max_users, seed=seed)
    result.update(evaluate_ranking(scorer.score_users, on_progress=on_progress, **common))
    result["ranking"] = scorer.ranking.to_dict()
    if variants and scorer.has_watch:
        result["variants"] = {
            "rating_only": evaluate_ranking(lambda b: scorer.score_users(b, Ranking("rating")), **common),
            "watch_only": evaluate_ranking(lambda b: scorer.score_users(b, Ranking("blend", 0.0)), **common),
        }
    if baselines:
        result["baselines"] = evaluate_baselines(
            user_idx=u, movie_idx=m, rating=r, split=prepared.split, n_users=prepared.n_users,
            n_movies=prepared.n_movies, eval_split=code, ks=ks, relevance=relevance, max_users=max_users, seed=seed)
    return result
