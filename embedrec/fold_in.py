"""Fold-in: a user the model never saw, fitted from their own ratings with the rest of the model frozen.

Synopsis::

    from embedrec.fold_in import fold_in
    user = fold_in(scorer, movie_idx, ratings, weight_decay=0.05, watch_weight=1.0)   # a few milliseconds
    scorer.scores(user.embedding[None], np.array([user.bias], np.float32))

The loss is the training loss for one user, in numpy (``recommend --ratings`` and the server never import JAX), over
the same forward-pass functions as :class:`embedrec.scoring.Scorer` (:func:`~embedrec.scoring.dense_relu_chain`,
:func:`~embedrec.scoring.scale_rating`). Its gradient is written out by hand through the small MLP;
tests/test_fold_in.py holds it equal to ``jax.grad`` of the same loss built from :mod:`embedrec.model`. Adam uses
training's constants (``embedrec.train``: b1 0.9, b2 0.999, eps 1e-7; a test keeps them equal).

Speed (a served ``POST /recommend`` is one fold-in): the solve runs in float32 (the model's own precision), with
few numpy calls per step, and stops when the loss has not improved by a relative ``tol`` for ``patience`` steps.
Measured with ``benchmarks/fold_in_quality.py`` (README "Fold-in speed and quality"): the original solve (float64,
300 steps) and this one give the same NDCG@10 on held-out MovieLens-100K ratings, at a fraction of the CPU time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from embedrec.config import whole_number
from embedrec.errors import ConfigError, DataError
from embedrec.history import history_mean
from embedrec.scoring import DenseLayers, Scorer, dense_relu_chain, sigmoid

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-7  # training's Adam (embedrec.sparse_adam.B1, B2, EPS)
FOLD_NEGATIVES = 4096
"""Unrated movies sampled (seeded) for the watch loss when the catalogue has more: an estimate of the mean over every
unrated movie. Measured with benchmarks/fold_in_quality.py: 1,024 of MovieLens-100K's ~1,600 unrated movies lost
4% of NDCG@10 and 13% of the top 10 (the movies outside a fixed sample are never pushed down), while the product
with 4,096 costs little next to a step's other work, so the sample stays at 4,096."""
FOLD_STEPS = 300
"""Adam steps at most; the stopping rule ends most fold-ins well before."""
FOLD_TOL = 1e-4
FOLD_PATIENCE = 10
"""Stop when the loss has not fallen below ``(1 - FOLD_TOL) x`` its best for this many steps."""


@dataclass(frozen=True)
class FoldedUser:
    """A user that the model never saw, fitted from their own ratings: an embedding and a rating bias.

    ``embedding`` is the served user vector; with a user history (``ModelConfig.user_history``) it is the fitted own
    row plus the mean history row of the rated movies, as a trained user's is (:mod:`embedrec.history`)."""

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


def _fold_problem(
    scorer: Scorer,
    movie_idx: np.ndarray,
    rating: np.ndarray,
    *,
    seed: int = 0,
    sample: int = FOLD_NEGATIVES,
    dtype: type = np.float64,
) -> _FoldProblem:
    movie_idx = np.asarray(movie_idx, dtype=np.int64)
    watch: list[np.ndarray | None] = [None] * 4
    if scorer.has_watch:
        n = scorer.n_movies
        if n - len(movie_idx) > sample:  # an unbiased sample of the mean over every unrated movie
            # draw a few more than needed, drop the rated ones: no (n_movies,) mask or permutation per request
            rng = np.random.default_rng(seed)
            neg = np.setdiff1d(rng.choice(n, min(n, sample + len(movie_idx)), replace=False), movie_idx)
            neg = np.sort(rng.choice(neg, sample, replace=False)) if len(neg) > sample else neg
        else:
            unrated = np.ones(n, dtype=bool)
            unrated[movie_idx] = False
            neg = np.flatnonzero(unrated)
        assert scorer.watch_item is not None and scorer.watch_bias is not None
        watch = [
            scorer.watch_item[movie_idx].astype(dtype),
            scorer.watch_bias[movie_idx].astype(dtype),
            scorer.watch_item[neg].astype(dtype),
            scorer.watch_bias[neg].astype(dtype),
        ]
    return _FoldProblem(
        w_user=scorer.w_user.astype(dtype),
        movie_part=scorer.movie_part[movie_idx].astype(dtype),
        layers=[(k.astype(dtype), b.astype(dtype)) for k, b in scorer.layers[1:]],
        movie_bias=scorer.movie_bias[movie_idx].astype(dtype) if scorer.movie_bias is not None else 0.0,
        rating=np.asarray(rating, dtype=dtype),
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
    history: np.ndarray | None = None,
    rating_loss_weight: float = 1.0,
) -> tuple[float, np.ndarray, float]:
    """(loss, d loss / d u, d loss / d b) of one user's fold-in objective (see :func:`fold_in`), in float64; the
    network sees ``u + history`` (the user's history part, fixed), the L2 takes ``u``."""
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
        history=history,
        rating_loss_weight=rating_loss_weight,
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
    history: np.ndarray | None = None,
    rating_loss_weight: float = 1.0,
) -> tuple[float, np.ndarray, float]:
    # One fold-in runs this up to FOLD_STEPS times on tiny arrays, where each numpy call's overhead outweighs its
    # arithmetic: sums over means, Python floats over numpy scalars, one sigmoid for the rating and its gradient.
    n = len(p.rating)
    lo, span = scorer.shape.rating_min, scorer.shape.rating_max - scorer.shape.rating_min
    pre_acts: list[np.ndarray] = []
    served = u if history is None else u + history
    logit = dense_relu_chain(served @ p.w_user + p.movie_part, p.layers, pre_acts=pre_acts) + b + p.movie_bias
    sig = sigmoid(logit)
    err = (lo + span * sig) - p.rating  # scale_rating(logit) - rating, its sigmoid kept for the gradient
    w = rating_loss_weight  # 1 but for a model trained with scale_free_rating_loss on another scale than 1..5
    loss = w * float(err @ err) / n + weight_decay * (float(u @ u) + b * b)
    g_logit = (2.0 * w * span / n) * err * sig * (1.0 - sig)
    g = g_logit[:, None]
    for pre, (kernel, _) in zip(reversed(pre_acts), reversed(p.layers)):
        g = (g @ kernel.T) * (pre > 0)
    grad_u = p.w_user @ g.sum(axis=0) + (2.0 * weight_decay) * u
    grad_b = float(g_logit.sum()) + 2.0 * weight_decay * b
    if p.watch_pos is not None and p.watch_neg is not None and watch_weight > 0 and len(p.watch_neg):
        watch_term, watch_grad = _watch_loss(p, served, watch_loss=watch_loss, negatives=negatives)
        loss += watch_weight * watch_term
        grad_u += watch_weight * watch_grad
    return loss, grad_u, grad_b


def _watch_loss(p: _FoldProblem, u: np.ndarray, *, watch_loss: str, negatives: int) -> tuple[float, np.ndarray]:
    """(watch loss, its gradient in u): the rated movies are positives, the unrated ones negatives."""
    assert p.watch_pos is not None and p.watch_neg is not None and p.watch_neg_bias is not None
    n, n_neg = len(p.rating), len(p.watch_neg)
    pos = p.watch_pos @ u + p.watch_pos_bias
    neg = p.watch_neg @ u
    neg += p.watch_neg_bias
    if watch_loss == "softmax":
        # each positive against `negatives` average unrated movies: log(e^pos + k * mean(e^neg)) - pos
        neg_max = float(neg.max())
        neg -= neg_max
        neg_exp = np.exp(neg, out=neg)
        total = float(neg_exp.sum())
        log_s = math.log(negatives * total / n_neg) + neg_max
        lse = np.logaddexp(pos, log_s)
        share = np.exp(pos - lse)  # softmax weight of each positive
        # d/du of mean(lse - pos): positives pull by (share - 1) / n, the negatives' softmax pushes by sum(1 - share)/n
        grad = ((share - 1.0) / n) @ p.watch_pos + ((n - float(share.sum())) / (n * total)) * (neg_exp @ p.watch_neg)
        return float((lse - pos).sum()) / n, grad
    loss = float(np.logaddexp(0.0, -pos).sum()) / n + float(np.logaddexp(0.0, neg).sum()) / n_neg
    grad = (-sigmoid(-pos) / n) @ p.watch_pos + (sigmoid(neg) / n_neg) @ p.watch_neg
    return loss, grad


FOLD_OPTIONS = (
    "weight_decay",
    "watch_weight",
    "watch_loss",
    "negatives",
    "steps",
    "lr",
    "seed",
    "sample",
    "tol",
    "patience",
    "dtype",
    "rating_loss_weight",
)


def _whole(v: object, lo: int) -> bool:
    number = whole_number(v)
    return number is not None and number >= lo


def _number(v: object, lo: float, *, above: bool = False, below: float = math.inf) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        return False
    return bool(v > lo if above else v >= lo) and bool(v < below)


def _check_options(**given: object) -> None:
    """A ConfigError naming the first fold-in option outside its domain (a negative ``steps`` returned the mean user
    as if fitted; a negative ``lr`` climbed the loss). ``steps=0`` is the mean user on purpose (a baseline)."""
    rules: dict[str, tuple[bool, str]] = {
        "steps": (_whole(given["steps"], 0), "a whole number >= 0 (0: the mean user, unfitted)"),
        "patience": (_whole(given["patience"], 1), "a whole number >= 1"),
        "sample": (_whole(given["sample"], 1), "a whole number >= 1"),
        "negatives": (_whole(given["negatives"], 0), "a whole number >= 0"),
        "seed": (_whole(given["seed"], 0), "a whole number >= 0"),
        "lr": (_number(given["lr"], 0.0, above=True), "a positive number"),
        "tol": (_number(given["tol"], 0.0, below=1.0), "a number in [0, 1)"),
        "weight_decay": (_number(given["weight_decay"], 0.0), "a number >= 0"),
        "watch_weight": (_number(given["watch_weight"], 0.0), "a number >= 0"),
        "rating_loss_weight": (_number(given["rating_loss_weight"], 0.0), "a number >= 0"),
        "watch_loss": (given["watch_loss"] in ("bce", "softmax"), "'bce' or 'softmax'"),
        "dtype": (given["dtype"] in (np.float32, np.float64), "numpy.float32 or numpy.float64"),
    }
    for name, (ok, kind) in rules.items():
        if not ok:
            raise ConfigError(f"fold-in option {name} must be {kind}, got {given[name]!r}")


def fold_in(
    scorer: Scorer,
    movie_idx: np.ndarray,
    rating: np.ndarray,
    *,
    weight_decay: float = 0.05,
    watch_weight: float = 1.0,
    watch_loss: str = "bce",
    negatives: int = 4,
    steps: int = FOLD_STEPS,
    lr: float = 0.05,
    seed: int = 0,
    sample: int = FOLD_NEGATIVES,
    tol: float = FOLD_TOL,
    patience: int = FOLD_PATIENCE,
    dtype: type = np.float32,
    rating_loss_weight: float = 1.0,
) -> FoldedUser:
    """Fit a user embedding (and rating bias) to ``rating`` of ``movie_idx``, the rest of the model frozen.

    The loss is the training loss for one user: ``rating_loss_weight`` times the mean squared rating error (the
    weight training used: :func:`embedrec.config.rating_loss_weight`) + ``weight_decay * (|u|^2 + b^2)`` and,
    with a watch head, ``watch_weight`` times the watch loss the model was trained with (``watch_loss``): binary
    cross-entropy with the rated movies as positives and the unrated movies as negatives, or the sampled softmax of
    each positive against ``negatives`` unrated movies, in expectation. "Unrated movies" are all of them, or a
    seeded sample of ``sample`` in larger catalogues (an unbiased estimate of the same mean). Adam runs at most
    ``steps`` full-batch steps from the mean user, and stops early once the loss has not fallen below
    ``(1 - tol)`` times its best for ``patience`` steps (``tol=0``: never early); the best iterate is returned.
    ``dtype`` float64 with ``tol=0`` and ``sample=4096`` is the original solve (benchmarks/fold_in_quality.py).
    With a user history the fitted row is the user's own, and the network sees it plus the mean history row of
    ``movie_idx`` (fixed by the ratings, so a new user gets it for free; the L2 takes the own row only).
    """
    _check_options(
        weight_decay=weight_decay,
        watch_weight=watch_weight,
        watch_loss=watch_loss,
        negatives=negatives,
        steps=steps,
        lr=lr,
        seed=seed,
        sample=sample,
        tol=tol,
        patience=patience,
        dtype=dtype,
        rating_loss_weight=rating_loss_weight,
    )
    steps, patience, sample, negatives, seed = (int(v) for v in (steps, patience, sample, negatives, seed))  # 2.0
    movie_idx = np.asarray(movie_idx, dtype=np.int64)
    if movie_idx.size == 0:
        raise DataError("fold-in needs at least one rating")
    problem = _fold_problem(scorer, movie_idx, rating, seed=seed, sample=sample, dtype=dtype)
    d = scorer.user_embedding.shape[1]
    history: np.ndarray | None = None
    own_mean = scorer.user_embedding.mean(axis=0)
    if scorer.history_embedding is not None:
        history = history_mean(scorer.history_embedding, movie_idx).astype(dtype)
        assert scorer.user_history_vector is not None
        own_mean = own_mean - scorer.user_history_vector.mean(axis=0)
    params = np.empty(d + 1, dtype=dtype)  # [u; b]: one Adam update for both
    params[:d] = own_mean
    params[d] = float(scorer.user_bias.mean()) if scorer.user_bias is not None else 0.0
    bias_mask = np.ones(d + 1, dtype=dtype)
    bias_mask[d] = 1.0 if scorer.user_bias is not None else 0.0
    m1 = np.zeros(d + 1, dtype=dtype)
    m2 = np.zeros(d + 1, dtype=dtype)
    grad = np.empty(d + 1, dtype=dtype)
    best, best_params, since_best, t, loss = np.inf, params.copy(), 0, 0, float("inf")
    for t in range(1, steps + 1):
        loss, grad[:d], grad_b = _fold_loss(
            problem,
            scorer,
            params[:d],
            float(params[d]),
            weight_decay=weight_decay,
            watch_weight=watch_weight,
            watch_loss=watch_loss,
            negatives=negatives,
            history=history,
            rating_loss_weight=rating_loss_weight,
        )
        # the loss at the current params, before this step moves them
        since_best = 0 if loss < best * (1 - tol) else since_best + 1
        if loss < best:
            best = loss
            best_params[:] = params
        if tol > 0 and since_best >= patience:
            break
        grad[d] = grad_b
        grad *= bias_mask
        m1 *= ADAM_B1
        m1 += (1 - ADAM_B1) * grad
        m2 *= ADAM_B2
        m2 += (1 - ADAM_B2) * grad * grad
        params -= (lr / (1 - ADAM_B1**t)) * m1 / (np.sqrt(m2 / (1 - ADAM_B2**t)) + ADAM_EPS)
    if tol <= 0:  # the original solve: the last iterate
        best_params, best = params, loss
    served = best_params[:d] if history is None else best_params[:d] + history
    return FoldedUser(
        embedding=served.astype(np.float32),
        bias=float(best_params[d]),
        movie_idx=np.unique(movie_idx),
        loss=float(best),
        steps=t,
    )
