"""The approximate first stage (``--ann``, embedrec/ann.py) against the exact one: recall and time.

Usage::

    python benchmarks/ann.py --model DIR --data DIR [--users 2000]      # a trained model: the served top 10
    python benchmarks/ann.py --movies 1000000 [--users 500]             # a synthetic catalogue: retrieval alone

With a model, a seeded sample of users is ranked by :meth:`Scorer.rank` twice, the exact product and the HNSW index
(``Scorer.ann``), each user's training movies left out, the default number of candidates re-ranked by the network;
it reports the share of the exact top 10 that the approximate ranking lists, the time to build the index and the
time of each ranking. With ``--movies N`` it draws N movie vectors with a little shared structure (as trained
embeddings have) and times the retrieval alone (the top 500 by ``u . m + side`` per user): the exact product and
:func:`embedrec.metrics.top_k` against the index, and the recall of the exact top 10 and top 500. Needs the optional
extra: ``pip install 'embedrec[ann]'``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def overlap(found: np.ndarray, exact: np.ndarray) -> float:
    """The mean share of each row's exact list (its valid entries) that the found row lists."""
    shares = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((b >= 0).sum())) for a, b in zip(found, exact)]
    return float(np.mean(shares))


def on_model(model: Path, data: Path, n_users: int) -> None:
    from embedrec.metrics import ItemSets
    from embedrec.scoring import Scorer
    from embedrec.serving import load_model_and_data

    loaded = load_model_and_data(model=model, data=data, strict=True)
    prepared = loaded.prepared
    assert prepared is not None
    scorer = Scorer.from_artifact(loaded.artifact)
    users = np.sort(np.random.default_rng(0).choice(scorer.n_users, size=min(n_users, scorer.n_users), replace=False))
    is_train = prepared.split == 0
    seen = ItemSets.from_pairs(
        prepared.user_idx[is_train], prepared.movie_idx[is_train], n_rows=scorer.n_users, n_items=scorer.n_movies
    ).take(users)
    emb, bias = scorer.user_rows(users)
    t0 = time.perf_counter()
    exact = scorer.rank(emb, bias, 10, seen=seen)
    t_exact = time.perf_counter() - t0
    scorer.ann = True
    t0 = time.perf_counter()
    scorer.every_movie.watch_index(scorer.ranking)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx = scorer.rank(emb, bias, 10, seen=seen)
    t_ann = time.perf_counter() - t0
    print(
        f"{model}: {scorer.n_movies:,} movies, {len(users):,} users, ranking {scorer.ranking.describe()}: "
        f"exact {t_exact:.2f} s; index built in {t_build:.1f} s, ranking through it {t_ann:.2f} s; "
        f"the exact top 10 listed: {overlap(approx.movie_idx, exact.movie_idx):.2%}"
    )


def on_synthetic(n_movies: int, n_users: int, d: int = 50, n: int = 500) -> None:
    from embedrec.ann import WatchIndex
    from embedrec.metrics import top_k

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((8, d)).astype(np.float32)
    item = (rng.standard_normal((n_movies, 8)) @ basis * 0.3 + rng.standard_normal((n_movies, d)) * 0.3).astype(
        np.float32
    )
    side = (rng.standard_normal(n_movies) * 0.5).astype(np.float32)
    emb = (rng.standard_normal((n_users, 8)) @ basis + rng.standard_normal((n_users, d)) * 0.3).astype(np.float32)
    t0 = time.perf_counter()
    index = WatchIndex(item, side)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found, _ = index.search(emb, n)
    t_ann = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = np.concatenate([top_k(emb[s : s + 64] @ item.T + side, n) for s in range(0, n_users, 64)])
    t_exact = time.perf_counter() - t0
    print(
        f"synthetic: {n_movies:,} movies x {d} dims, {n_users:,} users, top {n}: index built in {t_build:.1f} s; "
        f"retrieval exact {t_exact:.2f} s, through the index {t_ann:.2f} s; recall of the exact top 10 "
        f"{overlap(found[:, :10], exact[:, :10]):.2%}, of the top {n} {overlap(found, exact):.2%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--movies", type=int, help="a synthetic catalogue of this many movies instead of a model")
    parser.add_argument("--users", type=int, default=None, help="users ranked (default 2,000 / 500 synthetic)")
    args = parser.parse_args()
    if args.movies:
        on_synthetic(args.movies, args.users or 500)
    elif args.model and args.data:
        on_model(args.model, args.data, args.users or 2_000)
    else:
        parser.error("give --model and --data, or --movies N")


if __name__ == "__main__":
    main()
