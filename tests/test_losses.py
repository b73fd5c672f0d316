"""The training objective: each term against a direct computation, padding masked, rated negatives excluded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from embedrec.config import DataShape, ModelConfig
from embedrec.losses import LossSettings, batch_loss, l2_sum, watch_loss_sum
from embedrec.model import EmbeddingConcat, gather_rows, rating_from_rows

SHAPE = DataShape(n_users=6, n_movies=9, n_genres=4, rating_min=1.0, rating_max=5.0, max_genres_per_movie=2)
B, K = 4, 3


@pytest.fixture(scope="module")
def batch():
    cfg = ModelConfig(
        embedding_dim=8, hidden=(8,), dropout=0.0, genre_mode="bag", biases=True, watch_head=True, init="scaled"
    )
    model = EmbeddingConcat(cfg, SHAPE, rngs=nnx.Rngs(0))
    users = jnp.array([0, 1, 2, 5])
    movies = jnp.array([1, 2, 3, 4, 6, 7, 8])  # B positives, then K shared negatives
    genre_idx = jnp.array([[0, 1], [2, 0], [3, 3], [1, 2], [0, 0], [2, 3], [1, 1]])
    genre_w = jnp.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    tables = {
        k: v + 0.5 * jax.random.normal(jax.random.key(i), v.shape) for i, (k, v) in enumerate(model.tables().items())
    }
    rows = gather_rows(tables, users, movies, genre_idx)
    rating = jnp.array([4.0, 2.0, 5.0, 0.0])
    weight = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last rating is padding
    neg_weight = weight[:, None] * jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    return model, rows, genre_w, rating, weight, neg_weight


def _settings(**changes) -> LossSettings:
    return LossSettings(
        **{
            "batch_size": B,
            "negatives": 0,
            "weight_decay": 0.0,
            "watch_weight": 1.0,
            "watch_loss": "softmax",
            **changes,
        }
    )


def _positive(rows):
    return {name: r[:B] for name, r in rows.items()}


def test_rating_loss_is_the_mean_squared_error_of_the_real_ratings(batch) -> None:
    model, rows, genre_w, rating, weight, neg_weight = batch
    loss, stats = batch_loss(
        model.head, rows, genre_w, rating, weight, neg_weight, jnp.uint32(0), shape=SHAPE, settings=_settings()
    )
    pred = np.asarray(rating_from_rows(model.head, _positive(rows), genre_w[:B], shape=SHAPE))
    expected = np.mean((pred[:3] - np.asarray(rating[:3])) ** 2)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(np.asarray(stats), [3 * expected, 3.0, 0.0], rtol=1e-5)


def test_the_rating_loss_weight_scales_the_loss_and_not_the_reported_squared_errors(batch) -> None:
    """A scale-free rating loss weighs the MSE by (4 / span)**2 (a -10..10 scale: 0.04); the stats stay the plain
    squared-error sum, so the reported train MSE is on the data's own scale."""
    from embedrec.config import TrainConfig, rating_loss_weight

    assert rating_loss_weight(TrainConfig(scale_free_rating_loss=True), 1.0, 5.0) == 1.0  # 1..5 trains as before
    assert rating_loss_weight(TrainConfig(scale_free_rating_loss=True), -10.0, 10.0) == pytest.approx(0.04)
    assert rating_loss_weight(TrainConfig(scale_free_rating_loss=False), -10.0, 10.0) == 1.0
    model, rows, genre_w, rating, weight, neg_weight = batch
    args = (model.head, rows, genre_w, rating, weight, neg_weight, jnp.uint32(0))
    plain, plain_stats = batch_loss(*args, shape=SHAPE, settings=_settings())
    scaled, scaled_stats = batch_loss(*args, shape=SHAPE, settings=_settings(rating_loss_weight=0.04))
    assert float(scaled) == pytest.approx(0.04 * float(plain), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(scaled_stats), np.asarray(plain_stats))


def test_weight_decay_adds_the_squared_norms_of_each_real_ratings_rows(batch) -> None:
    model, rows, genre_w, rating, weight, neg_weight = batch
    plain, _ = batch_loss(
        model.head, rows, genre_w, rating, weight, neg_weight, jnp.uint32(0), shape=SHAPE, settings=_settings()
    )
    decayed, _ = batch_loss(
        model.head,
        rows,
        genre_w,
        rating,
        weight,
        neg_weight,
        jnp.uint32(0),
        shape=SHAPE,
        settings=_settings(weight_decay=0.1),
    )
    pos = {k: np.asarray(v)[:3] for k, v in _positive(rows).items()}
    reg = sum(np.sum(v**2) for k, v in pos.items() if k != "genre_embedding")
    reg += np.sum(np.sum(pos["genre_embedding"] ** 2, axis=-1) * np.asarray(genre_w)[:3])
    assert float(decayed - plain) == pytest.approx(0.1 * reg / 3, rel=1e-4)
    assert float(l2_sum(_positive(rows), weight, genre_w[:B])) == pytest.approx(reg, rel=1e-5)


def _logits(rows, genre_w):
    g = np.einsum("bgd,bg->bd", np.asarray(rows["genre_embedding"]), np.asarray(genre_w))
    items = np.asarray(rows["movie_embedding"]) + g
    users = np.asarray(rows["user_embedding"])
    logits = users @ items.T + np.asarray(rows["watch_bias"])[:, 0][None, :]  # (B, B + K)
    return np.diag(logits[:, :B]), logits[:, B:], users, items


def test_sampled_softmax_is_the_positives_log_loss_against_its_unrated_negatives(batch) -> None:
    _, rows, genre_w, _, weight, neg_weight = batch
    pos, neg, users, items = _logits(rows, genre_w)
    expected = 0.0
    for b in range(3):
        keep = np.asarray(neg_weight[b]) > 0
        z = np.concatenate([[pos[b]], neg[b][keep]])
        expected += np.log(np.sum(np.exp(z))) - pos[b]
    got = watch_loss_sum(
        jnp.asarray(users), jnp.asarray(items), rows["watch_bias"][:, 0], weight, neg_weight, kind="softmax"
    )
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_bce_pulls_positives_up_and_the_mean_negative_down(batch) -> None:
    _, rows, genre_w, _, weight, neg_weight = batch
    pos, neg, users, items = _logits(rows, genre_w)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    w, nw = np.asarray(weight), np.asarray(neg_weight)
    expected = np.sum(w * softplus(-pos)) + np.sum(nw * softplus(neg)) / K
    got = watch_loss_sum(
        jnp.asarray(users), jnp.asarray(items), rows["watch_bias"][:, 0], weight, neg_weight, kind="bce"
    )
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_padding_gets_no_gradient_and_the_watch_term_is_weighted(batch) -> None:
    model, rows, genre_w, rating, weight, neg_weight = batch
    settings = _settings(negatives=K, watch_weight=0.5, weight_decay=0.01)

    def loss_of(r):
        return batch_loss(
            model.head, r, genre_w, rating, weight, neg_weight, jnp.uint32(0), shape=SHAPE, settings=settings
        )

    (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(dict(rows))
    assert float(jnp.abs(grads["user_embedding"][3]).max()) == 0.0  # the padded rating's user row
    assert float(jnp.abs(grads["movie_embedding"][3]).max()) == 0.0
    assert float(jnp.abs(grads["movie_embedding"][B:]).max()) > 0  # negatives learn from the watch loss
    rating_part = float(stats[0]) / 3 + 0.01 * float(l2_sum(_positive(rows), weight, genre_w[:B])) / 3
    assert float(loss) == pytest.approx(rating_part + 0.5 * float(stats[2]) / 3, rel=1e-5)
