"""Evaluation over arrays: masking, skipping, batching, subsampling, the baselines bundle, real MovieLens-100K, and
``evaluate_model`` on a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from planted import planted, prepared, trained  # noqa: F401  (fixtures)

from embedrec.errors import ConfigError, DataError
from embedrec.evaluation import evaluate_baselines, evaluate_ranking, evaluate_ratings

N_MOVIES = 5
# user 0: train {0}, test {1: 5.0, 2: 2.0}  -> relevant {1}
# user 1: train {2}, test {3: 3.0}          -> no relevant item: skipped
# user 2: train {},  test {4: 4.0}          -> relevant {4} (the threshold is inclusive)
TRAIN = {"train_user_idx": np.array([0, 1]), "train_movie_idx": np.array([0, 2])}
EVAL = {
    "eval_user_idx": np.array([0, 0, 1, 2]),
    "eval_movie_idx": np.array([1, 2, 3, 4]),
    "eval_rating": np.array([5.0, 2.0, 3.0, 4.0], dtype=np.float32),
}
SIZES = {"n_users": 3, "n_movies": N_MOVIES}


def _fixed_scores(row: list[float]):
    def score_fn(users: np.ndarray) -> np.ndarray:
        return np.tile(np.array(row, dtype=np.float32), (len(users), 1))

    return score_fn


def test_evaluate_ratings() -> None:
    rating = np.array([4.0, 2.0, 5.0], dtype=np.float32)
    got = evaluate_ratings(
        lambda u, m: np.full(len(u), 3.0), user_idx=np.array([0, 1, 2]), movie_idx=np.array([0, 0, 1]), rating=rating
    )
    # errors -1, 1, -2: RMSE sqrt(6 / 3), MAE 4 / 3
    assert got == pytest.approx({"rmse": np.sqrt(2.0), "mae": 4 / 3})
    with pytest.raises(DataError):
        evaluate_ratings(lambda u, m: u, user_idx=np.array([]), movie_idx=np.array([]), rating=np.array([]))


def test_train_items_are_masked_and_users_without_relevant_items_skipped() -> None:
    # item 0 scores highest but is user 0's train item, so user 0's list is [1, 4, 3, ...]: a hit at 1.
    # User 2 has no train item; their list is [0, 1, 4]: the relevant item 4 sits at position 3.
    scores = _fixed_scores([10.0, 9.0, 1.0, 2.0, 3.0])
    got = evaluate_ranking(scores, **TRAIN, **EVAL, **SIZES, ks=(1, 3))
    assert got["n_users"] == 2
    assert got["hr@1"] == pytest.approx(0.5)  # user 0 hits, user 2 does not
    assert got["ndcg@3"] == pytest.approx((1.0 + 1.0 / np.log2(4)) / 2)
    assert got["coverage@1"] == pytest.approx(2 / N_MOVIES)  # {1} for user 0, {0} for user 2


def test_a_higher_threshold_skips_more_users_and_none_left_raises() -> None:
    got = evaluate_ranking(_fixed_scores([0, 1, 2, 3, 4]), **TRAIN, **EVAL, **SIZES, ks=(3,), relevance=4.5)
    assert got["n_users"] == 1
    with pytest.raises(DataError, match="no user"):
        evaluate_ranking(_fixed_scores([0, 1, 2, 3, 4]), **TRAIN, **EVAL, **SIZES, ks=(3,), relevance=5.5)


def _random_problem(seed: int = 0, n_users: int = 60, n_movies: int = 40, n: int = 1500):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n)
    m = rng.integers(0, n_movies, n)
    r = rng.integers(1, 6, n).astype(np.float32)
    split = np.where(rng.random(n) < 0.8, 0, 2).astype(np.int8)
    return u, m, r, split, n_users, n_movies


def _ranking_kwargs(u, m, r, split, n_users, n_movies) -> dict:
    train, test = split == 0, split == 2
    return {
        "train_user_idx": u[train],
        "train_movie_idx": m[train],
        "eval_user_idx": u[test],
        "eval_movie_idx": m[test],
        "eval_rating": r[test],
        "n_users": n_users,
        "n_movies": n_movies,
    }


def test_batch_size_does_not_change_results_and_progress_is_reported() -> None:
    u, m, r, split, n_users, n_movies = _random_problem()
    table = np.random.default_rng(1).random((n_users, n_movies))
    kwargs = _ranking_kwargs(u, m, r, split, n_users, n_movies)
    calls: list[tuple[int, int]] = []
    one = evaluate_ranking(
        lambda b: table[b], **kwargs, ks=(5, 10), batch_size=7, on_progress=lambda d, t: calls.append((d, t))
    )
    big = evaluate_ranking(lambda b: table[b], **kwargs, ks=(5, 10), batch_size=512)
    assert one == big
    assert calls[0] == (0, one["n_users"])  # a stage says it started before the first batch
    assert calls[-1] == (one["n_users"], one["n_users"]) and len(calls) == 1 + -(-one["n_users"] // 7)


def test_threads_give_the_same_lists_and_progress_counts_up_to_the_total() -> None:
    u, m, r, split, n_users, n_movies = _random_problem()
    table = np.random.default_rng(2).random((n_users, n_movies))
    kwargs = _ranking_kwargs(u, m, r, split, n_users, n_movies)
    one = evaluate_ranking(lambda b: table[b], **kwargs, ks=(5, 10), batch_size=7)
    calls: list[tuple[int, int]] = []
    threaded = evaluate_ranking(
        lambda b: table[b], **kwargs, ks=(5, 10), batch_size=7, workers=3, on_progress=lambda d, t: calls.append((d, t))
    )
    assert threaded == one
    done = [d for d, _ in calls]
    assert (
        done == sorted(done)
        and calls[-1] == (one["n_users"], one["n_users"])
        and len(calls) == 1 + -(-one["n_users"] // 7)
    )


def test_max_users_draws_a_seeded_subset() -> None:
    u, m, r, split, n_users, n_movies = _random_problem()
    table = np.random.default_rng(1).random((n_users, n_movies))
    kwargs = _ranking_kwargs(u, m, r, split, n_users, n_movies)
    seen: list[np.ndarray] = []

    def score_fn(users: np.ndarray) -> np.ndarray:
        seen.append(users)
        return table[users]

    a = evaluate_ranking(score_fn, **kwargs, max_users=10, seed=3)
    b = evaluate_ranking(score_fn, **kwargs, max_users=10, seed=3)
    assert a == b and a["n_users"] == 10
    assert np.array_equal(seen[0], seen[1]) and seen[0].size == 10


def test_bad_options_and_bad_scores_are_rejected() -> None:
    with pytest.raises(ConfigError):
        evaluate_ranking(_fixed_scores([0] * 5), **TRAIN, **EVAL, **SIZES, ks=(6,))
    with pytest.raises(ConfigError):
        evaluate_ranking(_fixed_scores([0] * 5), **TRAIN, **EVAL, **SIZES, ks=(3,), batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        evaluate_ranking(_fixed_scores([0] * 4), **TRAIN, **EVAL, **SIZES, ks=(3,))


def test_evaluate_baselines_reports_every_baseline_and_skips_ease_when_too_large() -> None:
    u, m, r, split, n_users, n_movies = _random_problem()
    got = evaluate_baselines(
        user_idx=u, movie_idx=m, rating=r, split=split, n_users=n_users, n_movies=n_movies, ks=(5, 10)
    )
    assert set(got) == {"global_mean", "bias", "popular", "top_rated", "ease"}
    assert set(got["bias"]) == {"rmse", "mae"}
    assert {"ndcg@10", "coverage@5", "map@5", "n_users"} <= set(got["ease"])
    assert got["popular"]["n_users"] == got["ease"]["n_users"]

    small = evaluate_baselines(
        user_idx=u, movie_idx=m, rating=r, split=split, n_users=n_users, n_movies=n_movies, ease_max_items=10
    )
    assert "max_items=10" in small["ease"]["skipped"]
    assert small["popular"] == {k: v for k, v in got["popular"].items() if not k.endswith("@5")}


@pytest.mark.realdata
def test_baselines_on_ml100k(ml100k_prepared: Path) -> None:
    from embedrec.data import load_prepared

    data = load_prepared(ml100k_prepared)
    got = evaluate_baselines(
        user_idx=data.user_idx,
        movie_idx=data.movie_idx,
        rating=data.rating,
        split=data.split,
        n_users=data.n_users,
        n_movies=data.n_movies,
        ks=(10,),
    )
    # reference (random 80/20): global mean 1.13, bias 0.95, popular NDCG@10 0.18, EASE 0.36
    assert got["bias"]["rmse"] < got["global_mean"]["rmse"] - 0.1
    assert got["popular"]["ndcg@10"] > 0.12
    assert got["ease"]["ndcg@10"] > got["popular"]["ndcg@10"] + 0.1


def test_relevance_defaults_to_four_stars_or_the_top_quarter_of_another_scale() -> None:
    from embedrec.evaluation import default_relevance

    assert default_relevance(1.0, 5.0) == default_relevance(0.5, 5.0) == 4.0
    assert default_relevance(2.0, 10.0) == 8.0  # 4 would count nearly every rating of a 10-point scale
    assert default_relevance(1.0, 10.0) == 7.75


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
def test_evaluate_model_reports_model_and_baselines(trained: Path, prepared) -> None:
    from embedrec.artifacts import load_model
    from embedrec.evaluation import evaluate_model
    from embedrec.scoring import Scorer

    scorer = Scorer.from_artifact(load_model(trained))
    got = evaluate_model(scorer, prepared, split="test", ks=(5, 10))
    for key in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "hr@10", "map@10", "coverage@10", "ndcg@5"):
        assert 0.0 <= got[key] < 5.0, key
    assert set(got["baselines"]) == {"global_mean", "bias", "popular", "top_rated", "ease"}
    assert set(got["variants"]) == {"rating_only", "watch_only"}
    assert got["rmse"] < got["baselines"]["global_mean"]["rmse"]
    json.dumps(got)


def _without_user_index(src: Path, dst: Path) -> Path:
    """A copy of a prepared folder as an embedrec before the per-user index wrote it."""
    import shutil

    shutil.copytree(src, dst)
    for f in dst.glob("*.npy"):
        f.unlink()
    summary = json.loads((dst / "summary.json").read_text())
    del summary["user_index"]
    (dst / "summary.json").write_text(json.dumps(summary))
    return dst


@pytest.mark.parametrize("split_code", [1, 2])
def test_held_out_sets_from_the_user_index_equal_those_from_the_pairs(prepared, split_code: int) -> None:
    from embedrec.evaluation import HeldOut

    assert prepared.user_index is not None
    fast = HeldOut.from_prepared(prepared, split_code=split_code, relevance=4.0)
    earlier, held = prepared.split < split_code, prepared.split == split_code
    ref = HeldOut.from_pairs(
        train_user_idx=prepared.user_idx[earlier],
        train_movie_idx=prepared.movie_idx[earlier],
        eval_user_idx=prepared.user_idx[held],
        eval_movie_idx=prepared.movie_idx[held],
        eval_rating=prepared.rating[held],
        n_users=prepared.n_users,
        n_movies=prepared.n_movies,
        relevance=4.0,
    )
    for a, b in ((fast.seen, ref.seen), (fast.relevant, ref.relevant)):
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
    users = fast.users(max_users=50, seed=1)
    np.testing.assert_array_equal(users, ref.users(max_users=50, seed=1))
    assert users.size == 50 and (fast.relevant.lengths()[users] > 0).all()


def test_held_out_sets_built_for_a_user_sample_give_those_users_the_full_sets(prepared) -> None:
    """Validation builds the seen sets of the users it ranks only; they must equal the full sets, and a draw of
    other users must be refused rather than ranked with nothing masked."""
    from embedrec.evaluation import HeldOut

    full = HeldOut.from_prepared(prepared, split_code=1, relevance=4.0)
    sampled = HeldOut.from_prepared(prepared, split_code=1, relevance=4.0, sample=(40, 3))
    users = sampled.users(max_users=40, seed=3)
    np.testing.assert_array_equal(users, full.users(max_users=40, seed=3))
    assert users.size == 40 and sampled.seen.lengths()[users].sum() > 0
    for a, b in ((sampled.seen.take(users), full.seen.take(users)), (sampled.relevant, full.relevant)):
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
    others = np.setdiff1d(np.arange(prepared.n_users), users)
    assert sampled.seen.lengths()[others].sum() == 0
    with pytest.raises(ValueError, match="sample of 40 users"):
        sampled.users(max_users=40, seed=4)


def test_evaluate_model_gives_the_same_numbers_with_or_without_the_user_index(
    trained: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    from embedrec.artifacts import load_model
    from embedrec.data import load_prepared
    from embedrec.evaluation import evaluate_model, in_threads
    from embedrec.scoring import Scorer

    scorer = Scorer.from_artifact(load_model(trained))
    new = load_prepared(synthetic_prepared)
    old = load_prepared(_without_user_index(synthetic_prepared, tmp_path / "old"))
    assert old.user_index is None and old.fingerprint == new.fingerprint
    assert evaluate_model(scorer, new, ks=(5, 10)) == evaluate_model(scorer, old, ks=(5, 10))
    u, m = new.user_idx[:20_000], new.movie_idx[:20_000]
    threaded = in_threads(scorer.predict_pairs, chunk=4096, workers=3)(u, m)
    # the chunks, not the threads, decide the numbers (BLAS may round a row differently in another block size)
    np.testing.assert_array_equal(threaded, in_threads(scorer.predict_pairs, chunk=4096, workers=1)(u, m))
    np.testing.assert_allclose(threaded, scorer.predict_pairs(u, m), rtol=1e-6)


def test_a_paired_gain_is_the_difference_of_the_two_models_evaluations_with_its_error(
    trained: Path, planted: Path, prepared
) -> None:
    from embedrec.artifacts import load_model
    from embedrec.evaluation import evaluate_model, paired_gain
    from embedrec.scoring import Scorer

    new, base = (Scorer.from_artifact(load_model(path)) for path in (trained, planted))
    gain = paired_gain(new, base, prepared, split="val")
    ev = {
        name: evaluate_model(s, prepared, split="val", baselines=False, variants=False)
        for name, s in (("new", new), ("base", base))
    }
    assert gain.n_users == ev["new"]["n_users"] == ev["base"]["n_users"] > 50
    assert gain.ndcg_gain == pytest.approx(ev["new"]["ndcg@10"] - ev["base"]["ndcg@10"], abs=1e-12)
    assert gain.mse_gain == pytest.approx(ev["base"]["rmse"] ** 2 - ev["new"]["rmse"] ** 2, rel=1e-6)
    assert gain.base_rmse == pytest.approx(ev["base"]["rmse"], rel=1e-6)
    assert gain.n_ratings == int((prepared.split == 1).sum())
    assert 0 < gain.ndcg_se < 0.1 and 0 < gain.mse_se
    flipped = paired_gain(base, new, prepared, split="val")
    assert flipped.ndcg_gain == pytest.approx(-gain.ndcg_gain) and flipped.ndcg_se == pytest.approx(gain.ndcg_se)
    same = paired_gain(new, new, prepared, split="val")
    assert same.ndcg_gain == same.ndcg_se == same.mse_gain == same.mse_se == 0.0
    sample = paired_gain(new, base, prepared, split="val", max_users=40)
    assert sample.n_users == 40 and sample.n_ratings == gain.n_ratings
