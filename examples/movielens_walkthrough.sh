#!/usr/bin/env bash
# A walk-through of embedrec on real data: MovieLens "latest-small" (100,836 ratings, 610 users, 9,742 movies).
#
#   bash examples/movielens_walkthrough.sh
#
# Environment:
#   EMBEDREC_WORKDIR       work folder for downloads/, data/ and models/ (default: a new temporary folder, kept
#                          at the end so you can go on with `embedrec ... --workdir DIR`)
#   TRAIN_FLAGS            extra `embedrec train` flags, e.g. TRAIN_FLAGS="--epochs 2" for a quick run
#   EMBEDREC_DOWNLOAD_URL  where the MovieLens archives live (default: files.grouplens.org); the tests point it at
#                          a local server
#
# Every command reads and writes the work folder through $EMBEDREC_WORKDIR, so none of them needs --workdir.
set -euo pipefail

EMBEDREC_WORKDIR="${EMBEDREC_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/embedrec-walkthrough.XXXXXX")}"
export EMBEDREC_WORKDIR
read -r -a train_flags <<< "${TRAIN_FLAGS:-}"

step() {
    printf '\n==> %s\n' "$*"
}

echo "work folder: $EMBEDREC_WORKDIR"

step "1. Download MovieLens latest-small (cached in \$EMBEDREC_WORKDIR/downloads; checksum-verified)"
embedrec download ml-latest-small

step "2. Prepare it: validate, encode ids, split 70/10/20 into train/val/test (\$EMBEDREC_WORKDIR/data)"
embedrec prepare ml-latest-small

step "3. Train the default preset${TRAIN_FLAGS:+ with $TRAIN_FLAGS} (a run folder under \$EMBEDREC_WORKDIR/models)"
embedrec train ${train_flags[@]+"${train_flags[@]}"}

step "4. Evaluate on the test split, beside the baselines"
embedrec evaluate

step "5. Recommend 10 movies user 1 has not rated"
embedrec recommend --user 1

step "6. Movies similar to Toy Story"
embedrec similar --movie "toy story"

step "7. What was trained: settings, data, parameters, final metrics"
embedrec info

step "Done. Go on with the same work folder:"
echo "  export EMBEDREC_WORKDIR=$EMBEDREC_WORKDIR"
echo "  embedrec recommend --user 42 --genre Comedy"
