"""Baselines on small matrices whose right answer is known: hand-computed values, direct formulas, planted biases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrec.baselines import (
    EASE,
    BiasBaseline,
    GlobalMean,
    MostPopular,
    SigmoidBiasBaseline,
    TopRated,
    movie_prior_features,
)
from embedrec.errors import ConfigError
from embedrec.metrics import rmse


def _arrays(triples: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, m, r = zip(*triples, strict=True)
    return np.array(u, dtype=np.int32), np.array(m, dtype=np.int32), np.array(r, dtype=np.float32)


def _noisy_stars(
    rng: np.random.Generator, n_users: int, n_movies: int, n: int, *, movie_sd: float, noise_sd: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random (user, movie) pairs rated in whole stars 1..5: 3.5 + a user bias (sd 0.5) + a movie bias + noise,
    rounded and clipped."""
    u = rng.integers(0, n_users, n).astype(np.int32)
    m = rng.integers(0, n_movies, n).astype(np.int32)
    raw = 3.5 + rng.normal(0, 0.5, n_users)[u] + rng.normal(0, movie_sd, n_movies)[m] + rng.normal(0, noise_sd, n)
    return u, m, np.clip(np.round(raw), 1, 5)


def test_global_mean_predicts_the_train_mean() -> None:
    u, m, r = _arrays([(0, 0, 5.0), (0, 1, 3.0), (1, 0, 4.0), (1, 1, 2.0)])
    model = GlobalMean().fit(u, m, r, n_users=2, n_movies=2)
    assert model.predict(np.array([0, 1, 1]), np.array([1, 0, 1])).tolist() == [3.5, 3.5, 3.5]


def test_bias_one_sweep_by_hand() -> None:
    # mean = 4; residuals (u0,m0) +1, (u0,m1) -1, (u1,m0) 0; reg 1 for both.
    # movies first: b_m0 = (1 + 0) / (1 + 2) = 1/3, b_m1 = -1 / (1 + 1) = -1/2
    # then users:   b_u0 = ((1 - 1/3) + (-1 + 1/2)) / (1 + 2) = 1/18, b_u1 = (0 - 1/3) / (1 + 1) = -1/6
    u, m, r = _arrays([(0, 0, 5.0), (0, 1, 3.0), (1, 0, 4.0)])
    model = BiasBaseline(reg_user=1.0, reg_movie=1.0, n_sweeps=1).fit(u, m, r, n_users=2, n_movies=2)
    np.testing.assert_allclose(model.movie_bias_, [1 / 3, -1 / 2])
    np.testing.assert_allclose(model.user_bias_, [1 / 18, -1 / 6])
    assert model.predict(np.array([1]), np.array([1]))[0] == pytest.approx(4 - 1 / 6 - 1 / 2, abs=1e-6)


def test_bias_clips_to_the_train_range_and_gives_cold_items_zero_bias() -> None:
    u, m, r = _arrays([(0, 0, 5.0), (0, 1, 5.0), (1, 0, 5.0), (1, 2, 1.0)])
    model = BiasBaseline(reg_user=0.0, reg_movie=0.0).fit(u, m, r, n_users=3, n_movies=4)
    pred = model.predict(np.array([0, 2]), np.array([0, 3]))
    assert np.all((pred >= 1.0) & (pred <= 5.0))
    assert model.movie_bias_[3] == 0.0 and model.user_bias_[2] == 0.0  # never rated: no NaN from 0 / 0
    assert pred[1] == pytest.approx(model.mean_)


def test_bias_recovers_planted_biases_and_beats_global_mean() -> None:
    rng = np.random.default_rng(0)
    n_users, n_movies, n = 300, 200, 12_000
    b_user = rng.normal(0, 0.5, n_users)
    b_movie = rng.normal(0, 0.5, n_movies)
    u = rng.integers(0, n_users, n).astype(np.int32)
    m = rng.integers(0, n_movies, n).astype(np.int32)
    r = (3.5 + b_user[u] + b_movie[m] + rng.normal(0, 0.3, n)).astype(np.float32)
    train = rng.random(n) < 0.8
    test = ~train
    sizes = {"n_users": n_users, "n_movies": n_movies}
    bias = BiasBaseline().fit(u[train], m[train], r[train], **sizes)
    mean = GlobalMean().fit(u[train], m[train], r[train], **sizes)
    bias_rmse = rmse(r[test], bias.predict(u[test], m[test]))
    assert bias_rmse < 0.45  # noise 0.3 plus estimation error from ~32 ratings per user
    assert bias_rmse < rmse(r[test], mean.predict(u[test], m[test])) - 0.3
    assert np.corrcoef(bias.movie_bias_, b_movie)[0, 1] > 0.95
    assert np.corrcoef(bias.user_bias_, b_user)[0, 1] > 0.95


def test_sigmoid_bias_recovers_planted_biases_through_the_link() -> None:
    # every pair rated exactly lo + span * sigmoid(c + b_user + b_movie): without shrinkage the fit reproduces them
    rng = np.random.default_rng(1)
    n_users, n_movies = 40, 30
    c, b_user, b_movie = 0.4, rng.normal(0, 0.6, n_users), rng.normal(0, 0.6, n_movies)
    u, m = (a.ravel().astype(np.int32) for a in np.meshgrid(np.arange(n_users), np.arange(n_movies), indexing="ij"))
    r = (1.0 + 4.0 / (1.0 + np.exp(-(c + b_user[u] + b_movie[m])))).astype(np.float32)
    model = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0, reg_user=0.0, reg_movie=0.0, n_sweeps=60)
    model.fit(u, m, r, n_users=n_users, n_movies=n_movies)
    np.testing.assert_allclose(model.predict(u, m), r, atol=2e-3)
    # the logit splits into the three terms the network's rating logit also has
    np.testing.assert_allclose(model.logit(u, m), model.offset_ + model.user_bias_[u] + model.movie_bias_[m])


def test_sigmoid_bias_stays_in_range_shrinks_thin_rows_and_matches_the_linear_baseline_on_noisy_data() -> None:
    rng = np.random.default_rng(0)
    n_users, n_movies, n = 300, 200, 12_000
    u, m, r = _noisy_stars(rng, n_users, n_movies, n, movie_sd=0.5, noise_sd=0.8)
    train = rng.random(n) < 0.8
    sizes = {"n_users": n_users + 1, "n_movies": n_movies + 1}  # one user and one movie without ratings
    linked = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0).fit(u[train], m[train], r[train], **sizes)
    linear = BiasBaseline().fit(u[train], m[train], r[train], **sizes)
    pred = linked.predict(u[~train], m[~train])
    assert np.all((pred > 1.0) & (pred < 5.0))
    assert linked.user_bias_[n_users] == 0.0 and linked.movie_bias_[n_movies] == 0.0
    assert abs(rmse(r[~train], pred) - rmse(r[~train], linear.predict(u[~train], m[~train]))) < 0.01
    loose = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0, reg_user=0.0, reg_movie=0.0)
    loose.fit(u[train], m[train], r[train], **sizes)
    assert np.abs(linked.movie_bias_).sum() < np.abs(loose.movie_bias_).sum()


def test_sigmoid_bias_settles_its_offset_in_its_sweeps() -> None:
    """Moving one amount from every trained user's bias into the offset changes no train logit, only the shrinkage,
    which is least where the biases average zero. The sweeps alone crept there (ML-100K temporal: 120 sweeps), and a
    user or movie without ratings, scored by the offset alone, was off by what was left: the default sweeps now land
    where ten times as many do."""
    n_users, n_movies = 100, 300  # 200 ratings a user: the shrinkage, all that tells the offset from them, is weak
    rng = np.random.default_rng(11)
    u, m, r = _noisy_stars(rng, n_users, n_movies, 20_000, movie_sd=0.6, noise_sd=0.8)
    r = np.clip(r + (u % 3 == 0), 1, 5)  # a third of the users rate a star higher: the user biases do not average 0
    sizes = {"n_users": n_users + 1, "n_movies": n_movies + 1}  # one user and one movie without ratings
    fit = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0).fit(u, m, r, **sizes)
    settled = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0, n_sweeps=150).fit(u, m, r, **sizes)
    assert abs(fit.user_bias_[:n_users].mean()) < 1e-3 and abs(fit.movie_bias_[:n_movies].mean()) < 1e-3
    assert fit.offset_ == pytest.approx(settled.offset_, abs=1e-4)
    new_user, new_movie = np.array([n_users, 0]), np.array([0, n_movies])
    np.testing.assert_allclose(fit.predict(new_user, new_movie), settled.predict(new_user, new_movie), atol=1e-4)


def test_movie_prior_features_are_genre_shares_and_year_buckets() -> None:
    multi_hot = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    year = np.array([1994.0, 1996.0, np.nan, 1999.0])  # buckets 1990-94, 1995-99, unknown
    x = movie_prior_features(multi_hot, year)
    # genres 0 and 1 (genre 2: no movie has it, dropped), then buckets unknown / 1990-94 / 1995-99
    np.testing.assert_array_equal(x, [[0.5, 0.5, 0, 1, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0], [1, 0, 0, 0, 1]])
    assert movie_prior_features(np.zeros((3, 0)), np.full(3, np.nan)).shape == (3, 0)  # nothing known: no prior
    with pytest.raises(ValueError, match="same movies"):
        movie_prior_features(multi_hot, year[:3])


def test_sigmoid_bias_shrinks_thin_and_new_movies_toward_what_movies_like_them_average() -> None:
    """Half the movies (genre 0) are planted a star above the others. A movie with one rating, or none, is shrunk
    toward its genre's average with features and toward zero without; held-out ratings are predicted better."""
    rng = np.random.default_rng(3)
    n_users, n_movies = 200, 400
    genre = np.arange(n_movies) % 2
    u = rng.integers(0, n_users, 30_000).astype(np.int32)
    m = rng.integers(0, n_movies, 30_000).astype(np.int32)
    m[rng.random(m.size) < 0.5] %= 40  # movies 0..39 hold half the ratings; the rest have ~38 each, thinned below
    r = np.clip(np.round(3.0 + (genre[m] == 0) + rng.normal(0, 0.5, n_users)[u] + rng.normal(0, 0.8, m.size)), 1, 5)
    keep = (m < 40) | (rng.random(m.size) < 0.03)  # movies past 40: about one rating each
    train, test = keep & (rng.random(m.size) < 0.8), ~keep
    features = movie_prior_features(np.eye(2)[genre], np.full(n_movies, 2000.0))
    sizes = {"n_users": n_users, "n_movies": n_movies + 2}  # two movies without ratings, one of each genre
    x = np.vstack([features, [[1.0, 0.0], [0.0, 1.0]]])
    plain = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0).fit(u[train], m[train], r[train], **sizes)
    prior = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0).fit(
        u[train], m[train], r[train], **sizes, movie_features=x
    )
    assert plain.movie_bias_[n_movies] == plain.movie_bias_[n_movies + 1] == 0.0
    assert prior.movie_bias_[n_movies] - prior.movie_bias_[n_movies + 1] > 0.5  # a star: ~0.9 in logit at 3..4
    assert rmse(r[test], prior.predict(u[test], m[test])) < rmse(r[test], plain.predict(u[test], m[test])) - 0.05
    with pytest.raises(ValueError, match="movie_features"):
        SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0).fit(u, m, r, **sizes, movie_features=features)


def test_sigmoid_bias_prior_lowers_test_rmse_on_real_thin_movies(ml100k_prepared: Path) -> None:
    """ML-100K with three quarters of each movie's train ratings dropped (the quality matrix's sparse row is thinned
    this way): genres and release years, which the bare biases lack, lower the test RMSE."""
    from embedrec.data import load_prepared
    from embedrec.data.split import TEST, TRAIN

    d = load_prepared(ml100k_prepared)
    keep = (d.split == TRAIN) & (np.random.default_rng(0).random(d.split.size) < 0.25)
    test = d.split == TEST
    features = movie_prior_features(d.movie_genre_multi_hot(), d.movie_year())
    got = []
    for x in (None, features):
        fit = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0).fit(
            d.user_idx[keep],
            d.movie_idx[keep],
            d.rating[keep],
            n_users=d.n_users,
            n_movies=d.n_movies,
            movie_features=x,
        )
        got.append(rmse(d.rating[test], fit.predict(d.user_idx[test], d.movie_idx[test])))
    assert got[1] < got[0] - 0.002, got


def test_sigmoid_bias_shrinks_every_rating_scale_as_it_shrinks_one_to_five() -> None:
    """The same ratings on -10..10 or 0..1 instead of 1..5 (an affine map) get the same logit biases: the squared
    error grows with the square of the range and the shrinkage is weighed to match. Before, 0..1 was shrunk 16 times
    harder than 1..5 (a bias baseline worse than the plain one, and a blend that could not help) and -10..10 25
    times less."""
    n_users, n_movies = 200, 150
    u, m, stars = _noisy_stars(np.random.default_rng(3), n_users, n_movies, 6_000, movie_sd=0.6, noise_sd=0.9)
    sizes = {"n_users": n_users, "n_movies": n_movies}
    five = SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0).fit(u, m, stars, **sizes)
    for lo, hi in ((-10.0, 10.0), (0.0, 1.0)):
        scaled = lo + (stars - 1.0) * (hi - lo) / 4.0
        other = SigmoidBiasBaseline(rating_min=lo, rating_max=hi).fit(u, m, scaled, **sizes)
        np.testing.assert_allclose(other.movie_bias_, five.movie_bias_, atol=1e-6)
        np.testing.assert_allclose(other.user_bias_, five.user_bias_, atol=1e-6)
        np.testing.assert_allclose(other.offset_, five.offset_, atol=1e-6)


def test_most_popular_ranks_by_count_for_every_user() -> None:
    u, m, r = _arrays([(0, 2, 1.0), (1, 2, 1.0), (2, 2, 1.0), (0, 0, 5.0), (1, 0, 5.0), (2, 1, 5.0)])
    scores = MostPopular().fit(u, m, r, n_users=3, n_movies=4).score(np.array([0, 2]))
    assert scores.tolist() == [[2.0, 1.0, 3.0, 0.0], [2.0, 1.0, 3.0, 0.0]]


def test_top_rated_uses_a_bayesian_average() -> None:
    # movie 0: one 5; movie 1: 4,5,4,5,4,5 (mean 4.5, six ratings); movie 2: 1, 2; movie 3: unrated.
    # m = 35 / 9; with C = 2: movie 0 = (2m + 5) / 3 = 4.259, movie 1 = (2m + 27) / 8 = 4.347, movie 2 = 2.694.
    # The many 4.5s outrank the single 5; the unrated movie scores m.
    triples = [(0, 0, 5.0)] + [(i, 1, 4.0 + i % 2) for i in range(6)] + [(0, 2, 1.0), (1, 2, 2.0)]
    u, m, r = _arrays(triples)
    model = TopRated(prior_count=2.0).fit(u, m, r, n_users=6, n_movies=4)
    mean = 35 / 9
    np.testing.assert_allclose(
        model.score(np.array([0]))[0], [(2 * mean + 5) / 3, (2 * mean + 27) / 8, (2 * mean + 3) / 4, mean], rtol=1e-6
    )
    assert np.argsort(-model.scores_).tolist() == [1, 0, 3, 2]
    assert TopRated().fit(u, m, r, n_users=6, n_movies=4).prior_count_ == pytest.approx(9 / 3)


def test_ease_matches_the_closed_form_and_has_zero_diagonal() -> None:
    rng = np.random.default_rng(1)
    n_users, n_movies, lam = 30, 8, 5.0
    x = (rng.random((n_users, n_movies)) < 0.4).astype(np.float64)
    u, m = np.nonzero(x)
    r = np.full(u.size, 4.0, dtype=np.float32)  # the rating value is ignored: any rating is an interaction
    model = EASE(lambda_=lam).fit(u, m, r, n_users=n_users, n_movies=n_movies)

    p = np.linalg.inv(x.T @ x + lam * np.eye(n_movies))
    expected = np.eye(n_movies) - p @ np.diag(1.0 / np.diag(p))
    np.testing.assert_allclose(model.weights_, expected, atol=1e-12)
    assert np.all(np.diag(model.weights_) == 0.0)
    users = np.array([3, 0, 7])
    np.testing.assert_allclose(model.score(users), x[users] @ expected, rtol=1e-5, atol=1e-6)


def test_ease_recommends_the_co_occurring_item() -> None:
    # items 0 and 1 always come together, 2 and 3 likewise; a user holding only item 0 should get item 1 first.
    pairs = [(user, item) for user in range(20) for item in ((0, 1) if user < 10 else (2, 3))] + [(20, 0)]
    u, m = (np.array(a) for a in zip(*pairs, strict=True))
    model = EASE(lambda_=1.0).fit(u, m, np.ones(u.size), n_users=21, n_movies=4)
    scores = model.score(np.array([20]))[0]
    assert int(np.argmax(np.where(np.arange(4) == 0, -np.inf, scores))) == 1


def test_ease_refuses_catalogues_above_max_items() -> None:
    u, m, r = _arrays([(0, 0, 4.0), (0, 5, 4.0)])
    with pytest.raises(ConfigError, match="max_items=5"):
        EASE(max_items=5).fit(u, m, r, n_users=1, n_movies=6)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        EASE(lambda_=0.0)
    with pytest.raises(ConfigError):
        BiasBaseline(reg_user=-1.0)
    with pytest.raises(ConfigError):
        TopRated(prior_count=-1.0)
    with pytest.raises(ConfigError):
        SigmoidBiasBaseline(rating_min=5.0, rating_max=5.0)
    with pytest.raises(ConfigError, match="prior_reg"):
        SigmoidBiasBaseline(rating_min=1.0, rating_max=5.0, prior_reg=0.0)
    with pytest.raises(ValueError, match="movie_idx out of range"):
        GlobalMean().fit(np.array([0]), np.array([3]), np.array([4.0]), n_users=1, n_movies=3)
