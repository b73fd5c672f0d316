"""The training objective as pure functions of gathered rows: rating MSE, per-rating L2, and the watch loss.

Synopsis::

    from embedrec.losses import LossSettings, batch_loss
    settings = LossSettings(batch_size=B, negatives=K, weight_decay=0.0, watch_weight=1.0, watch_loss="softmax")
    loss, stats = batch_loss(head, rows, genre_w, rating, weight, neg_weight, seed, shape=shape, settings=settings)

``rows`` holds one batch's table rows, as :func:`embedrec.model.gather_rows` names them: user rows (B), movie rows
(B positives, then the K negatives the batch shares) and genre slot rows (B + K, G, d). ``weight`` (B) is 1 for a
real rating and 0 for padding; ``neg_weight`` (B, K) is 0 where a negative is one of the user's rated movies.
``stats`` is [sum of squared errors, number of ratings, sum of watch losses], summed over a block by the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from embedrec.config import DataShape
from embedrec.model import TABLE_GROUPS, Head, item_vectors, rating_from_rows, watch_logits_against, with_history

EMBEDDINGS = ("user_embedding", "movie_embedding", "genre_embedding")  # the tables both outputs share
GROUP_OF = {name: group for group, names in TABLE_GROUPS.items() for name in names}


@dataclass(frozen=True)
class LossSettings:
    """The objective's fixed settings (hashable, so a jitted step may close over them)."""

    batch_size: int
    negatives: int
    weight_decay: float
    watch_weight: float
    watch_loss: Literal["bce", "softmax"]
    row_decay: float = 0.0  # per-row prior, spread over the row's ratings (TrainConfig.row_decay)
    rating_embedding_grad: float = 1.0  # TrainConfig.rating_embedding_grad
    rating_loss_weight: float = 1.0  # the factor on the rating MSE (config.rating_loss_weight)


def squared_error_sum(pred: jax.Array, rating: jax.Array, weight: jax.Array) -> jax.Array:
    return jnp.sum(weight * (pred - rating) ** 2)


def l2_sum(pos_rows: Mapping[str, jax.Array], weight: jax.Array, genre_w: jax.Array) -> jax.Array:
    """Squared norms of each rating's rows, as in regularised matrix factorisation; genre slots weighted by their
    pooling weight. Sampled negatives are not penalised."""
    reg: jax.Array | float = 0.0
    for r in pos_rows.values():
        if r.ndim == 3:
            reg = reg + jnp.sum(weight[:, None] * jnp.sum(r * r, axis=-1) * genre_w)
        else:
            reg = reg + jnp.sum(weight * jnp.sum(r * r, axis=-1))
    return jnp.asarray(reg)


def decay_sum(
    pos_rows: Mapping[str, jax.Array],
    weight: jax.Array,
    genre_w: jax.Array,
    *,
    reg_coef: Mapping[str, jax.Array],
    weight_decay: float,
) -> jax.Array:
    """The L2 penalty of each rating's rows, each scaled by its own coefficient: ``reg_coef`` holds one per rating
    and table group (``weight_decay + row_decay / n_ratings(row)``, see :class:`embedrec.config.TrainConfig`);
    genre slots take ``weight_decay`` weighted by their pooling weight. Sampled negatives are not penalised."""
    reg: jax.Array | float = 0.0
    for name, r in pos_rows.items():
        if r.ndim == 3:  # genre slots: weight each slot by its pooling weight
            reg = reg + weight_decay * jnp.sum(weight[:, None] * jnp.sum(r * r, axis=-1) * genre_w)
        else:
            reg = reg + jnp.sum(weight * reg_coef[GROUP_OF[name]] * jnp.sum(r * r, axis=-1))
    return jnp.asarray(reg)


def with_scaled_embedding_grad(pos_rows: Mapping[str, jax.Array], factor: float) -> dict[str, jax.Array]:
    """The same rows, whose shared embeddings pass only ``factor`` of their gradient back (the forward values are
    unchanged): ``factor * r + (1 - factor) * stop_gradient(r)``. Biases keep their full gradient."""
    return {
        name: (factor * r + (1.0 - factor) * jax.lax.stop_gradient(r) if name in EMBEDDINGS else r)
        for name, r in pos_rows.items()
    }


def watch_loss_sum(
    users: jax.Array,
    items: jax.Array,
    watch_bias: jax.Array,
    weight: jax.Array,
    neg_weight: jax.Array,
    *,
    kind: Literal["bce", "softmax"],
) -> jax.Array:
    """The watch loss of B positives against K shared negatives; ``items``/``watch_bias`` hold B + K movies.

    ``softmax``: sampled softmax of each positive against the negatives (its own rated movies masked out).
    ``bce``: logistic loss, positives towards 1 and negatives towards 0, the negatives' mean per positive.
    """
    bsz = users.shape[0]
    k_neg = items.shape[0] - bsz
    pos_logit = jnp.sum(users * items[:bsz], axis=-1) + watch_bias[:bsz]
    neg_logit = watch_logits_against(users, items[bsz:], watch_bias[bsz:])  # (B, K)
    if kind == "softmax":
        neg = jnp.where(neg_weight > 0, neg_logit, -1e9)
        lse = jax.nn.logsumexp(jnp.concatenate([pos_logit[:, None], neg], axis=1), axis=1)
        return jnp.sum(weight * (lse - pos_logit))
    return jnp.sum(weight * jax.nn.softplus(-pos_logit)) + jnp.sum(neg_weight * jax.nn.softplus(neg_logit)) / k_neg


def batch_loss(
    head: Head,
    rows: Mapping[str, jax.Array],
    genre_w: jax.Array,
    rating: jax.Array,
    weight: jax.Array,
    neg_weight: jax.Array,
    dropout_seed: jax.Array,
    *,
    shape: DataShape,
    settings: LossSettings,
    reg_coef: Mapping[str, jax.Array] | None = None,
    history_w: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(mean loss per rating, stats): rating loss weight * MSE + L2 + watch weight * watch loss, all per rating
    (the stats keep the plain squared-error sum: the reported train MSE is on the data's scale).

    The L2 coefficient of each rating's user and movie rows is ``reg_coef[group]`` (B,) when given (the step adds
    ``row_decay / n_ratings`` there), else ``weight_decay``. Below ``rating_embedding_grad`` 1 the MSE's gradient
    reaches the shared embeddings scaled by that factor; the watch loss and the L2 keep their full gradient.

    With a user history (``rows["history_embedding"]`` (B, H, d) and ``history_w`` (B, H)) both outputs see the
    user as :func:`embedrec.model.with_history`; the L2 takes the user's own row and each history row weighted by
    its share of the mean, as it takes genre slots.
    """
    bsz = settings.batch_size
    rows = dict(rows)
    history_reg = None
    if "history_embedding" in rows:
        assert history_w is not None
        hist = rows.pop("history_embedding")
        if settings.weight_decay > 0:
            history_reg = settings.weight_decay * jnp.sum(weight[:, None] * jnp.sum(hist * hist, axis=-1) * history_w)
        own_rows = rows
        rows = {**rows, "user_embedding": with_history(rows["user_embedding"], hist, history_w)}
    else:
        own_rows = rows
    pos_rows = {name: (r[:bsz] if r.shape[0] > bsz else r) for name, r in rows.items()}
    own_pos_rows = pos_rows  # without a history the same slices, so the gradient is summed as before it existed
    if own_rows is not rows:
        own_pos_rows = {name: (r[:bsz] if r.shape[0] > bsz else r) for name, r in own_rows.items()}
    rating_rows = pos_rows
    if settings.rating_embedding_grad < 1.0:
        rating_rows = with_scaled_embedding_grad(pos_rows, settings.rating_embedding_grad)
    pred = rating_from_rows(head, rating_rows, genre_w[:bsz], cfg=None, shape=shape, dropout_seed=dropout_seed)
    n_valid = jnp.maximum(weight.sum(), 1.0)
    sq_sum = squared_error_sum(pred, rating, weight)
    loss = sq_sum / n_valid
    if settings.rating_loss_weight != 1.0:  # weighed as on a 1..5 scale (exactly 1 there: the same program)
        loss = loss * settings.rating_loss_weight
    if settings.weight_decay > 0 or settings.row_decay > 0:
        if reg_coef is None:
            reg_coef = {group: jnp.full((bsz,), settings.weight_decay, jnp.float32) for group in ("user", "movie")}
        decay = decay_sum(own_pos_rows, weight, genre_w[:bsz], reg_coef=reg_coef, weight_decay=settings.weight_decay)
        if history_reg is not None:
            decay = decay + history_reg
        loss = loss + decay / n_valid
    watch_sum = jnp.float32(0.0)
    if settings.negatives > 0:
        items = item_vectors(rows["movie_embedding"], rows["genre_embedding"], genre_w)
        watch_sum = watch_loss_sum(
            rows["user_embedding"], items, rows["watch_bias"][..., 0], weight, neg_weight, kind=settings.watch_loss
        )
        loss = loss + settings.watch_weight * watch_sum / n_valid
    return loss, jnp.stack([sq_sum, weight.sum(), watch_sum])
