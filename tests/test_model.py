"""The network: the original's exact parameter count, shapes, dropout, and the pure forward paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from embedrec.config import TRAINING_BYTES_PER_PARAM, DataShape, ModelConfig, check_model_fits, param_count, preset
from embedrec.errors import ConfigError, SettingError
from embedrec.model import EmbeddingConcat, dropout, gather_rows, rating_from_rows

SEED_SHAPE = DataShape(n_users=20_510, n_movies=25_448, n_genres=1_357, rating_min=0.5, rating_max=5.0)


def test_seed_preset_has_the_originals_parameter_count() -> None:
    model_cfg, _ = preset("seed")
    model = EmbeddingConcat(model_cfg, SEED_SHAPE, rngs=nnx.Rngs(0))
    assert model.n_params() == 2_376_075
    rows = model.summary()
    assert sum(n for _, _, n in rows) == 2_376_075
    assert ("dense (Dense)", "(None, 64)", 150 * 64 + 64) in rows
    assert ("dense_1 (Dense)", "(None, 10)", 64 * 10 + 10) in rows
    assert ("dense_2 (Dense)", "(None, 1)", 11) in rows


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"biases": True},
        {"biases": True, "watch_head": True, "user_history": True, "hidden": (32,), "embedding_dim": 8},
        {"watch_head": True, "hidden": (16, 8, 4), "embedding_dim": 3},
    ],
)
def test_param_count_without_building_equals_the_built_networks(changes: dict) -> None:
    """The size check before training counts what the network will hold, exactly."""
    cfg = preset("seed")[0].replace(**changes)
    shape = DataShape(n_users=37, n_movies=53, n_genres=7, rating_min=1.0, rating_max=5.0)
    assert param_count(cfg, shape) == EmbeddingConcat(cfg, shape, rngs=nnx.Rngs(0)).n_params()


def test_a_model_too_large_for_the_memory_is_refused_naming_the_setting_that_makes_it_large() -> None:
    cfg = preset("default")[0]
    n = param_count(cfg, SEED_SHAPE)
    check_model_fits(cfg, SEED_SHAPE, n_movies_rated=25_000, memory_bytes=n * TRAINING_BYTES_PER_PARAM)  # just fits
    with pytest.raises(SettingError, match=r"^embedding_dim: 64 makes a model of [\d,]+ parameters, .* GiB to train"):
        check_model_fits(cfg, SEED_SHAPE, n_movies_rated=25_000, memory_bytes=n * TRAINING_BYTES_PER_PARAM - 1)
    wide = cfg.replace(hidden=(10**6,))
    with pytest.raises(SettingError, match=r"^hidden: 1000000 makes a model of .* choose smaller layers"):
        check_model_fits(wide, SEED_SHAPE, n_movies_rated=25_000, memory_bytes=2**30)
    with pytest.raises(SettingError, match=r"^movie_clusters: 17 is more clusters than the 16 movies"):
        check_model_fits(cfg.replace(movie_clusters=17), SEED_SHAPE, n_movies_rated=16, memory_bytes=None)


@pytest.mark.parametrize("in_features,hidden", [(150, (64, 10)), (24, (64, 10)), (384, (256, 128, 32)), (3, ())])
def test_the_heads_dense_layers_start_exactly_as_nnxs_own_initialisers_start_them(in_features: int, hidden) -> None:
    """The head draws every kernel from one compiled uniform draw (a cold start's ~2 s of compilations saved); the
    values must be those of nnx.Linear's stock glorot_uniform kernels and zero biases, key for key."""
    from embedrec.model import Head

    class StockHead(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            sizes = (in_features, *hidden)
            init = nnx.initializers.glorot_uniform()
            self.layers = nnx.List(
                [nnx.Linear(a, b, kernel_init=init, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
            )
            self.out = nnx.Linear(sizes[-1], 1, kernel_init=init, rngs=rngs)

    for seed in (0, 42):
        ours = jax.tree_util.tree_leaves_with_path(nnx.state(Head(in_features, hidden, 0.2, rngs=nnx.Rngs(seed))))
        stock = jax.tree_util.tree_leaves_with_path(nnx.state(StockHead(nnx.Rngs(seed))))
        assert [p for p, _ in ours] == [p for p, _ in stock]
        for (path, a), (_, b) in zip(ours, stock):
            assert np.asarray(a).dtype == np.asarray(b).dtype, path
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
        assert any(np.asarray(a).std() > 0 for _, a in ours)  # kernels are drawn, not zeros


def test_the_embedding_tables_start_as_one_normal_draw_per_table_would_start_them() -> None:
    """The three tables' normals are cut from one compiled draw of the largest table's size (one compilation); each
    must equal ``jax.random.normal`` of its own key and shape, scaled as before."""
    shape = DataShape(n_users=1_001, n_movies=257, n_genres=19, rating_min=0.5, rating_max=5.0)
    cfg = ModelConfig(embedding_dim=24, init="scaled")
    for seed in (0, 42):
        model = EmbeddingConcat(cfg, shape, rngs=nnx.Rngs(seed))
        rngs = nnx.Rngs(seed)
        scale = np.float32(0.1) / np.sqrt(np.float32(24 / 16.0))
        for name, n in (("user_embedding", 1_001), ("movie_embedding", 257), ("genre_embedding", 19)):
            expected = np.asarray(jax.random.normal(rngs.params(), (n, 24), jnp.float32)) * scale
            np.testing.assert_array_equal(np.asarray(getattr(model, name)[...]), expected, err_msg=name)
        assert np.asarray(model.user_embedding[...]).std() > 0.01


def test_keras_initialisation_of_the_seed_preset() -> None:
    model = EmbeddingConcat(preset("seed")[0], SEED_SHAPE, rngs=nnx.Rngs(0))
    table = np.asarray(model.user_embedding[...])
    assert table.min() >= -0.05 and table.max() <= 0.05 and table.std() > 0.02
    assert float(jnp.abs(model.head.layers[0].bias[...]).max()) == 0.0


def test_predictions_stay_inside_the_rating_range() -> None:
    shape = DataShape(n_users=5, n_movies=7, n_genres=3, rating_min=1.0, rating_max=5.0)
    model = EmbeddingConcat(ModelConfig(embedding_dim=4, hidden=(8,)), shape, rngs=nnx.Rngs(1))
    model.set_tables({"user_embedding": jnp.full((5, 4), 30.0)})  # saturate the sigmoid
    u = jnp.arange(5)
    m = jnp.arange(5)
    out = np.asarray(model(u, m, jnp.zeros((5, 1), jnp.int32), jnp.ones((5, 1))))
    assert out.shape == (5,)
    assert np.all(out >= 1.0) and np.all(out <= 5.0)


def test_bag_genres_and_watch_head_forward_paths_agree_with_the_module() -> None:
    shape = DataShape(n_users=6, n_movies=9, n_genres=4, rating_min=0.5, rating_max=5.0, max_genres_per_movie=2)
    cfg = ModelConfig(embedding_dim=8, hidden=(16, 4), genre_mode="bag", biases=True, watch_head=True, init="scaled")
    model = EmbeddingConcat(cfg, shape, rngs=nnx.Rngs(2))
    u = jnp.array([0, 1, 5])
    m = jnp.array([3, 8, 0])
    gi = jnp.array([[0, 1], [2, 0], [3, 3]])
    gw = jnp.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    rows = gather_rows(model.tables(), u, m, gi)
    assert rows["genre_embedding"].shape == (3, 2, 8)
    np.testing.assert_allclose(
        rating_from_rows(model.head, rows, gw, cfg=cfg, shape=shape), model(u, m, gi, gw), rtol=1e-6
    )
    expected = jnp.sum(
        model.user_embedding[...][u]
        * (model.movie_embedding[...][m] + jnp.einsum("bgd,bg->bd", model.genre_embedding[...][gi], gw)),
        axis=-1,
    )
    expected = expected + model.watch_bias[...][m, 0]
    np.testing.assert_allclose(model.watch_logit(u, m, gi, gw), expected, rtol=1e-5)


def test_hash_dropout_rate_scaling_and_determinism() -> None:
    x = jnp.ones((400, 250))
    a = dropout(x, 0.2, jnp.uint32(7), salt=1)
    b = dropout(x, 0.2, jnp.uint32(7), salt=1)
    c = dropout(x, 0.2, jnp.uint32(8), salt=1)
    d = dropout(x, 0.2, jnp.uint32(7), salt=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    dropped = float(jnp.mean(a == 0))
    assert abs(dropped - 0.2) < 0.01
    assert abs(float(a.mean()) - 1.0) < 0.02  # inverted dropout keeps the expectation
    np.testing.assert_array_equal(dropout(x, 0.2, None, salt=0), x)
    # masks are not correlated between neighbouring positions
    flat = np.asarray(a == 0).ravel().astype(float)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02


def test_hash_dropout_backward_uses_the_forward_mask() -> None:
    """The mask is computed once and shared: the gradient is the scale exactly where the forward pass kept x."""
    x = jnp.linspace(1.0, 2.0, 37 * 13).reshape(37, 13)  # an odd size: the last 32-bit word is half used
    seed = jnp.uint32(11)
    out = dropout(x, 0.3, seed, salt=3)
    grad = jax.grad(lambda v: jnp.sum(dropout(v, 0.3, seed, salt=3)))(x)
    kept = np.asarray(out) != 0
    scale = 65536.0 / (65536 - round(0.3 * 65536))
    np.testing.assert_allclose(np.asarray(grad), np.where(kept, scale, 0.0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out)[kept], np.asarray(x)[kept] * scale, rtol=1e-6)
    assert 0.25 < 1 - kept.mean() < 0.35
    # inside jit (where the mask is a separate computation on CPU) the mask and the gradient are the same
    np.testing.assert_array_equal(jax.jit(lambda v: dropout(v, 0.3, seed, salt=3))(x), out)
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda v: jnp.sum(dropout(v, 0.3, seed, salt=3))))(x), grad)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the mask is kept out of fusions on CPU only")
def test_compiled_step_computes_each_dropout_mask_once() -> None:
    """The training speed depends on it (README "Benchmarks": +42% at batch 8192): if a JAX/XLA upgrade folds the
    conditional away, the mask's hash is fused into the forward and the backward consumer again."""
    x = jnp.ones((512, 150))

    def loss(v: jax.Array, seed: jax.Array) -> jax.Array:  # the seed is traced, as in the training step
        h = dropout(v, 0.2, seed, salt=0)
        return jnp.sum(dropout(h * h, 0.2, seed, salt=1))

    hlo = jax.jit(jax.grad(loss)).lower(x, jnp.uint32(5)).compile().as_text()
    assert hlo.count(" conditional(") == 2, "expected one conditional per dropout mask in the compiled gradient"


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"hidden": ()}, "hidden"),
        ({"dropout": 1.0}, "dropout"),
        ({"genre_mode": "words"}, "genre_mode"),
    ],
)
def test_bad_model_settings_name_the_setting(kwargs: dict, option: str) -> None:
    with pytest.raises(SettingError, match=f"^{option}: ") as caught:
        ModelConfig(**kwargs)
    assert caught.value.setting == option


def test_jit_and_grad_through_the_module() -> None:
    shape = DataShape(n_users=4, n_movies=4, n_genres=2, rating_min=0.5, rating_max=5.0)
    model = EmbeddingConcat(preset("seed")[0], shape, rngs=nnx.Rngs(0))

    @nnx.jit
    def loss(model: EmbeddingConcat) -> jax.Array:
        pred = model(jnp.arange(4), jnp.arange(4), jnp.zeros((4, 1), jnp.int32), jnp.ones((4, 1)))
        return jnp.mean((pred - 4.0) ** 2)

    grads = nnx.grad(loss)(model)
    assert float(jnp.abs(grads.head.out.kernel[...]).sum()) > 0
