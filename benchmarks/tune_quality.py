"""Does ``embedrec tune`` beat EASE? Each quality-matrix row tuned with a time budget, then trained with the result.

Usage::

    python benchmarks/tune_quality.py                              # every row, --budget 10m, a text table
    python benchmarks/tune_quality.py --markdown --json tune.json  # the README's table, and every number
    python benchmarks/tune_quality.py --rows ml100k-llo --budget 2m
    python benchmarks/tune_quality.py --from-json tune.json --markdown   # the table again, from saved numbers

For each row this runs what a user runs, as subprocesses of ``python -m embedrec.cli`` in a fresh work folder:
``embedrec tune --budget B --objective ndcg@10 --seed 42 --out tuned.toml`` (the validation split only), then
``embedrec train --config tuned.toml --seed 42``, and evaluates that model on the test split exactly as
benchmarks/quality.py evaluates the default model (its row preparation, baselines and evaluation are imported, not
copied). Beside it: the default preset trained at seed 42 (``--skip-default`` leaves it out), EASE, most popular
and the bias baseline. Target (issue #11): tuned NDCG@10 >= EASE on every row, tuned RMSE below the bias baseline.

A time budget buys fewer trials on a busy machine, so the 1-minute load average is sampled every 5 s while each
tune runs and shown beside the trial counts (the tune itself adds about 2 on 2 cores). Wall times are on a shared
machine: a rough guide only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import (  # noqa: E402
    DEFAULT_CACHE,
    ROWS,
    each_row,
    evaluate_run,
    prepare_row,
    render_table,
    run_baselines,
    run_model,
)

TUNE_ORDER = ("ml100k-llo", "ml100k-few-users", "ml100k-random", "ml100k-temporal", "ml100k-sparse", "synthetic")
SEED = 42


class LoadSampler:
    """The 1-minute load average every ``every_s`` seconds while a block runs (a background thread)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {
            "mean": round(sum(self.samples) / len(self.samples), 2),
            "min": round(min(self.samples), 2),
            "max": round(max(self.samples), 2),
        }


def embedrec(args: list[str]) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m embedrec.cli ARGS --json`` on this tree; (its JSON result or None, the last stderr line)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "embedrec.cli", *args, "--json"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return None, f"exit {done.returncode}: {lines[-1] if lines else ''}"
    return json.loads(done.stdout), ""


def tune_row(row: str, *, cache: Path, budget: str, with_default: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Tune, train and evaluate one row; every number of it (an ``error`` entry when tune or train failed)."""
    from embedrec.data import load_prepared

    data_dir = prepare_row(row, cache)
    prepared = load_prepared(data_dir)
    baselines = run_baselines(prepared)
    out: dict[str, Any] = {
        "row": row,
        "budget": budget,
        "baselines": {
            name: {k: float(v) for k, v in b.items() if k in ("ndcg@10", "rmse")} for name, b in baselines.items()
        },
    }
    if with_default:
        default = run_model(data_dir, prepared, seed=SEED, overrides={})
        out["default"] = {k: default[k] for k in ("ndcg@10", "rmse", "best_epoch", "train_s")}
        log(f"{row}: default NDCG@10 {default['ndcg@10']:.4f}  RMSE {default['rmse']:.4f}")
    with tempfile.TemporaryDirectory(prefix="embedrec-tune-quality-") as tmp:
        work = Path(tmp)
        config = work / "tuned.toml"
        common = ["--data", str(data_dir), "--workdir", str(work), "--seed", str(SEED)]
        t0 = time.perf_counter()
        with LoadSampler() as load:
            tuned, error = embedrec(
                ["tune", *common, "--budget", budget, "--objective", "ndcg@10", "--out", str(config)]
            )
        out["tune_s"] = round(time.perf_counter() - t0, 1)
        out["load_1min"] = load.summary()
        if tuned is None:
            out["error"] = f"tune: {error}"
            log(f"{row}: {out['error']}")
            return out
        out["trials"] = tuned["trials"]
        out["best_trial"] = tuned["best"]["trial"]
        out["val"] = tuned["best"]["metrics"]
        out["settings"] = tomllib.loads(config.read_text())
        log(f"{row}: tuned in {out['tune_s']:.0f} s, {tuned['trials']}; load {out['load_1min']}; {out['settings']}")
        t0 = time.perf_counter()
        trained, error = embedrec(["train", *common, "--config", str(config), "--out", str(work / "tuned-run")])
        out["train_s"] = round(time.perf_counter() - t0, 1)
        if trained is None:
            out["error"] = f"train --config: {error}"
            log(f"{row}: {out['error']}")
            return out
        metrics = evaluate_run(Path(trained["run_dir"]), prepared)
    out["tuned"] = {
        "ndcg@10": float(metrics["ndcg@10"]),
        "rmse": float(metrics["rmse"]),
        "best_epoch": trained["best_epoch"],
        "val_ndcg@10": trained["final"].get("val_ndcg@10"),
        "ranking": {k: trained["ranking"].get(k) for k in ("beta", "gamma")},
    }
    log(f"{row}: tuned NDCG@10 {out['tuned']['ndcg@10']:.4f}  RMSE {out['tuned']['rmse']:.4f}")
    return out


# ---------------------------------------------------------------------------------------------------------- report
def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: list[dict[str, Any]], *, markdown: bool) -> str:
    head = [
        "row",
        "NDCG@10 default",
        "tuned",
        "EASE",
        "popular",
        "RMSE tuned",
        "bias",
        "target",
        "trials done / pruned / stopped",
        "load (1 min) mean, max",
        "tune + train",
    ]
    lines = []
    for res in results:
        base = res["baselines"]
        ease, bias = base["ease"].get("ndcg@10"), base["bias"]["rmse"]
        tuned = res.get("tuned", {})
        if tuned:
            missed = [
                name for name, ok in (("NDCG", tuned["ndcg@10"] >= ease), ("RMSE", tuned["rmse"] < bias)) if not ok
            ]
            target = ("no: " + ", ".join(missed) if missed else "yes") + f" ({tuned['ndcg@10'] / ease:.3f} x EASE)"
        else:
            target = res.get("error", "-")
        trials = res.get("trials")
        load = res.get("load_1min") or {}
        lines.append(
            [
                res["row"],
                _num(res.get("default", {}).get("ndcg@10")),
                _num(tuned.get("ndcg@10")),
                _num(ease),
                _num(base["popular"]["ndcg@10"]),
                _num(tuned.get("rmse")),
                _num(bias),
                target,
                f"{trials['complete']} / {trials['pruned']} / {trials['failed']}" if trials else "-",
                f"{load['mean']:.1f}, {load['max']:.1f}" if load else "-",
                f"{res['tune_s']:.0f} + {res.get('train_s', 0):.0f} s",
            ]
        )
    return render_table(head, lines, markdown=markdown)


def settings_lines(results: list[dict[str, Any]]) -> list[str]:
    """The tuned settings of each row (what ``--out`` wrote, less preset, epochs and seed)."""
    lines = []
    for res in results:
        shown = {k: v for k, v in res.get("settings", {}).items() if k not in ("preset", "epochs", "seed")}
        if shown:
            text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
            lines.append(f"{res['row']} (trial {res['best_trial']}, best epoch {res['tuned']['best_epoch']}): {text}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", nargs="+", default=list(TUNE_ORDER), choices=ROWS, help="which rows, in this order (default: all)"
    )
    parser.add_argument("--budget", default="10m", help="embedrec tune --budget for each row (default 10m)")
    parser.add_argument("--skip-default", action="store_true", help="do not train the default preset for comparison")
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the prepared data sets are kept (shared with benchmarks/quality.py)",
    )
    parser.add_argument("--json", type=Path, help="also write every row's numbers to this JSON file (after each row)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's)")
    parser.add_argument(
        "--from-json", nargs="+", type=Path, metavar="FILE", help="print the table of earlier --json files; run nothing"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        results = [res for path in args.from_json for res in json.loads(path.read_text())]
        print(table(results, markdown=args.markdown))
        print("\n".join(["", *settings_lines(results)]))
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    results = each_row(
        args.rows,
        partial(tune_row, cache=args.cache, budget=args.budget, with_default=not args.skip_default),
        args.json,
    )
    print(table(results, markdown=args.markdown))
    print()
    print("\n".join(settings_lines(results)))
    print(
        f"\nembedrec tune --budget {args.budget} --objective ndcg@10 --seed {SEED}, then train --config at seed "
        f"{SEED}; test split. Target: tuned NDCG@10 >= EASE and RMSE < bias. Load = 1-minute load average during the "
        "tune (the tune itself adds about 2); a busier machine runs fewer trials in the same budget."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
