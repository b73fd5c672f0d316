"""How fast are ``embedrec recommend`` (one user, whole process) and top-10 for every user, at the original's scale?

Usage::

    python benchmarks/recommend_speed.py [--cache DIR] [--repeats 5] [--json]

Prepares the synthetic data set at seed scale (20,510 users, 25,448 movies, 2,000,000 ratings; cached under
``--cache``) and writes two model folders with freshly initialised weights (speed does not depend on the values):
the ``default`` preset (64-d, hidden 64,16, biases, watch head; ranked by ``watch + 0.5 x rating``, which runs the
whole MLP over every movie, the slowest ranking) and the ``seed`` preset (rating only). Then it times

- ``embedrec recommend --user U`` as a whole process: wall time, imports and loading included (target < 1.5 s);
- top-10 for all users, in process (``Recommender.recommend_many``) and as ``embedrec recommend --all-users
  --output x.parquet`` (target < 60 s);
- fold-in of a new user from 20 ratings.

Reports the median of ``--repeats`` single-user runs, and one all-users run per model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_SCALE = {"n_users": 20_510, "n_movies": 25_448, "n_ratings": 2_000_000}


def ensure_data(cache: Path) -> Path:
    from embedrec.data import prepare_synthetic

    out = cache / "recommend-speed" / "data"
    if not (out / "summary.json").is_file():
        prepare_synthetic(out=out, seed=0, **SEED_SCALE)
    return out


def ensure_model(data: Path, cache: Path, preset_name: str, ranking: dict) -> Path:
    """A model folder with initialised (untrained) weights, written by the real ``save_model``."""
    out = cache / "recommend-speed" / f"model-{preset_name}"
    if (out / "model.json").is_file():
        return out
    from flax import nnx

    from embedrec import artifacts
    from embedrec.config import preset
    from embedrec.data import load_prepared
    from embedrec.model import EmbeddingConcat
    from embedrec.train import data_shape, genre_inputs

    prepared = load_prepared(data)
    model_cfg, train_cfg = preset(preset_name)
    gi = genre_inputs(prepared, model_cfg.genre_mode)
    shape = data_shape(prepared, gi)
    module = EmbeddingConcat(model_cfg, shape, rngs=nnx.Rngs(0))
    artifacts.save_model(
        out,
        module=module,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        shape=shape,
        genre_idx=gi.idx,
        genre_w=gi.weight,
        prepared=prepared,
        history=[],
        extra_meta={"ranking": ranking},
    )
    return out


def time_process(args: list[str], repeats: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of each run; ``cpu`` collects each run's user + system CPU seconds (robust to a busy machine)."""
    import resource

    times = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cpu is not None:
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedrec" / "bench")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-cli-all", action="store_true", help="skip the all-users CLI run (in-process only)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = ensure_data(args.cache)
    models = {
        "default (watch + 0.5 x rating)": ensure_model(data, args.cache, "default", {"score": "blend", "beta": 0.5}),
        "seed (rating)": ensure_model(data, args.cache, "seed", {"score": "rating"}),
    }
    setup_s = time.perf_counter() - t0
    exe = str(Path(sys.executable).with_name("embedrec"))
    if not Path(exe).exists():
        exe_args = [sys.executable, "-m", "embedrec.cli"]
    else:
        exe_args = [exe]

    from embedrec.recommender import Recommender

    rows = []
    for name, model in models.items():
        common = ["--model", str(model), "--data", str(data)]
        cpu: list[float] = []
        single = time_process(
            exe_args + ["recommend", "--user", "42", "-k", "10", "--format", "json", *common], args.repeats, cpu
        )
        rec = Recommender.load(model, data)
        t0 = time.perf_counter()
        table = rec.recommend_many(rec.user_ids, k=10)
        all_in_process = time.perf_counter() - t0
        assert len(table) == 10 * len(rec.user_ids)
        all_cli = None
        if not args.skip_cli_all:
            out = args.cache / "recommend-speed" / "all.parquet"
            all_cli = time_process(
                exe_args + ["recommend", "--all-users", "-k", "10", "--output", str(out), *common], 1
            )[0]
        pairs = [(int(m), 4.0) for m in rec.movie_ids[:20]]
        t0 = time.perf_counter()
        rec.fold_in(pairs)
        fold_s = time.perf_counter() - t0
        rows.append(
            {
                "model": name,
                "recommend_one_process_s": round(statistics.median(single), 3),
                "recommend_one_process_min_s": round(min(single), 3),
                "recommend_one_process_cpu_s": round(statistics.median(cpu), 3),
                "top10_all_users_in_process_s": round(all_in_process, 2),
                "top10_all_users_cli_s": None if all_cli is None else round(all_cli, 2),
                "fold_in_s": round(fold_s, 3),
            }
        )

    info = {
        "scale": SEED_SCALE,
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "setup_s": round(setup_s, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(
        f"seed scale: {SEED_SCALE['n_users']:,} users x {SEED_SCALE['n_movies']:,} movies, "
        f"{SEED_SCALE['n_ratings']:,} ratings; {info['cpus']} CPUs, load average {info['load_avg_1min']}"
    )
    header = (
        "model",
        "recommend --user (process, median wall / CPU)",
        "top-10 all users (in process)",
        "top-10 all users (CLI)",
        "fold-in (20 ratings)",
    )
    print(" | ".join(header))
    for r in rows:
        cli = "-" if r["top10_all_users_cli_s"] is None else f"{r['top10_all_users_cli_s']:.1f} s"
        print(
            f"{r['model']} | {r['recommend_one_process_s']:.2f} s / {r['recommend_one_process_cpu_s']:.2f} s | "
            f"{r['top10_all_users_in_process_s']:.1f} s | "
            f"{cli} | {r['fold_in_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
