"""The numpy serving path: the network's forward pass without JAX, and how ``recommend`` orders movies.

Synopsis::

    from embedrec.artifacts import load_model
    from embedrec.scoring import Ranking, Scorer
    scorer = Scorer.from_artifact(load_model("runs/latest"))       # numpy only: never imports JAX
    scorer.predict_pairs(user_idx, movie_idx)                      # predicted ratings, one per pair
    scorer.score_users(user_idx)                                   # (users, n_movies) ranking scores
    scorer.score_users(user_idx, Ranking("rating"))                # ... ranked by the predicted rating alone

This is the only copy of :mod:`embedrec.model`'s forward pass outside JAX (tests/test_scoring.py holds it equal to
the Flax network); it exists so that ``recommend`` never imports JAX. The first Dense layer is linear over the
concatenation ``[u; m; g]``, so ``W·[u; m; g] + b = W_u·u + (W_m·m + W_g·g + b)``; the bracket is precomputed once
per movie (``movie_part``, (n_movies, h1)), on first use: one user's two-stage request needs it for its 500
candidates only (:meth:`Scorer.movie_part_of`), which at 86,000 movies saves a tenth of a second of the process. Per
user only ``W_u·u`` is new, and the rest of the network runs over
every movie at once. One more identity removes a full pass over the (users, movies, h1) block:
``relu(a + p) = max(a, -p) + p``, so ``relu(a + p)·W_2 = max(a, -p)·W_2 + p·W_2`` and ``p·W_2 + b_2`` is
precomputed per movie too. The watch output is a plain dot product ``u · (m + pooled genres) + watch_bias``.

The ranking score is stored in ``model.json`` under ``"ranking"``: ``{"score": "blend", "beta": b, "gamma": g}``
means ``watch_logit + g * popularity_prior + b * predicted_rating``; ``{"score": "rating"}`` ranks by the predicted
rating (models without a watch head). :class:`Ranking` reads it, with a default when the key is absent (model schema
1 folders have no ``gamma``: 0). ``popularity_prior`` is a per-movie weight (``log1p`` of the movie's training
count, time-decayed under a time-based split; :func:`embedrec.baselines.popularity_prior`) stored beside the network
as ``popularity_prior`` (n_movies, 1). The watch logit and the prior are the *watch side* of the score: the first
stage of the two-stage ranking retrieves by it, so a blend with beta 0 is exact from retrieval alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedrec.blas import available_cpus, single_threaded_blas
from embedrec.config import DataShape, ModelConfig
from embedrec.errors import ArtifactError, ConfigError
from embedrec.metrics import ItemSets, top_k, top_k_of_sums
from embedrec.serving import DEFAULT_CANDIDATES

if TYPE_CHECKING:
    from embedrec.ann import WatchIndex
    from embedrec.artifacts import ModelArtifact

PAIR_CHUNK = 1 << 16
PAIR_COST = 5  # re-ranking a candidate costs ~5x scoring a movie on the all-movies path (measured, ML-100K)
_BLOCK_ELEMENTS = 1 << 21  # (users x movies x h1) floats per inner step: ~8 MB, cache-friendly

DenseLayers = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Ranking:
    """How ``recommend`` orders movies: ``"blend"`` is ``watch_logit + gamma * popularity_prior + beta * rating``;
    ``"rating"`` the rating. ``gamma`` is 0 unless training found that the prior helps on the val split."""

    score: Literal["blend", "rating"] = "rating"
    beta: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        if self.score not in ("blend", "rating"):
            raise ConfigError(f"ranking score must be 'blend' or 'rating', got {self.score!r}")
        if not np.isfinite(self.beta):
            raise ConfigError(f"ranking beta must be a finite number, got {self.beta}")
        if not np.isfinite(self.gamma):
            raise ConfigError(f"ranking gamma must be a finite number, got {self.gamma}")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, has_watch: bool) -> Ranking:
        """The ``"ranking"`` entry of ``model.json``; absent: blend with beta 0 with a watch head, else rating."""
        raw = meta.get("ranking")
        if raw is None:
            return cls("blend", 0.0) if has_watch else cls("rating")
        if not isinstance(raw, Mapping):
            raise ArtifactError(f"model.json 'ranking' must be an object, got {raw!r}")
        ranking = cls(
            str(raw.get("score", "rating")),  # type: ignore[arg-type]
            float(raw.get("beta", 0.0)),
            float(raw.get("gamma", 0.0)),
        )
        if ranking.score == "blend" and not has_watch:
            raise ArtifactError("model.json asks for the 'blend' ranking but the model has no watch head")
        return ranking

    def to_dict(self) -> dict[str, Any]:
        if self.score == "rating":
            return {"score": "rating"}
        return {"score": self.score, "beta": self.beta, "gamma": self.gamma}

    def describe(self) -> str:
        if self.score == "rating":
            return "predicted rating"
        text = "watch logit"
        if self.gamma != 0:
            text += f" + {self.gamma:g} x popularity prior"
        return text if self.beta == 0 else f"{text} + {self.beta:g} x predicted rating"


# ---------------------------------------------------------------------------------------------------------------
# The maths every numpy path shares (the scorer here, the fold-in solver in embedrec.fold_in)
# ---------------------------------------------------------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large |x|."""
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def scale_rating(logit: np.ndarray, shape: DataShape) -> np.ndarray:
    """The rating output: the logit's sigmoid stretched over the rating range (``model.scale_rating`` in numpy)."""
    return shape.rating_min + (shape.rating_max - shape.rating_min) * sigmoid(logit)


def dense_relu_chain(pre: np.ndarray, layers: DenseLayers, *, pre_acts: list[np.ndarray] | None = None) -> np.ndarray:
    """The head from one Dense layer's pre-activation ``pre`` (..., h) on: relu, then each (kernel, bias) in
    ``layers`` with relu between them; the last entry is the 1-unit output layer. Returns the logit (...,).

    With ``pre_acts`` every pre-activation a relu read is appended to it (the fold-in backward pass needs them) and
    ``pre`` is left alone; without it ``pre`` is overwritten to save a copy of the largest array.
    """
    h = pre
    for kernel, bias in layers:
        if pre_acts is not None:
            pre_acts.append(h)
            h = np.maximum(h, 0.0)
        else:
            np.maximum(h, 0.0, out=h)
        h = h @ kernel
        h += bias
    return h[..., 0]


def pool_genre_rows(table: np.ndarray, idx: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(n_movies, d) float32: each movie's genre rows ``table[idx[m]]`` weighted by ``weight[m]`` and summed.

    With a small table (the default preset's ~20 single genres) the weights are scattered into a (movies x genres)
    matrix and multiplied by the table once; gathering ``table[idx]`` first would build a (movies, slots, d) array
    of 130 MB at 86,000 movies and cost a quarter of a second of every ``recommend`` process.
    """
    n_rows, n_slots = idx.shape
    n_table = len(table)
    if n_table <= 64:
        flat = (np.arange(n_rows, dtype=np.int64)[:, None] * n_table + idx).ravel()
        dense = np.bincount(flat, weights=weight.ravel(), minlength=n_rows * n_table).reshape(n_rows, n_table)
        return np.asarray(dense.astype(np.float32) @ table, np.float32)
    out = np.zeros((n_rows, table.shape[1]), np.float32)
    for slot in range(n_slots):
        out += weight[:, slot, None] * table[idx[:, slot]]
    return out


class Scorer:
    """The network's forward pass in numpy, over internal indices, for many users x all movies at once.

    Build it from a model folder (:meth:`from_artifact`) or from weights held in memory (:meth:`from_weights`).
    ``weights`` uses the names of :mod:`embedrec.artifacts` and must include ``genre_idx`` / ``genre_w``.
    """

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        model_cfg: ModelConfig,
        shape: DataShape,
        ranking: Ranking | None = None,
    ) -> None:
        f32 = np.float32
        d = model_cfg.embedding_dim
        self.shape = shape
        self.model_cfg = model_cfg
        self._pair_tables_lock = threading.Lock()
        # the first stage from an approximate HNSW index (embedrec.ann, the optional usearch extra) instead of the
        # exact product over every movie: for catalogues of millions; False (exact) unless a caller turns it on
        self.ann = False
        self.ann_cache: Path | None = None  # where the whole catalogue's index is kept (from_artifact: <model>/ann)
        self.user_embedding = np.asarray(weights["user_embedding"], f32)
        # ModelConfig.user_history: the served user vector is the user's own row plus the mean of their training
        # movies' history rows, stored per user (embedrec.history); the history table stays for fold-in
        self.history_embedding = _optional(weights, "history_embedding")
        self.user_history_vector = _optional(weights, "user_history_vector")
        if self.history_embedding is not None:
            if self.user_history_vector is None:
                raise ArtifactError("weights have a history_embedding but no user_history_vector: retrain")
            self.user_embedding = self.user_embedding + self.user_history_vector
        self.movie_embedding = np.asarray(weights["movie_embedding"], f32)
        genre_table = np.asarray(weights["genre_embedding"], f32)
        genre_idx = np.asarray(weights["genre_idx"])
        genre_w = np.asarray(weights["genre_w"], f32)
        self.n_users, self.n_movies = self.user_embedding.shape[0], self.movie_embedding.shape[0]
        if self.user_embedding.shape[1] != d or genre_idx.shape[0] != self.n_movies:
            raise ArtifactError("weights do not match the model config (embedding size or movie count differs)")
        genre_pooled = pool_genre_rows(genre_table, genre_idx, genre_w)
        self.user_bias = _column(weights, "user_bias")
        self.movie_bias = _column(weights, "movie_bias")
        self.watch_bias = _column(weights, "watch_bias")
        self.popularity_prior = _column(weights, "popularity_prior")
        self.layers = _dense_layers(weights)
        self.w_user = self.layers[0][0][:d]
        self._genre_pooled = genre_pooled
        self.watch_item = np.add(self.movie_embedding, genre_pooled, dtype=f32) if self.has_watch else None
        self.ranking = ranking or Ranking.from_meta({}, has_watch=self.has_watch)
        if self.ranking.score == "blend" and not self.has_watch:
            raise ArtifactError("the 'blend' ranking needs a model with a watch head")
        self.check_ranking(self.ranking)

    @cached_property
    def movie_part(self) -> np.ndarray:
        """(n_movies, h1): the movie and genre half of the first Dense layer plus its bias, for every movie."""
        return self._movie_part_rows(slice(None))

    def _movie_part_rows(self, rows: slice | np.ndarray) -> np.ndarray:
        d = self.model_cfg.embedding_dim
        k1, b1 = self.layers[0]
        part = self.movie_embedding[rows] @ k1[d : 2 * d] + self._genre_pooled[rows] @ k1[2 * d :] + b1
        return part.astype(np.float32)

    def movie_part_of(self, movie_idx: np.ndarray) -> np.ndarray:
        """:attr:`movie_part` rows of ``movie_idx``: computed for those movies only when they are few (one user's
        candidates), else taken from :attr:`movie_part`, built once for every movie (a batch)."""
        if "movie_part" in self.__dict__ or np.size(movie_idx) * 8 > self.n_movies:
            return self.movie_part[movie_idx]
        return self._movie_part_rows(np.asarray(movie_idx))

    @cached_property
    def _neg_movie_part(self) -> np.ndarray:
        return -self.movie_part

    @cached_property
    def _movie_part2(self) -> np.ndarray:
        k2, b2 = self.layers[1]
        return (self.movie_part @ k2 + b2).astype(np.float32)

    @classmethod
    def from_weights(
        cls,
        weights: Mapping[str, np.ndarray],
        model_cfg: ModelConfig,
        shape: DataShape,
        ranking: Ranking | Mapping[str, Any] | None = None,
    ) -> Scorer:
        """A scorer over in-memory weights (numpy or anything ``np.asarray`` takes)."""
        if ranking is not None and not isinstance(ranking, Ranking):
            ranking = Ranking.from_meta({"ranking": ranking}, has_watch="watch_bias" in weights)
        return cls(weights, model_cfg, shape, ranking)

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> Scorer:
        ranking = Ranking.from_meta(artifact.meta, has_watch="watch_bias" in artifact.weights)
        scorer = cls(artifact.weights, artifact.model, artifact.shape, ranking)
        scorer.ann_cache = Path(artifact.path) / "ann"
        return scorer

    @property
    def has_watch(self) -> bool:
        return self.watch_bias is not None

    def check_ranking(self, ranking: Ranking) -> None:
        """A ranking that weighs the popularity prior needs the model to carry one."""
        if ranking.score == "blend" and ranking.gamma != 0.0 and self.popularity_prior is None:
            raise ArtifactError("the ranking weighs a popularity prior but the weights have no 'popularity_prior'")

    def watch_side_bias(self, ranking: Ranking) -> np.ndarray:
        """(n_movies,) the per-movie part of the watch side of ``ranking``: watch bias + gamma * popularity prior."""
        self.check_ranking(ranking)
        return blend_watch_side(self.watch_bias, self.popularity_prior, ranking.gamma)

    def user_rows(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (B, d), rating biases (B,)) of known users; biases are 0 for models without them."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        bias = self.user_bias[user_idx] if self.user_bias is not None else np.zeros(len(user_idx), np.float32)
        return self.user_embedding[user_idx], bias

    # -- (user, movie) pairs ----------------------------------------------------------------------------------
    def rating_logits_pairs(self, emb: np.ndarray, bias: np.ndarray, movie_idx: np.ndarray) -> np.ndarray:
        """Rating logits of (user row i, movie_idx[i]) pairs: the plain forward pass."""
        logit = dense_relu_chain(emb @ self.w_user + self.movie_part_of(movie_idx), self.layers[1:])
        logit = logit + bias
        if self.movie_bias is not None:
            logit = logit + self.movie_bias[movie_idx]
        return logit

    def ratings_pairs(self, emb: np.ndarray, bias: np.ndarray, movie_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings (float32) of (user row i, movie_idx[i]) pairs."""
        return scale_rating(self.rating_logits_pairs(emb, bias, movie_idx), self.shape).astype(np.float32)

    @cached_property
    def every_movie(self) -> MoviePool:
        """The pool of every movie, built once (it copies the movie side of the network)."""
        return MoviePool(self, None)

    @cached_property
    def user_part(self) -> np.ndarray:
        """(n_users, h1): the user half of the first Dense layer for every user (:meth:`predict_pairs` over many
        pairs: one (d x h1) product per user instead of one per pair)."""
        return (self.user_embedding @ self.w_user).astype(np.float32)

    def predict_pairs(self, user_idx: np.ndarray, movie_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user_idx[i], movie_idx[i]), in chunks; the ``PredictFn`` of evaluation.

        With at least a quarter as many pairs as users (a split's held-out ratings, in :func:`in_threads` chunks),
        both halves of the first Dense layer are read from per-user and per-movie tables built once: an epoch's
        2.7M val pairs at full MovieLens scale take a third of the time. Concurrent first calls build them once (the
        others wait): each thread building its own copy of the user table cost ~0.3 s of CPU per validation there."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        movie_idx = np.asarray(movie_idx, dtype=np.int64)
        out = np.empty(len(user_idx), dtype=np.float32)
        by_table = 4 * len(user_idx) >= self.n_users
        if by_table:
            with self._pair_tables_lock:
                self.user_part, self.movie_part  # noqa: B018  (built here, by the first caller)
        for s in range(0, len(user_idx), PAIR_CHUNK):
            users, movies = user_idx[s : s + PAIR_CHUNK], movie_idx[s : s + PAIR_CHUNK]
            if not by_table:
                emb, bias = self.user_rows(users)
                out[s : s + PAIR_CHUNK] = self.ratings_pairs(emb, bias, movies)
                continue
            logit = dense_relu_chain(self.user_part[users] + self.movie_part[movies], self.layers[1:])
            if self.user_bias is not None:
                logit = logit + self.user_bias[users]
            if self.movie_bias is not None:
                logit = logit + self.movie_bias[movies]
            out[s : s + PAIR_CHUNK] = scale_rating(logit, self.shape)
        return out

    def pair_scores(
        self, emb: np.ndarray, bias: np.ndarray, movie_idx: np.ndarray, ranking: Ranking | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ranking scores, predicted ratings) of (user row i, movie_idx[i]) pairs."""
        ranking = ranking or self.ranking
        rating = self.ratings_pairs(emb, bias, movie_idx)
        if ranking.score == "rating":
            return rating, rating
        assert self.watch_item is not None and self.watch_bias is not None
        watch = np.einsum("nd,nd->n", emb, self.watch_item[movie_idx]) + self.watch_side_bias(ranking)[movie_idx]
        return (watch + np.float32(ranking.beta) * rating).astype(np.float32), rating

    # -- users x every movie (the fast path) -------------------------------------------------------------------
    def rating_logits(
        self,
        emb: np.ndarray,
        bias: np.ndarray,
        *,
        neg_movie_part: np.ndarray | None = None,
        movie_part2: np.ndarray | None = None,
        movie_bias: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, n_movies) rating logits of user rows against every movie (or against the movies whose per-movie
        arrays are passed: ``-movie_part``, ``movie_part·W2 + b2`` and the rating bias, cut to those movies)."""
        emb = np.atleast_2d(np.asarray(emb, np.float32))
        if neg_movie_part is None:
            neg_movie_part, movie_part2, movie_bias = self._neg_movie_part, self._movie_part2, self.movie_bias
        n_movies = len(neg_movie_part)
        user_part = emb @ self.w_user
        n, h1 = user_part.shape
        out = np.empty((n, n_movies), dtype=np.float32)
        step = max(1, _BLOCK_ELEMENTS // max(1, n_movies * h1))
        buf = np.empty((min(step, n), n_movies, h1), dtype=np.float32)
        for s in range(0, n, step):
            b = min(step, n - s)
            x = buf[:b]
            np.maximum(user_part[s : s + b, None, :], neg_movie_part[None], out=x)  # relu(a+p) - p
            h = (x.reshape(-1, h1) @ self.layers[1][0]).reshape(b, n_movies, -1)
            h += movie_part2  # + p·W2 + b2: the second Dense's pre-activation
            out[s : s + b] = dense_relu_chain(h, self.layers[2:])
        out += np.asarray(bias, np.float32)[:, None]
        if movie_bias is not None:
            out += movie_bias
        return out

    def ratings(self, emb: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """(B, n_movies) predicted ratings."""
        return scale_rating(self.rating_logits(emb, bias), self.shape).astype(np.float32)

    def watch_logits(self, emb: np.ndarray, ranking: Ranking | None = None) -> np.ndarray:
        """(B, n_movies) watch logits (with ``ranking``: its watch side, the popularity prior added); needs a watch
        head."""
        if self.watch_item is None:
            raise ArtifactError("this model has no watch head")
        bias = self.watch_bias if ranking is None else self.watch_side_bias(ranking)
        out = np.atleast_2d(np.asarray(emb, np.float32)) @ self.watch_item.T
        out += bias  # in place: a second (B, n_movies) array cost a fifth of validation's ranking at full scale
        return out

    def scores(self, emb: np.ndarray, bias: np.ndarray, ranking: Ranking | None = None) -> np.ndarray:
        """(B, n_movies) ranking scores of user rows under ``ranking`` (default: the model's own)."""
        ranking = ranking or self.ranking
        if ranking.score == "rating":
            return self.ratings(emb, bias)
        out = self.watch_logits(emb, ranking)
        if ranking.beta != 0.0:
            out += np.float32(ranking.beta) * self.ratings(emb, bias)
        return out

    # -- top-K: two-stage (dot-product retrieval, then the full network on the candidates) ----------------------
    def rank(
        self,
        emb: np.ndarray,
        bias: np.ndarray,
        k: int,
        *,
        seen: ItemSets | None = None,
        allowed: np.ndarray | MoviePool | None = None,
        ranking: Ranking | None = None,
        candidates: int | None = DEFAULT_CANDIDATES,
        workers: int | None = None,
    ) -> Ranked:
        """The ``k`` best movies of each user row (best first, -1 pads a short list), with their scores and ratings.

        ``seen`` (row i = user row i) and ``allowed`` ((n_movies,) bool: False is never listed; or a
        :class:`MoviePool` built from it once for many calls) filter the movies.
        With the blend ranking, ``candidates`` movies per user (at least ``k``) are retrieved by the watch output
        alone (a dot product over every allowed movie) and only those go through the full network; ``None`` scores
        every movie through it (the exhaustive path, for checking), and so does a candidate count above a fifth of
        the allowed movies, where scoring them all is the cheaper way to the exact answer (:data:`PAIR_COST`). With
        beta 0 the watch output *is* the ranking, so retrieval alone is exact. The rating ranking has no cheap stage
        and is always exhaustive, over the allowed movies only. Users are split across ``workers`` threads with one
        BLAS thread each.
        """
        ranking = ranking or self.ranking
        emb = np.atleast_2d(np.asarray(emb, np.float32))
        bias = np.asarray(bias, np.float32).reshape(-1)
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if candidates is not None and candidates < 1:
            raise ConfigError(f"--candidates must be at least 1, got {candidates}")
        if candidates is not None:  # fewer candidates than k would cut every list short of k movies
            candidates = max(int(candidates), int(k))
        if isinstance(allowed, MoviePool):
            pool = allowed
        else:
            pool = self.every_movie if allowed is None else MoviePool(self, allowed)
        n = len(emb)
        top = np.full((n, k), -1, np.int32)
        score = np.full((n, k), -np.inf, np.float32)
        rating = np.full((n, k), np.nan, np.float32)
        if pool.size == 0 or n == 0:  # nothing passes the filters: every list is empty
            return Ranked(top, score, rating)

        def run(rows: np.ndarray) -> None:
            block = slice(int(rows[0]), int(rows[-1]) + 1)
            block_seen = seen.take(rows) if seen is not None else None
            top[block], score[block], rating[block] = self._rank_block(
                emb[block], bias[block], k, block_seen, pool, ranking, candidates
            )

        workers = workers or available_cpus()
        with single_threaded_blas():
            parts = np.array_split(np.arange(n), max(1, min(n, workers * 4, -(-n // 16))))
            parts = [p for p in parts if len(p)]
            if workers == 1 or len(parts) == 1:
                for p in parts:
                    run(p)
            else:
                with ThreadPoolExecutor(min(workers, len(parts))) as pool_threads:
                    list(pool_threads.map(run, parts))
        return Ranked(top, score, rating)

    def candidates(
        self,
        emb: np.ndarray,
        bias: np.ndarray,
        n: int,
        *,
        seen: ItemSets | None = None,
        pool: MoviePool | None = None,
        ranking: Ranking | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first stage and the network's pass over it: the ``n`` best unseen pool movies of each user row by
        the watch side of ``ranking`` (default: the watch logit alone), as (movie indices (B, n), -1 padding; their
        watch-side scores; their predicted ratings).

        Any blend ``watch side + beta * rating`` of these is a two-stage ranking, so choosing beta on the val split
        (training) scores the candidates once for every beta.
        """
        pool = pool or self.every_movie
        first, watch = self._first_stage(emb, n, seen, pool, ranking or Ranking("blend", 0.0))
        return self._rate_top(emb @ self.w_user, bias, first, pool, watch)

    def candidates_by_side(
        self,
        emb: np.ndarray,
        bias: np.ndarray,
        n: int,
        *,
        seen: ItemSets | None,
        sides: Sequence[np.ndarray],
        logits_buffer: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`candidates` over every movie for several watch sides of the same user rows: ``sides`` are
        per-movie biases in place of the watch bias (the watch bias + gamma x a popularity prior, see
        :meth:`watch_side_bias`). The watch logits are computed once for all sides, and a (user, movie) pair's
        rating once however many sides retrieve it: choosing the blend tries 6 to 26 sides, which mostly agree.

        Each side's retrieval is :func:`embedrec.metrics.top_k` of the logits plus the side, as
        :meth:`candidates` does it, but through :func:`~embedrec.metrics.top_k_of_sums`: no (B, n_movies) sum
        per side, and only the movies some user of the rows could retrieve under that side are compared (at 86,000
        movies, a quarter of them for the plain watch bias, a twentieth for the heaviest prior). The ratings
        computed so far are kept for the movies some side retrieved only, not in a (B, n_movies) buffer. Each side
        lists what :meth:`candidates` lists for it, ties included, and the network rates the same new pairs per side
        in the same calls as when each side formed its sum matrix, so every number is the same to the bit (BLAS
        results depend on which rows share a call, so this is kept deliberately).

        ``logits_buffer``, a float32 array of at least B x n_movies values, receives the watch logits (the same
        product, so the same bits): a caller that ranks batch after batch in one thread passes the same one, as
        a fresh (128, 86,000) array each time cost 5 ms of page faults."""
        pool = self.every_movie
        if pool.watch_item_t is None or self.watch_bias is None:
            raise ArtifactError("this model has no watch head")
        shape = (len(emb), pool.size)
        out = None
        if logits_buffer is not None and emb.dtype == np.float32:
            out = logits_buffer[: shape[0] * shape[1]].reshape(shape)
        base = np.matmul(emb, pool.watch_item_t, out=out)  # the watch logits without their bias
        _mask_seen(base, seen, pool)
        user_part = emb @ self.w_user
        firsts = top_k_of_sums(base, sides, n)  # (positions in the pool, their watch-side scores), per side
        # the logits are read: their memory holds the ratings computed so far
        known = _RatingsSoFar(len(base), [first for first, _ in firsts], pool.size, storage=base.reshape(-1))
        return [self._rate_top(user_part, bias, first, pool, watch, known=known) for first, watch in firsts]

    def _first_stage(
        self, emb: np.ndarray, n: int, seen: ItemSets | None, pool: MoviePool, ranking: Ranking
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pool positions (B, n), -1 padding; their watch-side scores, -inf at -1): each row's ``n`` best unseen
        pool movies by the watch side of ``ranking``, exactly (one product over the pool, :func:`top_k`) or, with
        :attr:`ann`, from the pool's HNSW index (:class:`embedrec.ann.WatchIndex`; the scores still exact)."""
        if self.ann:
            position = None if pool.position is pool.movies else pool.position
            return pool.watch_index(ranking).search(emb, n, seen=seen, position=position)
        scores = self._retrieval_scores(emb, pool, seen, ranking)
        first = top_k(scores, n)
        watch = np.full(first.shape, -np.inf, np.float32)
        valid = first >= 0
        watch[valid] = scores[np.nonzero(valid)[0], first[valid]]
        return first, watch

    def _rate_top(
        self,
        user_part: np.ndarray,
        bias: np.ndarray,
        first: np.ndarray,
        pool: MoviePool,
        watch: np.ndarray,
        *,
        known: _RatingsSoFar | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(movies (B, n), -1 padding; their retrieval scores ``watch`` (float32, -inf at -1); their ratings) of the
        pool positions ``first`` ((B, n), -1 padding). ``known`` supplies and keeps ratings across calls."""
        valid = first >= 0
        rows = np.repeat(np.arange(len(first)), np.count_nonzero(valid, axis=1))  # row-major, as np.nonzero
        cols = first[valid]
        if pool.position is pool.movies:  # every movie: a pool position is the movie
            movies = first.astype(np.int64)
        else:
            movies = np.full(first.shape, -1, np.int64)
            movies[valid] = pool.movies[cols]
        values = np.full(rows.shape, np.nan, np.float32) if known is None else known.get(rows, cols)
        todo = np.isnan(values)
        r, m = rows[todo], movies[valid][todo]
        # the first Dense layer's user half once per user, not once per candidate; the watch logits are the
        # retrieval scores already computed
        logit = dense_relu_chain(user_part[r] + self.movie_part_of(m), self.layers[1:])
        logit += bias[r]
        if self.movie_bias is not None:
            logit += self.movie_bias[m]
        values[todo] = scale_rating(logit, self.shape)
        if known is not None:
            known.put(r, cols[todo], values[todo])
        rating = np.full(first.shape, np.nan, np.float32)
        rating[valid] = values
        return movies, watch, rating

    def _retrieval_scores(
        self, emb: np.ndarray, pool: MoviePool, seen: ItemSets | None, ranking: Ranking
    ) -> np.ndarray:
        """(B, pool size) watch-side scores of ``ranking`` (watch logit + gamma * prior), seen movies at -inf."""
        if pool.watch_item_t is None:
            raise ArtifactError("this model has no watch head")
        scores = emb @ pool.watch_item_t
        scores += pool.watch_side_bias(ranking)
        _mask_seen(scores, seen, pool)
        return scores

    def _rank_block(
        self,
        emb: np.ndarray,
        bias: np.ndarray,
        k: int,
        seen: ItemSets | None,
        pool: MoviePool,
        ranking: Ranking,
        candidates: int | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = len(emb)
        blend = ranking.score == "blend"
        retrieve_only = blend and ranking.beta == 0.0
        # re-ranking costs about PAIR_COST x scoring a movie on the exhaustive path: past that share, score all
        two_stage = blend and not retrieve_only and candidates is not None and candidates * PAIR_COST < pool.size
        if two_stage:
            assert candidates is not None
            movies, watch, rating = self.candidates(emb, bias, candidates, seen=seen, pool=pool, ranking=ranking)
            rerank = np.where(movies >= 0, watch + np.float32(ranking.beta) * rating, -np.inf)
            order = top_k(rerank, k)
            top = np.where(order >= 0, np.take_along_axis(movies, np.maximum(order, 0), axis=1), -1)
            chosen = np.where(top >= 0, pool.position[np.maximum(top, 0)], -1)
        elif retrieve_only:  # the watch side is the ranking: retrieval alone answers
            chosen, _ = self._first_stage(emb, k, seen, pool, ranking)  # positions in the pool
        else:
            scores = pool.scores(emb, bias, ranking)
            _mask_seen(scores, seen, pool)
            chosen = top_k(scores, k)  # positions in the pool
        valid = chosen >= 0
        top = np.full((b, k), -1, np.int32)
        top[valid] = pool.movies[chosen[valid]]
        score = np.full((b, k), -np.inf, np.float32)
        rating = np.full((b, k), np.nan, np.float32)
        rows = np.nonzero(valid)[0]
        score[valid], rating[valid] = self.pair_scores(emb[rows], bias[rows], top[valid], ranking)
        return top, score, rating

    def score_users(
        self, user_idx: np.ndarray, ranking: Ranking | None = None, *, workers: int | None = None
    ) -> np.ndarray:
        """(len(user_idx), n_movies) ranking scores of known users; the ``ScoreFn`` of evaluation.

        Users are split across ``workers`` threads (default: the CPUs this process may use) with one BLAS thread
        each; numpy releases the GIL inside every large operation, so the threads run in parallel.
        """
        emb, bias = self.user_rows(np.asarray(user_idx, dtype=np.int64))
        ranking = ranking or self.ranking
        workers = workers or available_cpus()
        n = len(emb)
        cheap = ranking.score == "blend" and ranking.beta == 0.0
        with single_threaded_blas():
            if cheap or workers == 1 or n < 2:
                return self.scores(emb, bias, ranking)
            out = np.empty((n, self.n_movies), dtype=np.float32)
            parts = np.array_split(np.arange(n), min(workers * 4, n))

            def run(rows: np.ndarray) -> None:
                out[rows[0] : rows[-1] + 1] = self.scores(emb[rows], bias[rows], ranking)

            with ThreadPoolExecutor(min(workers, len(parts))) as pool:
                list(pool.map(run, parts))
            return out


def _mask_seen(scores: np.ndarray, seen: ItemSets | None, pool: MoviePool) -> None:
    """Set the seen movies of each row (those in the pool) to -inf, in place, from the sparse sets."""
    if seen is not None and seen.indices.size:
        rows, cols = seen.coordinates()
        pos = pool.position[cols]
        keep = pos >= 0
        scores[rows[keep], pos[keep]] = -np.inf


class _RatingsSoFar:
    """The ratings computed so far for (row, pool position) pairs of one batch of user rows, NaN where none: the
    positions any of the batch's lists hold get a column each, so the table is (B, movies listed), where a (B, pool
    size) NaN buffer took 44 MB per batch of 128 users at 86,000 movies (and its page faults). ``storage``, a
    float32 array of at least that many values that is no longer needed (the batch's watch logits, once each
    side's candidates are found), holds the table without a new allocation."""

    def __init__(self, n_rows: int, lists: Sequence[np.ndarray], pool_size: int, storage: np.ndarray) -> None:
        listed = np.zeros(pool_size, dtype=bool)
        for positions in lists:
            listed[positions[positions >= 0]] = True
        self.column = np.cumsum(listed) - 1  # pool position -> its column (where listed)
        self.width = int(listed.sum())
        self.value = storage[: n_rows * self.width]
        self.value.fill(np.nan)

    def get(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The ratings of (rows[i], positions[i]), NaN where not yet computed."""
        return np.take(self.value, rows * self.width + self.column[positions])

    def put(self, rows: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
        self.value[rows * self.width + self.column[positions]] = values


@dataclass(frozen=True)
class Ranked:
    """Top-K per user row: movie indices (-1 pads a short list), ranking scores and predicted ratings, (B, k)."""

    movie_idx: np.ndarray
    score: np.ndarray
    rating: np.ndarray


class MoviePool:
    """The movies a ranking may list (all, or those ``allowed``), with the per-movie arrays cut to them once.

    Build one per filter and pass it to every :meth:`Scorer.rank` call of a batch: cutting the arrays costs a
    copy of the movie side of the network, which should not be paid per block of users.
    """

    def __init__(self, scorer: Scorer, allowed: np.ndarray | None) -> None:
        self.scorer = scorer
        n = scorer.n_movies
        if allowed is None or bool(np.all(allowed)):
            self.movies = np.arange(n, dtype=np.int64)
            self.position = self.movies
            subset = None
        else:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (n,):
                raise ConfigError(f"allowed must be one flag per movie ({n}), got shape {allowed.shape}")
            self.movies = np.flatnonzero(allowed)
            self.position = np.full(n, -1, np.int64)
            self.position[self.movies] = np.arange(len(self.movies))
            subset = self.movies
        self.size = len(self.movies)

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else (a if subset is None else a[subset])

        self.watch_item_t = None if scorer.watch_item is None else transposed_rows(scorer.watch_item, subset)
        self.watch_bias = cut(scorer.watch_bias)
        self.popularity_prior = cut(scorer.popularity_prior)
        self.movie_bias = cut(scorer.movie_bias)
        self._cut = cut
        self._indexes: dict[float, WatchIndex] = {}  # per gamma: the watch side an HNSW index was built for
        self._indexes_lock = threading.Lock()

    def watch_index(self, ranking: Ranking) -> WatchIndex:
        """The pool's HNSW index under the watch side of ``ranking`` (:class:`embedrec.ann.WatchIndex`), built on
        first use (seconds per million movies) and kept for the pool's later calls."""
        from embedrec.ann import WatchIndex

        with self._indexes_lock:
            index = self._indexes.get(ranking.gamma)
            if index is None:  # the side and the graph once per pool and gamma, not per block of users
                side = self.watch_side_bias(ranking)
                item = self.scorer.watch_item
                assert item is not None  # watch_side_bias refused a model without a watch head
                whole = self.position is self.movies  # a filtered pool's index is not kept: one file per filter
                rows = item if whole else item[self.movies]
                cache = self.scorer.ann_cache if whole else None
                index = self._indexes[ranking.gamma] = WatchIndex(rows, side, cache=cache)
        return index

    @cached_property
    def neg_movie_part(self) -> np.ndarray:
        """The scorer's ``-movie_part`` cut to the pool: built when the exhaustive path first needs it."""
        out = self._cut(self.scorer._neg_movie_part)
        assert out is not None
        return out

    @cached_property
    def movie_part2(self) -> np.ndarray:
        out = self._cut(self.scorer._movie_part2)
        assert out is not None
        return out

    def watch_side_bias(self, ranking: Ranking) -> np.ndarray:
        """(pool size,) watch bias + gamma * popularity prior of the pool's movies (:meth:`Scorer.watch_side_bias`)."""
        self.scorer.check_ranking(ranking)
        return blend_watch_side(self.watch_bias, self.popularity_prior, ranking.gamma)

    def scores(self, emb: np.ndarray, bias: np.ndarray, ranking: Ranking) -> np.ndarray:
        """(B, pool size) ranking scores through the full network (the exhaustive path)."""
        s = self.scorer
        logit = s.rating_logits(
            emb, bias, neg_movie_part=self.neg_movie_part, movie_part2=self.movie_part2, movie_bias=self.movie_bias
        )
        rating = scale_rating(logit, s.shape).astype(np.float32)
        if ranking.score == "rating":
            return rating
        out = emb @ self.watch_item_t
        out += self.watch_side_bias(ranking)
        if ranking.beta != 0.0:
            out += np.float32(ranking.beta) * rating
        return out


def transposed_rows(table: np.ndarray, rows: np.ndarray | None, *, block: int = 512) -> np.ndarray:
    """``table[rows].T`` (every row when ``rows`` is None) as a C-contiguous array, copied a block of rows at a
    time: numpy's own transposing copy of an (86,000, 64) table strides through memory and takes 4x longer (40 ms
    of every ``recommend`` process, for a layout that one user's retrieval product needs)."""
    n = len(table) if rows is None else len(rows)
    out = np.empty((table.shape[1], n), dtype=table.dtype)
    for s in range(0, n, block):
        out[:, s : s + block] = (table[s : s + block] if rows is None else table[rows[s : s + block]]).T
    return out


def blend_watch_side(watch_bias: np.ndarray | None, prior: np.ndarray | None, gamma: float) -> np.ndarray:
    """watch bias + gamma * popularity prior, per movie (the watch bias itself when gamma is 0)."""
    if watch_bias is None:
        raise ArtifactError("this model has no watch head")
    if gamma == 0.0:
        return watch_bias
    assert prior is not None  # check_ranking refused a gamma without a prior
    return (watch_bias + np.float32(gamma) * prior).astype(np.float32)


def _optional(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    return np.asarray(weights[name], np.float32) if name in weights else None


def _column(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    """A (n, 1) bias table as a float32 vector, or None when the model has none."""
    return np.asarray(weights[name], np.float32)[:, 0] if name in weights else None


def _dense_layers(weights: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The head's Dense layers in order, the 1-unit output layer last, as float32 (kernel, bias) pairs."""
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    while f"head.layers.{len(layers)}.kernel" in weights:
        i = len(layers)
        layers.append(
            (
                np.asarray(weights[f"head.layers.{i}.kernel"], np.float32),
                np.asarray(weights[f"head.layers.{i}.bias"], np.float32),
            )
        )
    if not layers:
        raise ArtifactError("weights have no hidden Dense layer (head.layers.0.kernel)")
    layers.append(
        (np.asarray(weights["head.out.kernel"], np.float32), np.asarray(weights["head.out.bias"], np.float32))
    )
    return layers
