"""embedrec at full MovieLens scale on one machine: every step's wall time and peak memory (issue #12).

Usage::

    python benchmarks/scale.py [--scale 1.0] [--steps prepare,train,evaluate,recommend,all-users]
                               [--data DIR] [--model DIR] [--cache DIR] [--readme README.md] [--json PATH]

At ``--scale 1.0`` the synthetic set has the size of ml-32m / ml-latest (280,000 users, 86,000 movies, 27,000,000
ratings); ``--scale 0.1`` scales users, movies and ratings by 0.1 (a quick look on a busy machine). Each step runs as
its own ``embedrec`` process under a small wrapper that reports the child's peak resident memory
and CPU seconds (``RUSAGE_CHILDREN``; on a shared machine CPU seconds say more than wall time), with plain progress
lines going to a log beside the data:

- ``prepare``: ``embedrec prepare --synthetic`` at that size;
- ``train``: ``embedrec train --epochs 2`` (default preset); the run's ``history.json`` gives each epoch's seconds,
  so the table shows the time spent outside the epochs;
- ``evaluate``: ``embedrec evaluate`` (all test users, full catalogue, baselines);
- ``recommend``: ``embedrec recommend --user U`` (the whole process, imports and loading included; the median of
  three runs);
- ``all-users``: ``embedrec recommend --all-users --output x.parquet``.

Without ``train`` in ``--steps`` (or with ``--random-model``) the serving steps use a model of the right shape with
freshly initialised weights, written by the real ``save_model`` and ranked by ``watch + 1 x rating`` (the blend
training chose on ML-100K): serving time does not depend on the weights' values; the table says which model ran.
``--readme`` replaces the table between ``<!-- scale-table -->`` markers. Every row carries the 1-minute load
average before, at its highest during, and after the step (sampled every 2 s): on a shared machine it says how much
of the wall time was waiting. embedrec's modules are byte-compiled first, as ``pip install`` does, so that no
process spends its time compiling them (this sandbox sets ``PYTHONDONTWRITEBYTECODE``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"n_users": 280_000, "n_movies": 86_000, "n_ratings": 27_000_000}
STEPS = ("prepare", "train", "evaluate", "recommend", "all-users")
MARK = "<!-- scale-table -->"

# A child that runs the command and prints its peak RSS (kB) as the last line of stderr.
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "sys.stderr.write(f'\\nPEAK_RSS_KB {u.ru_maxrss} CPU_S {u.ru_utime + u.ru_stime:.1f}\\n')\n"
    "sys.exit(rc)\n"
)


def run_step(name: str, args: list[str], log: Path) -> dict:
    """Run ``embedrec ARGS`` in a wrapper; wall seconds, peak RSS, load average before and after."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()[0]
    loads = [load_before]
    done = threading.Event()

    def sample_load() -> None:
        while not done.wait(2.0):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    print(f"{name}: embedrec {' '.join(args)} (progress in {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as err:  # the child's progress lines stream into the log as they come
        err.write(f"\n$ embedrec {' '.join(args)}\n")
        err.flush()
        start = err.tell()
        proc = subprocess.run(
            [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "embedrec.cli", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    with open(log) as err:
        err.seek(start)
        proc.stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (see {log}):\n{proc.stderr[-2000:]}")
    tail = proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()
    peak_kb, cpu_s = int(tail[0]), float(tail[2])
    print(f"{name}: {wall:.1f} s wall, {cpu_s:.1f} s CPU, peak {peak_kb / 1e6:.2f} GB", flush=True)
    return {
        "step": name,
        "command": "embedrec " + " ".join(args),
        "wall_s": round(wall, 1),
        "cpu_s": cpu_s,
        "peak_gb": round(peak_kb / 1e6, 2),
        "load": f"{load_before:.1f} / {max(loads):.1f} / {os.getloadavg()[0]:.1f}",
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def random_model(data: Path, out: Path) -> Path:
    """A default-preset model of the right shape with initialised weights (serving time does not depend on them)."""
    if (out / "model.json").is_file():
        return out
    from flax import nnx

    from embedrec import artifacts
    from embedrec.config import preset
    from embedrec.data import load_prepared
    from embedrec.model import EmbeddingConcat
    from embedrec.train import data_shape, genre_inputs

    prepared = load_prepared(data)
    model_cfg, train_cfg = preset("default")
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
        extra_meta={"ranking": {"score": "blend", "beta": 1.0}},
    )
    return out


def median_of_runs(name: str, args: list[str], log: Path, runs: int = 3) -> dict:
    """``run_step`` ``runs`` times; the run with the median wall time, the others' walls in its note."""
    rows = sorted((run_step(name, args, log) for _ in range(runs)), key=lambda r: r["wall_s"])
    row = rows[len(rows) // 2]
    walls = ", ".join(f"{r['wall_s']:.1f}" for r in rows)
    row["note"] = f"median of {runs} runs: {walls} s wall"
    return row


def stage_times(stderr: str) -> str:
    """The "<stage>: ... done in T" progress lines of a step, as "stage T" pairs."""
    out = []
    for line in stderr.splitlines():
        if " done in " in line and ":" in line:
            stage = line.split(":", 1)[0].removeprefix("evaluate ").removeprefix("recommend ")
            out.append(f"{stage} {line.rsplit(' done in ', 1)[1].strip()}")
    return "; ".join(out)


def epoch_breakdown(model: Path, wall_s: float) -> str:
    history = json.loads((model / "history.json").read_text()) if (model / "history.json").is_file() else []
    epochs = [float(h["seconds"]) for h in history if "seconds" in h]
    if not epochs:
        return ""
    outside = wall_s - sum(epochs)
    return (
        f"epochs {' + '.join(f'{e:.0f}' for e in epochs)} s; outside the epochs {outside:.0f} s "
        f"({outside / max(epochs):.0%} of one epoch)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedrec" / "bench")
    parser.add_argument("--data", type=Path, default=None, help="use this prepared data (skips generating it)")
    parser.add_argument("--model", type=Path, default=None, help="serve this model instead of training one")
    parser.add_argument("--random-model", action="store_true", help="serve a model with initialised weights")
    parser.add_argument("--user", type=int, default=42)
    parser.add_argument("--readme", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise SystemExit(f"--steps: unknown {', '.join(unknown)}; known: {', '.join(STEPS)}")
    sizes = {k: max(10, int(round(v * args.scale))) for k, v in FULL.items()}
    folder = args.cache / f"scale-{args.scale:g}"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "progress.log"
    data = args.data or folder / "data"
    rows: list[dict] = []
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "embedrec")], check=True, capture_output=True)

    if "prepare" in steps:
        rows.append(
            run_step(
                "prepare",
                [
                    "prepare",
                    "--synthetic",
                    "--users",
                    str(sizes["n_users"]),
                    "--movies",
                    str(sizes["n_movies"]),
                    "--ratings",
                    str(sizes["n_ratings"]),
                    "--out",
                    str(data),
                ],
                log,
            )
        )
    if not (data / "summary.json").is_file():
        raise SystemExit(f"no prepared data at {data}: include 'prepare' in --steps or pass --data")

    model = args.model
    model_kind = "given"
    if "train" in steps:
        trained = folder / f"model-2-epochs-{int(time.time())}"
        row = run_step("train", ["train", "--data", str(data), "--out", str(trained), "--epochs", "2", "--quiet"], log)
        row["note"] = epoch_breakdown(trained, row["wall_s"])
        rows.append(row)
        if model is None and not args.random_model:
            model, model_kind = trained, "trained 2 epochs"
    if model is None:
        model, model_kind = random_model(data, folder / "model-random"), "initialised weights, right shape"

    common = ["--model", str(model), "--data", str(data)]
    if "evaluate" in steps:
        row = run_step("evaluate", ["evaluate", *common, "--json"], log)
        result = json.loads(row["stdout"])
        row["note"] = (
            f"{result['n_users']:,} users, ndcg@10 {result['ndcg@10']:.4f}; {result.get('scoring', '')}; "
            f"stages: {stage_times(row['stderr'])}"
        )
        rows.append(row)
    if "recommend" in steps:
        from embedrec.data import load_prepared

        user = (
            args.user
            if args.user in set(load_prepared(data, lazy=True).user_ids[:100_000].tolist())
            else int(load_prepared(data, lazy=True).user_ids[0])
        )
        rows.append(median_of_runs("recommend", ["recommend", "--user", str(user), "--format", "json", *common], log))
    if "all-users" in steps:
        out = folder / "all-users.parquet"
        row = run_step("all-users", ["recommend", "--all-users", "--output", str(out), *common], log)
        row["note"] = f"stages: {stage_times(row['stderr'])}"
        rows.append(row)

    summary = json.loads((data / "summary.json").read_text())
    title = (
        f"{summary['n_users']:,} users x {summary['n_movies']:,} movies, {summary['n_ratings']:,} ratings "
        f"(--scale {args.scale:g}); {len(os.sched_getaffinity(0))} CPUs; serving model: {model_kind}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    lines = [
        f"_{title}_",
        "",
        "| step | wall | CPU | peak RSS | load (1 min: before / highest / after) | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        command = r["command"].replace(str(args.cache), "$CACHE")
        lines.append(
            f"| `{command}` | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s | "
            f"{r['peak_gb']:.2f} GB | {r['load']} | {r.get('note', '')} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"title": title, "rows": [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in rows]},
                indent=2,
            )
        )
    if args.readme is not None:
        text = args.readme.read_text()
        if text.count(MARK) != 2:
            raise SystemExit(f"{args.readme} needs two {MARK} lines around the table")
        head, _, tail = text.split(MARK)
        args.readme.write_text(f"{head}{MARK}\n{table}\n{MARK}{tail}")


if __name__ == "__main__":
    main()
