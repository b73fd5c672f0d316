"""The recommender: fast path == full model, filters, cold start, fold-in, unknown ids, evaluation, no JAX.

Most tests use a *planted* model written with numpy (no training, no JAX): random dense layers and movie vectors that
are the movie's genres, so the right answer of a fold-in is known. One module fixture trains a tiny real model to
check the fast path against the Flax network on trained weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedrec.errors import ArtifactError, ConfigError, DataError, UnknownIdError

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


def write_planted_model(prepared, out: Path, *, hidden=(16, 4), watch: bool = True, biases: bool = True,
                        ranking: dict | None = None, seed: int = 0) -> Path:
    """A model folder whose watch vectors are the movies' genres: a user's taste for a genre is one coordinate."""
    import shutil

    from embedrec.artifacts import MODEL_KIND, SCHEMA_VERSION, save_arrays, write_json
    from embedrec.config import DataShape, ModelConfig, TrainConfig, to_dict

    rng = np.random.default_rng(seed)
    n_genres = prepared.n_genres
    d = n_genres + GENRE_DIM_EXTRA
    genre_idx, genre_w = bag_genres(prepared)
    cfg = ModelConfig(embedding_dim=d, hidden=hidden, dropout=0.0, genre_mode="bag", biases=biases,
                      watch_head=watch, init="scaled")
    shape = DataShape(n_users=prepared.n_users, n_movies=prepared.n_movies, n_genres=n_genres,
                      rating_min=float(prepared.summary["rating_min"]), rating_max=float(prepared.summary["rating_max"]),
                      max_genres_per_movie=genre_idx.shape[1])
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
    out.mkdir(parents=True, exist_ok=True)
    for name in ("users.parquet", "movies.parquet", "vocab.json"):
        shutil.copyfile(Path(prepared.path) / name, out / name)
    save_arrays(out / "weights.safetensors", w)
    meta = {"schema_version": SCHEMA_VERSION, "kind": MODEL_KIND, "model": to_dict(cfg),
            "train": to_dict(TrainConfig(weight_decay=0.01)), "shape": to_dict(shape),
            "data": {"path": str(Path(prepared.path).resolve()), "fingerprint": prepared.fingerprint}}
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
    return write_planted_model(prepared, tmp_path_factory.mktemp("planted") / "model",
                               ranking={"score": "blend", "beta": 0.3})


@pytest.fixture(scope="module")
def rec(planted: Path, prepared):
    from embedrec.artifacts import load_model
    from embedrec.recommender import Recommender

    return Recommender(load_model(planted), prepared)


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real default-preset model, trained for 2 epochs (a few seconds, most of it compiling)."""
    from embedrec import artifacts
    from embedrec.config import preset
    from embedrec.train import genre_inputs, train

    model_cfg, train_cfg = preset("default")
    model_cfg = model_cfg.replace(embedding_dim=16, hidden=(16, 8))
    train_cfg = train_cfg.replace(epochs=2, batch_size=512, steps_per_call=50, patience=0)
    res = train(prepared, model_cfg, train_cfg)
    gi = genre_inputs(prepared, model_cfg.genre_mode)
    out = tmp_path_factory.mktemp("trained") / "model"
    artifacts.save_model(out, module=res.model, model_cfg=model_cfg, train_cfg=train_cfg, shape=res.shape,
                         genre_idx=gi.idx, genre_w=gi.weight, prepared=prepared, history=res.history,
                         extra_meta={"ranking": {"score": "blend", "beta": 0.5}})
    return out


# ---------------------------------------------------------------------------------------------------------------
# The fast path equals the full model
# ---------------------------------------------------------------------------------------------------------------
def _flax_reference(artifact, users: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    import jax.numpy as jnp

    module = artifact.to_flax()
    n_movies = artifact.shape.n_movies
    uu = np.repeat(users, n_movies)
    mm = np.tile(np.arange(n_movies), len(users))
    gi, gw = artifact.weights["genre_idx"][mm], artifact.weights["genre_w"][mm]
    args = (jnp.asarray(uu), jnp.asarray(mm), jnp.asarray(gi), jnp.asarray(gw))
    rating = np.asarray(module(*args)).reshape(len(users), n_movies)
    watch = np.asarray(module.watch_logit(*args)).reshape(len(users), n_movies) if artifact.model.watch_head else None
    return rating, watch


@pytest.mark.parametrize("which", ["planted", "trained"])
def test_fast_path_equals_the_flax_model(which: str, request: pytest.FixtureRequest) -> None:
    from embedrec.artifacts import load_model
    from embedrec.recommender import Ranking, Scorer

    artifact = load_model(request.getfixturevalue(which))
    scorer = Scorer.from_artifact(artifact)
    users = np.array([0, 1, 7, artifact.shape.n_users - 1])
    ref_rating, ref_watch = _flax_reference(artifact, users)
    emb, bias = scorer.user_rows(users)
    np.testing.assert_allclose(scorer.ratings(emb, bias), ref_rating, rtol=1e-5)
    np.testing.assert_allclose(scorer.predict_pairs(np.repeat(users, artifact.shape.n_movies),
                                                    np.tile(np.arange(artifact.shape.n_movies), len(users))),
                               ref_rating.ravel(), rtol=1e-5)
    np.testing.assert_allclose(scorer.watch_logits(emb), ref_watch, rtol=1e-5, atol=1e-6)
    beta = scorer.ranking.beta
    np.testing.assert_allclose(scorer.score_users(users, workers=2), ref_watch + beta * ref_rating,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer.score_users(users, Ranking("rating")), ref_rating, rtol=1e-5)


def test_seed_shaped_model_without_biases_or_watch_head(prepared, tmp_path: Path) -> None:
    from embedrec.artifacts import load_model
    from embedrec.recommender import Scorer

    folder = write_planted_model(prepared, tmp_path / "m", hidden=(8,), watch=False, biases=False)
    artifact = load_model(folder)
    scorer = Scorer.from_artifact(artifact)
    assert scorer.ranking.score == "rating" and not scorer.has_watch
    ref, _ = _flax_reference(artifact, np.array([3, 5]))
    np.testing.assert_allclose(scorer.score_users(np.array([3, 5])), ref, rtol=1e-5)


def test_ranking_from_model_json() -> None:
    from embedrec.recommender import Ranking

    assert Ranking.from_meta({}, has_watch=True) == Ranking("blend", 0.0)
    assert Ranking.from_meta({}, has_watch=False) == Ranking("rating")
    assert Ranking.from_meta({"ranking": {"score": "blend", "beta": 0.25}}, has_watch=True).beta == 0.25
    with pytest.raises(ArtifactError):
        Ranking.from_meta({"ranking": {"score": "blend", "beta": 1.0}}, has_watch=False)
    with pytest.raises(ConfigError):
        Ranking.from_meta({"ranking": {"score": "popularity"}}, has_watch=True)


def test_scorer_from_weights_in_memory(rec) -> None:
    from embedrec.recommender import Scorer

    art = rec.artifact
    scorer = Scorer.from_weights(dict(art.weights), art.model, art.shape, {"score": "blend", "beta": 0.3})
    users = np.arange(5)
    np.testing.assert_array_equal(scorer.score_users(users), rec.scorer.score_users(users))


# ---------------------------------------------------------------------------------------------------------------
# recommend
# ---------------------------------------------------------------------------------------------------------------
def test_recommend_excludes_seen_and_is_sorted(rec, prepared) -> None:
    user_id = int(prepared.user_ids[3])
    seen = set(prepared.movie_ids[prepared.movie_idx[prepared.user_idx == 3]].tolist())
    top = rec.recommend(user_id, k=20, min_ratings=0)
    assert list(top.columns) == ["movie_id", "title", "year", "genres", "score", "rating"]
    assert len(top) == 20 and not seen & set(top["movie_id"].tolist())
    assert np.all(np.diff(top["score"].to_numpy()) <= 1e-6)
    with_seen = rec.recommend(user_id, k=400, filter_seen=False, min_ratings=0)
    assert seen <= set(with_seen["movie_id"].tolist())
    # the shown rating is the model's prediction for that pair
    np.testing.assert_allclose(top["rating"].to_numpy(), rec.predict([user_id] * 20, top["movie_id"].to_numpy()),
                               rtol=1e-5)


def test_recommend_honours_genre_and_min_ratings(rec) -> None:
    counts = rec.rating_counts()
    top = rec.recommend(5, k=10, genre="comedy", min_ratings=20)
    assert len(top) == 10
    assert all("Comedy" in g.split("|") for g in top["genres"])
    assert all(counts[rec.movie_index(m)] >= 20 for m in top["movie_id"])
    with pytest.raises(ConfigError, match="unknown genre"):
        rec.recommend(5, genre="Space Opera")
    assert rec.recommend(5, k=10, min_ratings=10**9).empty


def test_recommend_many_matches_single_user_calls(rec) -> None:
    users = rec.user_ids[:40]
    many = rec.recommend_many(users, k=5, genre="Drama", min_ratings=3, workers=2)
    assert list(many.columns) == ["user_id", "rank", "movie_id", "score", "rating"]
    for u in users[[0, 17, 39]]:
        one = rec.recommend(int(u), k=5, genre="Drama", min_ratings=3)
        got = many[many["user_id"] == u]
        assert got["movie_id"].tolist() == one["movie_id"].tolist()
        np.testing.assert_allclose(got["score"], one["score"], rtol=1e-5)
    with pytest.raises(UnknownIdError):
        rec.recommend_many([int(users[0]), 10**9], k=5)


def test_unknown_ids_and_cold_start(rec) -> None:
    with pytest.raises(UnknownIdError, match="user 999999999"):
        rec.recommend(999_999_999)
    with pytest.raises(UnknownIdError, match="movie"):
        rec.predict([int(rec.user_ids[0])], [10**9])
    ratings, reasons = rec.predict_known([int(rec.user_ids[0]), 10**9, 10**9],
                                        [int(rec.movie_ids[0]), int(rec.movie_ids[1]), 10**9])
    assert np.isfinite(ratings[0]) and np.isnan(ratings[1:]).all()
    assert list(reasons) == ["", "unknown user", "unknown user and movie"]
    popular = rec.popular(k=5)
    assert len(popular) == 5 and popular["rating"].isna().all()
    assert np.all(np.diff(popular["score"].to_numpy()) <= 0)


def test_fold_in_sci_fi_fan_gets_sci_fi(rec, prepared) -> None:
    genres = rec.movies["genre_list"]
    is_scifi = np.array(["Sci-Fi" in g for g in genres])
    counts = rec.rating_counts()
    liked = np.flatnonzero(is_scifi & (counts >= 5))[:6]
    disliked = np.flatnonzero(~is_scifi & (counts >= 5))[:3]
    loves = [(int(rec.movie_ids[i]), 5.0) for i in liked]
    mixed = loves + [(int(rec.movie_ids[i]), 1.0) for i in disliked]
    import time

    t0 = time.perf_counter()
    user = rec.fold_in(loves)
    assert time.perf_counter() - t0 < 1.0
    top = rec.recommend_for(user, k=10, min_ratings=0)
    assert not set(top["movie_id"]) & {p[0] for p in loves}
    assert np.mean(["Sci-Fi" in g.split("|") for g in top["genres"]]) >= 0.7, top
    # rated-but-disliked movies still count as watched, so they dilute the list, but Sci-Fi stays far above its share
    top = rec.recommend_for(rec.fold_in(mixed), k=10, min_ratings=0)
    assert np.mean(["Sci-Fi" in g.split("|") for g in top["genres"]]) > 3 * is_scifi.mean()


@pytest.mark.parametrize("watch_loss", ["bce", "softmax"])
def test_fold_in_gradient_matches_finite_differences(rec, watch_loss: str) -> None:
    from embedrec.recommender import fold_in_loss

    scorer = rec.scorer
    rng = np.random.default_rng(1)
    movies = rng.choice(scorer.n_movies, 7, replace=False)
    ratings = rng.uniform(1, 5, 7)
    u = rng.normal(0, 0.3, scorer.user_embedding.shape[1])
    b = 0.1
    opts = {"weight_decay": 0.03, "watch_weight": 0.7, "watch_loss": watch_loss, "negatives": 4}
    _, grad_u, grad_b = fold_in_loss(scorer, u, b, movies, ratings, **opts)
    eps = 1e-5
    for j in (0, 5, len(u) - 1):
        du = np.zeros_like(u)
        du[j] = eps
        num = (fold_in_loss(scorer, u + du, b, movies, ratings, **opts)[0]
               - fold_in_loss(scorer, u - du, b, movies, ratings, **opts)[0]) / (2 * eps)
        assert num == pytest.approx(grad_u[j], rel=1e-4, abs=1e-7)
    num_b = (fold_in_loss(scorer, u, b + eps, movies, ratings, **opts)[0]
             - fold_in_loss(scorer, u, b - eps, movies, ratings, **opts)[0]) / (2 * eps)
    assert num_b == pytest.approx(grad_b, rel=1e-4)


def test_fold_in_rejects_bad_input(rec) -> None:
    with pytest.raises(UnknownIdError):
        rec.fold_in([(10**9, 4.0)])
    with pytest.raises(DataError):
        rec.fold_in([(int(rec.movie_ids[0]), 9.0)])
    with pytest.raises(DataError):
        rec.fold_in([])


def test_similar_and_title_search(rec) -> None:
    movie_id = int(rec.movie_ids[10])
    sim = rec.similar(movie_id, k=5)
    assert len(sim) == 5 and movie_id not in set(sim["movie_id"])
    assert np.all(np.diff(sim["similarity"].to_numpy()) <= 1e-7)
    title = str(rec.movies["title"].iloc[10])
    found = rec.find_movies(title.upper())
    assert movie_id in set(found["movie_id"])
    assert rec.find_movies("zzzz no such words").empty


def test_title_search_prefers_exact_titles_even_when_several_share_one(rec) -> None:
    saved = rec.movies["title"].copy()
    try:
        rec.movies.loc[rec.movies.index[[3, 7]], "title"] = "Hamlet"  # MovieLens has several films titled so
        rec.movies.loc[rec.movies.index[5], "title"] = "Hamlet 2"
        assert set(rec.find_movies("hamlet")["movie_id"]) == {int(rec.movie_ids[3]), int(rec.movie_ids[7])}
        assert set(rec.find_movies("Hamlet 2")["movie_id"]) == {int(rec.movie_ids[5])}
        assert len(rec.find_movies("haml")) == 3  # no exact title: every title holding the words
    finally:
        rec.movies["title"] = saved


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
def test_evaluate_model_reports_model_and_baselines(trained: Path, prepared) -> None:
    from embedrec.artifacts import load_model
    from embedrec.recommender import Scorer, evaluate_model

    scorer = Scorer.from_artifact(load_model(trained))
    got = evaluate_model(scorer, prepared, split="test", ks=(5, 10))
    for key in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "hr@10", "map@10", "coverage@10", "ndcg@5"):
        assert 0.0 <= got[key] < 5.0, key
    assert set(got["baselines"]) == {"global_mean", "bias", "popular", "top_rated", "ease"}
    assert set(got["variants"]) == {"rating_only", "watch_only"}
    assert got["rmse"] < got["baselines"]["global_mean"]["rmse"]
    json.dumps(got)


# ---------------------------------------------------------------------------------------------------------------
# No JAX on the recommend path
# ---------------------------------------------------------------------------------------------------------------
def test_recommend_path_never_imports_jax(planted: Path, synthetic_prepared: Path) -> None:
    code = (
        "import sys\n"
        "from embedrec.cli import app\n"
        "try:\n"
        f"    app(['recommend', '--user', '3', '--model', {str(planted)!r}, '--data', {str(synthetic_prepared)!r},"
        " '--format', 'json'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "for name in ('jax', 'jaxlib', 'flax', 'optax'):\n"
        "    assert name not in sys.modules, name + ' was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 10
