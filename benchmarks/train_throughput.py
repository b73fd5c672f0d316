"""Training throughput (samples/s) and peak memory of ``embedrec train`` at the original's scale.

Usage::

    python benchmarks/train_throughput.py [--cache DIR] [--epochs 3] [--only NAME ...] [--json]

Prepares the synthetic data set at the original notebook's size once (20,510 users, 25,448 movies, 2,000,000
ratings, random 80/20 split with no val: 1.6M training ratings, as the original trained on), then trains each
configuration below in its own subprocess and reports the samples/s of the fastest epoch after the first (the first
includes compilation), the first epoch's wall time, and the child's peak RSS.

Reference points from the issue (same network, 2-core AVX-512 EPYC, batch 1024): Keras 3 on JAX 176k samples/s,
PyTorch 93k, TF Keras 78k; best at batch 8192 about 280k; the original took 100 s per epoch. Targets: >= 530k at
batch 1024 and >= 800k at batch 8192 for ``--preset seed``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, tuple[str, dict]] = {
    "seed-b1024": ("seed", {"batch_size": 1024}),
    "seed-b8192": ("seed", {"batch_size": 8192}),
    "seed-b256": ("seed", {"batch_size": 256}),
    "seed-b1024-lazy-adam": ("seed", {"batch_size": 1024, "optimizer": "lazy_adam"}),
    "seed-b1024-dense-adam": ("seed", {"batch_size": 1024, "optimizer": "adam"}),
    "default": ("default", {"val_users": 0}),
    "default-no-negatives": ("default", {"negatives": 0, "val_users": 0}),
    "default-16-negatives": ("default", {"negatives": 16, "val_users": 0}),
    "default-rowwise": ("default", {"optimizer": "rowwise_adam", "val_users": 0}),
    "default-256-negatives": ("default", {"negatives": 256, "val_users": 0}),
    "default-b1024": ("default", {"batch_size": 1024, "val_users": 0}),
    "default-b1024-no-negatives": ("default", {"batch_size": 1024, "negatives": 0, "val_users": 0}),
}

CHILD = r"""
import json, resource, sys, time
from embedrec.config import preset
from embedrec.data import load_prepared
from embedrec.train import train
data_dir, name, epochs, changes = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
model_cfg, train_cfg = preset(name)
train_cfg = train_cfg.replace(epochs=epochs, patience=0, **changes)
prepared = load_prepared(data_dir)
t0 = time.perf_counter()
result = train(prepared, model_cfg, train_cfg)
wall = time.perf_counter() - t0
h = result.history
print(json.dumps({
    "samples_per_s": max(r["samples_per_s"] for r in h[1:]) if len(h) > 1 else h[0]["samples_per_s"],
    "first_epoch_s": h[0]["seconds"], "epoch_s": min(r["seconds"] for r in h[1:]) if len(h) > 1 else h[0]["seconds"],
    "val_rmse": [round(r["val_rmse"], 4) for r in h], "wall_s": round(wall, 1),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "n_params": result.info["n_params"], "devices": result.info["devices"],
}))
"""


def ensure_data(cache: Path) -> Path:
    from embedrec.data import PrepareConfig, prepare_synthetic

    out = cache / "seed-scale-80-20"
    if not (out / "summary.json").is_file():
        prepare_synthetic(
            out=out,
            n_users=20_510,
            n_movies=25_448,
            n_ratings=2_000_000,
            seed=42,
            config=PrepareConfig(test_frac=0.2, val_frac=0.0, seed=42),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "embedrec-bench")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run only these configurations")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data_dir = ensure_data(args.cache)
    rows = {}
    for name in args.only or list(CONFIGS):
        preset_name, changes = CONFIGS[name]
        # when the test split is used as val (no val split here), validation costs one predict pass per epoch
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(data_dir), preset_name, str(args.epochs), json.dumps(changes)],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        if done.returncode != 0:
            rows[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
        else:
            rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        if not args.json:
            r = rows[name]
            if "error" in r:
                print(f"{name:28s} ERROR {r['error']}", flush=True)
            else:
                print(
                    f"{name:28s} {r['samples_per_s']:>12,.0f} samples/s  epoch {r['epoch_s']:6.2f} s  first "
                    f"{r['first_epoch_s']:6.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  params {r['n_params']:,}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
