"""The embedding-concat network (Flax NNX): indices in, ratings (and watch logits) out. No optimiser, no disk.

Synopsis::

    from flax import nnx
    from embedrec.config import DataShape, preset
    from embedrec.model import EmbeddingConcat
    model_cfg, _ = preset("seed")
    shape = DataShape(n_users=20_510, n_movies=25_448, n_genres=1_357, rating_min=0.5, rating_max=5.0)
    model = EmbeddingConcat(model_cfg, shape, rngs=nnx.Rngs(0))
    model.n_params()   # 2_376_075, the original's count

The network: user, movie and genre embeddings are concatenated, then Dropout, Dense+ReLU (per ``hidden``), Dropout
after each, and a final Dense 1 whose sigmoid is scaled to the rating range. Optional user/movie bias terms are added
to the final logit. Genres come as a (B, G) index matrix with (B, G) weights: the original's whole genre string is
G = 1 with weight 1; the "bag" mode averages the movie's single genres.

The embedding tables are :class:`EmbeddingTable` variables kept outside the dense :class:`Head`, so a training step
can gather the rows of a batch, differentiate with respect to those rows only, and update the tables row-sparsely.
Every forward path is a pure function of (head, rows), so the training step, the evaluation code and the numpy fast
path in ``scoring`` all compute the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from embedrec.config import DataShape, ModelConfig

if TYPE_CHECKING:
    from embedrec.data.store import PreparedData

# Which tables are indexed by which id: the training step gathers and updates each group with one index array.
TABLE_GROUPS: dict[str, tuple[str, ...]] = {
    "user": ("user_embedding", "user_bias"),
    "movie": ("movie_embedding", "movie_bias", "watch_bias"),
    "genre": ("genre_embedding",),
    "history": ("history_embedding",),  # ModelConfig.user_history: indexed by the movies of a user's history
}


class EmbeddingTable(nnx.Param):
    """An embedding table (rows indexed by user, movie or genre). Updated row-sparsely by lazy Adam."""


@dataclass(frozen=True)
class GenreInputs:
    """Per-movie genre slots: (n_movies, G) indices into the genre table and (n_movies, G) weights; ``learned``:
    the slots are movie clusters learned from the ratings (:mod:`embedrec.movie_clusters`), not the catalogue's."""

    idx: np.ndarray
    weight: np.ndarray
    n_genres: int
    learned: bool = False

    def dense(self) -> np.ndarray:
        """(n_movies, n_genres) float64: each movie's weight on each genre row."""
        out = np.zeros((self.idx.shape[0], self.n_genres))
        np.add.at(out, (np.arange(self.idx.shape[0])[:, None], self.idx), self.weight)
        return out


def genre_inputs(prepared: PreparedData, genre_mode: str) -> GenreInputs:
    """The genre input of every movie: the whole genre string (G = 1) or the mean over its single genres."""
    if genre_mode == "string":
        idx = np.asarray(prepared.movie_genre_str_idx(), dtype=np.int32)[:, None]
        return GenreInputs(idx, np.ones_like(idx, dtype=np.float32), max(prepared.n_genre_strings, 1))
    multi_hot = np.asarray(prepared.movie_genre_multi_hot(), dtype=np.float32)
    counts = multi_hot.sum(axis=1)
    g = max(int(counts.max(initial=0)), 1)
    order = np.argsort(-multi_hot, axis=1, kind="stable")[:, :g].astype(np.int32)
    present = np.take_along_axis(multi_hot, order, axis=1) > 0
    weight = np.where(present, 1.0 / np.maximum(counts[:, None], 1.0), 0.0).astype(np.float32)
    idx = np.where(present, order, 0).astype(np.int32)
    return GenreInputs(idx, weight, max(prepared.n_genres, 1))


def data_shape(prepared: PreparedData, genres: GenreInputs) -> DataShape:
    """The sizes the network is built for: table rows, rating range and genre slots per movie."""
    summary = prepared.summary
    return DataShape(
        n_users=prepared.n_users,
        n_movies=prepared.n_movies,
        n_genres=genres.n_genres,
        rating_min=float(summary["rating_min"]),
        rating_max=float(summary["rating_max"]),
        max_genres_per_movie=int(genres.idx.shape[1]),
    )


def hash_u32(x: jax.Array) -> jax.Array:
    """A fast 32-bit integer mix (lowbias32): good enough randomness for dropout masks at a few ops per element."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _computed_once(fn: Callable[[jax.Array], jax.Array], arg: jax.Array) -> jax.Array:
    """``fn(arg)``, computed into its own buffer on CPU instead of fused into each consumer.

    XLA:CPU duplicates cheap elementwise producers into every fusion that reads them, so a dropout mask used by the
    forward and the backward pass was hashed twice, and once per 16-bit draw instead of once per 32-bit word (the
    hash was 24% of a seed-preset step at batch 8192). A conditional is a computation XLA does not fuse across:
    with the same function in both branches the result is the same whatever the predicate, and it is
    materialised once. On accelerators (where a conditional may cost a host round trip) it is a plain call.
    """
    if jax.default_backend() != "cpu":
        return fn(arg)
    return jax.lax.cond((arg & 1) == 0, fn, fn, arg)


def dropout(x: jax.Array, rate: float, seed: jax.Array | None, salt: int) -> jax.Array:
    """Inverted dropout with a counter-based hash mask; identity when ``seed`` is None or ``rate`` is 0.

    Threefry bits cost a large share of the backward pass for a network this small; one integer hash gives two
    16-bit draws, several times cheaper, and deterministic for a given (seed, salt, position). The rate is applied
    at 1/65536 resolution. On CPU the mask is computed once per call and read by both the forward and the backward
    pass (:func:`_computed_once`); elsewhere the compiler decides.
    """
    if seed is None or rate <= 0.0:
        return x
    n = x.size
    half = (n + 1) // 2
    threshold = min(int(round(rate * 65536)), 65535)
    mixed_seed = hash_u32(seed.astype(jnp.uint32) ^ jnp.uint32((salt * 0x9E3779B1) & 0xFFFFFFFF))

    def keep_mask(s: jax.Array) -> jax.Array:
        words = hash_u32(jax.lax.iota(jnp.uint32, half) ^ s)
        # each 32-bit word gives two 16-bit draws
        draws = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n].reshape(x.shape)
        return draws >= jnp.uint16(threshold)

    keep = _computed_once(keep_mask, mixed_seed)
    return jnp.where(keep, x * (65536.0 / (65536 - threshold)), jnp.zeros_like(x))


@partial(jax.jit, static_argnums=1)
def _uniform_prefix(key: jax.Array, size: int) -> jax.Array:
    """``jax.random.uniform(key, (size,), float32, -1)``, the draw glorot_uniform makes."""
    return jax.random.uniform(key, (size,), jnp.float32, -1)


@partial(jax.jit, static_argnums=1)
def _normal_prefix(key: jax.Array, size: int) -> jax.Array:
    """``jax.random.normal(key, (size,), float32)``."""
    return jax.random.normal(key, (size,), jnp.float32)


def _normal_draws(keys: tuple[jax.Array, ...], rows: tuple[int, ...], width: int) -> list[np.ndarray]:
    """``jax.random.normal(key, (n, width), float32)`` for each key and row count, from one compiled program.

    With JAX's partitionable Threefry (its default) a draw is the first ``n * width`` values of a longer flat draw
    with the same key (as for :class:`_DenseInit`'s kernels), so every table is cut from a draw of the largest
    table's size: one small compilation (~0.35 s) instead of a program holding one draw per table shape (~1.5 s to
    compile: at full MovieLens scale the draws run faster than that). The same values (a test compares)."""
    if not bool(getattr(jax.config, "jax_threefry_partitionable", False)):
        return [np.asarray(jax.random.normal(key, (n, width), jnp.float32)) for key, n in zip(keys, rows)]
    size = max(rows) * width
    return [np.asarray(_normal_prefix(key, size))[: n * width].reshape(n, width) for key, n in zip(keys, rows)]


class _DenseInit:
    """Glorot-uniform kernels and zero biases for the Dense layers of one head: bit for bit what
    ``nnx.initializers.glorot_uniform()`` and nnx's zeros give for the same keys (tests compare), with one XLA
    compilation for the whole head instead of ~20 (a uniform draw per kernel shape, its scaling, each bias's zeros):
    ~2 s of a cold start, most of the model's initialisation.

    With JAX's partitionable Threefry (its default), the draw for a shape is the first ``prod(shape)`` values of a
    longer flat draw with the same key, so every kernel is cut from one compiled draw of the head's largest size;
    the scaling by ``sqrt(3 * variance)`` is the same float32 arithmetic in numpy. Without it, the stock initialisers.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.fast = bool(getattr(jax.config, "jax_threefry_partitionable", False))

    def kernel(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        if not self.fast or len(shape) != 2 or np.dtype(dtype) != np.float32 or math.prod(shape) > self.size:
            return nnx.initializers.glorot_uniform()(key, shape, dtype)
        fan_in, fan_out = shape
        variance = np.float32(1.0 / ((fan_in + fan_out) / 2))  # jnp.array(scale / denominator, float32)
        draw = np.asarray(_uniform_prefix(key, self.size))[: math.prod(shape)].reshape(shape)
        return jnp.asarray(draw * np.sqrt(np.float32(3) * variance))

    def bias(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jnp.asarray(np.zeros(shape, dtype))


class Head(nnx.Module):
    """The dense part: Dropout, [Dense + ReLU, Dropout] per hidden size, Dense 1 (the rating logit)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], dropout_rate: float, *, rngs: nnx.Rngs) -> None:
        sizes = (in_features, *hidden, 1)
        init = _DenseInit(max(a * b for a, b in zip(sizes[:-1], sizes[1:])))
        dense = [
            nnx.Linear(a, b, kernel_init=init.kernel, bias_init=init.bias, rngs=rngs)
            for a, b in zip(sizes[:-1], sizes[1:])
        ]
        self.layers = nnx.List(dense[:-1])
        self.out = dense[-1]
        self.dropout_rate = dropout_rate

    def __call__(self, x: jax.Array, *, dropout_seed: jax.Array | None = None) -> jax.Array:
        x = dropout(x, self.dropout_rate, dropout_seed, salt=0)
        for i, layer in enumerate(self.layers):
            x = jax.nn.relu(layer(x))
            x = dropout(x, self.dropout_rate, dropout_seed, salt=i + 1)
        return self.out(x)[..., 0]


class EmbeddingConcat(nnx.Module):
    """User, movie and genre embeddings, concatenated, through :class:`Head`; sigmoid scaled to the rating range."""

    def __init__(self, cfg: ModelConfig, shape: DataShape, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self.shape = shape
        d = cfg.embedding_dim
        keys = tuple(rngs.params() for _ in range(3))  # user, movie, genre: the order nnx.Rngs hands them out
        sizes = (shape.n_users, shape.n_movies, shape.n_genres)
        if cfg.init == "keras":  # Keras' Embedding default, as in the original
            user, movie, genre = (jax.random.uniform(k, (n, d), jnp.float32, -0.05, 0.05) for k, n in zip(keys, sizes))
        else:  # small normal rows, so the watch dot product starts near zero whatever d is
            # the scale and the product in numpy: the same float32 operations as eager jnp, without an XLA
            # compilation per table shape at start-up (the normals themselves must come from jax.random)
            scale = np.float32(0.1) / np.sqrt(np.float32(d / 16.0))
            user, movie, genre = (jnp.asarray(x * scale) for x in _normal_draws(keys, sizes, d))

        def zeros(n: int) -> jax.Array:
            return jnp.asarray(np.zeros((n, 1), np.float32))

        self.user_embedding = EmbeddingTable(user)
        self.movie_embedding = EmbeddingTable(movie)
        self.genre_embedding = EmbeddingTable(genre)
        if cfg.biases:
            self.user_bias = EmbeddingTable(zeros(shape.n_users))
            self.movie_bias = EmbeddingTable(zeros(shape.n_movies))
        if cfg.watch_head:
            self.watch_bias = EmbeddingTable(zeros(shape.n_movies))
        if cfg.user_history:  # zeros: training starts from the network without the history input
            self.history_embedding = EmbeddingTable(jnp.asarray(np.zeros((shape.n_movies, d), np.float32)))
        self.head = Head(3 * d, cfg.hidden, cfg.dropout, rngs=rngs)

    # -- tables -------------------------------------------------------------------------------------------------
    def tables(self) -> dict[str, jax.Array]:
        """The embedding tables as plain arrays, keyed by attribute name."""
        return {
            name: getattr(self, name)[...] for group in TABLE_GROUPS.values() for name in group if hasattr(self, name)
        }

    def set_tables(self, tables: Mapping[str, jax.Array]) -> None:
        for name, value in tables.items():
            getattr(self, name).set_value(value)

    def n_params(self) -> int:
        """Trainable parameter count (tables + dense layers)."""
        return int(sum(x.size for x in jax.tree.leaves(nnx.state(self, nnx.Param))))

    def summary(self) -> list[tuple[str, str, int]]:
        """Keras-style rows (layer, output shape, parameters), as the original printed."""
        d = self.cfg.embedding_dim
        g = (
            "genre_input (B, 1)"
            if self.cfg.genre_mode == "string"
            else f"genre_input (B, {self.shape.max_genres_per_movie})"
        )
        if self.cfg.movie_clusters:
            genre_layer = f"genre_embedding ({self.cfg.movie_clusters} movie clusters)"
        else:
            genre_layer = "genre_embedding " + ("(Embedding)" if self.cfg.genre_mode == "string" else "(mean bag)")
        rows: list[tuple[str, str, int]] = [
            ("user_input (InputLayer)", "(None, 1)", 0),
            ("movie_input (InputLayer)", "(None, 1)", 0),
            (
                g.split(" ")[0] + " (InputLayer)",
                "(None, 1)" if self.cfg.genre_mode == "string" else f"(None, {self.shape.max_genres_per_movie})",
                0,
            ),
            ("user_embedding (Embedding)", f"(None, 1, {d})", self.shape.n_users * d),
            ("movie_embedding (Embedding)", f"(None, 1, {d})", self.shape.n_movies * d),
            (genre_layer, f"(None, 1, {d})", self.shape.n_genres * d),
            ("concatenate (Concatenate)", f"(None, {3 * d})", 0),
            ("dropout (Dropout)", f"(None, {3 * d})", 0),
        ]
        for i, layer in enumerate(self.head.layers):
            suffix = "" if i == 0 else f"_{i}"
            rows.append(
                (
                    f"dense{suffix} (Dense)",
                    f"(None, {layer.out_features})",
                    layer.in_features * layer.out_features + layer.out_features,
                )
            )
            rows.append((f"dropout_{i + 1} (Dropout)", f"(None, {layer.out_features})", 0))
        out = self.head.out
        rows.append((f"dense_{len(self.head.layers)} (Dense)", "(None, 1)", out.in_features + 1))
        if self.cfg.biases:
            rows.append(("user_bias (Embedding)", "(None, 1)", self.shape.n_users))
            rows.append(("movie_bias (Embedding)", "(None, 1)", self.shape.n_movies))
        if self.cfg.watch_head:
            rows.append(("watch_bias (Embedding)", "(None, 1)", self.shape.n_movies))
            rows.append(("watch (Dot)", "(None, 1)", 0))
        if self.cfg.user_history:
            rows.append(("history_embedding (mean of the user's movies)", f"(None, {d})", self.shape.n_movies * d))
        return rows

    # -- forward ------------------------------------------------------------------------------------------------
    def __call__(
        self,
        user_idx: jax.Array,
        movie_idx: jax.Array,
        genre_idx: jax.Array,
        genre_w: jax.Array,
        history_idx: jax.Array | None = None,
        history_w: jax.Array | None = None,
    ) -> jax.Array:
        """Predicted ratings (deterministic: no dropout). With ``user_history``, ``history_idx``/``history_w``
        (B, H) are each user's history movies and their weights (1/n over the user's n movies, 0 for padding)."""
        rows = self._rows(user_idx, movie_idx, genre_idx, history_idx, history_w)
        return rating_from_rows(self.head, rows, genre_w, cfg=self.cfg, shape=self.shape)

    def watch_logit(
        self,
        user_idx: jax.Array,
        movie_idx: jax.Array,
        genre_idx: jax.Array,
        genre_w: jax.Array,
        history_idx: jax.Array | None = None,
        history_w: jax.Array | None = None,
    ) -> jax.Array:
        """Logit of "the user watches (rates) this movie"; needs ``watch_head``."""
        rows = self._rows(user_idx, movie_idx, genre_idx, history_idx, history_w)
        return watch_logit_from_rows(rows, genre_w)

    def _rows(
        self,
        user_idx: jax.Array,
        movie_idx: jax.Array,
        genre_idx: jax.Array,
        history_idx: jax.Array | None,
        history_w: jax.Array | None,
    ) -> dict[str, jax.Array]:
        tables = self.tables()
        rows = gather_rows(tables, user_idx, movie_idx, genre_idx)
        if self.cfg.user_history:
            if history_idx is None or history_w is None:
                raise ValueError("a model with user_history needs history_idx and history_w")
            rows["user_embedding"] = with_history(
                rows["user_embedding"], tables["history_embedding"][history_idx], history_w
            )
        return rows


def gather_rows(
    tables: Mapping[str, jax.Array], user_idx: jax.Array, movie_idx: jax.Array, genre_idx: jax.Array
) -> dict[str, jax.Array]:
    """Look up every table's rows for a batch: {table name: rows}, genre rows shaped (B, G, d). The history
    table is not gathered here: its rows are indexed by each user's history (:func:`with_history`)."""
    index = {"user": user_idx, "movie": movie_idx, "genre": genre_idx}
    return {
        name: tables[name][index[group]]
        for group, names in TABLE_GROUPS.items()
        if group in index
        for name in names
        if name in tables
    }


def with_history(user_rows: jax.Array, history_rows: jax.Array, history_w: jax.Array) -> jax.Array:
    """The user vector both outputs see: the user's own row plus the weighted sum of their history rows,
    (B, d) + (B, H, d) . (B, H) -> (B, d). See :mod:`embedrec.history`."""
    return user_rows + jnp.einsum("bhd,bh->bd", history_rows, history_w)


def pool_genres(genre_rows: jax.Array, genre_w: jax.Array) -> jax.Array:
    """Weighted sum over a movie's genre slots: (B, G, d), (B, G) -> (B, d)."""
    return jnp.einsum("bgd,bg->bd", genre_rows, genre_w)


def item_vectors(movie_rows: jax.Array, genre_rows: jax.Array, genre_w: jax.Array) -> jax.Array:
    """A movie as the watch output sees it: its embedding plus its pooled genres, (B, d)."""
    return movie_rows + pool_genres(genre_rows, genre_w)


def rating_logit_from_rows(
    head: Head, rows: Mapping[str, jax.Array], genre_w: jax.Array, *, dropout_seed: jax.Array | None = None
) -> jax.Array:
    """The rating logit of each (user, movie) row pair: concat, :class:`Head`, plus the optional biases."""
    g = pool_genres(rows["genre_embedding"], genre_w)
    x = jnp.concatenate([rows["user_embedding"], rows["movie_embedding"], g], axis=-1)
    logit = head(x, dropout_seed=dropout_seed)
    if "user_bias" in rows:
        logit = logit + rows["user_bias"][..., 0] + rows["movie_bias"][..., 0]
    return logit


def scale_rating(logit: jax.Array, shape: DataShape) -> jax.Array:
    """The sigmoid of the logit stretched over the data's rating range."""
    return shape.rating_min + (shape.rating_max - shape.rating_min) * jax.nn.sigmoid(logit)


def rating_from_rows(
    head: Head,
    rows: Mapping[str, jax.Array],
    genre_w: jax.Array,
    *,
    cfg: ModelConfig | None = None,
    shape: DataShape,
    dropout_seed: jax.Array | None = None,
) -> jax.Array:
    """Predicted ratings from gathered rows (``cfg`` is accepted for callers that pass it; the rows say it all)."""
    del cfg
    return scale_rating(rating_logit_from_rows(head, rows, genre_w, dropout_seed=dropout_seed), shape)


def watch_logit_from_rows(rows: Mapping[str, jax.Array], genre_w: jax.Array) -> jax.Array:
    """The watch output: user . (movie + genres) + movie watch bias. Cheap, so many sampled negatives stay cheap."""
    item = item_vectors(rows["movie_embedding"], rows["genre_embedding"], genre_w)
    return jnp.sum(rows["user_embedding"] * item, axis=-1) + rows["watch_bias"][..., 0]


def watch_logits_against(users: jax.Array, items: jax.Array, watch_bias: jax.Array) -> jax.Array:
    """The watch logit of every user against every item: (B, d), (K, d), (K,) -> (B, K), one matmul."""
    return users @ items.T + watch_bias[None, :]


def rating_logits_for_all_movies(
    head: Head,
    user_rows: jax.Array,
    movie_table: jax.Array,
    pooled_genres: jax.Array,
    *,
    user_bias: jax.Array | None = None,
    movie_bias: jax.Array | None = None,
) -> jax.Array:
    """The rating logit of each user against every movie, (B, n_movies): :func:`rating_logit_from_rows` factored.

    The first Dense layer is split into its user, movie and genre parts, so each movie's share is computed once
    per call instead of once per (user, movie) pair. ``user_rows`` (B, d) and ``user_bias`` (B, 1) are the users'
    rows; ``movie_table``, ``pooled_genres`` and ``movie_bias`` (n_movies, 1) cover every movie.
    """
    d = user_rows.shape[1]
    first = head.layers[0]
    w1 = first.kernel[...]
    assert first.bias is not None  # the Head's layers all have biases
    movie_part = movie_table @ w1[d : 2 * d] + pooled_genres @ w1[2 * d :] + first.bias[...]
    h = jax.nn.relu((user_rows @ w1[:d])[:, None, :] + movie_part[None, :, :])
    for layer in head.layers[1:]:
        h = jax.nn.relu(layer(h))
    logit = head.out(h)[..., 0]
    if user_bias is not None and movie_bias is not None:
        logit = logit + user_bias + movie_bias[:, 0][None, :]
    return logit
