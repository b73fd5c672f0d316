"""Fold-in: a user the model never saw, fitted from their own ratings with the rest of the model frozen.

Synopsis::

    from embedrec.fold_in import fold_in
    user = fold_in(scorer, movie_idx, ratings, weight_decay=0.05, watch_weight=1.0)   # tens of milliseconds
    scorer.scores(user.embedding[None], np.array([user.bias], np.float32))

The loss is the training loss for one user, in float64 numpy (``recommend --ratings`` never imports JAX), over the
same forward-pass functions as :class:`embedrec.scoring.Scorer` (:func:`~embedrec.scoring.dense_relu_chain`,
:func:`~embedrec.scoring.scale_rating`). Its gradient is written out by hand through the small MLP;
tests/test_fold_in.py holds it equal to ``jax.grad`` of the same loss built from :mod:`embedrec.model`. Adam uses
training's constants (``embedrec.train``: b1 0.9, b2 0.999, eps 1e-7; a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedrec.errors import DataError
from embedrec.scoring import DenseLayers, Scorer, dense_relu_chain, scale_rating, sigmoid

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-7  # training's Adam (embedrec.sparse_adam.B1, B2, EPS)
FOLD_NEGATIVES = 4096  # unrated movies sampled for the watch loss in larger catalogues


@dataclass(frozen=True)
class FoldedUser:
    """A user that the model never saw, fitted from their own ratings: an embedding and a rating bias."""

    embedding: np.ndarray
    bias: float
    movie_idx: np.ndarray  # the movies they rated (excluded from their recommendations)
    loss: float
    steps: int


@dataclass(frozen=True)
class _FoldProblem:
    """What one fold-in reads every step, gathered once in float64."""

    w_user: np.ndarray
    movie_part: np.ndarray  # (n, h1) of the rated movies
    layers: DenseLayers  # every Dense after the first, the output layer last
    movie_bias: np.ndarray | float
    rating: np.ndarray
    watch_pos: np.ndarray | None  # (n, d) watch vectors of the rated movies
    watch_pos_bias: np.ndarray | None
    watch_neg: np.ndarray | None  # (n_neg, d) of unrated movies (all, or a seeded sample)
    watch_neg_bias: np.ndarray | None


def _fold_problem(scorer: Scorer, movie_idx: np.ndarray, rating: np.ndarray, *, seed: int = 0) -> _FoldProblem:
    f64 = np.float64
    movie_idx = np.asarray(movie_idx, dtype=np.int64)
    watch: list[np.ndarray | None] = [None] * 4
    if scorer.has_watch:
        unrated = np.ones(scorer.n_movies, dtype=bool)
        unrated[movie_idx] = False
        neg = np.flatnonzero(unrated)
        if len(neg) > FOLD_NEGATIVES:  # an unbiased sample of the mean over every unrated movie
            neg = np.sort(np.random.default_rng(seed).choice(neg, FOLD_NEGATIVES, replace=False))
        assert scorer.watch_item is not None and scorer.watch_bias is not None
        watch = [
            scorer.watch_item[movie_idx].astype(f64),
            scorer.watch_bias[movie_idx].astype(f64),
            scorer.watch_item[neg].astype(f64),
            scorer.watch_bias[neg].astype(f64),
        ]
    return _FoldProblem(
        w_user=scorer.w_user.astype(f64),
        movie_part=scorer.movie_part[movie_idx].astype(f64),
        layers=[(k.astype(f64), b.astype(f64)) for k, b in scorer.layers[1:]],
        movie_bias=scorer.movie_bias[movie_idx].astype(f64) if scorer.movie_bias is not None else 0.0,
        rating=np.asarray(rating, dtype=f64),
        watch_pos=watch[0],
        watch_pos_bias=watch[1],
        watch_neg=watch[2],
        watch_neg_bias=watch[3],
    )


def fold_in_loss(
    scorer: Scorer,
    u: np.ndarray,
    b: float,
    movie_idx: np.ndarray,
    rating: np.ndarray,
    *,
    weight_decay: float,
    watch_weight: float,
    watch_loss: str = "bce",
    negatives: int = 4,
) -> tuple[float, np.ndarray, float]:
    """(loss, d loss / d u, d loss / d b) of one user's fold-in objective (see :func:`fold_in`), in float64."""
    problem = _fold_problem(scorer, movie_idx, rating)
    return _fold_loss(
        problem,
        scorer,
        u,
        b,
        weight_decay=weight_decay,
        watch_weight=watch_weight,
        watch_loss=watch_loss,
        negatives=negatives,
    )


def _fold_loss(
    p: _FoldProblem,
    scorer: Scorer,
    u: np.ndarray,
    b: float,
    *,
    weight_decay: float,
    watch_weight: float,
    watch_loss: str = "bce",
    negatives: int = 4,
) -> tuple[float, np.ndarray, float]:
    n = len(p.rating)
    span = scorer.shape.rating_max - scorer.shape.rating_min
    pre_acts: list[np.ndarray] = []
    logit = dense_relu_chain(u @ p.w_user + p.movie_part, p.layers, pre_acts=pre_acts) + b + p.movie_bias
    err = scale_rating(logit, scorer.shape) - p.rating
    loss = float(np.mean(err * err) + weight_decay * (u @ u + b * b))
    sig = sigmoid(logit)
    g_logit = 2.0 * err / n * span * sig * (1.0 - sig)
    g = g_logit[:, None]
    for pre, (kernel, _) in zip(reversed(pre_acts), reversed(p.layers)):
        g = (g @ kernel.T) * (pre > 0)
    grad_u = (g @ p.w_user.T).sum(axis=0) + 2.0 * weight_decay * u
    grad_b = float(g_logit.sum()) + 2.0 * weight_decay * b
    if p.watch_pos is not None and p.watch_neg is not None and watch_weight > 0 and len(p.watch_neg):
        watch_term, watch_grad = _watch_loss(p, u, watch_loss=watch_loss, negatives=negatives)
        loss += watch_weight * watch_term
        grad_u = grad_u + watch_weight * watch_grad
    return loss, grad_u, grad_b


def _watch_loss(p: _FoldProblem, u: np.ndarray, *, watch_loss: str, negatives: int) -> tuple[float, np.ndarray]:
    """(watch loss, its gradient in u): the rated movies are positives, the unrated ones negatives."""
    assert p.watch_pos is not None and p.watch_neg is not None
    n = len(p.rating)
    pos = p.watch_pos @ u + p.watch_pos_bias
    neg = p.watch_neg @ u + p.watch_neg_bias
    if watch_loss == "softmax":
        # each positive against `negatives` average unrated movies: log(e^pos + k * mean(e^neg)) - pos
        neg_max = float(neg.max())
        neg_exp = np.exp(neg - neg_max)
        log_s = np.log(negatives) + neg_max + np.log(neg_exp.mean())
        lse = np.logaddexp(pos, log_s)
        share = np.exp(pos - lse)  # softmax weight of each positive
        neg_soft = neg_exp / neg_exp.sum()
        grad = ((share - 1.0) / n) @ p.watch_pos + float(np.sum(1.0 - share) / n) * (neg_soft @ p.watch_neg)
        return float(np.mean(lse - pos)), grad
    loss = float(np.mean(np.logaddexp(0.0, -pos)) + np.mean(np.logaddexp(0.0, neg)))
    grad = (-sigmoid(-pos) / n) @ p.watch_pos + (sigmoid(neg) / len(neg)) @ p.watch_neg
    return loss, grad


def fold_in(
    scorer: Scorer,
    movie_idx: np.ndarray,
    rating: np.ndarray,
    *,
    weight_decay: float = 0.05,
    watch_weight: float = 1.0,
    watch_loss: str = "bce",
    negatives: int = 4,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> FoldedUser:
    """Fit a user embedding (and rating bias) to ``rating`` of ``movie_idx``, the rest of the model frozen.

    The loss is the training loss for one user: mean squared rating error + ``weight_decay * (|u|^2 + b^2)`` and,
    with a watch head, ``watch_weight`` times the watch loss the model was trained with (``watch_loss``): binary
    cross-entropy with the rated movies as positives and the unrated movies as negatives, or the sampled softmax of
    each positive against ``negatives`` unrated movies, in expectation. "Unrated movies" are all of them, or a
    seeded sample of 4,096 in larger catalogues (an unbiased estimate of the same mean). Adam runs ``steps``
    full-batch steps from the mean user.
    """
    movie_idx = np.asarray(movie_idx, dtype=np.int64)
    if movie_idx.size == 0:
        raise DataError("fold-in needs at least one rating")
    problem = _fold_problem(scorer, movie_idx, rating, seed=seed)
    u = scorer.user_embedding.mean(axis=0).astype(np.float64)
    use_bias = scorer.user_bias is not None
    b = float(scorer.user_bias.mean()) if scorer.user_bias is not None else 0.0
    m1 = np.zeros(u.size + 1)
    m2 = np.zeros(u.size + 1)
    loss = float("inf")
    for t in range(1, steps + 1):
        loss, grad_u, grad_b = _fold_loss(
            problem,
            scorer,
            u,
            b,
            weight_decay=weight_decay,
            watch_weight=watch_weight,
            watch_loss=watch_loss,
            negatives=negatives,
        )
        grad = np.append(grad_u, grad_b if use_bias else 0.0)
        m1 = ADAM_B1 * m1 + (1 - ADAM_B1) * grad
        m2 = ADAM_B2 * m2 + (1 - ADAM_B2) * grad * grad
        step = lr * (m1 / (1 - ADAM_B1**t)) / (np.sqrt(m2 / (1 - ADAM_B2**t)) + ADAM_EPS)
        u -= step[:-1]
        b -= float(step[-1])
    return FoldedUser(
        embedding=u.astype(np.float32), bias=float(b), movie_idx=np.unique(movie_idx), loss=loss, steps=steps
    )
