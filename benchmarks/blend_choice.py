"""How long does training's blend choice take? Times :func:`embedrec.evaluation.ndcg_by_blends` as
:func:`embedrec.runs.choose_ranking` calls it, on a trained model and the data it was trained on.

Usage::

    python benchmarks/blend_choice.py --model DIR --data DIR [--repeat 3] [--recency-priors] [--json PATH]

Builds the inputs the way ``choose_ranking`` does (every side of :data:`embedrec.runs.GAMMAS` x
:func:`embedrec.runs.prior_candidates`, :data:`embedrec.runs.BETAS`, the val split at the training relevance, the
``val_users`` sample of the model's training config, its seen sets built for that sample as training's validation
builds them), then runs ``ndcg_by_blends`` ``--repeat`` times and prints, per run, its wall and CPU seconds (CPU:
this process's user + system time, all threads), and once every side's NDCG@10 by beta at full precision, so that
two versions of the code can be compared number for number (``--json`` writes them; ``--compare PATH`` checks them
against such a file and exits 1 on any difference).

The package is imported from ``PYTHONPATH`` first, this checkout last, so one script times two trees::

    PYTHONPATH=/path/to/other/tree python benchmarks/blend_choice.py --model M --data D

On a shared machine the timings are noisy: alternate the trees and compare CPU seconds as well as wall.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: the tree under test may be another checkout


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="threads (default: the CPUs this process may use)")
    parser.add_argument(
        "--recency-priors",
        action="store_true",
        help="also the time-decayed priors a time-based split is offered (26 sides, not 6), even on a random split",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the timings and every NDCG here")
    parser.add_argument("--compare", type=Path, default=None, help="a --json file whose NDCGs must be equal")
    args = parser.parse_args()

    import numpy as np

    import embedrec
    from embedrec.artifacts import load_model
    from embedrec.baselines import popularity_prior
    from embedrec.data.split import SPLIT_CODES
    from embedrec.data.store import load_prepared
    from embedrec.evaluation import HeldOut, ndcg_by_blends
    from embedrec.runs import BETAS, GAMMAS, RECENT_HALF_LIVES, prior_candidates
    from embedrec.scoring import Scorer, blend_watch_side
    from embedrec.validation import training_relevance

    artifact = load_model(args.model)
    prepared = load_prepared(args.data)
    scorer = Scorer.from_artifact(artifact)
    max_users = artifact.train.val_users or None
    relevance = training_relevance(prepared)
    names, sides = [], []
    priors = prior_candidates(prepared)
    if args.recency_priors and len(priors) == 1:  # as prior_candidates offers them under a time-based split
        train = prepared.split == 0
        stamps = prepared.timestamp[train]
        span = float(stamps.max() - stamps.min())
        for share in RECENT_HALF_LIVES:
            decayed = popularity_prior(
                prepared.movie_idx[train], stamps, n_movies=prepared.n_movies, half_life=share * span
            )
            priors.append((share * span, decayed))
    for position, (half_life, prior) in enumerate(priors):
        for gamma in GAMMAS if position == 0 else GAMMAS[1:]:
            names.append(f"prior {position} (half-life {half_life}), gamma {gamma:g}")
            sides.append(blend_watch_side(scorer.watch_bias, prior.astype(np.float32), gamma))
    held_out = HeldOut.from_prepared(
        prepared, split_code=SPLIT_CODES["val"], relevance=relevance, sample=(max_users, 0)
    )
    print(
        f"embedrec from {Path(embedrec.__file__).parent}; {prepared.n_users:,} users x {prepared.n_movies:,} "
        f"movies; {len(sides)} sides x {len(BETAS)} betas; {max_users} users",
        flush=True,
    )

    runs = []
    found = None
    for i in range(args.repeat):
        w0, c0 = time.perf_counter(), cpu_seconds()
        got = ndcg_by_blends(
            scorer,
            prepared,
            sides=sides,
            betas=BETAS,
            split="val",
            relevance=relevance,
            max_users=max_users,
            held_out=held_out,
            workers=args.workers,
        )
        wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
        runs.append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})
        print(f"run {i + 1}: wall {wall:.3f} s, cpu {cpu:.3f} s", flush=True)
        assert got is not None
        if found is None:
            found = got
        elif got != found:
            raise SystemExit("two runs of the same tree gave different NDCGs")
    assert found is not None
    ndcg = {name: {repr(beta): value for beta, value in by_beta.items()} for name, by_beta in zip(names, found)}
    for name, by_beta in ndcg.items():
        print(f"  {name}: " + ", ".join(f"{b}: {v!r}" for b, v in by_beta.items()))
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "ndcg": ndcg}, indent=1))
    if args.compare is not None:
        other = json.loads(args.compare.read_text())["ndcg"]
        if other != ndcg:
            raise SystemExit(f"NDCGs differ from {args.compare}")
        print(f"every NDCG equals {args.compare}'s")


if __name__ == "__main__":
    main()
