"""Metrics on tiny cases whose values are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedrec.metrics import ItemSets, mae, ndcg_per_user, ranking_metrics, rmse, top_k, top_k_of_sums

INV_LOG2_3 = 1.0 / math.log2(3)  # the discount at position 2


def test_rmse_and_mae_by_hand() -> None:
    # errors 1, 0, 0, -2: MSE = (1 + 4) / 4 = 1.25, MAE = 3 / 4
    y_true = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    y_pred = np.array([2.0, 2.0, 3.0, 2.0], dtype=np.float32)
    assert rmse(y_true, y_pred) == pytest.approx(math.sqrt(1.25))
    assert mae(y_true, y_pred) == pytest.approx(0.75)


def test_rmse_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="y_pred has 1"):
        rmse(np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="zero ratings"):
        mae(np.array([]), np.array([]))


def test_item_sets_group_sort_and_dedupe_pairs() -> None:
    sets = ItemSets.from_pairs(np.array([2, 0, 2, 0, 2]), np.array([4, 1, 0, 1, 3]), n_rows=3, n_items=5)
    assert sets.indptr.tolist() == [0, 1, 1, 4]
    assert sets.indices.tolist() == [1, 0, 3, 4]
    assert sets.take(np.array([2, 1, 0])).indices.tolist() == [0, 3, 4, 1]
    assert sets.take(np.array([2, 1, 0])).lengths().tolist() == [3, 0, 1]
    assert sets.mask(np.array([0, 2])).tolist() == [
        [False, True, False, False, False],
        [True, False, False, True, True],
    ]
    assert sets.dense(np.array([2]), dtype=np.float64).tolist() == [[1.0, 0.0, 0.0, 1.0, 1.0]]


def test_item_sets_reject_out_of_range_items() -> None:
    with pytest.raises(ValueError, match="item index out of range"):
        ItemSets.from_pairs(np.array([0]), np.array([5]), n_rows=1, n_items=5)


def test_top_k_orders_best_first_and_excludes_masked_items() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    exclude = np.array([[False, True, False, False], [True, False, False, False]])
    assert top_k(scores, 2, exclude=exclude).tolist() == [[3, 2], [1, 2]]


def test_top_k_pads_with_minus_one_rather_than_return_excluded_items() -> None:
    scores = np.array([[5.0, 4.0, 3.0]])
    exclude = np.array([[True, False, True]])
    assert top_k(scores, 3, exclude=exclude).tolist() == [[1, -1, -1]]
    assert top_k(scores, 5).tolist() == [[0, 1, 2, -1, -1]]


def test_top_k_accepts_integer_scores_and_rejects_nan() -> None:
    assert top_k(np.array([[3, 7, 5]]), 2).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([[1.0, np.nan]]), 1)


def _top_k_by_full_sort(scores: np.ndarray, k: int) -> np.ndarray:
    """The definition top_k must meet: a stable sort of every row, -inf never listed."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.where(np.take_along_axis(scores, order, axis=1) == -np.inf, -1, order)
    return np.pad(out, ((0, 0), (0, max(0, k - out.shape[1]))), constant_values=-1).astype(np.int32)


@pytest.mark.parametrize("k", [1, 10, 100, 500, 800])
def test_top_k_over_a_wide_catalogue_equals_a_full_sort(k: int) -> None:
    """Wide rows take the threshold prefilter (a strided sample sets a per-row cut, only scores above it are
    partitioned); rows where the cut keeps fewer than k scores, mostly-excluded rows and all-excluded rows take the
    plain path. Every case must list exactly what sorting the whole row lists."""
    rng = np.random.default_rng(k)
    n_items = 30_000
    scores = rng.standard_normal((24, n_items)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.01] = -np.inf  # seen movies
    scores[1, : n_items - k // 2] = -np.inf  # fewer eligible movies than k: a short list
    scores[2] = -np.inf  # everything excluded
    scores[3, :: max(8, 3 * k // 48)] += 10.0  # the sample is the best movies: its cut keeps too few for k >= 48
    scores[4] = np.linspace(0, 1, n_items, dtype=np.float32)  # sorted rows: the best all at one end
    scores[5] = scores[4, ::-1]
    np.testing.assert_array_equal(top_k(scores, k), _top_k_by_full_sort(scores, k))
    np.testing.assert_array_equal(top_k(scores.astype(np.float64), k), _top_k_by_full_sort(scores, k))


@pytest.mark.parametrize("k", [7, 500])
def test_top_k_with_ties_lists_what_a_full_sort_lists(k: int) -> None:
    """Equal scores at the cut and inside the list go to the lower index, wide rows (the packed prefilter) and
    narrow ones alike, whatever order argpartition leaves them in on this machine."""
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 50, (16, 20_000)).astype(np.float32)  # many ties at every cut
    for matrix in (scores, scores[:, :600], scores.astype(np.float64)):
        np.testing.assert_array_equal(top_k(matrix, k), _top_k_by_full_sort(matrix, k))


@pytest.mark.parametrize("k", [1, 10, 50])
def test_top_k_over_narrow_rows_lists_what_a_full_sort_lists_ties_included(k: int) -> None:
    """Narrow rows (500 candidates re-ranked) find the k-th score by value; where equal scores could make the list
    depend on argpartition's order (a tie at the cut or inside the list, -inf listed), it is still the full sort's."""
    rng = np.random.default_rng(k)
    scores = rng.standard_normal((300, 500)).astype(np.float32)
    scores[:100] = np.round(scores[:100] * 3)  # ties at the cut and inside the lists
    scores[100:150, rng.integers(0, 500, 400)] = -np.inf
    scores[150, :-3] = -np.inf  # fewer than k finite
    scores[151] = -np.inf
    scores[152, :20] = 7.0  # the best twenty all equal
    for matrix in (scores, scores.astype(np.float64)):
        np.testing.assert_array_equal(top_k(matrix, k), _top_k_by_full_sort(matrix, k))


def _sums_with_ties(seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Watch-logit-like rows (low rank, users of every scale; wide enough for top_k's sampled threshold) rounded
    to quarters, so that ties are everywhere, with the cases top_k treats apart; per-column offsets like a
    popularity prior at several weights, which leave most columns unable to reach a row's top."""
    rng = np.random.default_rng(seed)
    n_items = 8_000  # at k = 300 top_k samples every 18th score, and needs 8 x 48 x 18 = 6,912
    scale = rng.choice([0.05, 0.3, 1.0], size=(70, 1))  # three blocks of rows for top_k_of_sums, the last partial
    base = (np.round(4 * scale * (rng.standard_normal((70, 4)) @ rng.standard_normal((4, n_items)))) / 4).astype(
        np.float32
    )
    base[rng.random(base.shape) < 0.02] = -np.inf  # seen movies
    base[1, :-40] = -np.inf  # fewer eligible movies than k: a short list
    base[2] = -np.inf  # everything seen
    base[3] = 0.0  # one score for every movie: the offset alone decides, ties and all
    base[4, :: max(8, 3 * 300 // 48)] += 100.0  # the sample is the best movies: its cut keeps too few
    base[5] = rng.standard_normal(n_items).astype(np.float32)  # continuous scores
    prior = np.log1p(rng.zipf(1.5, n_items).clip(max=10_000)).astype(np.float32)  # equal counts tie
    offsets = [np.zeros(n_items, np.float32), rng.integers(0, 3, n_items).astype(np.float32)]
    offsets += [(gamma * prior).astype(np.float32) for gamma in (0.5, 2.0, 8.0)]
    offsets.append(rng.standard_normal(n_items).astype(np.float32))
    return base, offsets


@pytest.mark.parametrize("k", [1, 10, 60, 300])
def test_top_k_of_sums_lists_what_top_k_of_each_sum_lists_ties_included(k: int) -> None:
    """The same movies in the same order as top_k over each sum matrix, even where equal scores make the choice
    arbitrary (top_k_of_sums reproduces top_k's own packed partition), and the sums they score."""
    base, offsets = _sums_with_ties(k)
    offsets.append(offsets[3].astype(np.float64))  # another dtype, and a non-finite offset: top_k's own path
    offsets.append(np.where(np.arange(base.shape[1]) % 7 == 0, -np.inf, offsets[1]).astype(np.float32))
    got = top_k_of_sums(base, offsets, k)
    assert len(got) == len(offsets)
    for offset, (listed, scores) in zip(offsets, got):
        sums = np.add(base, offset, out=np.empty_like(base))
        want = top_k(sums, k)
        np.testing.assert_array_equal(listed, want)
        at = np.take_along_axis(sums, np.maximum(want, 0), axis=1)
        np.testing.assert_array_equal(scores, np.where(want >= 0, at, -np.inf))
    assert (got[0][0][2] == -1).all() and (got[0][0][1, 40:] == -1).all()


def test_top_k_of_sums_refuses_nan_like_top_k() -> None:
    base, offsets = _sums_with_ties(0)
    bad = base.copy()
    bad[7, 11] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        top_k_of_sums(bad, offsets, 10)
    with pytest.raises(ValueError, match="NaN"):
        top_k_of_sums(base, [np.where(np.arange(base.shape[1]) == 3, np.nan, offsets[1])], 10)
    with pytest.raises(ValueError, match="offset has shape"):
        top_k_of_sums(base, [offsets[0][:-1]], 10)


def test_sorted_best_first_orders_by_score_then_item() -> None:
    """The float32 key sort that orders top_k's kept scores and reads them back: equal scores (0.0 and -0.0 among
    them) by item, infinities at the ends, every score returned bit for bit (-0.0 as 0.0)."""
    from embedrec.metrics import _sorted_best_first

    rng = np.random.default_rng(3)
    scores = rng.integers(-3, 4, (50, 300)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = np.inf
    scores[rng.random(scores.shape) < 0.1] = -0.0
    scores[:5] = rng.standard_normal((5, 300)).astype(np.float32) * 1e-30  # subnormal and tiny magnitudes
    items = np.argsort(rng.random(scores.shape), axis=1)  # a permutation per row: ties are ordered by these
    order = np.lexsort((items, -scores), axis=-1)
    want_items = np.take_along_axis(items, order, axis=1)
    want_scores = np.take_along_axis(scores, order, axis=1) + np.float32(0.0)
    for matrix in (scores, scores.astype(np.float64)):
        got_items, got_scores = _sorted_best_first(items, matrix)
        np.testing.assert_array_equal(got_items, want_items)
        np.testing.assert_array_equal(got_scores, want_scores.astype(matrix.dtype))
        assert got_scores.dtype == matrix.dtype
    got_bits = _sorted_best_first(items, scores)[1].view(np.int32)
    np.testing.assert_array_equal(got_bits, want_scores.view(np.int32))


def test_ranking_metrics_by_hand() -> None:
    # 6 items, K = 3.
    # user 0: list [0, 1, 2], relevant {1, 4}: one hit at position 2.
    #   precision 1/3, recall 1/2, DCG = 1/log2(3), IDCG (min(2, 3) = 2 items) = 1 + 1/log2(3),
    #   hr 1, AP = precision@2 / min(2, 3) = (1/2) / 2 = 1/4.
    # user 1: list [3, 5, 4], relevant {3}: hit at position 1.
    #   precision 1/3, recall 1, NDCG 1, hr 1, AP 1.
    # user 2: list [5, 4, 3], no relevant item: skipped, also for coverage.
    topk = np.array([[0, 1, 2], [3, 5, 4], [5, 4, 3]])
    relevant = ItemSets.from_lists([[1, 4], [3], []], n_items=6)
    got = ranking_metrics(topk, relevant, ks=(1, 3))

    ndcg_user0 = INV_LOG2_3 / (1.0 + INV_LOG2_3)  # 0.38685
    assert got["precision@3"] == pytest.approx(1 / 3)
    assert got["recall@3"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["ndcg@3"] == pytest.approx((ndcg_user0 + 1.0) / 2)
    assert got["hr@3"] == pytest.approx(1.0)
    assert got["map@3"] == pytest.approx((1 / 4 + 1) / 2)
    assert got["coverage@3"] == pytest.approx(6 / 6)  # {0, 1, 2} and {3, 5, 4}

    # K = 1: user 0 shows [0] (miss), user 1 shows [3] (hit). IDCG of user 0 covers min(2, 1) = 1 item.
    assert got["precision@1"] == pytest.approx(0.5)
    assert got["recall@1"] == pytest.approx(0.5)
    assert got["ndcg@1"] == pytest.approx(0.5)
    assert got["hr@1"] == pytest.approx(0.5)
    assert got["map@1"] == pytest.approx(0.5)
    assert got["coverage@1"] == pytest.approx(2 / 6)  # {0, 3}; user 2's item 5 does not count

    assert set(got) == {f"{m}@{k}" for m in ("precision", "recall", "ndcg", "hr", "map", "coverage") for k in (1, 3)}


def test_ndcg_per_user_holds_each_relevant_users_value_whose_mean_is_the_reported_ndcg() -> None:
    topk = np.array([[0, 1, 2], [3, 5, 4], [5, 4, 3], [2, -1, -1]])
    relevant = ItemSets.from_lists([[1, 4], [3], [], [0, 2]], n_items=6)
    per_user = ndcg_per_user(topk, relevant, k=3)  # user 2 has no relevant item: left out
    assert per_user == pytest.approx([INV_LOG2_3 / (1.0 + INV_LOG2_3), 1.0, 1.0 / (1.0 + INV_LOG2_3)])
    assert per_user.mean() == ranking_metrics(topk, relevant, ks=(3,))["ndcg@3"]
    assert ndcg_per_user(topk, relevant, k=1) == pytest.approx([0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="k=4"):
        ndcg_per_user(topk, relevant, k=4)
    with pytest.raises(ValueError, match="relevant sets"):
        ndcg_per_user(topk[:2], relevant, k=3)


def test_recall_divides_by_all_relevant_and_map_by_min_relevant_k() -> None:
    # relevant {0, 1, 2, 3}, list [0, 1]: two hits out of four relevant.
    # recall@2 = 2/4, precision 1, NDCG 1 (IDCG over min(4, 2) = 2), AP = (1 + 1) / min(4, 2) = 1.
    got = ranking_metrics(np.array([[0, 1]]), ItemSets.from_lists([[0, 1, 2, 3]], n_items=5), ks=(2,))
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["precision@2"] == pytest.approx(1.0)
    assert got["ndcg@2"] == pytest.approx(1.0)
    assert got["map@2"] == pytest.approx(1.0)


def test_padding_counts_as_miss() -> None:
    # list [2, -1, -1], relevant {0, 2}: a hit at 1 only; precision 1/3, NDCG 1 / (1 + 1/log2 3), AP 1/2.
    got = ranking_metrics(np.array([[2, -1, -1]]), ItemSets.from_lists([[0, 2]], n_items=3), ks=(3,))
    assert got["precision@3"] == pytest.approx(1 / 3)
    assert got["ndcg@3"] == pytest.approx(1.0 / (1.0 + INV_LOG2_3))
    assert got["map@3"] == pytest.approx(0.5)
    assert got["coverage@3"] == pytest.approx(1 / 3)


def test_ranking_metrics_reject_k_beyond_the_lists_and_no_relevant_users() -> None:
    relevant = ItemSets.from_lists([[0]], n_items=3)
    with pytest.raises(ValueError, match="k=3"):
        ranking_metrics(np.array([[0, 1]]), relevant, ks=(3,))
    with pytest.raises(ValueError, match="no user has a relevant item"):
        ranking_metrics(np.array([[0, 1]]), ItemSets.from_lists([[]], n_items=3), ks=(1,))
