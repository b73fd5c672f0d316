"""The numpy serving path equals the Flax network (planted and trained weights), and the ranking score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from planted import (  # noqa: F401  (fixtures)
    flax_reference,
    planted,
    prepared,
    rec,
    trained,
    trained_with_history,
    write_planted_model,
)

from embedrec.errors import ArtifactError, ConfigError


@pytest.mark.parametrize("which", ["planted", "trained", "trained_with_history"])
def test_fast_path_equals_the_flax_model(which: str, request: pytest.FixtureRequest, prepared) -> None:
    from embedrec.artifacts import load_model
    from embedrec.history import UserHistories
    from embedrec.scoring import Ranking, Scorer

    artifact = load_model(request.getfixturevalue(which))
    scorer = Scorer.from_artifact(artifact)
    users = np.array([0, 1, 7, artifact.shape.n_users - 1])
    histories = UserHistories.of_prepared(prepared)
    assert (histories.counts[users] > 0).all()  # the served vector of a user without training movies is the average
    if artifact.model.user_history:  # trained: the history part of the served vectors is not zero
        assert np.abs(artifact.weights["user_history_vector"][users]).max() > 1e-3
    ref_rating, ref_watch = flax_reference(artifact, users, histories)
    emb, bias = scorer.user_rows(users)
    np.testing.assert_allclose(scorer.ratings(emb, bias), ref_rating, rtol=1e-5)
    np.testing.assert_allclose(
        scorer.predict_pairs(
            np.repeat(users, artifact.shape.n_movies), np.tile(np.arange(artifact.shape.n_movies), len(users))
        ),
        ref_rating.ravel(),
        rtol=1e-5,
    )
    # a few pairs (one user's candidates) go through the first layer per pair, many (a split) by per-user table
    assert 4 * 2 < artifact.shape.n_users
    np.testing.assert_allclose(scorer.predict_pairs(users[:2], np.array([0, 3])), ref_rating[[0, 1], [0, 3]], rtol=1e-5)
    np.testing.assert_allclose(scorer.watch_logits(emb), ref_watch, rtol=1e-5, atol=1e-6)
    beta = scorer.ranking.beta
    np.testing.assert_allclose(
        scorer.score_users(users, workers=2), ref_watch + beta * ref_rating, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(scorer.score_users(users, Ranking("rating")), ref_rating, rtol=1e-5)


def test_rating_scale_equals_the_model_s(trained: Path) -> None:
    import jax.numpy as jnp

    from embedrec.artifacts import load_model
    from embedrec.model import scale_rating as jax_scale_rating
    from embedrec.scoring import scale_rating

    shape = load_model(trained).shape
    logits = np.linspace(-30, 30, 61, dtype=np.float32)
    np.testing.assert_allclose(
        scale_rating(logits, shape), np.asarray(jax_scale_rating(jnp.asarray(logits), shape)), rtol=1e-6, atol=1e-6
    )


def test_seed_shaped_model_without_biases_or_watch_head(prepared, tmp_path: Path) -> None:
    from embedrec.artifacts import load_model
    from embedrec.scoring import Scorer

    folder = write_planted_model(prepared, tmp_path / "m", hidden=(8,), watch=False, biases=False)
    artifact = load_model(folder)
    scorer = Scorer.from_artifact(artifact)
    assert scorer.ranking.score == "rating" and not scorer.has_watch
    ref, _ = flax_reference(artifact, np.array([3, 5]))
    np.testing.assert_allclose(scorer.score_users(np.array([3, 5])), ref, rtol=1e-5)


def test_ranking_from_model_json() -> None:
    from embedrec.scoring import Ranking

    assert Ranking.from_meta({}, has_watch=True) == Ranking("blend", 0.0)
    assert Ranking.from_meta({}, has_watch=False) == Ranking("rating")
    assert Ranking.from_meta({"ranking": {"score": "blend", "beta": 0.25}}, has_watch=True).beta == 0.25
    with pytest.raises(ArtifactError):
        Ranking.from_meta({"ranking": {"score": "blend", "beta": 1.0}}, has_watch=False)
    with pytest.raises(ConfigError):
        Ranking.from_meta({"ranking": {"score": "popularity"}}, has_watch=True)


def test_scorer_from_weights_in_memory(rec) -> None:
    from embedrec.scoring import Scorer

    art = rec.artifact
    scorer = Scorer.from_weights(dict(art.weights), art.model, art.shape, {"score": "blend", "beta": 0.3})
    users = np.arange(5)
    np.testing.assert_array_equal(scorer.score_users(users), rec.scorer.score_users(users))


@pytest.fixture(scope="module")
def with_prior(prepared, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A planted model that ranks by watch + 0.7 x popularity prior + 0.3 x rating (a prior unlike the watch bias)."""
    prior = np.random.default_rng(5).gamma(2.0, 1.5, prepared.n_movies).astype(np.float32)
    folder = write_planted_model(
        prepared,
        tmp_path_factory.mktemp("prior") / "model",
        ranking={"score": "blend", "beta": 0.3, "gamma": 0.7},
        popularity_prior=prior,
    )
    return folder, prior


def test_the_popularity_prior_enters_every_ranking_path(with_prior) -> None:
    """watch + gamma x prior + beta x rating, the same in full scores, pair scores, two-stage and retrieval alone."""
    from embedrec.artifacts import load_model
    from embedrec.metrics import top_k
    from embedrec.scoring import Ranking, Scorer

    folder, prior = with_prior
    artifact = load_model(folder)
    scorer = Scorer.from_artifact(artifact)
    assert scorer.ranking == Ranking("blend", 0.3, 0.7)
    assert "0.7 x popularity prior" in scorer.ranking.describe()
    users = np.array([0, 1, 7, 30])
    ref_rating, ref_watch = flax_reference(artifact, users)
    want = ref_watch + 0.7 * prior + 0.3 * ref_rating
    np.testing.assert_allclose(scorer.score_users(users), want, rtol=1e-5, atol=1e-4)
    emb, bias = scorer.user_rows(users)
    exhaustive = scorer.rank(emb, bias, 10, candidates=None)
    np.testing.assert_array_equal(exhaustive.movie_idx, top_k(want, 10))
    np.testing.assert_allclose(
        exhaustive.score, np.take_along_axis(want, exhaustive.movie_idx, 1), rtol=1e-5, atol=1e-4
    )
    # two-stage retrieves by the watch side (watch + gamma x prior): with enough candidates it finds the same top 10
    two_stage = scorer.rank(emb, bias, 10, candidates=scorer.n_movies // 6)
    np.testing.assert_array_equal(two_stage.movie_idx, exhaustive.movie_idx)
    # beta 0: retrieval alone is the ranking, and it includes the prior
    retrieval = scorer.rank(emb, bias, 10, ranking=Ranking("blend", 0.0, 0.7))
    np.testing.assert_array_equal(retrieval.movie_idx, top_k(ref_watch + 0.7 * prior, 10))


def test_model_folders_without_the_prior_still_load_and_one_that_needs_it_must_carry_it(
    prepared, tmp_path: Path
) -> None:
    from embedrec.artifacts import load_model
    from embedrec.scoring import Ranking, Scorer

    old = write_planted_model(prepared, tmp_path / "v1", ranking={"score": "blend", "beta": 0.5}, schema_version=1)
    assert Scorer.from_artifact(load_model(old)).ranking == Ranking("blend", 0.5, 0.0)
    # schema 2 (before the user history): no user_history setting, served without a history part
    v2 = write_planted_model(prepared, tmp_path / "v2", ranking={"score": "blend", "beta": 0.5}, schema_version=2)
    meta = json.loads((v2 / "model.json").read_text())
    del meta["model"]["user_history"], meta["train"]["history_samples"]
    (v2 / "model.json").write_text(json.dumps(meta))
    artifact = load_model(v2)
    assert not artifact.model.user_history and Scorer.from_artifact(artifact).history_embedding is None
    lacking = write_planted_model(prepared, tmp_path / "lacking", ranking={"score": "blend", "beta": 0.5, "gamma": 1.0})
    with pytest.raises(ArtifactError, match="popularity_prior"):
        Scorer.from_artifact(load_model(lacking))
    bad = write_planted_model(
        prepared, tmp_path / "bad", ranking={"score": "blend", "beta": 0.5, "gamma": "lots"}, popularity_prior=None
    )
    with pytest.raises(ArtifactError, match="gamma"):
        load_model(bad)
    wrong = write_planted_model(prepared, tmp_path / "wrong", popularity_prior=np.ones(prepared.n_movies + 1))
    with pytest.raises(ArtifactError, match="popularity_prior"):
        load_model(wrong)


def test_the_popularity_prior_is_log_counts_decayed_by_age() -> None:
    from embedrec.baselines import popularity_prior

    movies = np.array([0, 0, 0, 1, 2, 2])
    stamps = np.array([0, 0, 0, 100, 100, 100])
    np.testing.assert_allclose(popularity_prior(movies, None, n_movies=4), np.log1p([3, 1, 2, 0]), rtol=1e-6)
    # half-life 50 s: the three old ratings of movie 0 (100 s before the latest) count a quarter each
    np.testing.assert_allclose(
        popularity_prior(movies, stamps, n_movies=4, half_life=50.0), np.log1p([0.75, 1, 2, 0]), rtol=1e-6
    )
