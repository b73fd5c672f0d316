"""Evaluation: rating error, full-ranking top-K metrics, the baselines on the same split, and a whole model.

Synopsis::

    from embedrec.evaluation import evaluate_model
    evaluate_model(Scorer.from_artifact(load_model("runs/latest")), load_prepared("work/data"), split="test")
    # {"rmse": 0.90, ..., "ndcg@10": 0.34, "baselines": {...}, "variants": {...}}

The free functions below work over arrays and any scoring function (the training loop passes its JAX scorer)::

    from embedrec.evaluation import evaluate_baselines, evaluate_ranking, evaluate_ratings

    test = split == 2
    evaluate_ratings(model.predict, user_idx=user_idx[test], movie_idx=movie_idx[test], rating=rating[test])
    # {"rmse": 0.93, "mae": 0.73}
    train = split == 0
    evaluate_ranking(
        model.score,  # (user_idx batch) -> (batch, n_movies) scores, higher is better
        train_user_idx=user_idx[train], train_movie_idx=movie_idx[train],
        eval_user_idx=user_idx[test], eval_movie_idx=movie_idx[test], eval_rating=rating[test],
        n_users=n_users, n_movies=n_movies, ks=(10, 20),
    )
    # {"precision@10": ..., "ndcg@10": ..., "coverage@20": ..., "n_users": 912}
    evaluate_baselines(user_idx=user_idx, movie_idx=movie_idx, rating=rating, split=split,
                       n_users=n_users, n_movies=n_movies)

Ranking is full ranking: every movie the user has not already rated (the ``train_*`` pairs given; the baselines
pass train, plus val when evaluating test) is a candidate, with no sampled negatives,
because sampled metrics overstate quality and can even reorder models (Krichene & Rendle, 2020). The relevant
items of a user are their eval-split ratings at or above ``relevance``; users with none are skipped, and metrics
are means over the users that remain (reported as ``n_users``). Metric definitions are in
:mod:`embedrec.metrics`.

Scoring runs in batches of users: one ``(batch, n_movies)`` score matrix at a time, train-seen items set to
``-inf``, then ``argpartition``, so 20k users x 25k movies needs about 50 MB of scores at a time, not 2 GB.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.baselines import EASE, BiasBaseline, GlobalMean, MostPopular, TopRated
from embedrec.blas import available_cpus, each_in_threads, single_threaded_blas
from embedrec.data.split import SPLIT_CODES, TEST, TRAIN
from embedrec.errors import ConfigError, DataError
from embedrec.metrics import ItemSets, mae, ndcg_per_user, ranking_metrics, rmse, top_k
from embedrec.scoring import DEFAULT_CANDIDATES, Ranking

if TYPE_CHECKING:
    from embedrec.data.store import PreparedData
    from embedrec.scoring import Scorer

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""``score_fn(user_idx) -> (len(user_idx), n_movies)`` scores, higher is better."""
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``predict_fn(user_idx, movie_idx) -> ratings``, one per pair."""
RankFn = Callable[[np.ndarray, int, "ItemSets"], np.ndarray]
"""``rank_fn(user_idx, k, seen) -> (len(user_idx), k)`` movie indices, best first, -1 padding; ``seen`` (row i =
user i) must not be listed. For models that rank without scoring every movie (two-stage retrieval)."""
ProgressFn = Callable[[int, int], None]
"""``on_progress(users_done, users_total)``, called after each batch."""
StageProgressFn = Callable[[str, int, int], None]
"""``on_progress(stage, done, total)``: which part of an evaluation runs ("model", "rating only", ...) and how far."""
VARIANT_USERS = 2_000
"""Users the rating-only and watch-only variants rank at most (a seeded sample): rating-only ranking has no cheap
first stage, so over every user of a full-size catalogue it would cost more than the rest of the evaluation."""
VARIANT_PAIRS = VARIANT_USERS * 25_000
"""(user, movie) pairs the rating-only variant runs through the network at most: 2,000 users up to the original's
25,000 movies, fewer beyond (581 at 86,000 movies, where 2,000 users took a minute of a five-minute budget)."""


@dataclass(frozen=True)
class HeldOut:
    """What ranking on one held-out split needs, built once and shared by the model, its variants and the baselines:
    each user's already-rated movies (never listed) and relevant held-out movies, as CSR.

    Building the seen sets from 22M training pairs costs a sort of them; at full MovieLens scale that was paid once
    per ranked model (five times per ``evaluate``). :meth:`from_prepared` takes them from the prepared folder's
    per-user index instead, which is already sorted by user; given the user sample it ranks, only those users' sets.
    """

    seen: ItemSets
    relevant: ItemSets
    seen_users: np.ndarray | None = None  # the users whose seen sets were built (sorted); None: every user

    @classmethod
    def from_pairs(
        cls,
        *,
        train_user_idx: np.ndarray,
        train_movie_idx: np.ndarray,
        eval_user_idx: np.ndarray,
        eval_movie_idx: np.ndarray,
        eval_rating: np.ndarray,
        n_users: int,
        n_movies: int,
        relevance: float,
    ) -> HeldOut:
        seen = ItemSets.from_pairs(train_user_idx, train_movie_idx, n_rows=n_users, n_items=n_movies)
        is_relevant = np.asarray(eval_rating) >= relevance
        relevant = ItemSets.from_pairs(
            np.asarray(eval_user_idx)[is_relevant],
            np.asarray(eval_movie_idx)[is_relevant],
            n_rows=n_users,
            n_items=n_movies,
        )
        return cls(seen=seen, relevant=relevant)

    @classmethod
    def from_prepared(
        cls,
        prepared: PreparedData,
        *,
        split_code: int,
        relevance: float,
        sample: tuple[int | None, int] | None = None,
    ) -> HeldOut:
        """Seen: every rating in an earlier split (train for val; train and val for test). Relevant: the split's
        ratings at or above ``relevance``.

        ``sample``, ``(max_users, seed)`` of the only :meth:`users` call to come: the seen sets of those users alone
        (the others' stay empty), from the per-user index when the folder has one. Training's validation ranks 2,000
        users; at full MovieLens scale the sets of all 280,000 cost 0.4-1 s of its set-up (a pass over 27M ratings).
        """
        held = prepared.split == split_code
        is_relevant = held & (prepared.rating >= relevance)
        relevant = ItemSets.from_pairs(
            prepared.user_idx[is_relevant],
            prepared.movie_idx[is_relevant],
            n_rows=prepared.n_users,
            n_items=prepared.n_movies,
        )
        index = prepared.user_index
        if index is not None and sample is not None:
            rows = _draw_users(relevant, max_users=sample[0], seed=sample[1])
            indptr = np.asarray(index.indptr)
            starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
            # positions of the rows' ratings in the index, row after row
            at = np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            keep = np.asarray(index.split)[at] < split_code
            counts = np.zeros(prepared.n_users, dtype=np.int64)
            counts[rows] = np.bincount(np.repeat(np.arange(rows.size), lengths)[keep], minlength=rows.size)
            seen_indptr = np.zeros(prepared.n_users + 1, dtype=np.int64)
            np.cumsum(counts, out=seen_indptr[1:])
            seen = ItemSets(
                indptr=seen_indptr, indices=np.asarray(index.movie_idx)[at[keep]], n_items=prepared.n_movies
            )
            return cls(seen=seen, relevant=relevant, seen_users=rows)
        if index is None:  # a folder prepared before the per-user index
            earlier = prepared.split < split_code
            seen = ItemSets.from_pairs(
                prepared.user_idx[earlier],
                prepared.movie_idx[earlier],
                n_rows=prepared.n_users,
                n_items=prepared.n_movies,
            )
        else:
            keep = np.asarray(index.split) < split_code
            kept_before = np.zeros(keep.size + 1, dtype=np.int64)
            np.cumsum(keep, out=kept_before[1:])
            seen = ItemSets(
                indptr=kept_before[np.asarray(index.indptr)],
                indices=np.asarray(index.movie_idx)[keep],
                n_items=prepared.n_movies,
            )
        return cls(seen=seen, relevant=relevant)

    def users(self, *, max_users: int | None, seed: int) -> np.ndarray:
        """The users evaluated: those with a relevant movie, or a seeded sample of ``max_users`` of them. Sets
        built for one sample (:meth:`from_prepared`'s ``sample``) refuse a draw of other users."""
        users = _draw_users(self.relevant, max_users=max_users, seed=seed)
        if self.seen_users is not None and not np.isin(users, self.seen_users).all():
            raise ValueError(
                f"these held-out sets hold the seen movies of a sample of {self.seen_users.size} users only; "
                f"build them for max_users={max_users}, seed={seed}"
            )
        return users


def _draw_users(relevant: ItemSets, *, max_users: int | None, seed: int) -> np.ndarray:
    """The users with a relevant movie, or a seeded sample of ``max_users`` of them (sorted)."""
    users = np.flatnonzero(relevant.lengths() > 0)
    if max_users is not None and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    return users


def default_relevance(rating_min: float, rating_max: float) -> float:
    """The rating from which a held-out rating counts as relevant: 4 stars on MovieLens' 1..5 and 0.5..5 scales,
    the top quarter of any other scale (8 of 2..10, 7.75 of 1..10), so nothing assumes five stars."""
    if (rating_min, rating_max) in ((0.5, 5.0), (1.0, 5.0)):
        return 4.0
    return rating_min + 0.75 * (rating_max - rating_min)


def evaluate_model(
    scorer: Scorer,
    prepared: PreparedData,
    *,
    split: str = "test",
    ks: Sequence[int] = (10,),
    relevance: float | None = None,
    baselines: bool = True,
    variants: bool = True,
    max_users: int | None = None,
    seed: int = 0,
    candidates: int | None = DEFAULT_CANDIDATES,
    on_progress: StageProgressFn | None = None,
) -> dict[str, Any]:
    """Rating error and full-ranking metrics of the model on ``split``, with the baselines on the same split.

    Returns ``{"rmse", "mae", "precision@K", ..., "n_users", "ranking": {...}, "baselines": {...}}`` and, for models
    with a watch head, ``"variants"`` holding the ranking metrics of rating-only and watch-only scores (on a seeded
    sample of at most :data:`VARIANT_USERS` users, fewer past 25,000 movies (:data:`VARIANT_PAIRS`), given as their
    ``n_users``). The model must have been trained on
    ``prepared`` (same fingerprint; the caller checks).

    The model ranks by :meth:`Scorer.rank`: two-stage with ``candidates`` movies per user re-ranked by the full
    network, or every movie when ``candidates`` is None (``result["candidates"]`` says which). ``max_users`` ranks
    a seeded sample of users (``result["max_users"]``). Candidates are every movie the user has not rated in an
    earlier split (train for val; train and val for test), the same protocol as the baselines, so the rows compare
    like with like: a val rating is a known watch, so it is neither credited nor blamed when ranking for test.
    """
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    if relevance is None:  # 4 of 1..5, the top quarter of other scales: what training validates with
        relevance = default_relevance(float(prepared.summary["rating_min"]), float(prepared.summary["rating_max"]))
    code = SPLIT_CODES[split]
    held = prepared.split == code
    if not held.any():
        other = "test" if split == "val" else "val"
        frac = f"--{split}-frac"
        raise DataError(
            f"the {split} split of {prepared.path} is empty: evaluate --split {other}, or prepare the data again "
            f"with {frac} above 0"
        )

    def stage(name: str) -> ProgressFn | None:
        return None if on_progress is None else (lambda done, total: on_progress(name, done, total))

    u, m, r = prepared.user_idx, prepared.movie_idx, prepared.rating
    with single_threaded_blas():
        result: dict[str, Any] = dict(
            evaluate_ratings(in_threads(scorer.predict_pairs), user_idx=u[held], movie_idx=m[held], rating=r[held])
        )
    held_out = HeldOut.from_prepared(prepared, split_code=code, relevance=relevance)
    common: dict[str, Any] = dict(
        train_user_idx=None,
        train_movie_idx=None,
        eval_user_idx=None,
        eval_movie_idx=None,
        eval_rating=None,
        held_out=held_out,
        n_users=prepared.n_users,
        n_movies=prepared.n_movies,
        ks=ks,
        relevance=relevance,
        seed=seed,
    )

    result.update(
        evaluate_ranking(
            None,
            rank_fn=served_rank_fn(scorer, scorer.ranking, candidates),
            on_progress=stage("model"),
            max_users=max_users,
            batch_size=256,
            **common,
        )
    )
    result["ranking"] = scorer.ranking.to_dict()
    result["candidates"] = candidates
    result["scoring"] = scoring_description(scorer.ranking, candidates, ann=scorer.ann)
    result["max_users"] = max_users
    if variants and scorer.has_watch:
        sample = min(max_users or VARIANT_USERS, VARIANT_USERS, max(1, VARIANT_PAIRS // prepared.n_movies))
        result["variants"] = {
            "rating_only": evaluate_ranking(
                None,
                rank_fn=served_rank_fn(scorer, Ranking("rating"), None),
                max_users=sample,
                on_progress=stage("rating only"),
                batch_size=256,
                **common,
            ),
            "watch_only": evaluate_ranking(
                None,
                rank_fn=served_rank_fn(scorer, Ranking("blend", 0.0), None),
                max_users=sample,
                on_progress=stage("watch only"),
                batch_size=256,
                **common,
            ),
        }
    if baselines:
        result["baselines"] = evaluate_baselines(
            user_idx=u,
            movie_idx=m,
            rating=r,
            split=prepared.split,
            n_users=prepared.n_users,
            n_movies=prepared.n_movies,
            eval_split=code,
            ks=ks,
            relevance=relevance,
            max_users=max_users,
            seed=seed,
            on_progress=on_progress,
            held_out=held_out,
        )
    return result


def in_threads(predict_fn: PredictFn, *, chunk: int = 1 << 18, workers: int | None = None) -> PredictFn:
    """``predict_fn`` over fixed chunks of the pairs in parallel threads (numpy releases the GIL in its large
    operations): the rating error of 5.4M held-out pairs ran on one core before. Chunks have a fixed size, so the
    numbers do not depend on the number of threads."""

    def predict(user_idx: np.ndarray, movie_idx: np.ndarray) -> np.ndarray:
        def part(start: int) -> np.ndarray:
            return np.asarray(predict_fn(user_idx[start : start + chunk], movie_idx[start : start + chunk]))

        starts = range(0, len(user_idx), chunk)
        n_threads = min(workers or available_cpus(), len(starts))
        if n_threads <= 1:
            parts = [part(s) for s in starts]
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                parts = list(pool.map(part, starts))
        return np.concatenate(parts) if parts else np.asarray(predict_fn(user_idx, movie_idx))

    return predict


def ndcg_by_blend(
    scorer: Scorer,
    prepared: PreparedData,
    *,
    betas: Sequence[float],
    gamma: float = 0.0,
    split: str = "val",
    k: int = 10,
    relevance: float = 4.0,
    max_users: int | None = 2_000,
    seed: int = 0,
    candidates: int = DEFAULT_CANDIDATES,
    held_out: HeldOut | None = None,
) -> dict[float, float] | None:
    """NDCG@``k`` of the two-stage ranking ``watch + gamma * prior + beta * rating`` for every beta, on a seeded
    user sample (``gamma`` != 0 needs a scorer with a ``popularity_prior``): :func:`ndcg_by_blends` of one side."""
    side = scorer.watch_side_bias(Ranking("blend", 0.0, gamma))
    got = ndcg_by_blends(
        scorer,
        prepared,
        sides=[side],
        betas=betas,
        split=split,
        k=k,
        relevance=relevance,
        max_users=max_users,
        seed=seed,
        candidates=candidates,
        held_out=held_out,
    )
    return None if got is None else got[0]


def ndcg_by_blends(
    scorer: Scorer,
    prepared: PreparedData,
    *,
    sides: Sequence[np.ndarray],
    betas: Sequence[float],
    split: str = "val",
    k: int = 10,
    relevance: float = 4.0,
    max_users: int | None = 2_000,
    seed: int = 0,
    candidates: int = DEFAULT_CANDIDATES,
    batch_size: int = 128,
    held_out: HeldOut | None = None,
    workers: int | None = None,
) -> list[dict[float, float]] | None:
    """For each watch side (a per-movie bias in place of the watch bias: the watch bias + gamma x a prior), NDCG@``k``
    of the two-stage ranking ``watch logit + side + beta * rating`` for every beta, on a seeded user sample.

    What training needs to choose the blend, with nothing computed twice: the seen and relevant sets are built once
    (pass ``held_out``, :meth:`HeldOut.from_prepared` of ``split`` at ``relevance``, to share them further); per
    batch of users the watch logits are computed once for every side, each side's ``candidates`` movies retrieved,
    and each (user, movie) pair run through the network once whichever sides retrieve it
    (:meth:`Scorer.candidates_by_side`); every beta is then a re-ordering of those arrays, all of a side's betas
    ranked in one :func:`~embedrec.metrics.top_k` call. Batches run in ``workers`` threads (default: the CPUs this
    process may use), one BLAS thread each, each thread reusing one buffer for its batches' watch logits. None when
    no user of ``split`` has a relevant rating.

    The batch size is part of the result: BLAS sums a row's products in an order that depends on the rows beside
    it, so another batch size can move a rating in its last bit. At full MovieLens scale (2,000 users, 86,000
    movies, 6 sides) this took 4.7 s of CPU before the per-side selection skipped the movies that cannot reach a
    user's list (``benchmarks/blend_choice.py``); it takes 2.2 s, with the same numbers to the bit.
    """
    if held_out is None:
        held_out = HeldOut.from_prepared(prepared, split_code=SPLIT_CODES[split], relevance=relevance)
    seen, relevant = held_out.seen, held_out.relevant
    users = held_out.users(max_users=max_users, seed=seed)
    if users.size == 0:
        return None
    n = min(candidates, prepared.n_movies)
    kk = min(k, n)
    tops = np.empty((len(sides), len(betas), users.size, kk), np.int64)  # each blend's top kk, kept per user
    beta_column = np.asarray(betas, dtype=np.float32)[:, None, None]

    own = threading.local()  # each thread's buffer for its batches' watch logits

    def run(start: int) -> None:
        batch = users[start : start + batch_size]
        emb, bias = scorer.user_rows(batch)
        block = slice(start, start + batch.size)
        if getattr(own, "logits", None) is None:
            own.logits = np.empty(batch_size * scorer.n_movies, np.float32)
        found = scorer.candidates_by_side(emb, bias, n, seen=seen.take(batch), sides=sides, logits_buffer=own.logits)
        for i, (movies, watch, rating) in enumerate(found):
            # every beta's blend as rows of one matrix: top_k ranks each row alone, in one call
            blend = watch + beta_column * np.nan_to_num(rating)
            blend[:, movies < 0] = -np.inf
            order = top_k(blend.reshape(-1, n), kk).reshape(len(betas), batch.size, kk)
            listed = np.take_along_axis(movies[None], np.maximum(order, 0), axis=2)
            tops[i, :, block] = np.where(order >= 0, listed, -1)

    scorer.every_movie  # noqa: B018  (built here, once, rather than by the first threads at the same time)
    with single_threaded_blas():  # with one worker too, as with several: the numbers do not depend on the count
        each_in_threads(run, range(0, users.size, batch_size), workers or available_cpus())
    wanted = relevant.take(users)
    return [
        {float(beta): ranking_metrics(tops[i, j], wanted, ks=(kk,))[f"ndcg@{kk}"] for j, beta in enumerate(betas)}
        for i in range(len(sides))
    ]


def evaluate_ratings(
    predict_fn: PredictFn, *, user_idx: np.ndarray, movie_idx: np.ndarray, rating: np.ndarray
) -> dict[str, float]:
    """RMSE and MAE of ``predict_fn`` on the given (already selected) rows, e.g. the test split.

    Taking the selected rows rather than a split code keeps this usable for any subset (a split, one user's
    ratings, a cold-start slice) with one signature.
    """
    if len(user_idx) == 0:
        raise DataError("no ratings to evaluate on (is the split empty?)")
    pred = np.asarray(predict_fn(np.asarray(user_idx), np.asarray(movie_idx)))
    return {"rmse": rmse(rating, pred), "mae": mae(rating, pred)}


def evaluate_ranking(
    score_fn: ScoreFn | None,
    *,
    train_user_idx: np.ndarray | None = None,
    train_movie_idx: np.ndarray | None = None,
    eval_user_idx: np.ndarray | None = None,
    eval_movie_idx: np.ndarray | None = None,
    eval_rating: np.ndarray | None = None,
    n_users: int,
    n_movies: int,
    ks: Sequence[int] = (10,),
    relevance: float = 4.0,
    batch_size: int = 512,
    max_users: int | None = None,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    rank_fn: RankFn | None = None,
    held_out: HeldOut | None = None,
    workers: int = 1,
) -> dict[str, float]:
    """Full-ranking top-K metrics of ``score_fn`` at each ``k`` in ``ks``, plus ``n_users`` evaluated.

    ``rank_fn``, when given, replaces ``score_fn`` (pass None for it): it returns each user's top K directly, so a
    model can rank without materialising every score (the scorer's two-stage retrieval). ``held_out``, when given,
    replaces the five pair arrays (pass None for them): the seen and relevant sets built once for several models.

    Each evaluated user's train items are excluded from their ranking (a recommender should not be credited for
    re-recommending what the user already rated, nor penalised for scoring it high). A user is evaluated only if
    at least one of their eval-split ratings is ``>= relevance``; users without a relevant item are skipped.
    ``max_users`` evaluates a random subset of those users drawn with ``seed`` (the same subset every call, so
    a per-epoch validation NDCG is comparable across epochs); ``None`` evaluates all. Raises
    :class:`~embedrec.errors.DataError` when no user has a relevant item, since every metric would be undefined.
    ``workers`` > 1 ranks batches in that many threads, one BLAS thread each (the same lists: each batch is ranked
    alone); ``score_fn`` / ``rank_fn`` must then be safe to call from several threads, as the numpy scorer is.
    """
    ks = _check_ranking_options(ks, batch_size=batch_size, max_users=max_users, n_movies=n_movies)
    if held_out is None:
        if train_user_idx is None or train_movie_idx is None or eval_user_idx is None or eval_movie_idx is None:
            raise ValueError("pass the train and eval pairs, or held_out")
        assert eval_rating is not None
        held_out = HeldOut.from_pairs(
            train_user_idx=train_user_idx,
            train_movie_idx=train_movie_idx,
            eval_user_idx=eval_user_idx,
            eval_movie_idx=eval_movie_idx,
            eval_rating=eval_rating,
            n_users=n_users,
            n_movies=n_movies,
            relevance=relevance,
        )
    train, relevant = held_out.seen, held_out.relevant
    users = held_out.users(max_users=max_users, seed=seed)
    if users.size == 0:
        raise DataError(f"no user has an eval rating >= {relevance}; ranking metrics are undefined")

    k_max = max(ks)
    topk = np.empty((users.size, k_max), dtype=np.int32)
    if on_progress is not None:
        on_progress(0, users.size)
    done = 0
    lock = threading.Lock()

    def run(start: int) -> None:
        nonlocal done
        batch = users[start : start + batch_size]
        if rank_fn is not None:
            topk[start : start + batch.size] = rank_fn(batch, k_max, train.take(batch))
        else:
            assert score_fn is not None
            scores = np.asarray(score_fn(batch))
            if scores.shape != (batch.size, n_movies):
                raise ValueError(f"score_fn returned shape {scores.shape}, expected {(batch.size, n_movies)}")
            topk[start : start + batch.size] = top_k(scores, k_max, exclude=train.mask(batch))
        with lock:
            done += batch.size
            if on_progress is not None:
                on_progress(done, users.size)

    each_in_threads(run, range(0, users.size, batch_size), workers)  # each batch's top K is its own
    result = ranking_metrics(topk, relevant.take(users), ks=ks)
    result["n_users"] = int(users.size)
    return result


@dataclass(frozen=True)
class PairedGain:
    """How much one model beats another on the same held-out split, paired unit by unit: ``ndcg_gain`` the mean
    over the same users of (new - base) NDCG@k of their served rankings, ``mse_gain`` the mean over the same ratings
    of (base - new) squared error, so that a positive gain is always the new model's; each ``*_se`` is that mean's
    standard error. ``ndcg_gain`` is None when no user has a relevant held-out rating."""

    ndcg_gain: float | None
    ndcg_se: float | None
    n_users: int
    mse_gain: float
    mse_se: float
    n_ratings: int
    base_rmse: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def paired_gain(
    new: Scorer,
    base: Scorer,
    prepared: PreparedData,
    *,
    split: str = "val",
    k: int = 10,
    relevance: float | None = None,
    max_users: int | None = None,
    seed: int = 0,
    candidates: int | None = DEFAULT_CANDIDATES,
) -> PairedGain:
    """:class:`PairedGain` of ``new`` over ``base`` on ``split``: each ranks the same users (every user with a
    relevant rating, or a seeded sample of ``max_users``) as ``evaluate`` ranks them (its own served ranking,
    two-stage with ``candidates``), and predicts the same ratings. Both models must be of ``prepared``."""
    if relevance is None:
        relevance = default_relevance(float(prepared.summary["rating_min"]), float(prepared.summary["rating_max"]))
    code = SPLIT_CODES[split]
    held = prepared.split == code
    if not held.any():
        raise DataError(f"the {split} split of {prepared.path} is empty")
    u, m, r = prepared.user_idx[held], prepared.movie_idx[held], prepared.rating[held].astype(np.float64)
    with single_threaded_blas():
        errors = [(np.asarray(in_threads(s.predict_pairs)(u, m), np.float64) - r) ** 2 for s in (base, new)]
    mse_diff = errors[0] - errors[1]
    held_out = HeldOut.from_prepared(prepared, split_code=code, relevance=relevance)
    users = held_out.users(max_users=max_users, seed=seed)
    ndcg_gain = ndcg_se = None
    if users.size:
        relevant = held_out.relevant.take(users)
        ndcg = [ndcg_per_user(_served_top(s, held_out.seen, users, k, candidates), relevant, k=k) for s in (new, base)]
        ndcg_gain, ndcg_se = _mean_and_se(ndcg[0] - ndcg[1])
    mse_gain, mse_se = _mean_and_se(mse_diff)
    return PairedGain(
        ndcg_gain=ndcg_gain,
        ndcg_se=ndcg_se,
        n_users=int(users.size),
        mse_gain=mse_gain,
        mse_se=mse_se,
        n_ratings=int(r.size),
        base_rmse=float(np.sqrt(errors[0].mean())),
    )


def served_rank_fn(scorer: Scorer, ranking: Ranking | None, candidates: int | None) -> RankFn:
    """The :data:`RankFn` of ``scorer`` ranking by ``ranking`` (None: its served one) over every movie, two-stage
    with ``candidates``: how ``evaluate`` ranks a model."""
    every_movie = scorer.every_movie

    def rank(users: np.ndarray, k: int, seen_sets: ItemSets) -> np.ndarray:
        emb, bias = scorer.user_rows(users)
        return scorer.rank(
            emb, bias, k, seen=seen_sets, allowed=every_movie, ranking=ranking, candidates=candidates
        ).movie_idx

    return rank


def _served_top(scorer: Scorer, seen: ItemSets, users: np.ndarray, k: int, candidates: int | None) -> np.ndarray:
    """(users, k) the served top ``k`` of each user (-1 pads), ranked as ``evaluate`` ranks."""
    rank = served_rank_fn(scorer, None, candidates)
    top = np.empty((users.size, k), np.int64)
    for start in range(0, users.size, 256):
        batch = users[start : start + 256]
        top[start : start + batch.size] = rank(batch, k, seen.take(batch))
    return top


def _mean_and_se(diff: np.ndarray) -> tuple[float, float]:
    n = diff.size
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else math.inf
    return float(diff.mean()), se


def evaluate_baselines(
    *,
    user_idx: np.ndarray,
    movie_idx: np.ndarray,
    rating: np.ndarray,
    split: np.ndarray,
    n_users: int,
    n_movies: int,
    eval_split: int = TEST,
    ks: Sequence[int] = (10,),
    relevance: float = 4.0,
    ease_lambda: float = 300.0,
    ease_max_items: int = 20_000,
    batch_size: int = 512,
    max_users: int | None = None,
    seed: int = 0,
    on_progress: StageProgressFn | None = None,
    held_out: HeldOut | None = None,
) -> dict[str, dict[str, float | str]]:
    """Fit every baseline on the train split and evaluate it on ``eval_split`` (``embedrec.data.split`` codes).

    Ranking candidates exclude what the user rated in any earlier split (train, and val when evaluating test): a
    val rating is a known watch, neither a hit nor a miss for a recommender.

    Returns ``{"global_mean": {"rmse", "mae"}, "bias": {"rmse", "mae"}, "popular": {...}, "top_rated": {...},
    "ease": {...}}``, the ranking entries keyed like :func:`evaluate_ranking`. When the catalogue has more than
    ``ease_max_items`` movies, EASE is not fitted and its entry is ``{"skipped": "<reason>"}``, so one
    oversized baseline does not cost the others. ``held_out``: the seen and relevant sets of ``eval_split`` when the
    caller has built them already (:class:`HeldOut`), else they are built here once for every baseline.
    """
    split = np.asarray(split)
    train = split == TRAIN
    test = split == eval_split
    if not train.any():
        raise DataError("the train split is empty")
    if not test.any():
        raise DataError(f"split {eval_split} is empty")
    fit_args = (user_idx[train], movie_idx[train], rating[train])
    # candidates: movies the user has not rated in an earlier split (train for val; train and val for test)
    seen = split < eval_split
    sizes: dict[str, Any] = {"n_users": n_users, "n_movies": n_movies}
    test_rows = {"user_idx": user_idx[test], "movie_idx": movie_idx[test], "rating": rating[test]}

    if held_out is None:
        held_out = HeldOut.from_pairs(
            train_user_idx=user_idx[seen],
            train_movie_idx=movie_idx[seen],
            eval_user_idx=test_rows["user_idx"],
            eval_movie_idx=test_rows["movie_idx"],
            eval_rating=test_rows["rating"],
            n_users=n_users,
            n_movies=n_movies,
            relevance=relevance,
        )
    results: dict[str, dict[str, float | str]] = {}
    for name, rating_model in (("global_mean", GlobalMean()), ("bias", BiasBaseline())):
        rating_model.fit(*fit_args, **sizes)
        results[name] = dict(evaluate_ratings(rating_model.predict, **test_rows))

    def ranking(name: str, score_fn: ScoreFn | None, rank_fn: RankFn | None = None) -> dict[str, float | str]:
        return dict(
            evaluate_ranking(
                score_fn,
                rank_fn=rank_fn,
                on_progress=None if on_progress is None else (lambda done, total: on_progress(name, done, total)),
                train_user_idx=None,
                train_movie_idx=None,
                eval_user_idx=None,
                eval_movie_idx=None,
                eval_rating=None,
                held_out=held_out,
                ks=ks,
                relevance=relevance,
                batch_size=batch_size,
                max_users=max_users,
                seed=seed,
                **sizes,
            )
        )

    popular = MostPopular().fit(*fit_args, **sizes).scores_
    top_rated = TopRated().fit(*fit_args, **sizes).scores_
    results["popular"] = ranking("baseline popular", None, rank_by_item_scores(popular))
    results["top_rated"] = ranking("baseline top rated", None, rank_by_item_scores(top_rated))
    try:
        ease = EASE(lambda_=ease_lambda, max_items=ease_max_items).fit(*fit_args, **sizes)
    except ConfigError as exc:
        results["ease"] = {"skipped": str(exc)}
    else:
        results["ease"] = ranking("baseline EASE", ease.score)
    return results


def scoring_description(ranking: Ranking, candidates: int | None, *, ann: bool = False) -> str:
    """How :meth:`Scorer.rank` ranks under these settings (``ann``: :attr:`Scorer.ann`), in words for a report."""
    if ranking.score == "rating":
        return "every movie through the network (the rating ranking has no cheap first stage)"
    index = " from an approximate HNSW index (--ann)" if ann else ""
    if ranking.beta == 0.0:
        return f"the watch output{index}" if ann else "the watch output over every movie (exact: it is the ranking)"
    if candidates is None:
        return "every movie through the network (--exhaustive)"
    return f"the top {candidates:,} by watch output{index}, re-ranked by the network"


def rank_by_item_scores(item_scores: np.ndarray) -> RankFn:
    """The :data:`RankFn` of a model that gives every user the same item scores (popularity, top rated).

    Each user's top K is the first K items of one global order that they have not seen, so only the head of that
    order (K + the most items any user of the batch has seen) is looked at, never the whole catalogue per user.
    """
    item_scores = np.asarray(item_scores, dtype=np.float64)
    order = np.argsort(-item_scores, kind="stable")
    rank_of = np.empty(order.size, dtype=np.int64)
    rank_of[order] = np.arange(order.size)

    def rank(users: np.ndarray, k: int, seen: ItemSets) -> np.ndarray:
        head = min(order.size, k + int(seen.lengths().max(initial=0)))
        rows, items = seen.coordinates()
        ranks = rank_of[items]
        inside = ranks < head
        preference = np.broadcast_to(-np.arange(head, dtype=np.float64), (len(users), head)).copy()
        preference[rows[inside], ranks[inside]] = -np.inf
        pos = top_k(preference, k)
        return np.where(pos >= 0, order[np.maximum(pos, 0)], -1).astype(np.int32)

    return rank


def _check_ranking_options(ks: Sequence[int], *, batch_size: int, max_users: int | None, n_movies: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"every k must be a positive integer, got {list(ks)}")
    if ks[-1] > n_movies:
        raise ConfigError(
            f"--k: {ks[-1]} is larger than the catalogue ({n_movies} movies); pass --k {n_movies} or less"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_users is not None and max_users < 1:
        raise ConfigError(f"max_users must be >= 1 or None, got {max_users}")
    return ks
