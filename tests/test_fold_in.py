"""Fold-in: planted tastes come back, the hand-written gradient is ``jax.grad`` of the model's own loss, bad input."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from planted import planted, prepared, rec, trained_with_history  # noqa: F401  (fixtures)

from embedrec.errors import ConfigError, DataError, UnknownIdError


def test_fold_in_sci_fi_fan_gets_sci_fi(rec, prepared) -> None:
    genres = rec.movies["genre_list"]
    is_scifi = np.array(["Sci-Fi" in g for g in genres])
    counts = rec.rating_counts()
    liked = np.flatnonzero(is_scifi & (counts >= 5))[:6]
    disliked = np.flatnonzero(~is_scifi & (counts >= 5))[:3]
    loves = [(int(rec.movie_ids[i]), 5.0) for i in liked]
    mixed = loves + [(int(rec.movie_ids[i]), 1.0) for i in disliked]

    t0 = time.perf_counter()
    user = rec.fold_in(loves)
    assert time.perf_counter() - t0 < 1.0
    top = rec.recommend_for(user, k=10, min_ratings=0)
    assert not set(top["movie_id"]) & {p[0] for p in loves}
    assert np.mean(["Sci-Fi" in g.split("|") for g in top["genres"]]) >= 0.7, top
    # rated-but-disliked movies still count as watched, so they dilute the list, but Sci-Fi stays far above its share
    top = rec.recommend_for(rec.fold_in(mixed), k=10, min_ratings=0)
    assert np.mean(["Sci-Fi" in g.split("|") for g in top["genres"]]) > 3 * is_scifi.mean()


def _real_ratings(rec, prepared, n_users: int) -> list[list[tuple[int, float]]]:
    """The ratings of a few users of the data, as (movie_id, rating) pairs: realistic fold-in requests."""
    out = []
    for u in range(n_users):
        mine = prepared.user_idx == u
        out.append(list(zip(rec.movie_ids[prepared.movie_idx[mine]].tolist(), prepared.rating[mine].tolist())))
    return out


def test_the_fast_fold_in_recommends_what_the_original_float64_solve_recommends(rec, prepared) -> None:
    """float32 + early stopping (the served default) against the original solve (float64, 300 Adam steps): the
    same top 10 for most users, the same loss within a hair, in a fraction of the steps."""
    kept, steps = [], []
    for pairs in _real_ratings(rec, prepared, 8):
        fast = rec.fold_in(pairs)
        slow = rec.fold_in(pairs, dtype=np.float64, sample=4096, tol=0.0)
        assert slow.steps == 300 and fast.steps < 300
        assert fast.loss <= slow.loss * 1.01 + 1e-6
        top_fast = rec.recommend_for(fast, k=10, min_ratings=0)["movie_id"].tolist()
        top_slow = rec.recommend_for(slow, k=10, min_ratings=0)["movie_id"].tolist()
        kept.append(len(set(top_fast) & set(top_slow)) / 10)
        steps.append(fast.steps)
    assert np.mean(kept) >= 0.8, kept
    assert np.mean(steps) < 200, steps


def test_fold_in_negatives_are_a_sample_of_the_unrated_movies_only(rec) -> None:
    from embedrec.fold_in import _fold_problem as fold_problem

    scorer = rec.scorer
    rated = np.arange(0, scorer.n_movies, 3)  # a third of the catalogue
    problem = fold_problem(scorer, rated, np.full(len(rated), 4.0), seed=5, sample=50, dtype=np.float32)
    assert problem.watch_neg is not None and problem.watch_neg.dtype == np.float32 and len(problem.watch_neg) == 50
    # which movies were drawn: match the sampled watch vectors back to the catalogue's
    drawn = [int(np.flatnonzero((scorer.watch_item == row).all(axis=1))[0]) for row in problem.watch_neg]
    assert len(set(drawn)) == 50 and not set(drawn) & set(rated.tolist())
    again = fold_problem(scorer, rated, np.full(len(rated), 4.0), seed=5, sample=50, dtype=np.float32)
    np.testing.assert_array_equal(again.watch_neg, problem.watch_neg)  # seeded: same request, same answer
    everything = fold_problem(scorer, rated, np.full(len(rated), 4.0), sample=10_000)
    assert everything.watch_neg is not None and len(everything.watch_neg) == scorer.n_movies - len(rated)


def _fold_problem(rec):
    scorer = rec.scorer
    rng = np.random.default_rng(1)
    movies = rng.choice(scorer.n_movies, 7, replace=False)
    ratings = rng.uniform(1, 5, 7)
    u = rng.normal(0, 0.3, scorer.user_embedding.shape[1])
    return movies, ratings, u, 0.1


@pytest.mark.parametrize("watch_loss,rating_loss_weight", [("bce", 1.0), ("softmax", 1.0), ("softmax", 0.04)])
def test_fold_in_gradient_matches_finite_differences(rec, watch_loss: str, rating_loss_weight: float) -> None:
    from embedrec.fold_in import fold_in_loss

    scorer = rec.scorer
    movies, ratings, u, b = _fold_problem(rec)
    opts = {
        "weight_decay": 0.03,
        "watch_weight": 0.7,
        "watch_loss": watch_loss,
        "negatives": 4,
        "rating_loss_weight": rating_loss_weight,  # a -10..10 model trained scale-free: 0.04
    }
    _, grad_u, grad_b = fold_in_loss(scorer, u, b, movies, ratings, **opts)
    eps = 1e-5
    for j in (0, 5, len(u) - 1):
        du = np.zeros_like(u)
        du[j] = eps
        num = (
            fold_in_loss(scorer, u + du, b, movies, ratings, **opts)[0]
            - fold_in_loss(scorer, u - du, b, movies, ratings, **opts)[0]
        ) / (2 * eps)
        assert num == pytest.approx(grad_u[j], rel=1e-4, abs=1e-7)
    num_b = (
        fold_in_loss(scorer, u, b + eps, movies, ratings, **opts)[0]
        - fold_in_loss(scorer, u, b - eps, movies, ratings, **opts)[0]
    ) / (2 * eps)
    assert num_b == pytest.approx(grad_b, rel=1e-4)


def _jax_fold_in_loss(
    artifact,
    movies: np.ndarray,
    ratings: np.ndarray,
    *,
    weight_decay: float,
    watch_weight: float,
    watch_loss: str,
    negatives: int,
):
    """The fold-in objective written with embedrec.model's forward functions, for ``jax.grad``."""
    import jax
    import jax.numpy as jnp

    from embedrec.model import gather_rows, rating_from_rows, watch_logit_from_rows

    module = artifact.to_flax()
    tables = module.tables()
    gi, gw = artifact.weights["genre_idx"], artifact.weights["genre_w"]
    unrated = np.setdiff1d(np.arange(artifact.shape.n_movies), movies)  # every unrated movie: < 4,096 here

    def rows_for(u: jax.Array, b: jax.Array, movie_idx: np.ndarray) -> dict:
        rows = gather_rows(
            tables, jnp.zeros(len(movie_idx), jnp.int32), jnp.asarray(movie_idx), jnp.asarray(gi[movie_idx])
        )
        rows["user_embedding"] = jnp.broadcast_to(u, (len(movie_idx), u.shape[0]))
        rows["user_bias"] = jnp.full((len(movie_idx), 1), b)
        return rows

    def loss(u: jax.Array, b: jax.Array) -> jax.Array:
        rows = rows_for(u, b, movies)
        pred = rating_from_rows(module.head, rows, jnp.asarray(gw[movies]), cfg=artifact.model, shape=artifact.shape)
        total = jnp.mean((pred - jnp.asarray(ratings, jnp.float32)) ** 2) + weight_decay * (u @ u + b * b)
        pos = watch_logit_from_rows(rows, jnp.asarray(gw[movies]))
        neg = watch_logit_from_rows(rows_for(u, b, unrated), jnp.asarray(gw[unrated]))
        if watch_loss == "softmax":
            log_s = jnp.log(negatives) + jax.nn.logsumexp(neg) - jnp.log(len(unrated))
            watch = jnp.mean(jnp.logaddexp(pos, log_s) - pos)
        else:
            watch = jnp.mean(jax.nn.softplus(-pos)) + jnp.mean(jax.nn.softplus(neg))
        return total + watch_weight * watch

    return loss


@pytest.mark.parametrize("watch_loss", ["bce", "softmax"])
def test_fold_in_loss_and_gradient_equal_jax_grad_of_the_model(rec, watch_loss: str) -> None:
    import jax
    import jax.numpy as jnp

    from embedrec.fold_in import fold_in_loss

    movies, ratings, u, b = _fold_problem(rec)
    opts = {"weight_decay": 0.03, "watch_weight": 0.7, "watch_loss": watch_loss, "negatives": 4}
    loss, grad_u, grad_b = fold_in_loss(rec.scorer, u, b, movies, ratings, **opts)
    jax_loss = _jax_fold_in_loss(rec.artifact, movies, ratings, **opts)
    args = (jnp.asarray(u, jnp.float32), jnp.float32(b))
    ref_loss = float(jax_loss(*args))
    ref_u, ref_b = jax.grad(jax_loss, argnums=(0, 1))(*args)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad_u, np.asarray(ref_u), rtol=1e-4, atol=1e-6)
    assert grad_b == pytest.approx(float(ref_b), rel=1e-4, abs=1e-6)


def test_fold_in_adam_uses_the_training_constants() -> None:
    from embedrec import fold_in, sparse_adam

    assert (fold_in.ADAM_B1, fold_in.ADAM_B2, fold_in.ADAM_EPS) == (sparse_adam.B1, sparse_adam.B2, sparse_adam.EPS)


def test_fold_in_rejects_bad_input(rec) -> None:
    with pytest.raises(UnknownIdError):
        rec.fold_in([(10**9, 4.0)])
    with pytest.raises(DataError):
        rec.fold_in([(int(rec.movie_ids[0]), 9.0)])
    with pytest.raises(DataError):
        rec.fold_in([])
    movie = int(rec.movie_ids[0])
    with pytest.raises(DataError, match=f"movie {movie} is rated twice"):
        rec.fold_in([(movie, 4.0), (int(rec.movie_ids[1]), 3.0), (movie, 2.0)])
    # the documented errors, not numpy's ValueError or pandas' KeyError
    with pytest.raises(DataError, match="ratings must be numbers, got 'four'"):
        rec.fold_in([(movie, "four")])
    with pytest.raises(DataError, match=r"must be \(movie_id, rating\) pairs"):
        rec.fold_in([movie])
    with pytest.raises(DataError, match=r"must be \(movie_id, rating\) pairs"):
        rec.fold_in([(movie, 4.0, 1)])  # a third value (a timestamp?) was dropped without a word
    with pytest.raises(
        DataError, match=r"need a movieId \(or movie_id\) and a rating column, got \['movie', 'rating'\]"
    ):
        rec.fold_in(pd.DataFrame({"movie": [movie], "rating": [4.0]}))
    with pytest.raises(DataError, match="and a rating column"):
        rec.fold_in(pd.DataFrame({"movieId": [movie]}))
    with pytest.raises(DataError, match="ratings must be numbers, got 'x'"):
        rec.fold_in(pd.DataFrame({"movieId": [movie], "rating": ["x"]}))
    with pytest.raises(DataError, match="must lie in the model's range"):
        rec.fold_in(pd.DataFrame({"movieId": [movie], "rating": [np.nan]}))
    # numpy rows and numpy scalars are pairs like any other
    same = rec.fold_in(np.array([[movie, 4.0]]))
    np.testing.assert_allclose(same.embedding, rec.fold_in([(np.int64(movie), np.float32(4.0))]).embedding)
    with pytest.raises(ConfigError, match="recommend_for takes a FoldedUser"):
        rec.recommend_for(int(rec.user_ids[0]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # steps=-1 fitted nothing and returned the mean user as if fitted; lr=-1 climbed the loss
        ({"steps": -1}, r"fold-in option steps must be a whole number >= 0 \(0: the mean user, unfitted\), got -1"),
        ({"steps": 2.5}, r"option steps must be a whole number >= 0 .*, got 2.5"),
        ({"lr": -0.1}, r"option lr must be a positive number, got -0.1"),
        ({"lr": float("nan")}, r"option lr must be a positive number, got nan"),
        ({"tol": 1.0}, r"option tol must be a number in \[0, 1\), got 1.0"),
        ({"patience": 0}, r"option patience must be a whole number >= 1"),
        ({"sample": True}, r"option sample must be a whole number >= 1, got True"),
        ({"weight_decay": -1}, r"option weight_decay must be a number >= 0"),
        ({"watch_loss": "mse"}, r"option watch_loss must be 'bce' or 'softmax', got 'mse'"),
        ({"dtype": int}, r"option dtype must be numpy.float32 or numpy.float64"),
        ({"step": 10}, r"unknown fold-in option 'step'; the options are weight_decay, .*steps"),  # a typo
    ],
)
def test_fold_in_options_outside_their_domain_are_refused_naming_the_option(rec, options, message) -> None:
    movie = int(rec.movie_ids[0])
    with pytest.raises(ConfigError, match=message):
        rec.fold_in([(movie, 4.0)], **options)
    # the same options inside their domain fit (the check is on the values, not the names)
    assert rec.fold_in([(movie, 4.0)], steps=3, lr=0.01, tol=0.0, patience=1, sample=64).steps <= 3
    assert rec.fold_in([(movie, 4.0)], steps=0).steps == 0  # the mean user, benchmarks/fold_in_quality.py's baseline
    # a whole float or a numpy integer is the count it spells, as -k and the config files take them
    as_int = rec.fold_in([(movie, 4.0)], steps=3, sample=64, seed=1)
    for steps, sample in ((3.0, 64.0), (np.int64(3), np.int32(64))):
        same = rec.fold_in([(movie, 4.0)], steps=steps, sample=sample, seed=1)
        assert same.steps == as_int.steps
        np.testing.assert_array_equal(same.embedding, as_int.embedding)


def test_with_a_user_history_a_folded_in_user_gets_the_mean_history_row_of_the_rated_movies(
    trained_with_history, prepared
) -> None:
    from embedrec.artifacts import load_model
    from embedrec.data.split import TRAIN
    from embedrec.fold_in import fold_in, fold_in_loss
    from embedrec.scoring import Scorer

    scorer = Scorer.from_artifact(load_model(trained_with_history))
    assert scorer.history_embedding is not None and scorer.user_history_vector is not None
    mine = (prepared.user_idx == 3) & (prepared.split == TRAIN)
    movies, ratings = prepared.movie_idx[mine], prepared.rating[mine]
    history = scorer.history_embedding[movies].mean(axis=0)
    assert np.abs(history).max() > 1e-3  # training moved the history rows
    # the same movies give the same history part as the trained user's served one
    np.testing.assert_allclose(history, scorer.user_history_vector[3], rtol=1e-5, atol=1e-6)

    user = fold_in(scorer, movies, ratings)
    own = user.embedding - history  # the fitted row; the network saw own + history
    opts = {"weight_decay": 0.05, "watch_weight": 1.0, "watch_loss": "bce", "negatives": 4}
    loss = fold_in_loss(scorer, own, user.bias, movies, ratings, history=history, **opts)[0]
    assert loss == pytest.approx(user.loss, rel=1e-4)
    assert fold_in_loss(scorer, own, user.bias, movies, ratings, **opts)[0] != pytest.approx(user.loss, rel=1e-3)
    # the hand-written gradient with the history part: finite differences
    _, grad_u, _ = fold_in_loss(scorer, own, user.bias, movies, ratings, history=history, **opts)
    eps = 1e-5
    for j in (0, 7):
        du = np.zeros_like(own, dtype=np.float64)
        du[j] = eps
        num = (
            fold_in_loss(scorer, own + du, user.bias, movies, ratings, history=history, **opts)[0]
            - fold_in_loss(scorer, own - du, user.bias, movies, ratings, history=history, **opts)[0]
        ) / (2 * eps)
        assert num == pytest.approx(grad_u[j], rel=1e-3, abs=1e-6)
