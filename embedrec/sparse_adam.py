"""Row-sparse ("lazy") Adam for the embedding tables, packed into one slab, and the dense Adam of the Head.

Synopsis::

    layout = slab_layout(model.tables())
    slab = tables_to_slab(model.tables(), layout)          # (rows, 3 * width): [params | mu | nu] per row
    lr_t = bias_corrected_lr(lr, step_count)
    slab = lazy_adam_update(slab, row_idx, grad_rows, lr_t, width=layout.width)

Only the rows in a batch get their moments and weights updated, instead of a dense update of all ~2.4M table
entries every step. Bias correction uses the global step, as in TensorFlow's LazyAdam. With every row in every
batch it is plain Adam (``tests/test_sparse_adam.py`` checks it against ``optax.adam``). All user, movie and genre
tables share one packed slab (:class:`SlabLayout`), so a step does one gather, one de-duplication and one scatter:
on a CPU the number of operations per step, not their size, is what costs at batch 1024.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedrec.model import TABLE_GROUPS

B1, B2, EPS = 0.9, 0.999, 1e-7  # Keras' Adam defaults, as the original used


def head_optimizer() -> optax.GradientTransformation:
    """Adam's moment estimates for the dense layers (the learning rate is applied in the step, per epoch)."""
    return optax.scale_by_adam(b1=B1, b2=B2, eps=EPS)


def bias_corrected_lr(lr: jax.Array, count: jax.Array) -> jax.Array:
    """Adam's step size after ``count`` updates: ``lr * sqrt(1 - b2^t) / (1 - b1^t)``, t at least 1."""
    t = jnp.maximum(count, 1).astype(jnp.float32)
    return lr * jnp.sqrt(1 - B2**t) / (1 - B1**t)


def adam_rows(packed: jax.Array, grad: jax.Array, lr_t: jax.Array, width: int, *, rowwise: bool = False) -> jax.Array:
    """Adam on [params | mu | nu] rows. ``rowwise`` keeps one second moment per row (the mean of the squared
    gradient over the row), as row-wise Adagrad does for embeddings: a third fewer bytes to move per row."""
    p, m, v = packed[:, :width], packed[:, width : 2 * width], packed[:, 2 * width :]
    m = B1 * m + (1 - B1) * grad
    sq = grad * grad
    v = B2 * v + (1 - B2) * (jnp.mean(sq, axis=1, keepdims=True) if rowwise else sq)
    p = p - lr_t * m / (jnp.sqrt(v) + EPS)
    return jnp.concatenate([p, m, v], axis=1)


def with_zero_moments(params: jax.Array) -> jax.Array:
    """[params | mu | nu] rows for a fresh table (built on the host: an exact copy, and no XLA compilation per table
    shape, as eager ``jnp`` concatenation costs)."""
    host = np.asarray(params)
    out = np.zeros((host.shape[0], 3 * host.shape[1]), host.dtype)
    out[:, : host.shape[1]] = host
    return jnp.asarray(out)


def dedup_slots(idx: jax.Array, n_rows: int) -> tuple[jax.Array, jax.Array]:
    """For each slot, the slot that represents its row (all duplicates share one), and which slots lead.

    Sort-free: every slot writes its position into a row-sized scratch array and reads back the winner, so all
    duplicates of a row agree on one representative. Slots with index >= n_rows are ignored.
    """
    n = idx.shape[0]
    slot = jnp.arange(n, dtype=jnp.int32)
    owner = jnp.zeros((n_rows,), jnp.int32).at[idx].set(slot, mode="drop")
    valid = idx < n_rows
    rep = jnp.where(valid, owner.at[idx].get(mode="fill", fill_value=0), slot)
    return rep, valid & (rep == slot)


def lazy_adam_update(
    slab: jax.Array,
    gathered: jax.Array,
    update_idx: jax.Array,
    grad: jax.Array,
    lr_t: jax.Array,
    *,
    width: int,
    rowwise: bool = False,
) -> jax.Array:
    """Adam on the slab rows a batch touched; ``gathered`` is ``slab`` at the batch's slots.

    ``update_idx`` names each slot's slab row, or a row past the end for a slot that takes no update (padding);
    duplicates are summed into one update, as a dense gradient would sum them.
    """
    n_rows = slab.shape[0]
    rep, lead_slot = dedup_slots(update_idx, n_rows)
    grad = jax.ops.segment_sum(grad, rep, num_segments=update_idx.shape[0])
    new_rows = adam_rows(gathered, grad, lr_t, width, rowwise=rowwise)
    # every target is distinct (non-leading slots point to distinct rows past the end, then dropped), so XLA may
    # write them in parallel
    target = jnp.where(lead_slot, update_idx, n_rows + jnp.arange(update_idx.shape[0], dtype=update_idx.dtype))
    return slab.at[target].set(new_rows, mode="drop", unique_indices=True)


def dense_adam_update(
    slab: jax.Array, update_idx: jax.Array, grad: jax.Array, lr_t: jax.Array, *, width: int, live: jax.Array
) -> jax.Array:
    """Adam on every slab row (the Keras/Optax behaviour): rows outside the batch see a zero gradient."""
    n_rows = slab.shape[0]
    dense_grad = jnp.zeros((n_rows, width), jnp.float32).at[update_idx].add(grad, mode="drop")
    return jnp.where(live, adam_rows(slab, dense_grad, lr_t, width), slab)


@dataclass(frozen=True)
class SlabLayout:
    """How every embedding table lives in one packed array during training.

    All tables share a single (rows, 3 * width) slab: user rows first, then movie rows, then genre rows, each row
    holding [params | Adam mu | Adam nu]; tables of one index group sit side by side in the params block (e.g. a
    movie's embedding, bias and watch bias), and narrower groups are zero-padded to the widest.
    """

    groups: tuple[tuple[str, int, int, tuple[tuple[str, int], ...]], ...]  # (group, row offset, n_rows, members)
    width: int
    n_rows: int

    def offset(self, group: str) -> int:
        return next(off for g, off, _, _ in self.groups if g == group)


def slab_layout(tables: Mapping[str, jax.Array], *, exclude: tuple[str, ...] = ()) -> SlabLayout:
    """The layout of ``tables`` (by :data:`embedrec.model.TABLE_GROUPS`), leaving out the ``exclude`` groups."""
    groups = []
    offset = 0
    width = 0
    for group, names in TABLE_GROUPS.items():
        members = tuple((n, int(np.prod(tables[n].shape[1:]))) for n in names if n in tables)
        if not members or group in exclude:
            continue
        n_rows = int(tables[members[0][0]].shape[0])
        groups.append((group, offset, n_rows, members))
        offset += n_rows
        width = max(width, sum(w for _, w in members))
    return SlabLayout(groups=tuple(groups), width=width, n_rows=offset)


def tables_to_slab(tables: Mapping[str, jax.Array], layout: SlabLayout, *, rowwise: bool = False) -> jax.Array:
    """Pack the tables with zeroed moments: [params | mu | nu], nu one column per row with ``rowwise``.

    Copied into one host array and put on the device once: the same values as ``jnp`` concatenation and padding,
    without the ~10 small XLA compilations (one per shape) those cost at start-up."""
    dtype = np.result_type(*(np.asarray(tables[n]).dtype for _, _, _, members in layout.groups for n, _ in members))
    width = layout.width
    slab = np.zeros((layout.n_rows, 2 * width + (1 if rowwise else width)), dtype)
    for _, offset, n_rows, members in layout.groups:
        col = 0
        for name, w in members:
            slab[offset : offset + n_rows, col : col + w] = np.reshape(np.asarray(tables[name]), (n_rows, w))
            col += w
    return jnp.asarray(slab)


def slab_to_tables(slab: jax.Array, layout: SlabLayout) -> dict[str, jax.Array]:
    """The tables' current parameters, by name (views into the slab's params block)."""
    tables = {}
    for _, offset, n_rows, members in layout.groups:
        col = 0
        for name, width in members:
            tables[name] = slab[offset : offset + n_rows, col : col + width]
            col += width
    return tables
