"""The jitted step: it learns the batch it is given, touches only that batch's rows, and padding steps are no-ops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from embedrec.config import DataShape, ModelConfig
from embedrec.model import EmbeddingConcat
from embedrec.sampling import seen_filter
from embedrec.sparse_adam import head_optimizer
from embedrec.step import StepParts, StepSettings, init_state, make_train_block, state_tables, zero_optimizer_state

SHAPE = DataShape(n_users=20, n_movies=30, n_genres=5, rating_min=1.0, rating_max=5.0)
BATCH = 4


def _setup(*, lazy: bool, negatives: int = 0, genre_table: bool = False, n_train: int = 8, steps: int = 2):
    cfg = ModelConfig(embedding_dim=8, hidden=(8,), dropout=0.0, biases=True, watch_head=True, init="scaled")
    model = EmbeddingConcat(cfg, SHAPE, rngs=nnx.Rngs(0))
    tx = head_optimizer()
    graphdef, layout, state = init_state(model, tx, genre_table=genre_table)
    settings = StepSettings(
        batch_size=BATCH,
        steps_in_block=steps,
        n_train=n_train,
        negatives=negatives,
        watch_weight=1.0,
        watch_loss="softmax",
        weight_decay=0.0,
        lazy=lazy,
        rowwise=False,
        sampling="uniform",
        genre_table=genre_table,
        genre_width=8,
    )
    users = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
    movies = np.array([0, 1, 2, 3, 1, 2, 3, 0], np.int32)
    genre_idx = (np.arange(SHAPE.n_movies, dtype=np.int32) % SHAPE.n_genres)[:, None]
    inputs = {
        "genre_idx": genre_idx,
        "genre_w": np.ones_like(genre_idx, np.float32),
        "seen_bits": seen_filter(users, movies),
    }
    epoch_ratings = {
        "user": np.pad(users, (0, 8)).reshape(-1, BATCH),
        "movie": np.pad(movies, (0, 8)).reshape(-1, BATCH),
        "rating": np.pad(np.array([5, 4, 1, 2, 5, 4, 1, 2], np.float32), (0, 8)).reshape(-1, BATCH),
    }
    block = make_train_block(StepParts(graphdef, layout, SHAPE, settings, tx))
    return block, layout, state, inputs, epoch_ratings


def _run(block, state, inputs, epoch_ratings, first_step: int):
    return block(state, inputs, epoch_ratings, jnp.int32(first_step), jnp.float32(0.05), jnp.uint32(0), jnp.int32(1))


def _copy(state):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)  # the block donates its state argument


def test_steps_lower_the_loss_of_their_batch() -> None:
    block, _, state, inputs, epoch_ratings = _setup(lazy=True, negatives=3)
    losses = []
    for _ in range(30):
        state, stats = _run(block, state, inputs, epoch_ratings, 0)
        losses.append(float(stats[:, 0].sum() / stats[:, 1].sum()))
    assert losses[-1] < 0.5 * losses[0]
    assert float(stats[0, 1]) == BATCH and float(stats[:, 2].sum()) > 0


@pytest.mark.parametrize("genre_table", [False, True])
def test_lazy_steps_leave_rows_outside_the_batch_alone(genre_table: bool) -> None:
    block, layout, state, inputs, epoch_ratings = _setup(lazy=True, genre_table=genre_table)
    before = {k: np.asarray(v) for k, v in state_tables(state, layout).items()}
    state, _ = _run(block, state, inputs, epoch_ratings, 0)
    after = {k: np.asarray(v) for k, v in state_tables(state, layout).items()}
    np.testing.assert_array_equal(after["user_embedding"][4:], before["user_embedding"][4:])
    np.testing.assert_array_equal(after["movie_embedding"][4:], before["movie_embedding"][4:])
    assert not np.array_equal(after["user_embedding"][:4], before["user_embedding"][:4])
    assert int(state["count"]) == 2


def test_padding_steps_past_the_end_of_the_epoch_change_nothing() -> None:
    block, _, state, inputs, epoch_ratings = _setup(lazy=False, negatives=3)
    before = _copy(state)
    state, stats = _run(block, state, inputs, epoch_ratings, 2)  # steps 2 and 3: past n_train = 8
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(stats), 0.0)


def test_the_same_block_twice_gives_the_same_state() -> None:
    block, _, state, inputs, epoch_ratings = _setup(lazy=True, negatives=3)
    a, _ = _run(block, _copy(state), inputs, epoch_ratings, 0)
    b, _ = _run(block, _copy(state), inputs, epoch_ratings, 0)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_head_optimizers_state_starts_as_its_own_init_would_start_it() -> None:
    """``init_state`` builds the Head's Adam state on the host; it must be ``tx.init``'s, leaf for leaf: the same tree,
    shapes, dtypes and (zero) values."""
    cfg = ModelConfig(embedding_dim=8, hidden=(16, 4), dropout=0.0, biases=True, watch_head=True, init="scaled")
    _, head = nnx.split(EmbeddingConcat(cfg, SHAPE, rngs=nnx.Rngs(0)).head)
    tx = head_optimizer()
    ours, stock = zero_optimizer_state(tx, head), tx.init(head)
    assert jax.tree.structure(ours) == jax.tree.structure(stock)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(stock), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(jax.tree.leaves(ours)) == 1 + 2 * len(jax.tree.leaves(head))  # the count, mu and nu per parameter
