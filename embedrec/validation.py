"""Validation during training, in JAX on the train state: val RMSE/MAE, and NDCG@10 of the full ranking.

Synopsis::

    predict = make_predict_fn(graphdef, shape)
    ratings = predict_in_batches(predict, head_state, tables, users, movies, genre_idx, genre_w)
    score = make_user_scorer(graphdef, shape, genre_idx, genre_w)       # (head, tables, users, beta) -> scores
    rank_val = SplitRanking(prepared, split_code=VAL, max_users=500)    # the sets are built on the first call
    ndcg = rank_val(partial(score, head_state, tables, beta=0.0))         # after each epoch

Everything is jitted with fixed shapes (last batches padded), so a validation pass compiles once per run. The
served model (numpy, :mod:`embedrec.recommender`) computes the same numbers from the saved weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from embedrec.config import DataShape
from embedrec.model import (
    gather_rows,
    pool_genres,
    rating_from_rows,
    rating_logits_for_all_movies,
    scale_rating,
    watch_logits_against,
)

if TYPE_CHECKING:
    from embedrec.data.store import PreparedData
    from embedrec.evaluation import HeldOut

UserScorer = Callable[[np.ndarray], np.ndarray]  # user indices -> (B, n_movies) scores


def make_predict_fn(graphdef: Any, shape: DataShape) -> Callable[..., jax.Array]:
    """``predict(head_state, tables, users, movies, genre_idx, genre_w) -> ratings``, jitted."""

    @jax.jit
    def predict(
        head_state: Any,
        tables: dict[str, jax.Array],
        u: jax.Array,
        m: jax.Array,
        genre_idx: jax.Array,
        genre_w: jax.Array,
    ) -> jax.Array:
        head = nnx.merge(graphdef, head_state)
        rows = gather_rows(tables, u, m, genre_idx[m])
        return rating_from_rows(head, rows, genre_w[m], shape=shape)

    return predict


def predict_in_batches(
    predict: Callable[..., jax.Array],
    head_state: Any,
    tables: dict[str, jax.Array],
    users: np.ndarray,
    movies: np.ndarray,
    genre_idx: jax.Array,
    genre_w: jax.Array,
    batch_size: int = 65_536,
) -> np.ndarray:
    """Ratings for many pairs with one compiled shape (the last batch is padded)."""
    n = len(users)
    out = np.empty(n, dtype=np.float32)
    size = min(batch_size, max(n, 1))
    for start in range(0, n, size):
        u = users[start : start + size]
        m = movies[start : start + size]
        k = len(u)
        if k < size:
            u = np.pad(u, (0, size - k))
            m = np.pad(m, (0, size - k))
        out[start : start + k] = np.asarray(predict(head_state, tables, u, m, genre_idx, genre_w))[:k]
    return out


def make_user_scorer(
    graphdef: Any, shape: DataShape, genre_idx: jax.Array, genre_w: jax.Array, *, chunk: int = 64
) -> Callable[..., np.ndarray]:
    """``score(head_state, tables, users, beta) -> (B, n_movies)``: watch logit + beta * predicted rating.

    Models without the watch output score by predicted rating alone. Users go in chunks of a fixed size.
    """

    @partial(jax.jit, static_argnames=("with_rating", "with_watch"))
    def score_chunk(
        head_state: Any,
        tables: dict[str, jax.Array],
        users: jax.Array,
        beta: jax.Array,
        with_rating: bool,
        with_watch: bool,
    ) -> jax.Array:
        head = nnx.merge(graphdef, head_state)
        pooled = pool_genres(tables["genre_embedding"][genre_idx], genre_w)
        u = tables["user_embedding"][users]
        out = jnp.zeros((users.shape[0], shape.n_movies), jnp.float32)
        if with_rating:
            logit = rating_logits_for_all_movies(
                head,
                u,
                tables["movie_embedding"],
                pooled,
                user_bias=tables["user_bias"][users] if "user_bias" in tables else None,
                movie_bias=tables.get("movie_bias"),
            )
            out = out + beta * scale_rating(logit, shape)
        if with_watch:  # the movies' item vectors, genres pooled once
            out = out + watch_logits_against(u, tables["movie_embedding"] + pooled, tables["watch_bias"][:, 0])
        return out

    def score(head_state: Any, tables: dict[str, jax.Array], users: np.ndarray, beta: float) -> np.ndarray:
        with_watch = "watch_bias" in tables
        with_rating = (not with_watch) or beta != 0.0
        if not with_watch:
            beta = 1.0
        parts = []
        for start in range(0, len(users), chunk):
            part = np.asarray(users[start : start + chunk], dtype=np.int32)
            k = len(part)
            if k < chunk:
                part = np.pad(part, (0, chunk - k))
            parts.append(
                np.asarray(
                    score_chunk(
                        head_state, tables, part, jnp.float32(beta), with_rating=with_rating, with_watch=with_watch
                    )
                )[:k]
            )
        return np.concatenate(parts) if parts else np.zeros((0, shape.n_movies), np.float32)

    return score


def training_relevance(prepared: PreparedData) -> float:
    """The "relevant" threshold used during training: 4 stars on a 5-star scale, the same share of other scales."""
    from embedrec.evaluation import default_relevance

    return default_relevance(float(prepared.summary["rating_min"]), float(prepared.summary["rating_max"]))


class SplitRanking:
    """NDCG@10 of a user scorer on one split's fixed, seeded sample of users, the sets it needs built once per run.

    Candidates are the movies the user has not rated in an earlier split: train for val; train and val for test
    (a val rating is a known watch, not a recommendation to credit or blame). Relevant: :func:`training_relevance`.
    With no relevant rating in the split the metric is undefined (None), and training goes on without it.

    Training calls it after every epoch with the watch-logit scorer (``beta=0``), for which the dot product *is*
    the ranking: ranking every movie by it is what two-stage retrieval gives, so nothing is re-ranked. What cost
    time at full scale was rebuilding the seen sets of 22M training pairs every epoch; they are built once here,
    from the prepared folder's per-user index when it has one (:class:`embedrec.evaluation.HeldOut`), and the
    top 10 over a large catalogue takes the thresholded selection of :func:`embedrec.metrics.top_k`. The users,
    the sets and the cut-off are those of :func:`embedrec.evaluation.evaluate_ranking`, so the numbers are the same.
    """

    def __init__(self, prepared: PreparedData, *, split_code: int, max_users: int | None, seed: int = 0) -> None:
        self.prepared = prepared
        self.split_code = split_code
        self.max_users = max_users
        self.seed = seed
        self.k = min(10, prepared.n_movies)
        self.relevance = training_relevance(prepared)
        self._held_out: HeldOut | None = None
        self._defined: bool | None = None

    def __call__(self, score_users: UserScorer) -> float | None:
        from embedrec.evaluation import HeldOut, evaluate_ranking

        p = self.prepared
        if self._defined is None:
            held = p.split == self.split_code
            self._defined = bool((p.rating[held] >= self.relevance).any())
            if self._defined:
                self._held_out = HeldOut.from_prepared(p, split_code=self.split_code, relevance=self.relevance)
        if not self._defined:
            return None
        got = evaluate_ranking(
            score_users,
            train_user_idx=None,
            train_movie_idx=None,
            eval_user_idx=None,
            eval_movie_idx=None,
            eval_rating=None,
            held_out=self._held_out,
            n_users=p.n_users,
            n_movies=p.n_movies,
            ks=(self.k,),
            relevance=self.relevance,
            max_users=self.max_users,
            seed=self.seed,
            batch_size=256,
        )
        return float(got[f"ndcg@{self.k}"])


def rank_on_split(
    score_users: UserScorer, *, prepared: PreparedData, split_code: int, max_users: int | None
) -> float | None:
    """NDCG@10 (full ranking by ``score_users``) on one split, on sampled users; None when undefined. One call of a
    :class:`SplitRanking` (training keeps one for the whole run)."""
    return SplitRanking(prepared, split_code=split_code, max_users=max_users)(score_users)
