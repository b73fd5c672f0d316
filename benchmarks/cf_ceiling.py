"""How far above most-popular classic collaborative filtering ranks on a quality-matrix row: the ceiling that the
row's NDCG@10 target sits against.

For each of EASE (several lambdas) and an item-kNN (cosine over the binary train matrix, with and without
shrinkage), the ranking score is ``the method's score, standardised + gamma x log(1 + the movie's train count)``,
the same popularity prior the default model's served ranking may add. Every gamma is ranked on the val split
(seen: train) and on the test split (seen: train and val), all users with a relevant rating, full catalogue, as
``embedrec evaluate`` ranks. Two figures per method: test NDCG@10 at the gamma val chooses (what a tool can
deliver) and the best test NDCG@10 over the gammas (an oracle, an upper bound no tool can choose).

    python benchmarks/cf_ceiling.py --rows ml100k-sparse-users ml100k-sparse   # rows prepared by quality.py

Rows must have been prepared by ``benchmarks/quality.py`` (its cache folder). The dense matrix costs users x
movies floats, so this is for the matrix's ML-100K-sized rows, not for full MovieLens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from embedrec.evaluation import HeldOut

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GAMMAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
EASE_LAMBDAS = (30.0, 100.0, 300.0, 1000.0)
KNN_SHRINKS = (0.0, 10.0)


def item_knn(train: np.ndarray, shrink: float) -> np.ndarray:
    """(n_movies, n_movies) cosine similarity of the binary train matrix's columns, ``shrink`` added to the
    denominator (damps pairs of rarely rated movies), zero diagonal."""
    co = train.T @ train
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    return sim


def ndcg_by_gamma(
    score: Callable[[np.ndarray], np.ndarray], prior: np.ndarray, held_out: HeldOut, n_users: int, n_movies: int
) -> dict[float, float]:
    from embedrec.evaluation import evaluate_ranking

    def with_prior(gamma: float) -> Callable[[np.ndarray], np.ndarray]:
        return lambda users: score(users) + gamma * prior

    return {
        gamma: evaluate_ranking(with_prior(gamma), held_out=held_out, n_users=n_users, n_movies=n_movies, ks=(10,))[
            "ndcg@10"
        ]
        for gamma in GAMMAS
    }


def run_row(row: str, cache: Path) -> list[dict[str, object]]:
    from quality import RECIPES, relevance_of

    from embedrec.baselines import EASE, popularity_prior
    from embedrec.data import load_prepared
    from embedrec.evaluation import HeldOut

    if row not in RECIPES:
        raise SystemExit(f"--rows: unknown row {row!r}; the quality matrix's rows are {', '.join(RECIPES)}")
    folder, recipe = cache / row, cache / f"{row}.recipe"
    if not (folder / "summary.json").exists():
        raise SystemExit(f"{folder}: not prepared; run python benchmarks/quality.py --rows {row} first")
    if not recipe.is_file() or recipe.read_text() != RECIPES[row]:  # quality.py would prepare it again
        raise SystemExit(f"{folder} was prepared by another recipe; run python benchmarks/quality.py --rows {row}")
    prepared = load_prepared(folder)
    relevance = relevance_of(prepared)
    n_users, n_movies = prepared.n_users, prepared.n_movies
    is_train = prepared.split == 0
    users, movies = prepared.user_idx[is_train], prepared.movie_idx[is_train]
    train = np.zeros((n_users, n_movies), dtype=np.float32)
    train[users, movies] = 1.0
    prior = popularity_prior(movies, None, n_movies=n_movies)
    held = {
        split: HeldOut.from_prepared(prepared, split_code=code, relevance=relevance)
        for split, code in (("val", 1), ("test", 2))
    }
    methods: list[tuple[str, np.ndarray]] = [
        (
            f"EASE lambda {lam:g}",
            EASE(lambda_=lam)
            .fit(users, movies, prepared.rating[is_train], n_users=n_users, n_movies=n_movies)
            .weights_,
        )
        for lam in EASE_LAMBDAS
    ]
    methods += [(f"item-kNN shrink {s:g}", item_knn(train, s)) for s in KNN_SHRINKS]
    out: list[dict[str, object]] = []
    popular = ndcg_by_gamma(lambda u: np.zeros((u.size, n_movies)), prior, held["test"], n_users, n_movies)[1.0]
    for name, weights in methods:
        scores = train @ weights
        scores /= scores.std() + 1e-12

        def score(u: np.ndarray, scores: np.ndarray = scores) -> np.ndarray:
            return scores[u]

        val = ndcg_by_gamma(score, prior, held["val"], n_users, n_movies)
        test = ndcg_by_gamma(score, prior, held["test"], n_users, n_movies)
        chosen = max(GAMMAS, key=lambda g: (val[g], -g))
        oracle = max(GAMMAS, key=lambda g: test[g])
        out.append(
            {
                "row": row,
                "method": name,
                "popular": popular,
                "val_chosen_gamma": chosen,
                "test_at_val_choice": test[chosen],
                "oracle_gamma": oracle,
                "test_oracle": test[oracle],
            }
        )
        print(
            f"{row}  {name:20s}  test NDCG@10 {test[chosen]:.4f} at val's gamma {chosen:g} "
            f"({test[chosen] / popular:.2f} x popular)  oracle {test[oracle]:.4f} at gamma {oracle:g} "
            f"({test[oracle] / popular:.2f} x)",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["ml100k-sparse-users", "ml100k-sparse"])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedrec" / "quality")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    rows = [r for row in args.rows for r in run_row(row, args.cache)]
    if args.markdown:
        print("| row | method | popular | test NDCG@10 at val's gamma | x popular | oracle (best gamma) | x popular |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            pop = float(r["popular"])  # type: ignore[arg-type]
            print(
                f"| {r['row']} | {r['method']} | {pop:.4f} | {r['test_at_val_choice']:.4f} (gamma "
                f"{r['val_chosen_gamma']:g}) | {float(r['test_at_val_choice']) / pop:.2f} | "  # type: ignore[arg-type]
                f"{r['test_oracle']:.4f} (gamma {r['oracle_gamma']:g}) | {float(r['test_oracle']) / pop:.2f} |"  # type: ignore[arg-type]
            )


if __name__ == "__main__":
    main()
