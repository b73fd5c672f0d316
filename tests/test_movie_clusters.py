"""Movie clusters learned from the ratings (:mod:`embedrec.movie_clusters`) and the default's use of them on a bare
ratings file: planted co-rating blocks are recovered, the same ratings and seed give the same clusters, and a trained
model serves the clusters it trained with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli import run_cli

from embedrec.movie_clusters import movie_clusters, spherical_kmeans


def _blocks(n_users: int, n_movies: int, n_blocks: int, per_user: int, *, seed: int, noise: float = 0.0):
    """(users, movies): each user rates ``per_user`` movies of their block (user % n_blocks), a ``noise`` share of
    them anywhere."""
    rng = np.random.default_rng(seed)
    users, movies = [], []
    for u in range(n_users):
        own = np.flatnonzero(np.arange(n_movies) % n_blocks == u % n_blocks)
        picks = rng.choice(own, per_user, replace=False)
        stray = rng.random(per_user) < noise
        picks[stray] = rng.integers(0, n_movies, int(stray.sum()))
        users += [u] * per_user
        movies += picks.tolist()
    return np.array(users), np.array(movies)


def test_planted_co_rating_blocks_are_the_clusters_and_unrated_movies_get_none() -> None:
    users, movies = _blocks(600, 240, 4, 12, seed=0, noise=0.1)
    found = movie_clusters(users, movies, n_users=600, n_movies=250, k=4, seed=3)  # movies 240..249: never rated
    assert found.idx.shape == found.weight.shape == (250, 1) and found.n_clusters == 4
    labels = found.idx[:240, 0]
    block = np.arange(240) % 4
    for b in range(4):  # every block is one cluster, and the four clusters differ
        assert len(set(labels[block == b])) == 1, np.bincount(labels[block == b], minlength=4)
    assert len(set(labels)) == 4
    np.testing.assert_array_equal(found.weight[:240, 0], 1.0)
    np.testing.assert_array_equal(found.weight[240:, 0], 0.0)  # no training ratings: the zero vector, like no genres


def test_the_same_ratings_and_seed_give_the_same_clusters() -> None:
    users, movies = _blocks(300, 150, 5, 6, seed=1, noise=0.4)
    a = movie_clusters(users, movies, n_users=300, n_movies=150, k=8, seed=7)
    b = movie_clusters(users[::-1].copy(), movies[::-1].copy(), n_users=300, n_movies=150, k=8, seed=7)
    np.testing.assert_array_equal(a.idx, b.idx)  # the order of the ratings does not matter
    np.testing.assert_array_equal(a.weight, b.weight)
    assert 1 < len(np.unique(a.idx)) <= 8


def test_kmeans_never_returns_more_clusters_than_points_nor_an_empty_label() -> None:
    points = np.eye(3)
    labels = spherical_kmeans(points, 10, seed=0)
    assert sorted(labels.tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="k must be >= 1"):
        movie_clusters(np.array([0]), np.array([0]), n_users=1, n_movies=1, k=0)


def test_on_a_bare_sparse_file_the_default_trains_and_serves_learned_clusters(tmp_path: Path) -> None:
    """A plain userId,movieId,rating file (no movies file) of a sparse catalogue: ``train`` adapts to 16 movie
    clusters, says why, and the saved model's genre input is the clusters, which ``recommend`` serves."""
    rng = np.random.default_rng(0)
    users, movies = _blocks(400, 800, 8, 20, seed=2, noise=0.2)
    stars = np.clip(np.round(3 + (movies % 8 < 4) + rng.normal(0, 0.8, len(users))), 1, 5).astype(int)
    csv = tmp_path / "ratings.csv"
    csv.write_text(
        "userId,movieId,rating\n" + "".join(f"{u + 1},{m + 1},{r}\n" for u, m, r in zip(users, movies, stars))
    )
    work = tmp_path / "w"
    prep = run_cli(["prepare", str(csv), "--workdir", str(work), "--time-col", "", "--json"], tmp_path)
    assert prep.returncode == 0, prep.stderr
    done = run_cli(["train", "--workdir", str(work), "--epochs", "2", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["adapted"]["movie_clusters"] == 16 and "no genres" in meta["adapted"]["because"]
    from embedrec.artifacts import load_model
    from embedrec.data import load_prepared
    from embedrec.data.split import TRAIN

    artifact = load_model(run_dir)
    assert artifact.model.movie_clusters == 16 and artifact.shape.n_genres == 16
    data = load_prepared(work / "data")
    rated = np.zeros(data.n_movies, bool)
    rated[data.movie_idx[data.split == TRAIN]] = True
    gi, gw = artifact.weights["genre_idx"], artifact.weights["genre_w"]
    np.testing.assert_array_equal(gw[:, 0], rated.astype(np.float32))
    assert len(np.unique(gi[rated, 0])) > 4
    assert np.abs(artifact.weights["genre_embedding"]).max() > 1e-3  # the cluster rows learned
    rec = run_cli(["recommend", "--workdir", str(work), "--user", "1", "--format", "json"], tmp_path)
    assert rec.returncode == 0, rec.stderr
    recs = json.loads(rec.stdout)
    seen = set((movies[users == 0] + 1).tolist())
    assert len(recs) == 10 and not seen & {r["movieId"] for r in recs}
    # a new user folded in from their own ratings (five movies of block 0) is scored on the same clusters
    mine = tmp_path / "mine.csv"
    mine.write_text("movieId,rating\n" + "".join(f"{m},5\n" for m in (1, 9, 17, 25, 33)))
    folded = run_cli(["recommend", "--workdir", str(work), "--ratings", str(mine), "--format", "json"], tmp_path)
    assert folded.returncode == 0, folded.stderr
    got = [r["movieId"] - 1 for r in json.loads(folded.stdout)]
    assert len(got) == 10 and sum(m % 8 == 0 for m in got) >= 8  # the block of the five movies they loved


def test_genre_inputs_as_a_dense_matrix_are_the_bag_weights_of_each_movie(synthetic_prepared: Path) -> None:
    """What the blend's movie prior reads in the genres' place (:meth:`GenreInputs.dense`)."""
    from embedrec.data import load_prepared
    from embedrec.model import GenreInputs, genre_inputs

    data = load_prepared(synthetic_prepared)
    multi_hot = data.movie_genre_multi_hot()
    counts = multi_hot.sum(axis=1, keepdims=True)
    expected = np.divide(multi_hot, counts, out=np.zeros(multi_hot.shape), where=counts > 0)
    np.testing.assert_allclose(genre_inputs(data, "bag").dense(), expected, rtol=1e-6)
    clusters = GenreInputs(np.array([[2], [0], [2]]), np.array([[1.0], [1.0], [0.0]], np.float32), 3, learned=True)
    np.testing.assert_array_equal(clusters.dense(), [[0, 0, 1], [1, 0, 0], [0, 0, 0]])
