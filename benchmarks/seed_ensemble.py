"""Would an ensemble of training seeds be worth building? One model against the mean of several, on the matrix's rows.

Usage::

    python benchmarks/seed_ensemble.py --rows ml100k-sparse-users ml100k-thin-bare --seeds 42 1 2

For each row (prepared as ``quality.py`` prepares it, in the same cache) this trains the default preset once per
seed, exactly as ``embedrec train`` does, and scores the test split two ways: each model alone (the mean of their
NDCG@10 and RMSE is the matrix's figure for those seeds), and the ensemble, whose predicted rating is the mean of
the models' and whose ranking score is the mean of their served ranking scores (:meth:`Scorer.score_users`, the
blend each model chose on val). Both rank every movie a user has not rated (full ranking), relevant = the top
quarter of the scale, as the matrix does. The ensemble costs ``len(seeds)`` trainings and ``len(seeds)`` times the
scoring work: this measures what it would buy (benchmarks/QUALITY.md, the measurements of 2026-12-08).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import DEFAULT_CACHE, ROWS, prepare_row, relevance_of, render_table, run_baselines  # noqa: E402


def run_row(row: str, *, cache: Path, seeds: list[int], split_seed: int | None) -> dict[str, Any]:
    from embedrec.artifacts import load_model
    from embedrec.data import load_prepared
    from embedrec.data.split import TEST
    from embedrec.evaluation import HeldOut, evaluate_ranking
    from embedrec.metrics import rmse
    from embedrec.runs import train_run
    from embedrec.scoring import Scorer

    data_dir = prepare_row(row, cache, split_seed=split_seed)
    prepared = load_prepared(data_dir)
    base = run_baselines(prepared)
    held = prepared.split == TEST
    users, movies, ratings = prepared.user_idx[held], prepared.movie_idx[held], prepared.rating[held]
    held_out = HeldOut.from_prepared(prepared, split_code=TEST, relevance=relevance_of(prepared))

    def ndcg(score_fn: Any) -> float:
        return evaluate_ranking(
            score_fn, held_out=held_out, n_users=prepared.n_users, n_movies=prepared.n_movies, ks=(10,)
        )["ndcg@10"]

    scorers, predictions, single = [], [], []
    with tempfile.TemporaryDirectory(prefix="embedrec-ensemble-") as tmp:
        for seed in seeds:
            result = train_run(
                data_dir, out=Path(tmp) / f"seed-{seed}", workdir=Path(tmp), preset="default", overrides={"seed": seed}
            )
            scorer = Scorer.from_artifact(load_model(result.run_dir))
            scorers.append(scorer)
            predictions.append(scorer.predict_pairs(users, movies))
            single.append((ndcg(scorer.score_users), rmse(ratings, predictions[-1])))
            print(f"{row} seed {seed}: NDCG@10 {single[-1][0]:.4f}  RMSE {single[-1][1]:.4f}", file=sys.stderr)
        ensemble_rmse = rmse(ratings, np.mean(predictions, axis=0))
        ensemble_ndcg = ndcg(lambda u: np.mean([s.score_users(u) for s in scorers], axis=0))
    return {
        "row": row,
        "popular": float(base["popular"]["ndcg@10"]),
        "ease": float(base["ease"].get("ndcg@10", np.nan)),
        "bias": float(base["bias"]["rmse"]),
        "single": (float(np.mean([n for n, _ in single])), float(np.mean([r for _, r in single]))),
        "ensemble": (float(ensemble_ndcg), float(ensemble_rmse)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", required=True, choices=ROWS, help="rows of the quality matrix")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2], help="training seeds (the ensemble's)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the prepared rows are kept")
    parser.add_argument("--split-seed", type=int, help="another split of the same ratings (as quality.py's)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds: an ensemble needs at least two")
    lines = []
    for row in args.rows:
        r = run_row(row, cache=args.cache, seeds=args.seeds, split_seed=args.split_seed)
        cells = [row]
        for ndcg, err in (r["single"], r["ensemble"]):
            vs_bias = 100 * (err / r["bias"] - 1)
            cells += [f"{ndcg:.4f} ({ndcg / r['popular']:.2f} x pop)", f"{err:.4f} ({vs_bias:+.1f}%)"]
        lines.append(cells)
    head = ["row", "NDCG@10 one model", "RMSE one model (vs bias)", "NDCG@10 ensemble", "RMSE ensemble (vs bias)"]
    print(render_table(head, lines, markdown=args.markdown))
    print(f"seeds: {' '.join(map(str, args.seeds))} (one model: the mean over them; ensemble: the mean of them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
