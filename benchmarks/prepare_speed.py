"""How fast and how lean is ``embedrec prepare`` on MovieLens-sized input?

Usage::

    python benchmarks/prepare_speed.py [--cache DIR] [--scale full|seed|both] [--json]

Generates the synthetic data set as an ml-latest style ``ratings.csv`` + ``movies.csv`` (once; cached under
``--cache``), then runs ``embedrec prepare`` on it in a subprocess and reports the wall time and the peak resident
memory of that subprocess (``RUSAGE_CHILDREN`` of a wrapper process, so each run is measured on its own). Sizes:

- ``full``: 280,000 users, 86,000 movies, 27,000,000 ratings (the size of ml-latest; target < 30 s, < 3 GB on 2 cores)
- ``seed``: 20,510 users, 25,448 movies, 2,000,000 ratings (the original notebook's slice)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedrec.data import synthetic  # noqa: E402

SCALES = {"full": synthetic.FULL_SCALE, "seed": synthetic.SEED_SCALE}


def ensure_csv(cache: Path, scale: str, seed: int) -> tuple[Path, dict[str, float]]:
    """The cached CSV folder for ``scale``, generating it when missing; returns timings of what was done."""
    sizes = SCALES[scale]
    folder = cache / f"synthetic-{scale}-{sizes['n_ratings']}-seed{seed}"
    marker = folder / ".complete"
    if marker.is_file():
        return folder, json.loads(marker.read_text())
    t0, c0 = time.perf_counter(), time.process_time()
    ratings, movies = synthetic.generate(seed=seed, **sizes)
    t_gen, c_gen = time.perf_counter() - t0, time.process_time() - c0
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    synthetic.write_ml_latest(tmp, ratings, movies)
    t_csv = time.perf_counter() - t0
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {
        "generate_s": round(t_gen, 2),
        "generate_cpu_s": round(c_gen, 2),
        "generate_peak_rss_mb": round(peak, 1),
        "write_csv_s": round(t_csv, 2),
        "csv_mb": round((tmp / "ratings.csv").stat().st_size / 1e6, 1),
    }
    (tmp / ".complete").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder, info


def run_prepare(folder: Path, out: Path) -> dict[str, float]:
    """``embedrec prepare FOLDER --out OUT --json`` in a child process: wall seconds and peak RSS."""
    code = "import sys; from embedrec.cli import main; sys.argv = ['embedrec'] + sys.argv[1:]; main()"
    cmd = [sys.executable, "-c", code, "prepare", str(folder), "--out", str(out), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    summary = json.loads(stdout)
    return {
        "wall_s": round(wall, 2),
        "n_ratings": summary["n_ratings"],
        "n_users": summary["n_users"],
        "n_movies": summary["n_movies"],
        "n_genre_strings": summary["n_genre_strings"],
    }


def measured_prepare(folder: Path, out: Path) -> dict[str, float]:
    """Run :func:`run_prepare` in its own child so that the peak RSS belongs to this run alone."""
    code = (
        "import json, resource, sys; sys.path.insert(0, sys.argv[1]); "
        "from benchmarks.prepare_speed import run_prepare; from pathlib import Path; "
        "r = run_prepare(Path(sys.argv[2]), Path(sys.argv[3])); "
        "ru = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "r['peak_rss_mb'] = round(ru.ru_maxrss / 1024, 1); r['cpu_s'] = round(ru.ru_utime + ru.ru_stime, 2); "
        "print(json.dumps(r))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(folder), str(out)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "embedrec-bench",
        help="folder for the generated CSV files (reused between runs)",
    )
    ap.add_argument("--scale", choices=["full", "seed", "both"], default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    results = {"cpus": os.cpu_count()}
    for scale in ["seed", "full"] if args.scale == "both" else [args.scale]:
        folder, gen = ensure_csv(args.cache, scale, args.seed)
        with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
            res = measured_prepare(folder, Path(tmp) / "data")
        results[scale] = {**gen, **res}
        if not args.json:
            print(
                f"{scale:>4}: {res['n_ratings']:,} ratings ({gen['csv_mb']} MB CSV), generated in "
                f"{gen['generate_s']} s ({gen.get('generate_cpu_s')} s CPU, peak RSS "
                f"{gen.get('generate_peak_rss_mb')} MB), CSV written in "
                f"{gen['write_csv_s']} s; prepare {res['wall_s']} s wall ({res['cpu_s']} s CPU), peak RSS "
                f"{res['peak_rss_mb']:.0f} MB, {res['n_genre_strings']} genre strings; load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
                flush=True,
            )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
