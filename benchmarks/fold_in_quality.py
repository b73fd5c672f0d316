"""Does the fast fold-in recommend as well as the original solve? NDCG@10 on held-out MovieLens-100K ratings.

Usage::

    python benchmarks/fold_in_quality.py [--cache DIR] [--users 300] [--json] [--override user_history=true]

Prepares MovieLens-100K (random 70/10/20 split, from the RecBole wheel) and trains the ``default`` preset once
(both cached under ``--cache``). Then, for a seeded sample of test users, it forgets each user's learned embedding:
the user is folded in from their own train + val ratings, as a new user would be, and the top 10 of the folded-in
user (their fold-in ratings excluded, no popularity threshold) is scored against their test ratings (relevant = 4
or more, as ``embedrec evaluate``). Each fold-in setting is one row: NDCG@10 and recall@10, CPU milliseconds and
Adam steps per fold-in, and how much of the original solve's top 10 it keeps. The first row is the model's own
learned embeddings of the same users, ranked the same way: what fold-in tries to reach.

MovieLens-100K has 1,682 movies, so every row but the last uses every unrated movie as a negative (fewer than the
4,096 sampled in larger catalogues); the last samples 1,024 of them, to show what a smaller sample costs. CPU times
are ML-100K's; ``benchmarks/serve_load.py`` measures fold-in at the original's scale. The row "no solve" is the
mean user's row without any Adam step: with ``--override user_history=true`` (the model trained with a user's history
as an input) that user still gets the mean history row of their ratings, so it shows what the history alone buys.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS: dict[str, dict[str, Any]] = {
    "original: float64, 300 steps": {"dtype": np.float64, "tol": 0.0},
    "float32, early stop (served default)": {},
    "float32, early stop tol 1e-3": {"tol": 1e-3},
    "float32, early stop, 1,024 negatives": {"sample": 1024},
    "no solve: the mean user (+ the history part, with user_history)": {"steps": 0},
}


def ensure_model(cache: Path, overrides: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """(prepared data, trained default-preset run folder with ``overrides``), made once each."""
    from embedrec.data import PrepareConfig, prepare
    from embedrec.data.recbole import fetch_ml100k
    from embedrec.runs import train_run

    data = cache / "fold-in-quality" / "data"
    if not (data / "summary.json").is_file():
        prepare(fetch_ml100k(), out=data, config=PrepareConfig(split="random", test_frac=0.2, val_frac=0.1, seed=42))
    suffix = "".join(f"-{k}={v}" for k, v in sorted((overrides or {}).items()))
    run = cache / "fold-in-quality" / f"run{suffix}"
    if not (run / "model.json").is_file():
        train_run(data, out=run, workdir=cache / "fold-in-quality", preset="default", overrides=overrides)
    return data, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedrec" / "bench")
    parser.add_argument("--users", type=int, default=300, help="test users sampled (seeded)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="a train setting")
    args = parser.parse_args()
    from quality import check_overrides, parse_override

    from embedrec.data.split import TEST
    from embedrec.evaluation import default_relevance
    from embedrec.metrics import ItemSets, ranking_metrics
    from embedrec.recommender import Recommender

    overrides = dict(parse_override(o) for o in args.override)
    check_overrides(overrides)
    data, run = ensure_model(args.cache, overrides)
    rec = Recommender.load(run, data)
    prepared = rec.prepared
    assert prepared is not None
    relevance = default_relevance(float(prepared.summary["rating_min"]), float(prepared.summary["rating_max"]))
    test = prepared.split == TEST
    rel_users = np.unique(prepared.user_idx[test & (prepared.rating >= relevance)])
    users = np.sort(np.random.default_rng(0).choice(rel_users, min(args.users, len(rel_users)), replace=False))
    n_movies = len(rec.movie_ids)
    history = [
        (prepared.movie_idx[~test & (prepared.user_idx == u)], prepared.rating[~test & (prepared.user_idx == u)])
        for u in users
    ]
    relevant = ItemSets.from_lists(
        [prepared.movie_idx[test & (prepared.user_idx == u) & (prepared.rating >= relevance)] for u in users],
        n_items=n_movies,
    )
    seen = ItemSets.from_lists([m for m, _ in history], n_items=n_movies)

    rows = []
    learned = rec.scorer.rank(*rec.scorer.user_rows(users), 10, seen=seen, candidates=rec.candidates, workers=1)
    metrics = ranking_metrics(learned.movie_idx, relevant, ks=(10,))
    rows.append(
        {
            "setting": "learned embeddings (not fold-in)",
            "ndcg@10": metrics["ndcg@10"],
            "recall@10": metrics["recall@10"],
        }
    )
    reference = None
    for name, options in SETTINGS.items():
        tops, steps = np.full((len(users), 10), -1, np.int32), []
        cpu0 = time.process_time()
        for i, (movies, ratings) in enumerate(history):
            pairs = list(zip(rec.movie_ids[movies].tolist(), ratings.tolist()))
            user = rec.fold_in(pairs, **options)
            tops[i] = rec.rank_folded(user, k=10, min_ratings=0).movie_idx[0]
            steps.append(user.steps)
        cpu_ms = 1000 * (time.process_time() - cpu0) / len(users)
        metrics = ranking_metrics(tops, relevant, ks=(10,))
        reference = tops if reference is None else reference
        kept = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(tops, reference)])
        rows.append(
            {
                "setting": name,
                "ndcg@10": metrics["ndcg@10"],
                "recall@10": metrics["recall@10"],
                "cpu_ms": cpu_ms,
                "steps": float(np.mean(steps)),
                "top10_kept": float(kept),
            }
        )
        if not args.json:
            print(f"{name}: NDCG@10 {metrics['ndcg@10']:.4f}, {cpu_ms:.1f} ms, kept {kept:.3f}", flush=True)
    result = {"users": len(users), "n_movies": n_movies, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\nMovieLens-100K, random split, default preset; {len(users)} test users folded in from train + val\n")
    print("| fold-in | NDCG@10 | recall@10 | CPU ms / fold-in | Adam steps | top 10 kept vs original |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = f"{r['cpu_ms']:.1f} | {r['steps']:.0f} | {100 * r['top10_kept']:.1f}%" if "cpu_ms" in r else "- | - | -"
        print(f"| {r['setting']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {extra} |")


if __name__ == "__main__":
    main()
