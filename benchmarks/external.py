"""Surprise (scikit-surprise) on the quality matrix's splits: an outside reference for the RMSE targets.

Usage::

    pip install scikit-surprise                  # for this measurement only: not an embedrec dependency
    python benchmarks/external.py --markdown     # every row, the README's tables
    python benchmarks/external.py --rows ml100k-sparse --json external.json
    python benchmarks/external.py --quality-json quality.json   # add embedrec's default (from quality.py --json)

Users compare embedrec with Surprise, and the quality matrix (``benchmarks/quality.py``) holds embedrec's default
to "test RMSE 2% below the regularised bias baseline". Whether a row allows that at all is a question about the
data, which an established library answers independently: this fits Surprise's BaselineOnly (ALS), SVD, SVD++,
KNNBaseline (item-based, pearson_baseline similarity) and NMF on exactly the matrix's train split (the same
prepared folders, ``quality.DEFAULT_CACHE``), picks each algorithm's few key settings on the val split from the
small grids in :data:`GRIDS` (lowest val RMSE; the chosen model is the one evaluated, trained on train only, as
embedrec's model and baselines are), and reports test RMSE and MAE beside embedrec's bias baseline fitted as
``quality.py`` fits it (:class:`embedrec.baselines.BiasBaseline` with its defaults, on train).

Predictions are Surprise's own (``algo.predict``, clipped to the rating scale). Where Surprise cannot predict (an
unknown user or movie for KNNBaseline and NMF) it returns the train mean; ``impossible`` counts those test ratings,
which matter on the temporal row (many test users have no training rating). SVD, SVD++ and NMF are seeded
(``--seed``, Surprise's ``random_state``), so the same command gives the same numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402  (benchmarks/quality.py: the rows, their preparation and cache)

ALGORITHMS = ("BaselineOnly", "SVD", "SVDpp", "KNNBaseline", "NMF")


def _grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes, as keyword dicts."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


# Small on purpose (2 shared cores): Surprise's defaults plus a step or two either side on the settings that matter
# most. SVD++ costs about 20 s a fit on the densest row, so only its regularisation is searched. On ml100k-sparse, SVD
# at reg_all 0.3 and BaselineOnly at reg_i 1 were also tried (val RMSE higher than the grid's best), and min_k > 1
# lifts KNNBaseline there by 0.1 (a movie with a few weak neighbours otherwise takes their mean residual in full).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "BaselineOnly": _grid(reg_u=(2, 5, 15), reg_i=(2, 5, 10)),  # ALS, 10 sweeps (Surprise's default 15 / 10)
    "SVD": _grid(n_factors=(20, 100), reg_all=(0.02, 0.05, 0.1, 0.2), n_epochs=(20, 40)),  # lr 0.005 (default)
    "SVDpp": _grid(n_factors=(20,), reg_all=(0.02, 0.05, 0.1, 0.2), n_epochs=(20,)),  # lr 0.007 (default)
    "KNNBaseline": _grid(k=(20, 40), min_k=(1, 5, 10)),  # item-based, pearson_baseline, shrinkage 100, ALS baselines
    "NMF": _grid(n_factors=(15, 50), reg=(0.06, 0.15)),  # unbiased, 50 epochs, reg = reg_pu = reg_qi
}


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit 2, as embedrec's own commands do for a bad input."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _surprise() -> Any:
    """The ``surprise`` module, or exit with one line saying how to install it (it is not an embedrec dependency)."""
    try:
        import surprise
    except ImportError:
        _fail("benchmarks/external.py needs Surprise: pip install scikit-surprise (not an embedrec dependency)")
    return surprise


def make_algorithm(name: str, params: dict[str, Any], *, seed: int) -> Any:
    """A Surprise algorithm with ``params`` from :data:`GRIDS` (seeded where Surprise draws random numbers)."""
    surprise = _surprise()
    if name == "BaselineOnly":
        options = {"method": "als", "n_epochs": 10, **params}
        return surprise.BaselineOnly(bsl_options=options, verbose=False)
    if name == "SVD":
        return surprise.SVD(**params, random_state=seed)
    if name == "SVDpp":
        return surprise.SVDpp(**params, random_state=seed, cache_ratings=True)
    if name == "KNNBaseline":
        similarity = {"name": "pearson_baseline", "user_based": False, "shrinkage": 100}
        return surprise.KNNBaseline(**params, sim_options=similarity, bsl_options={"method": "als"}, verbose=False)
    if name == "NMF":
        reg = params["reg"]
        return surprise.NMF(n_factors=params["n_factors"], reg_pu=reg, reg_qi=reg, n_epochs=50, random_state=seed)
    _fail(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")


def _ratings(prepared: Any, split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chosen = prepared.split == split
    return prepared.user_idx[chosen], prepared.movie_idx[chosen], prepared.rating[chosen].astype(np.float64)


def surprise_trainset(prepared: Any) -> Any:
    """The train split as a Surprise trainset; raw ids are embedrec's indices, the scale is the data's."""
    import pandas as pd

    surprise = _surprise()
    users, movies, ratings = _ratings(prepared, 0)
    frame = pd.DataFrame({"user": users, "movie": movies, "rating": ratings})
    scale = (float(prepared.summary["rating_min"]), float(prepared.summary["rating_max"]))
    return surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=scale)).build_full_trainset()


def score(algo: Any, users: np.ndarray, movies: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """RMSE and MAE (embedrec's metric functions) of Surprise's predictions, and how many were impossible."""
    from embedrec.metrics import mae, rmse

    predictions = algo.test(list(zip(users.tolist(), movies.tolist(), ratings.tolist())))
    estimate = np.array([p.est for p in predictions])
    impossible = sum(bool(p.details.get("was_impossible")) for p in predictions)
    return {"rmse": rmse(ratings, estimate), "mae": mae(ratings, estimate), "impossible": impossible}


def tune(name: str, trainset: Any, prepared: Any, *, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Fit every grid point on train, keep the lowest val RMSE, report that model's test metrics."""
    val, test = _ratings(prepared, 1), _ratings(prepared, 2)
    t0 = time.perf_counter()
    best: tuple[float, dict[str, Any], Any] | None = None
    tried = []
    for params in GRIDS[name]:
        algo = make_algorithm(name, params, seed=seed).fit(trainset)
        val_rmse = score(algo, *val)["rmse"]
        tried.append({"params": params, "val_rmse": val_rmse})
        if best is None or val_rmse < best[0]:
            best = (val_rmse, params, algo)
    assert best is not None
    val_rmse, params, algo = best
    got = {"params": params, "val_rmse": val_rmse, **score(algo, *test)}
    got.update(seconds=round(time.perf_counter() - t0, 1), grid=tried)
    log(f"  {name}: {params} val RMSE {val_rmse:.4f}, test RMSE {got['rmse']:.4f} ({got['seconds']} s)")
    return got


def embedrec_bias(prepared: Any) -> dict[str, float]:
    """embedrec's bias baseline as the quality matrix fits it: default settings, train split, test metrics."""
    from embedrec.baselines import BiasBaseline
    from embedrec.evaluation import evaluate_ratings

    model = BiasBaseline().fit(*_ratings(prepared, 0), n_users=prepared.n_users, n_movies=prepared.n_movies)
    users, movies, ratings = _ratings(prepared, 2)
    return evaluate_ratings(model.predict, user_idx=users, movie_idx=movies, rating=ratings)


def run_row(row: str, *, cache: Path, algorithms: list[str], seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from embedrec.data.store import load_prepared

    prepared = load_prepared(quality.prepare_row(row, cache))
    log(f"{row}:")
    t0 = time.perf_counter()
    trainset = surprise_trainset(prepared)
    results = {name: tune(name, trainset, prepared, seed=seed, log=log) for name in algorithms}
    s = prepared.summary
    return {
        "row": row,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "bias": embedrec_bias(prepared),
        "surprise": results,
        "data": {"n_users": s["n_users"], "n_movies": s["n_movies"], "n_ratings": s["n_ratings"]},
    }


# ---------------------------------------------------------------------------------------------------------- report
def default_rmse_by_row(path: Path) -> dict[str, float]:
    """Mean test RMSE over seeds of embedrec's default per row, from a ``quality.py --json`` file."""
    try:
        rows = json.loads(path.read_text())
        return {r["row"]: float(np.mean([run["rmse"] for run in r["runs"]])) for r in rows}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        _fail(f"--quality-json: cannot read {path} ({exc!r}); write it with benchmarks/quality.py --json FILE")


def _vs(value: float, bias: float) -> str:
    return f"{value:.3f} ({100 * (value / bias - 1):+.1f}%)"


def summary_table(results: list[dict[str, Any]], defaults: dict[str, float], *, markdown: bool) -> str:
    """One line per row: test RMSE of each algorithm, and its change against embedrec's bias baseline."""
    algorithms = list(results[0]["surprise"]) if results else []
    head = ["row", "embedrec bias", *algorithms, "best Surprise vs bias"]
    if defaults:
        head.insert(2, "embedrec default")
    lines = []
    for res in results:
        bias = res["bias"]["rmse"]
        cells = [res["row"], f"{bias:.3f}"]
        if defaults:
            cells.append(_vs(defaults[res["row"]], bias) if res["row"] in defaults else "")
        cells += [_vs(res["surprise"][name]["rmse"], bias) for name in algorithms]
        best = min(res["surprise"].items(), key=lambda item: item[1]["rmse"])
        cells.append(f"{100 * (best[1]['rmse'] / bias - 1):+.1f}% ({best[0]})")
        lines.append(cells)
    return quality.render_table(head, lines, markdown=markdown)


def detail_table(results: list[dict[str, Any]], *, markdown: bool) -> str:
    """One line per row and algorithm: the chosen settings, val RMSE, test RMSE / MAE, impossible, time."""
    head = ["row", "algorithm", "chosen on val", "val RMSE", "test RMSE", "test MAE", "impossible", "time"]
    lines = []
    for res in results:
        bias = res["bias"]
        lines.append([res["row"], "embedrec bias", "reg 5 / 5 (default)", "", f"{bias['rmse']:.4f}"])
        lines[-1] += [f"{bias['mae']:.4f}", "", ""]
        for name, got in res["surprise"].items():
            params = ", ".join(f"{k} {v}" for k, v in got["params"].items())
            lines.append(
                [
                    res["row"],
                    name,
                    params,
                    f"{got['val_rmse']:.4f}",
                    f"{got['rmse']:.4f}",
                    f"{got['mae']:.4f}",
                    str(got["impossible"]),
                    f"{got['seconds']:.0f} s",
                ]
            )
    return quality.render_table(head, lines, markdown=markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(quality.ROWS), choices=quality.ROWS, help="default: all")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS, help="default: all")
    parser.add_argument("--seed", type=int, default=0, help="Surprise's random_state for SVD, SVD++ and NMF")
    parser.add_argument("--cache", type=Path, default=quality.DEFAULT_CACHE, help="the quality matrix's data cache")
    parser.add_argument("--json", type=Path, help="also write every number (and each grid's val RMSE) to this file")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown (the README's)")
    parser.add_argument(
        "--quality-json", type=Path, help="a quality.py --json file: adds embedrec's default RMSE (mean of its seeds)"
    )
    args = parser.parse_args(argv)
    _surprise()  # fail in one line before any data is prepared
    defaults = default_rmse_by_row(args.quality_json) if args.quality_json else {}
    args.cache.mkdir(parents=True, exist_ok=True)
    results = quality.each_row(
        args.rows, partial(run_row, cache=args.cache, algorithms=args.algorithms, seed=args.seed), args.json
    )
    print(summary_table(results, defaults, markdown=args.markdown))
    print()
    print(detail_table(results, markdown=args.markdown))
    grids = "; ".join(f"{name} {len(GRIDS[name])}" for name in args.algorithms)
    print(f"\nSurprise fits on train, settings chosen on val (grid points: {grids}), test split; seed {args.seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
