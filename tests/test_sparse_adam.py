"""The row-sparse Adam: plain Adam when every row is in the batch, untouched rows stay put, the slab packs
losslessly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedrec.sparse_adam import (
    B1,
    B2,
    EPS,
    adam_rows,
    bias_corrected_lr,
    dense_adam_update,
    lazy_adam_update,
    slab_layout,
    slab_to_tables,
    tables_to_slab,
    with_zero_moments,
)

N_ROWS, WIDTH, LR = 6, 4, 0.01


def _grads(steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(N_ROWS, WIDTH)).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize("lazy", [True, False])
def test_adam_on_the_slab_with_every_row_in_every_batch_is_optax_adam(lazy: bool) -> None:
    params0 = np.random.default_rng(1).normal(size=(N_ROWS, WIDTH)).astype(np.float32)
    tx = optax.adam(LR, b1=B1, b2=B2, eps=EPS)
    ref, opt = jnp.asarray(params0), tx.init(jnp.asarray(params0))
    slab = with_zero_moments(jnp.asarray(params0))
    rows = jnp.arange(N_ROWS)
    for t, g in enumerate(_grads(5), start=1):
        updates, opt = tx.update(jnp.asarray(g), opt, ref)
        ref = optax.apply_updates(ref, updates)
        lr_t = bias_corrected_lr(jnp.float32(LR), t)
        if lazy:
            slab = lazy_adam_update(slab, slab[rows], rows, jnp.asarray(g), lr_t, width=WIDTH)
        else:
            slab = dense_adam_update(slab, rows, jnp.asarray(g), lr_t, width=WIDTH, live=jnp.bool_(True))
    # optax adds eps after bias correction, the slab's Adam before it: equal up to ~eps relative to sqrt(nu)
    np.testing.assert_allclose(np.asarray(slab[:, :WIDTH]), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_rows_outside_the_batch_keep_weights_and_moments_only_when_lazy() -> None:
    slab = with_zero_moments(jnp.ones((N_ROWS, WIDTH)))
    g = jnp.ones((1, WIDTH))
    lr_t = bias_corrected_lr(jnp.float32(LR), 1)
    lazy = lazy_adam_update(slab, slab[jnp.array([2])], jnp.array([2]), g, lr_t, width=WIDTH)
    dense = dense_adam_update(slab, jnp.array([2]), g, lr_t, width=WIDTH, live=jnp.bool_(True))
    # a second step without row 2: the lazy rows stay, the dense row still moves on its momentum
    lr_t = bias_corrected_lr(jnp.float32(LR), 2)
    lazy2 = lazy_adam_update(lazy, lazy[jnp.array([0])], jnp.array([0]), g, lr_t, width=WIDTH)
    dense2 = dense_adam_update(dense, jnp.array([0]), g, lr_t, width=WIDTH, live=jnp.bool_(True))
    np.testing.assert_array_equal(lazy2[2], lazy[2])
    assert not np.array_equal(dense2[2], dense[2])
    untouched = np.array([1, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(lazy2)[untouched], np.asarray(slab)[untouched])


def test_duplicate_rows_sum_their_gradients_and_padding_slots_change_nothing() -> None:
    slab = with_zero_moments(jnp.arange(N_ROWS * WIDTH, dtype=jnp.float32).reshape(N_ROWS, WIDTH) / 10)
    lr_t = bias_corrected_lr(jnp.float32(LR), 1)
    g1, g2 = jnp.full((1, WIDTH), 0.3), jnp.full((1, WIDTH), -1.2)
    idx = jnp.array([3, 3, N_ROWS])  # row 3 twice, then a padding slot pointing past the end
    twice = lazy_adam_update(
        slab,
        slab[jnp.minimum(idx, N_ROWS - 1)],
        idx,
        jnp.concatenate([g1, g2, jnp.full((1, WIDTH), 99.0)]),
        lr_t,
        width=WIDTH,
    )
    once = lazy_adam_update(slab, slab[jnp.array([3])], jnp.array([3]), g1 + g2, lr_t, width=WIDTH)
    np.testing.assert_allclose(np.asarray(twice), np.asarray(once), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(twice[N_ROWS - 1]), np.asarray(slab[N_ROWS - 1]))


def test_rowwise_second_moment_is_the_mean_squared_gradient_of_the_row() -> None:
    packed = jnp.concatenate([jnp.ones((2, WIDTH)), jnp.zeros((2, WIDTH)), jnp.zeros((2, 1))], axis=1)
    g = jnp.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 2.0]])
    out = adam_rows(packed, g, jnp.float32(LR), WIDTH, rowwise=True)
    assert out.shape == (2, 2 * WIDTH + 1)
    np.testing.assert_allclose(np.asarray(out[:, -1]), (1 - B2) * np.array([7.5, 1.0]), rtol=1e-6)


def test_the_slab_packs_and_unpacks_every_table_exactly() -> None:
    key = jax.random.key(0)
    tables = {
        "user_embedding": jax.random.normal(key, (5, 3)),
        "user_bias": jnp.ones((5, 1)),
        "movie_embedding": jax.random.normal(key, (7, 3)),
        "movie_bias": jnp.zeros((7, 1)),
        "watch_bias": jnp.full((7, 1), 2.0),
        "genre_embedding": jax.random.normal(key, (4, 3)),
    }
    layout = slab_layout(tables)
    assert (layout.width, layout.n_rows, layout.offset("movie")) == (5, 16, 5)
    slab = tables_to_slab(tables, layout)
    assert slab.shape == (16, 15)
    back = slab_to_tables(slab, layout)
    for name, table in tables.items():
        np.testing.assert_array_equal(np.asarray(back[name]), np.asarray(table), err_msg=name)
    no_genre = slab_layout(tables, exclude=("genre",))
    assert "genre_embedding" not in slab_to_tables(tables_to_slab(tables, no_genre, rowwise=True), no_genre)
    assert tables_to_slab(tables, no_genre, rowwise=True).shape == (12, 2 * 5 + 1)
