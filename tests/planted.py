"""Shared test helpers for the serving tests: a *planted* model written with numpy, and a tiny trained one.

The planted model needs no training and no JAX: random dense layers and movie vectors that are the movie's genres,
so the right answer of a fold-in is known. ``trained`` trains a tiny real model (a few seconds, most of it
compiling) to check the numpy path against the Flax network on trained weights. Test modules import the fixtures
they use (``from planted import prepared, rec``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

GENRE_DIM_EXTRA = 3


def bag_genres(prepared) -> tuple[np.ndarray, np.ndarray]:
    """The "bag" genre input (mean over single genres), as ``embedrec.train.genre_inputs`` builds it."""
    multi = prepared.movie_genre_multi_hot()
    counts = multi.sum(axis=1)
    g = max(int(counts.max(initial=0)), 1)
    order = np.argsort(-multi, axis=1, kind="stable")[:, :g].astype(np.int32)
    present = np.take_along_axis(multi, order, axis=1) > 0
    weight = np.where(present, 1.0 / np.maximum(counts[:, None], 1.0), 0.0).astype(np.float32)
    return np.where(present, order, 0).astype(np.int32), weight


def write_planted_model(
    prepared,
    out: Path,
    *,
    hidden=(16, 4),
    watch: bool = True,
    biases: bool = True,
    ranking: dict | None = None,
    seed: int = 0,
    popularity_prior: np.ndarray | None = None,
    schema_version: int | None = None,
) -> Path:
    """A model folder whose watch vectors are the movies' genres: a user's taste for a genre is one coordinate."""
    import shutil

    from embedrec.artifacts import MODEL_KIND, SCHEMA_VERSION, save_arrays, write_json
    from embedrec.config import DataShape, ModelConfig, TrainConfig, to_dict

    rng = np.random.default_rng(seed)
    n_genres = prepared.n_genres
    d = n_genres + GENRE_DIM_EXTRA
    genre_idx, genre_w = bag_genres(prepared)
    cfg = ModelConfig(
        embedding_dim=d, hidden=hidden, dropout=0.0, genre_mode="bag", biases=biases, watch_head=watch, init="scaled"
    )
    shape = DataShape(
        n_users=prepared.n_users,
        n_movies=prepared.n_movies,
        n_genres=n_genres,
        rating_min=float(prepared.summary["rating_min"]),
        rating_max=float(prepared.summary["rating_max"]),
        max_genres_per_movie=genre_idx.shape[1],
    )
    w = {
        "user_embedding": rng.normal(0, 0.5, (prepared.n_users, d)).astype(np.float32),
        "movie_embedding": rng.normal(0, 0.05, (prepared.n_movies, d)).astype(np.float32),
        "genre_embedding": np.eye(n_genres, d, dtype=np.float32) * 2.0,
        "genre_idx": genre_idx,
        "genre_w": genre_w,
    }
    sizes = (3 * d, *hidden)
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w[f"head.layers.{i}.kernel"] = rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)
        w[f"head.layers.{i}.bias"] = rng.normal(0, 0.1, b).astype(np.float32)
    w["head.out.kernel"] = rng.normal(0, 1 / np.sqrt(sizes[-1]), (sizes[-1], 1)).astype(np.float32)
    w["head.out.bias"] = np.zeros(1, np.float32)
    if biases:
        w["user_bias"] = rng.normal(0, 0.2, (prepared.n_users, 1)).astype(np.float32)
        w["movie_bias"] = rng.normal(0, 0.2, (prepared.n_movies, 1)).astype(np.float32)
    if watch:
        w["watch_bias"] = rng.normal(0, 0.1, (prepared.n_movies, 1)).astype(np.float32)
    if popularity_prior is not None:
        w["popularity_prior"] = np.asarray(popularity_prior, np.float32).reshape(-1, 1)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("users.parquet", "movies.parquet", "vocab.json"):
        shutil.copyfile(Path(prepared.path) / name, out / name)
    save_arrays(out / "weights.safetensors", w)
    meta = {
        "schema_version": schema_version or SCHEMA_VERSION,
        "kind": MODEL_KIND,
        "model": to_dict(cfg),
        "train": to_dict(TrainConfig(weight_decay=0.01)),
        "shape": to_dict(shape),
        "data": {"path": str(Path(prepared.path).resolve()), "fingerprint": prepared.fingerprint},
    }
    if ranking is not None:
        meta["ranking"] = ranking
    write_json(out / "model.json", meta)
    return out


@pytest.fixture(scope="module")
def prepared(synthetic_prepared: Path):
    from embedrec.data import load_prepared

    return load_prepared(synthetic_prepared)


@pytest.fixture(scope="module")
def planted(prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_planted_model(
        prepared, tmp_path_factory.mktemp("planted") / "model", ranking={"score": "blend", "beta": 0.3}
    )


@pytest.fixture(scope="module")
def rec(planted: Path, prepared):
    from embedrec.artifacts import load_model
    from embedrec.recommender import Recommender

    return Recommender(load_model(planted), prepared)


def train_tiny(prepared, out: Path, **model_changes) -> Path:
    """A real default-preset model, trained for 2 epochs (a few seconds, most of it compiling), saved to ``out``."""
    from embedrec import artifacts
    from embedrec.config import preset
    from embedrec.train import genre_inputs, train

    model_cfg, train_cfg = preset("default")
    model_cfg = model_cfg.replace(embedding_dim=16, hidden=(16, 8), **model_changes)
    train_cfg = train_cfg.replace(epochs=2, batch_size=512, steps_per_call=50, patience=0)
    res = train(prepared, model_cfg, train_cfg)
    gi = genre_inputs(prepared, model_cfg.genre_mode)
    artifacts.save_model(
        out,
        module=res.model,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        shape=res.shape,
        genre_idx=gi.idx,
        genre_w=gi.weight,
        prepared=prepared,
        history=res.history,
        extra_meta={"ranking": {"score": "blend", "beta": 0.5}},
    )
    return out


def history_inputs(histories, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's whole training history as the Flax model's (B, H) history input: movies and 1/n weights."""
    counts = histories.counts[users]
    width = max(int(counts.max(initial=0)), 1)
    idx = np.zeros((len(users), width), np.int32)
    w = np.zeros((len(users), width), np.float32)
    for row, u in enumerate(users):
        movies = histories.movies[histories.ptr[u] : histories.ptr[u + 1]]
        idx[row, : len(movies)] = movies
        w[row, : len(movies)] = 1.0 / max(len(movies), 1)
    return idx, w


def flax_reference(artifact, users: np.ndarray, histories=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The Flax network's ratings and watch logits of ``users`` against every movie; a model with a user history
    takes each user's whole history from ``histories`` (:class:`embedrec.history.UserHistories`)."""
    import jax.numpy as jnp

    module = artifact.to_flax()
    n_movies = artifact.shape.n_movies
    uu = np.repeat(users, n_movies)
    mm = np.tile(np.arange(n_movies), len(users))
    gi, gw = artifact.weights["genre_idx"][mm], artifact.weights["genre_w"][mm]
    args: tuple = (jnp.asarray(uu), jnp.asarray(mm), jnp.asarray(gi), jnp.asarray(gw))
    if artifact.model.user_history:
        hi, hw = history_inputs(histories, users)
        args = (*args, jnp.asarray(np.repeat(hi, n_movies, axis=0)), jnp.asarray(np.repeat(hw, n_movies, axis=0)))
    rating = np.asarray(module(*args)).reshape(len(users), n_movies)
    watch = np.asarray(module.watch_logit(*args)).reshape(len(users), n_movies) if artifact.model.watch_head else None
    return rating, watch


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real default-preset model, trained for 2 epochs (a few seconds, most of it compiling)."""
    return train_tiny(prepared, tmp_path_factory.mktemp("trained") / "model")


@pytest.fixture(scope="module")
def trained_with_history(prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, with a user's history as an input (``user_history``)."""
    return train_tiny(prepared, tmp_path_factory.mktemp("trained_history") / "model", user_history=True)
