"""The jitted training step: slice a batch, sample negatives, gather rows, differentiate, update row-sparsely.

Synopsis::

    parts = StepParts(graphdef, layout, shape, settings, head_optimizer())
    run_block = make_train_block(parts)                        # jitted: settings.steps_in_block steps per call
    state, stats = run_block(state, inputs, epoch_ratings, first_step, lr, run_seed, epoch)

The train state is a pytree: ``head`` (the Head's NNX state), ``opt`` (its Adam moments), ``slab`` (every embedding
table with its moments, see :mod:`embedrec.sparse_adam`), ``count`` (Adam's step count) and, for a small genre
table updated densely, ``genre``. ``inputs`` are the run's device arrays (``genre_idx``, ``genre_w``, with
negatives ``seen_bits`` and ``neg_cdf``, with ``row_decay`` ``user_inv_count`` and ``movie_inv_count``);
``epoch_ratings`` the epoch's shuffled, padded ``user``/``movie``/``rating`` columns as (steps, batch) arrays, so
a batch is one row, not a random gather; on several devices each device holds only its columns of every row (its
share of every batch), see :meth:`embedrec.train.Run.batches`. A whole block of steps runs in one ``lax.scan``,
so Python is touched once per block; steps past the end of the epoch (padding) change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from embedrec.config import DataShape
from embedrec.losses import LossSettings, batch_loss
from embedrec.model import EmbeddingConcat
from embedrec.sampling import maybe_seen, mix_seed, sample_negatives
from embedrec.sparse_adam import (
    SlabLayout,
    adam_rows,
    bias_corrected_lr,
    dense_adam_update,
    lazy_adam_update,
    slab_layout,
    slab_to_tables,
    tables_to_slab,
    with_zero_moments,
)

TrainState = dict[str, Any]


@dataclass(frozen=True)
class StepSettings:
    """Everything about the step that is fixed for a run."""

    batch_size: int
    steps_in_block: int
    n_train: int
    negatives: int
    watch_weight: float
    watch_loss: Literal["bce", "softmax"]
    weight_decay: float
    lazy: bool
    rowwise: bool
    sampling: str
    genre_table: bool = False  # the genre table is small: updated densely, outside the slab
    genre_width: int = 0
    row_decay: float = 0.0  # per-row prior, spread over the row's ratings (TrainConfig.row_decay)
    rating_embedding_grad: float = 1.0  # TrainConfig.rating_embedding_grad
    history_samples: int = 0  # ModelConfig.user_history: history movies per rating (0: no history input)
    rating_loss_weight: float = 1.0  # the factor on the rating MSE (config.rating_loss_weight)

    def loss_settings(self) -> LossSettings:
        return LossSettings(
            batch_size=self.batch_size,
            negatives=self.negatives,
            weight_decay=self.weight_decay,
            watch_weight=self.watch_weight,
            watch_loss=self.watch_loss,
            row_decay=self.row_decay,
            rating_embedding_grad=self.rating_embedding_grad,
            rating_loss_weight=self.rating_loss_weight,
        )


@dataclass(frozen=True)
class StepParts:
    """What a step is built from: the Head's graph, the slab layout, the data shape, settings, the Head's optimizer,
    and (on several devices) the mesh the batch is split over and the sharding of the table rows."""

    graphdef: Any
    layout: SlabLayout
    shape: DataShape
    settings: StepSettings
    tx: optax.GradientTransformation
    mesh: Any = None
    table_rows: Any = None  # the sharding that splits the slab's rows over the mesh (None: replicated)


def init_state(
    model: EmbeddingConcat, tx: optax.GradientTransformation, *, genre_table: bool, rowwise: bool = False
) -> tuple[Any, SlabLayout, TrainState]:
    """(Head graphdef, slab layout, train state) for a freshly built model.

    With ``genre_table`` the (small) genre table lives outside the slab as ``state["genre"]``, [params | mu | nu].
    """
    graphdef, head_state = nnx.split(model.head)
    tables = model.tables()
    layout = slab_layout(tables, exclude=("genre",) if genre_table else ())
    state: TrainState = {
        "head": head_state,
        "opt": zero_optimizer_state(tx, head_state),
        "slab": tables_to_slab(tables, layout, rowwise=rowwise),
        "count": jnp.zeros((), jnp.int32),
    }
    if genre_table:
        state["genre"] = with_zero_moments(tables["genre_embedding"])
    return graphdef, layout, state


def zero_optimizer_state(tx: optax.GradientTransformation, params: Any) -> Any:
    """``tx.init(params)`` for an optimizer whose initial state is all zeros (Adam's count and moments, as
    :func:`embedrec.sparse_adam.head_optimizer` makes it): the structure from ``jax.eval_shape``, the zeros from
    numpy, without the small XLA compilation per leaf shape that ``zeros_like`` costs at start-up (~0.5 s). A test
    holds it equal to ``tx.init``."""
    return jax.tree.map(lambda leaf: jnp.asarray(np.zeros(leaf.shape, leaf.dtype)), jax.eval_shape(tx.init, params))


def state_tables(state: Mapping[str, Any], layout: SlabLayout) -> dict[str, jax.Array]:
    """Every embedding table of a train state, by name."""
    tables = slab_to_tables(state["slab"], layout)
    if "genre" in state:
        tables["genre_embedding"] = state["genre"][:, : state["genre"].shape[1] // 3]
    return tables


def step_loss(
    head_state: Any,
    rows: dict[str, jax.Array],
    genre_idx: jax.Array,
    genre_w: jax.Array,
    rating: jax.Array,
    weight: jax.Array,
    neg_weight: jax.Array,
    seed: jax.Array,
    reg_coef: Mapping[str, jax.Array] | None = None,
    history_w: jax.Array | None = None,
    *,
    graphdef: Any,
    shape: DataShape,
    settings: LossSettings,
) -> tuple[jax.Array, jax.Array]:
    """:func:`embedrec.losses.batch_loss` as a function of the Head's state and the gathered rows (what the step
    differentiates). A small genre table arrives whole as ``rows["genre_table"]``: looked up here, its gradient is
    dense (and cheap)."""
    head = nnx.merge(graphdef, head_state)
    rows = dict(rows)
    if "genre_table" in rows:
        rows["genre_embedding"] = rows.pop("genre_table")[genre_idx]
    return batch_loss(
        head,
        rows,
        genre_w,
        rating,
        weight,
        neg_weight,
        seed,
        shape=shape,
        settings=settings,
        reg_coef=reg_coef,
        history_w=history_w,
    )


def _constrain(x: jax.Array, mesh: Any) -> jax.Array:
    """Split ``x`` over the devices along its first axis (a no-op on one device)."""
    if mesh is None:
        return x
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data", *([None] * (x.ndim - 1)))))


def _negatives(
    inputs: Mapping[str, jax.Array],
    users: jax.Array,
    weight: jax.Array,
    seed: jax.Array,
    *,
    settings: StepSettings,
    n_movies: int,
) -> tuple[jax.Array, jax.Array]:
    """The batch's K shared negatives and their (B, K) weights: 0 for padding and for a user's rated movies."""
    cdf = inputs["neg_cdf"] if settings.sampling == "popularity" else None
    neg = sample_negatives(jax.random.key(seed), settings.negatives, n_movies=n_movies, cdf=cdf)
    seen = maybe_seen(inputs["seen_bits"], users[:, None], neg[None, :])  # (B, K)
    return neg, weight[:, None] * (1.0 - seen.astype(jnp.float32))


def history_slots(
    inputs: Mapping[str, jax.Array], users: jax.Array, targets: jax.Array, valid: jax.Array, seed: jax.Array, h: int
) -> tuple[jax.Array, jax.Array]:
    """Each rating's user history as (B, h) movies and weights (see :mod:`embedrec.history`).

    A user with at most ``h`` training movies gets all of them; one with more gets ``h`` drawn uniformly with
    replacement (an unbiased estimate of the mean). The rated movie itself is left out (served histories never hold
    the movie being scored), and the weights are 1 / (the slots kept), 0 for padding: static shapes, one gather.
    ``inputs["history_ptr"]``/``["history_movies"]`` are :class:`embedrec.history.UserHistories`' CSR.
    """
    ptr = inputs["history_ptr"]
    start, n = ptr[users], ptr[users + 1] - ptr[users]
    slot = jnp.arange(h, dtype=jnp.int32)[None, :]
    drawn = jax.random.randint(jax.random.key(mix_seed(seed, 0x4B1D)), (users.shape[0], h), 0, 1 << 30, jnp.int32)
    few = n[:, None] <= h
    pos = jnp.where(few, slot, drawn % jnp.maximum(n, 1)[:, None])
    present = (~few | (slot < n[:, None])) & valid[:, None]
    movies = inputs["history_movies"][start[:, None] + jnp.where(present, pos, 0)]
    present = present & (movies != targets[:, None])
    kept = present.astype(jnp.float32)
    weight = kept / jnp.maximum(kept.sum(axis=1, keepdims=True), 1.0)
    return jnp.where(present, movies, 0), weight


def _reg_coef(
    inputs: Mapping[str, jax.Array], users: jax.Array, movies: jax.Array, *, settings: StepSettings
) -> dict[str, jax.Array]:
    """Each rating's L2 coefficient for its user and movie rows: ``weight_decay``, plus ``row_decay`` spread over
    the row's training ratings (``inputs["user_inv_count"]``/``["movie_inv_count"]``, 1 / count)."""
    bsz = settings.batch_size
    reg_coef = {
        "user": jnp.full((bsz,), settings.weight_decay, jnp.float32),
        "movie": jnp.full((bsz,), settings.weight_decay, jnp.float32),
    }
    if settings.row_decay > 0:
        reg_coef = {
            "user": reg_coef["user"] + settings.row_decay * inputs["user_inv_count"][users],
            "movie": reg_coef["movie"] + settings.row_decay * inputs["movie_inv_count"][movies],
        }
    return reg_coef


def _gather_rows(
    slab: jax.Array,
    layout: SlabLayout,
    lookup: Mapping[str, jax.Array],
    keep: Mapping[str, jax.Array],
    lead: Mapping[str, tuple[int, ...]],
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(slab rows at the batch's slots, each slot's update row, rows by table name) with one gather.

    A slot that takes no update (padding, a genre slot without weight) points past the end of the slab.
    """
    n_rows = layout.n_rows
    idx = jnp.concatenate([lookup[g] + off for g, off, _, _ in layout.groups])
    update_idx = jnp.concatenate([jnp.where(keep[g], lookup[g] + off, n_rows) for g, off, _, _ in layout.groups])
    gathered = slab[idx]
    rows: dict[str, jax.Array] = {}
    start = 0
    for g, _, _, members in layout.groups:
        n = lookup[g].shape[0]
        col = 0
        for name, width in members:
            rows[name] = gathered[start : start + n, col : col + width].reshape(*lead[g], width)
            col += width
        start += n
    return gathered, update_idx, rows


def _slab_gradient(
    row_grads: Mapping[str, jax.Array], layout: SlabLayout, lookup: Mapping[str, jax.Array]
) -> jax.Array:
    """The rows' gradients packed like the gathered slab rows (params block only)."""
    blocks = []
    for g, _, _, members in layout.groups:
        n = lookup[g].shape[0]
        block = jnp.concatenate([row_grads[name].reshape(n, w) for name, w in members], axis=1)
        blocks.append(jnp.pad(block, ((0, 0), (0, layout.width - block.shape[1]))))
    return jnp.concatenate(blocks, axis=0)


def train_step(
    state: TrainState,
    inputs: Mapping[str, jax.Array],
    epoch_ratings: Mapping[str, jax.Array],
    step: jax.Array,
    lr: jax.Array,
    run_seed: jax.Array,
    epoch: jax.Array,
    *,
    parts: StepParts,
) -> tuple[TrainState, jax.Array]:
    """One Adam step on batch ``step`` of the epoch; returns the new state and the batch's loss stats."""
    settings, layout = parts.settings, parts.layout
    bsz = settings.batch_size
    valid = step * bsz + jnp.arange(bsz, dtype=jnp.int32) < settings.n_train
    users, movies, rating = (
        _constrain(jax.lax.dynamic_index_in_dim(epoch_ratings[name], step, axis=0, keepdims=False), parts.mesh)
        for name in ("user", "movie", "rating")
    )
    weight = _constrain(valid.astype(jnp.float32), parts.mesh)
    step_seed = mix_seed(run_seed, epoch, step)
    live = valid.any()  # false only for the padding steps at the end of an epoch's last block
    reg_coef = _reg_coef(inputs, users, movies, settings=settings)  # the batch's own movies, not its negatives
    history_w = None
    if settings.history_samples > 0:
        history, history_w = history_slots(inputs, users, movies, valid, step_seed, settings.history_samples)
    keep_movies = valid
    neg_weight = jnp.zeros((bsz, 0), jnp.float32)
    if settings.negatives > 0:
        neg, neg_weight = _negatives(inputs, users, weight, step_seed, settings=settings, n_movies=parts.shape.n_movies)
        movies = jnp.concatenate([movies, neg])
        keep_movies = jnp.concatenate([valid, jnp.broadcast_to(live, (settings.negatives,))])
    lookup = {"user": users, "movie": movies}
    keep = {"user": valid, "movie": keep_movies}
    lead: dict[str, tuple[int, ...]] = {"user": (bsz,), "movie": (movies.shape[0],)}
    genre_idx, genre_w = inputs["genre_idx"][movies], inputs["genre_w"][movies]
    if not settings.genre_table:
        lookup["genre"] = genre_idx.reshape(-1)
        keep["genre"] = (keep_movies[:, None] & (genre_w > 0)).reshape(-1)  # weightless slots take no update
        lead["genre"] = genre_idx.shape
    if history_w is not None:
        lookup["history"] = history.reshape(-1)
        keep["history"] = (history_w > 0).reshape(-1)
        lead["history"] = history.shape
    slab = state["slab"]
    gathered, update_idx, rows = _gather_rows(slab, layout, lookup, keep, lead)
    if settings.genre_table:
        rows["genre_table"] = state["genre"][:, : settings.genre_width]
    loss = partial(step_loss, graphdef=parts.graphdef, shape=parts.shape, settings=settings.loss_settings())
    (g_head, g_rows), stats = jax.grad(loss, argnums=(0, 1), has_aux=True)(
        state["head"], rows, genre_idx, genre_w, rating, weight, neg_weight, step_seed, reg_coef, history_w
    )

    count = state["count"] + live.astype(jnp.int32)
    lr_t = bias_corrected_lr(lr, count)
    updates, opt = parts.tx.update(g_head, state["opt"], state["head"])
    dense_new = {"head": jax.tree.map(lambda p, d: p - lr * d, state["head"], updates), "opt": opt}
    if settings.genre_table:
        dense_new["genre"] = adam_rows(state["genre"], g_rows["genre_table"], lr_t, settings.genre_width)
    new_state = dict(state)
    # a padding step leaves every dense parameter and moment as it was
    new_state.update(
        jax.tree.map(lambda new, old: jnp.where(live, new, old), dense_new, {k: state[k] for k in dense_new})
    )
    grad = _slab_gradient(g_rows, layout, lookup)
    if settings.lazy:
        new_state["slab"] = lazy_adam_update(
            slab, gathered, update_idx, grad, lr_t, width=layout.width, rowwise=settings.rowwise
        )
    else:
        new_state["slab"] = dense_adam_update(slab, update_idx, grad, lr_t, width=layout.width, live=live)
    if parts.table_rows is not None:  # each device keeps (and updates) only its rows of the tables
        new_state["slab"] = jax.lax.with_sharding_constraint(new_state["slab"], parts.table_rows)
    new_state["count"] = count
    return new_state, stats


def make_train_block(parts: StepParts) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted function that runs ``parts.settings.steps_in_block`` steps in one ``lax.scan``.

    ``run_block(state, inputs, epoch_ratings, first_step, lr, run_seed, epoch) -> (state, (steps, 3) stats)``; the
    state argument is donated (its buffers are reused for the result).
    """
    step = partial(train_step, parts=parts)

    @partial(jax.jit, donate_argnums=(0,))
    def run_block(
        state: TrainState,
        inputs: Mapping[str, jax.Array],
        epoch_ratings: Mapping[str, jax.Array],
        first_step: jax.Array,
        lr: jax.Array,
        run_seed: jax.Array,
        epoch: jax.Array,
    ) -> tuple[TrainState, jax.Array]:
        def body(carry: TrainState, i: jax.Array) -> tuple[TrainState, jax.Array]:
            return step(carry, inputs, epoch_ratings, first_step + i, lr, run_seed, epoch)

        return jax.lax.scan(body, state, jnp.arange(parts.settings.steps_in_block, dtype=jnp.int32))

    return run_block
