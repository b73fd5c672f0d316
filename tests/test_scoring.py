"""The numpy serving path equals the Flax network (planted and trained weights), and the ranking score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from planted import flax_reference, planted, prepared, rec, trained, write_planted_model  # noqa: F401  (fixtures)

from embedrec.errors import ArtifactError, ConfigError


@pytest.mark.parametrize("which", ["planted", "trained"])
def test_fast_path_equals_the_flax_model(which: str, request: pytest.FixtureRequest) -> None:
    from embedrec.artifacts import load_model
    from embedrec.scoring import Ranking, Scorer

    artifact = load_model(request.getfixturevalue(which))
    scorer = Scorer.from_artifact(artifact)
    users = np.array([0, 1, 7, artifact.shape.n_users - 1])
    ref_rating, ref_watch = flax_reference(artifact, users)
    emb, bias = scorer.user_rows(users)
    np.testing.assert_allclose(scorer.ratings(emb, bias), ref_rating, rtol=1e-5)
    np.testing.assert_allclose(
        scorer.predict_pairs(
            np.repeat(users, artifact.shape.n_movies), np.tile(np.arange(artifact.shape.n_movies), len(users))
        ),
        ref_rating.ravel(),
        rtol=1e-5,
    )
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
