"""How many candidates does two-stage ranking need? Recall of the exhaustive top 10, NDCG@10 two-stage vs exhaustive.

Usage::

    python benchmarks/two_stage.py --data DIR [--data DIR ...] [--model DIR ...] [--cache DIR]
                                   [--candidates 50,100,200,500,1000] [--max-users N]

For each prepared data folder, trains the default preset once (``embedrec train``, cached under ``--cache``), then
on the test split, for every blend ``watch + beta x rating`` that training may choose (``embedrec.runs.BETAS``,
beta > 0: beta 0 is the watch output alone, which retrieval ranks exactly) and every candidate count N:

- recall: the share of each user's exhaustive top 10 (every movie through the network) found in the two-stage top
  10 (N movies retrieved by the watch output, re-ranked by the network), averaged over users;
- NDCG@10 of two-stage and of exhaustive ranking (``evaluate_model``), and their relative difference.

Prints a Markdown table and writes it as JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def trained_model(data: Path, cache: Path) -> Path:
    out = cache / "two-stage" / f"{data.name}-default"
    if not (out / "model.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "embedrec.cli",
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--preset",
                "default",
                "--quiet",
            ],
            check=True,
        )
    return out


def measure(data: Path, model: Path, candidates: list[int], max_users: int | None) -> list[dict]:
    import numpy as np

    from embedrec.artifacts import load_model
    from embedrec.data.store import load_prepared
    from embedrec.evaluation import evaluate_model
    from embedrec.metrics import ItemSets
    from embedrec.runs import BETAS
    from embedrec.scoring import Ranking, Scorer

    prepared = load_prepared(data)
    scorer = Scorer.from_artifact(load_model(model))
    chosen = scorer.ranking.beta
    test = prepared.split == 2
    users = np.unique(prepared.user_idx[test])
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(0).choice(users, max_users, replace=False))
    seen_pairs = prepared.split < 2
    seen = ItemSets.from_pairs(
        prepared.user_idx[seen_pairs],
        prepared.movie_idx[seen_pairs],
        n_rows=prepared.n_users,
        n_items=prepared.n_movies,
    ).take(users)
    emb, bias = scorer.user_rows(users)
    rows = []
    for beta in [b for b in BETAS if b > 0]:
        scorer.ranking = Ranking("blend", beta)
        t0 = time.perf_counter()
        exhaustive = scorer.rank(emb, bias, 10, seen=seen, candidates=None).movie_idx
        exhaustive_s = time.perf_counter() - t0
        full = evaluate_model(scorer, prepared, baselines=False, variants=False, candidates=None, max_users=max_users)[
            "ndcg@10"
        ]
        for n in candidates:
            t0 = time.perf_counter()
            two = scorer.rank(emb, bias, 10, seen=seen, candidates=n).movie_idx
            two_s = time.perf_counter() - t0
            found = [
                len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((a >= 0).sum())) for a, b in zip(exhaustive, two)
            ]
            ndcg = evaluate_model(scorer, prepared, baselines=False, variants=False, candidates=n, max_users=max_users)[
                "ndcg@10"
            ]
            rows.append(
                {
                    "data": data.name,
                    "n_users": int(prepared.n_users),
                    "n_movies": int(prepared.n_movies),
                    "beta": beta,
                    "chosen_beta": chosen,
                    "candidates": n,
                    "recall_of_exhaustive_top10": round(float(np.mean(found)), 4),
                    "ndcg10_two_stage": round(ndcg, 4),
                    "ndcg10_exhaustive": round(full, 4),
                    "ndcg_rel_diff": round((ndcg - full) / full, 4) if full else None,
                    "rank_s_two_stage": round(two_s, 2),
                    "rank_s_exhaustive": round(exhaustive_s, 2),
                    "ranked_users": int(len(users)),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedrec" / "bench")
    parser.add_argument("--candidates", default="50,100,200,500,1000")
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="an already trained model per --data, in the same order (skips training)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    candidates = [int(c) for c in args.candidates.split(",")]
    rows = []
    models = args.model or [None] * len(args.data)
    if len(models) != len(args.data):
        raise SystemExit("--model: give one per --data, or none")
    for data, model in zip(args.data, models):
        rows += measure(data, model or trained_model(data, args.cache), candidates, args.max_users)
    print(f"\nload average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} CPUs")
    print("| data | beta (chosen) | N | recall of exhaustive top 10 | NDCG@10 two-stage / exhaustive (rel. diff) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['data']} | {r['beta']:g} ({r['chosen_beta']:g}) | {r['candidates']} | "
            f"{r['recall_of_exhaustive_top10']:.2%} | {r['ndcg10_two_stage']:.4f} / {r['ndcg10_exhaustive']:.4f} "
            f"({r['ndcg_rel_diff']:+.2%}) |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
