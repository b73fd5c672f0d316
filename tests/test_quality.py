"""Model quality on real runs: the default preset on MovieLens-100K against the baselines, and planted tastes.

These train the real default model (no mocks) and so take tens of seconds; the numbers they guard are the README's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedrec.data import load_prepared
from embedrec.evaluation import evaluate_model
from embedrec.recommender import Recommender


@pytest.fixture(scope="module")
def ml100k_default(ml100k_prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    from embedrec.runs import train_run

    work = tmp_path_factory.mktemp("ml100k-default")
    result = train_run(ml100k_prepared, out=work / "run", workdir=work, preset="default")
    rec = Recommender.load(result.run_dir, ml100k_prepared)
    return result, evaluate_model(rec.scorer, load_prepared(ml100k_prepared), split="test", variants=True)


@pytest.mark.realdata
@pytest.mark.slow
def test_default_model_beats_the_bias_baseline_on_rmse(ml100k_default) -> None:
    _, metrics = ml100k_default
    bias = metrics["baselines"]["bias"]["rmse"]
    assert metrics["rmse"] < bias - 0.02, (metrics["rmse"], bias)
    assert metrics["rmse"] <= 0.915  # the train issue's target: better than Surprise's SVD++ (0.927)


@pytest.mark.realdata
@pytest.mark.slow
def test_default_model_ranks_far_better_than_most_popular(ml100k_default) -> None:
    result, metrics = ml100k_default
    popular = metrics["baselines"]["popular"]["ndcg@10"]
    assert metrics["ndcg@10"] >= 0.30  # the ranking issue's target (most-popular is about 0.17)
    # what 64 shared negatives bought over 16 (README: 0.332-0.345 over four seeds, 0.311-0.324 with 16)
    assert metrics["ndcg@10"] >= 0.325
    assert metrics["ndcg@10"] > popular + 0.1
    assert metrics["recall@10"] > metrics["baselines"]["popular"]["recall@10"]
    # the rating output alone ranks obscure movies first: that is why recommend uses the watch output
    assert metrics["variants"]["rating_only"]["ndcg@10"] < popular
    assert result.ranking["score"] == "blend"
    history = result.history
    assert all("val_ndcg@10" in h for h in history)


@pytest.mark.slow
def test_planted_tastes_show_up_in_the_top_10(tmp_path: Path) -> None:
    """A Sci-Fi lover (Sci-Fi their only favourite genre) gets mostly Sci-Fi, while Sci-Fi is ~6% of the catalogue.

    Only fans with at least 20 unrated Sci-Fi movies left count: a heavy fan of the small demo catalogue has
    already rated nearly every Sci-Fi movie there is.
    """
    from embedrec.data import PrepareConfig, prepare_synthetic, synthetic
    from embedrec.runs import train_run

    sizes = {"n_users": 600, "n_movies": 900, "n_ratings": 60_000}
    prepare_synthetic(out=tmp_path / "data", seed=42, config=PrepareConfig(), **sizes)
    result = train_run(tmp_path / "data", workdir=tmp_path, preset="default")
    _, _, world = synthetic.generate_world(seed=42, **sizes)
    scifi = synthetic.GENRES.index("Sci-Fi")
    fans = np.flatnonzero((world.favourites.sum(axis=1) == 1) & world.favourites[:, scifi]) + 1  # raw user ids
    prepared = load_prepared(tmp_path / "data")
    is_scifi = prepared.movies["genres"].str.contains("Sci-Fi").to_numpy()
    rec = Recommender.load(result.run_dir, tmp_path / "data")
    shares = []
    for user_id in fans:
        seen = prepared.movie_idx[prepared.user_idx == prepared.user_vocab.index(int(user_id))]
        if is_scifi.sum() - is_scifi[seen].sum() < 20:
            continue
        top = rec.recommend(int(user_id), k=10, min_ratings=0)
        shares.append(np.mean(["Sci-Fi" in g for g in top["genres"]]))
    assert len(shares) >= 5
    assert np.mean(shares) >= 0.6, shares
    assert np.mean(shares) > 5 * is_scifi.mean()


# ml100k-few-users in benchmarks/quality.py, seeds 42 / 1 / 2: NDCG@10 0.323 / 0.324 / 0.339 (most popular 0.194,
# EASE 0.338), RMSE 1.814 / 1.843 / 1.831 (bias baseline 1.890), the rating loss weighed as on 1..5. Before that
# (the 2..10 scale's MSE, 4x a 1..5 scale's): 0.332 / 0.341 / 0.335 and 1.843 / 1.833 / 1.832. Without the user's
# history as an input (before it adapted on sparse catalogues): 0.324 / 0.321 / 0.329. Before issue #11: 0.194 and
# 1.878 (seed 42). Since the weight decay of 0.05 on long histories (2026-12-07): 0.346 / 0.350 / 0.349 (seed 42
# 1.025 x EASE, where 0.01 gave 0.962 x), RMSE 1.827 / 1.828 / 1.824; issue #11's tune target is EASE itself.
POPULAR_FACTOR, EASE_FACTOR, BIAS_FACTOR = 1.4, 1.0, 0.99


def _thin_users(ml100k_dir: Path, *, keep: float, at_least: int) -> Any:
    """ML-100K's ratings (userId,movieId,rating,timestamp), a seeded ``keep`` share of each user's (at least
    ``at_least``): the quality matrix's thinned rows, the same seed and rule."""
    import pandas as pd

    ratings = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t")
    ratings.columns = ["userId", "movieId", "rating", "timestamp"]
    shuffled = ratings.iloc[np.random.default_rng(11).permutation(len(ratings))]
    size = shuffled.groupby("userId")["userId"].transform("size").to_numpy()
    quota = np.maximum(np.ceil(keep * size), np.minimum(at_least, size))
    return shuffled[shuffled.groupby("userId").cumcount().to_numpy() < quota].sort_index()


def _test_metrics(run_dir: Path, data_dir: Path) -> dict[str, Any]:
    """``embedrec evaluate``'s test metrics of the model in ``run_dir``, the baselines' on the same split under
    ``"baselines"``."""
    rec = Recommender.load(run_dir, data_dir)
    return evaluate_model(rec.scorer, load_prepared(data_dir), split="test", variants=False)


def _assert_beats(metrics: dict[str, Any], *, popular: float, ease: float, bias: float) -> None:
    """NDCG@10 at least ``popular`` x most-popular's and ``ease`` x EASE's; RMSE below ``bias`` x the bias
    baseline's."""
    base, ndcg = metrics["baselines"], metrics["ndcg@10"]
    assert ndcg >= popular * base["popular"]["ndcg@10"], (ndcg, base["popular"])
    assert ndcg >= ease * base["ease"]["ndcg@10"], (ndcg, base["ease"])
    assert metrics["rmse"] < bias * base["bias"]["rmse"], (metrics["rmse"], base["bias"]["rmse"])


def _train_default_on_csv(raw: Path, ml100k_dir: Path, *, rating_scale: tuple[float, float]) -> Any:
    """Prepare ``raw/ratings.csv`` (written by the caller) as a generic CSV data set into ``raw/data``, with
    ML-100K's movies as a MovieLens-style ``movies.csv`` (a real catalogue read through the generic-CSV path), and
    train the default preset on it into ``raw/run``; the ``TrainResult``."""
    import pandas as pd

    from embedrec.data import PrepareConfig, prepare
    from embedrec.runs import train_run

    items = pd.read_csv(ml100k_dir / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = ["movieId", "title", "year", "genres"]
    pd.DataFrame(
        {
            "movieId": items["movieId"].astype(int),
            "title": items["title"] + " (" + items["year"] + ")",
            "genres": items["genres"].str.split().str.join("|").replace("", "(no genres listed)"),
        }
    ).to_csv(raw / "movies.csv", index=False)
    prepare(
        raw / "ratings.csv",
        out=raw / "data",
        config=PrepareConfig(
            format="csv",
            ratings_file=str(raw / "ratings.csv"),
            movies_file=str(raw / "movies.csv"),
            rating_scale=rating_scale,
        ),
    )
    return train_run(raw / "data", out=raw / "run", workdir=raw, preset="default")


@pytest.fixture(scope="module")
def few_users_default(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The quality matrix's ``ml100k-few-users`` row: every rating of a seeded third of the users, on a 2..10 scale.

    Users keep long histories while most movies keep a handful of ratings (median 11), the shape of MovieLens
    latest-small; read through the generic CSV reader. The default model is trained once and evaluated as
    ``embedrec evaluate`` does, relevance at the top quarter of the scale (8 of 2..10).
    """
    import pandas as pd

    raw = tmp_path_factory.mktemp("few-users")
    ratings = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t")
    ratings.columns = ["userId", "movieId", "rating", "timestamp"]
    users = ratings["userId"].unique()
    kept = np.random.default_rng(11).choice(users, size=len(users) // 3, replace=False)
    ratings = ratings[ratings["userId"].isin(kept)].assign(rating=lambda f: f["rating"] * 2)
    ratings.to_csv(raw / "ratings.csv", index=False)
    result = _train_default_on_csv(raw, ml100k_dir, rating_scale=(2.0, 10.0))
    prepared = load_prepared(raw / "data")
    rec = Recommender.load(result.run_dir, raw / "data")
    # no relevance given: evaluate's default, 8 on this 2..10 scale (4 would count nearly every rating)
    return result, evaluate_model(rec.scorer, prepared, split="test", variants=False)


@pytest.mark.realdata
@pytest.mark.slow
def test_on_a_sparse_catalogue_the_default_model_ranks_above_most_popular_and_beats_the_bias_baseline(
    few_users_default,
) -> None:
    """Before issue #11 the default ranked exactly as well as most-popular here (1.00x) and its RMSE was 0.6% below
    the bias baseline; now the MSE reaches the shared embeddings at a tenth of its gradient, the user's history
    is an input and the weight decay is 0.05 (long histories), and it ranks above EASE."""
    result, metrics = few_users_default
    assert result.adapted["user_history"] is True  # a sparse catalogue: the history is an input
    assert result.adapted["weight_decay"] == 0.05  # ... of long histories (74 training ratings a user)
    base = metrics["baselines"]
    assert metrics["ndcg@10"] >= POPULAR_FACTOR * base["popular"]["ndcg@10"], (metrics["ndcg@10"], base["popular"])
    assert metrics["ndcg@10"] >= EASE_FACTOR * base["ease"]["ndcg@10"], (metrics["ndcg@10"], base["ease"])
    assert metrics["rmse"] <= BIAS_FACTOR * base["bias"]["rmse"], (metrics["rmse"], base["bias"]["rmse"])
    assert result.ranking["score"] == "blend"


@pytest.mark.realdata
@pytest.mark.slow
def test_with_short_user_histories_the_default_model_ranks_above_most_popular_and_ease(
    ml100k_dir: Path, tmp_path: Path
) -> None:
    """The quality matrix's ``ml100k-sparse-users`` row: a seeded 15% of each user's ratings (at least 5), so about
    12 training ratings a user and 9 a movie. With 64 negatives and no baseline blend the default ranked level with
    most-popular (1.02 x over seeds 42 / 1 / 2) and predicted 0.3% worse than the bias baseline; it now trains the
    watch output against 128 negatives on such data and blends the rating output with the bias baseline, whose
    movie biases are shrunk toward a genre and release-year prior (seed 42: NDCG@10 0.058, 1.12 x most-popular;
    RMSE 0.964 against 0.980, where the baseline without the prior gave 0.968). The ranking at seed 42 moves with the
    val split's choice of the popularity weight, which is noise there (0.001 apart on val: 0.055 to 0.060 on test),
    so the bar is the failure this guards, not the seed's figure; over seeds 42 and 1 to 7 the mean NDCG@10 is
    0.0563 (1.10 x)."""
    _thin_users(ml100k_dir, keep=0.15, at_least=5).to_csv(tmp_path / "ratings.csv", index=False)
    result = _train_default_on_csv(tmp_path, ml100k_dir, rating_scale=(1.0, 5.0))
    assert result.adapted["negatives"] == 128 and result.adapted["baseline_blend"] is True
    assert "per user (< 40: short histories)" in result.adapted["because"]
    metrics = _test_metrics(result.run_dir, tmp_path / "data")
    # NDCG@10: level with most-popular (1.02 x) is the failure this guards; 1.12 x at seed 42, 1.04 x to 1.21 x over
    # seeds. RMSE: -1.6% against the bias baseline; -1.2% without the movie prior, +0.3% without the blend
    _assert_beats(metrics, popular=1.04, ease=1.0, bias=0.986)


@pytest.mark.realdata
@pytest.mark.slow
def test_on_a_bare_ratings_file_the_learned_movie_clusters_lift_the_ranking_above_most_popular(
    ml100k_dir: Path, tmp_path: Path
) -> None:
    """The quality matrix's ``ml100k-sparse-users-bare`` row: the sparse-users ratings as a plain
    userId,movieId,rating file, no movies file. Without genres the network ranked below most-popular here (seed 42:
    NDCG@10 0.045, 0.88 x; 1.01 x over 10 seeds); the default now learns 16 movie clusters from the train split in
    their place (seed 42: 0.054, 1.05 x; 1.08 x over 10 seeds), and its RMSE stays below the bias baseline's."""
    from embedrec.data import PrepareConfig, prepare
    from embedrec.runs import train_run

    ratings = _thin_users(ml100k_dir, keep=0.15, at_least=5)[["userId", "movieId", "rating"]]
    ratings.to_csv(tmp_path / "ratings.csv", index=False)
    config = PrepareConfig(format="csv", ratings_file=str(tmp_path / "ratings.csv"), rating_scale=(1.0, 5.0))
    prepare(tmp_path / "ratings.csv", out=tmp_path / "data", config=config)
    assert load_prepared(tmp_path / "data").n_genres == 0
    result = train_run(tmp_path / "data", out=tmp_path / "run", workdir=tmp_path, preset="default")
    assert result.adapted["movie_clusters"] == 16 and "co-ratings per movie" in result.adapted["because"]
    metrics = _test_metrics(result.run_dir, tmp_path / "data")
    # the bar fails the network without clusters (0.88 x at this seed) and leaves room for another machine's bits
    _assert_beats(metrics, popular=1.0, ease=1.0, bias=0.997)


@pytest.mark.realdata
@pytest.mark.slow
def test_on_the_sparsest_row_on_a_zero_to_one_scale_the_default_meets_every_target(
    ml100k_dir: Path, tmp_path: Path
) -> None:
    """The quality matrix's ``ml100k-thin-01`` row: a seeded 8% of each user's ratings (at least 3; ~10 a user, ~7 a
    movie), the stars mapped to 0..1, read as a generic CSV: the shape of the data the project is also judged on.
    Seed 42: NDCG@10 0.045 (1.22 x most-popular), RMSE 0.2526 against the bias baseline's 0.2580 (-2.1%). Before
    the blend's movie prior and its shares below 0.5: 0.2564 (-0.6%); with the prior alone 0.2546 (-1.3%)."""
    thinned = _thin_users(ml100k_dir, keep=0.08, at_least=3)
    thinned.assign(rating=(thinned["rating"] - 1.0) / 4.0).to_csv(tmp_path / "ratings.csv", index=False)
    result = _train_default_on_csv(tmp_path, ml100k_dir, rating_scale=(0.0, 1.0))
    assert result.adapted["baseline_blend"] is True
    metrics = _test_metrics(result.run_dir, tmp_path / "data")
    # RMSE -2.1%; the bar leaves room for another machine's last bits, and still fails the code before (-0.6%, -1.3%)
    _assert_beats(metrics, popular=1.1, ease=1.0, bias=0.985)


@pytest.mark.realdata
@pytest.mark.slow
def test_on_a_wide_rating_scale_the_default_model_ranks_and_predicts_as_on_five_stars(
    ml100k_dir: Path, tmp_path: Path
) -> None:
    """MovieLens-100K with its stars mapped to Jester's -10..10 scale (the quality matrix's ``ml100k-wide-scale``).
    The rating MSE there is 25 times a 1..5 scale's; unweighed it drowned the watch output (NDCG@10 0.178 over
    seeds 42 / 1 / 2, 0.52 x EASE). Weighed as on 1..5 the row ranks and predicts as the 1..5 row does (0.343,
    RMSE 4.3% below the bias baseline)."""
    import pandas as pd

    ratings = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t")
    ratings.columns = ["userId", "movieId", "rating", "timestamp"]
    ratings.assign(rating=(ratings["rating"] - 3.0) * 5.0).to_csv(tmp_path / "ratings.csv", index=False)
    result = _train_default_on_csv(tmp_path, ml100k_dir, rating_scale=(-10.0, 10.0))
    metrics = _test_metrics(result.run_dir, tmp_path / "data")
    base = metrics["baselines"]
    assert metrics["ndcg@10"] >= 0.95 * base["ease"]["ndcg@10"], (metrics["ndcg@10"], base["ease"])
    assert metrics["rmse"] <= 0.97 * base["bias"]["rmse"], (metrics["rmse"], base["bias"]["rmse"])


# ml100k-sparse in benchmarks/quality.py, seeds 42 / 1 / 2: NDCG@10 0.071 / 0.072 / 0.079 (most popular 0.063, EASE
# 0.050), RMSE 0.965 / 0.964 / 0.966 (bias baseline 0.967); without the history input 0.070 / 0.074 / 0.074 and
# 0.964 / 0.974 / 0.967. Before the popularity prior in the ranking: 0.057 +- 0.003,
# 0.90 x most popular. The factors leave room for a change elsewhere to move seed 42 a little; the RMSE target of
# the issue (2% below the bias baseline) is not met on this row, so the test holds the model level with it.
SPARSE_POPULAR_FACTOR, SPARSE_BIAS_FACTOR = 1.05, 1.005


@pytest.fixture(scope="module")
def sparse_default(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The quality matrix's ``ml100k-sparse`` row: a seeded random quarter of each movie's ratings (at least one).

    15 ratings per movie (a median of 5 in train) and 28 per user: the watch output alone ranks below most-popular
    here, so the served blend must find the popularity it underfits. Built as benchmarks/quality.py builds it.
    """
    import pandas as pd

    raw = tmp_path_factory.mktemp("sparse")
    ratings = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t")
    ratings.columns = ["userId", "movieId", "rating", "timestamp"]
    shuffled = ratings.iloc[np.random.default_rng(11).permutation(len(ratings))]
    rank = shuffled.groupby("movieId").cumcount().to_numpy()
    size = shuffled.groupby("movieId")["movieId"].transform("size").to_numpy()
    shuffled[rank < np.maximum(np.ceil(0.25 * size), 1)].sort_index().to_csv(raw / "ratings.csv", index=False)
    result = _train_default_on_csv(raw, ml100k_dir, rating_scale=(1.0, 5.0))
    rec = Recommender.load(result.run_dir, raw / "data")
    return result, evaluate_model(rec.scorer, load_prepared(raw / "data"), split="test", variants=True)


@pytest.mark.realdata
@pytest.mark.slow
def test_on_a_thinned_catalogue_the_served_blend_ranks_above_most_popular(sparse_default) -> None:
    """The watch output alone underfits popularity on a sparse catalogue (it ranked below most-popular); the
    popularity prior, weighted on the val split, lifts the served ranking above it; RMSE stays level with the bias
    baseline."""
    result, metrics = sparse_default
    base = metrics["baselines"]
    assert metrics["ndcg@10"] >= SPARSE_POPULAR_FACTOR * base["popular"]["ndcg@10"], (metrics["ndcg@10"], base)
    assert metrics["ndcg@10"] >= base["ease"]["ndcg@10"], (metrics["ndcg@10"], base["ease"])
    assert metrics["ndcg@10"] > metrics["variants"]["watch_only"]["ndcg@10"]
    assert metrics["rmse"] <= SPARSE_BIAS_FACTOR * base["bias"]["rmse"], (metrics["rmse"], base["bias"]["rmse"])
    from embedrec.artifacts import load_model

    assert result.ranking["gamma"] > 0 and "popularity_prior" in load_model(result.run_dir).weights
