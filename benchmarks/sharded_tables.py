"""Memory per device of the embedding tables, split by rows over 1, 2 and 4 devices (issue #13).

Usage::

    python benchmarks/sharded_tables.py [--users 280000 --movies 86000 --ratings 2000000] [--devices 1 2 4] [--json]

Prepares a synthetic data set once (by default the full MovieLens shape: 280,000 users and 86,000 movies; the
rating count does not change the tables), then, in one subprocess per device count (forced CPU devices, the same
mesh that processes on several hosts form), builds the default preset's training set-up and compiles one block of
steps. Reported per device: the bytes of the table slab (parameters and both Adam moments), of the whole train state,
and of the epoch's batches; XLA's own memory analysis of the compiled block (arguments, temporaries); and every
collective in the compiled block with its size, to show that no step gathers a table or the training split.
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

CHILD = r"""
import json, re, sys
import jax, jax.numpy as jnp, numpy as np
from embedrec.config import preset
from embedrec.data import load_prepared
from embedrec.train import _set_up

prepared = load_prepared(sys.argv[1])
model_cfg, train_cfg = preset("default")
train_cfg = train_cfg.replace(shard_tables=sys.argv[2] == "rows", val_users=0)
run, state = _set_up(prepared, model_cfg, train_cfg)

def on_device0(tree):
    total = 0
    for leaf in jax.tree.leaves(tree):
        total += sum(s.data.nbytes for s in leaf.addressable_shards if s.device == jax.devices()[0])
    return total

n = run.schedule.padded
zeros = {"user": np.zeros(n, np.int32), "movie": np.zeros(n, np.int32), "rating": np.zeros(n, np.float32)}
batches = run.batches(zeros)
args = (state, run.inputs, batches, jnp.int32(0), jnp.float32(1e-3), jnp.uint32(0), jnp.int32(1))
compiled = run.run_block.lower(*args).compile()
mem = compiled.memory_analysis()
hlo = compiled.as_text()
collectives = {}
kinds = "all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute"
for m in re.finditer(r"= (\w+\[[^\]]*\])[^=]*? (" + kinds + r")(-start)?\(", hlo):
    key = f"{m.group(2)} {m.group(1)}"
    collectives[key] = collectives.get(key, 0) + 1
print(json.dumps({
    "devices": jax.device_count(),
    "slab_rows": int(state["slab"].shape[0]),
    "slab_bytes_per_device": on_device0(state["slab"]),
    "state_bytes_per_device": on_device0(state),
    "batches_bytes_per_device": on_device0(batches),
    "inputs_bytes_per_device": on_device0(run.inputs),
    "xla_argument_bytes": int(getattr(mem, "argument_size_in_bytes", 0)),
    "xla_temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)),
    "collectives": collectives,
}))
"""


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=280_000)
    ap.add_argument("--movies", type=int, default=86_000)
    ap.add_argument("--ratings", type=int, default=2_000_000)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "embedrec-bench-sharded")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from embedrec.data import PrepareConfig, prepare_synthetic

    data = args.cache / f"synthetic-{args.users}-{args.movies}-{args.ratings}"
    if not (data / "summary.json").is_file():
        prepare_synthetic(
            out=data,
            n_users=args.users,
            n_movies=args.movies,
            n_ratings=args.ratings,
            seed=0,
            config=PrepareConfig(test_frac=0.1, val_frac=0.0),
        )
    rows = []
    for devices in args.devices:
        for mode in ("rows", "replicated") if devices > 1 else ("rows",):
            env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
            env["PYTHONPATH"] = str(ROOT)
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(data), mode], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                sys.exit(f"{devices} devices ({mode}) failed:\n{done.stderr[-3000:]}")
            rows.append({"tables": mode if devices > 1 else "-", **json.loads(done.stdout.strip().splitlines()[-1])})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.users:,} users x {args.movies:,} movies, default preset; MiB per device")
    print(
        "| devices | tables | table slab | train state | epoch batches | XLA arguments | XLA temporaries "
        "| collectives |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        coll = ", ".join(f"{k} x{v}" for k, v in sorted(r["collectives"].items())) or "none"
        print(
            f"| {r['devices']} | {r['tables']} | {_mib(r['slab_bytes_per_device'])} "
            f"| {_mib(r['state_bytes_per_device'])} "
            f"| {_mib(r['batches_bytes_per_device'])} | {_mib(r['xla_argument_bytes'])} | {_mib(r['xla_temp_bytes'])} "
            f"| {coll} |"
        )


if __name__ == "__main__":
    main()
