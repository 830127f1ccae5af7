#!/usr/bin/env bash
# Run (or resume) the cheaper-tickets experiment (issue 18) and copy its results here.
#
#   bash experiments/cheaper_tickets/run.sh
#       # WORKDIR (default runs/cheaper_tickets), TICKETS (default runs/lenet_fashion_mnist)
#
# First the recorded LeNet-300-100 / Fashion-MNIST lottery (experiments/lenet_fashion_mnist/run.sh's
# command; it resumes, and does nothing once finished): θ₀ and the IMP masks come from it. Then, for
# each of 3 trials, the masks of IMP, one-shot, early-bird, SNIP, GraSP, SynFlow and random at
# 51.3%, 21.1%, 7.0% and 3.6% of the weights, and the layerwise shuffles of five of them, 48 runs
# of 50K iterations trained together per trial: 7.2M model-steps, about 2.5 hours on a quiet 2-core
# CPU at the lottery's measured 850-945 model-steps/s (an estimate; this run is not recorded yet),
# after the lottery's own ~2 hours if it has not run. Interrupt it at any time; running it again
# resumes (finished trials are kept, the trial in training starts again). Needs the Fashion-MNIST IDX
# files (Debian: apt-get install dataset-fashion-mnist). At the end it copies the records, their
# config, the table and the plots here.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/cheaper_tickets
WORKDIR="${WORKDIR:-runs/cheaper_tickets}"
TICKETS="${TICKETS:-runs/lenet_fashion_mnist}"
PYTHON="${PYTHON:-python}"

"$PYTHON" -m lth_jax.main --config=experiments/lenet_fashion_mnist/config.py --workdir="$TICKETS" \
    --noreport
"$PYTHON" -m lth_jax.cheaper_tickets --config="$HERE/config.py" --workdir="$WORKDIR" \
    --tickets="$TICKETS"
cp "$WORKDIR/cheaper_tickets.jsonl" "$WORKDIR/cheaper_tickets_config.json" \
    "$WORKDIR/cheaper_tickets.md" "$WORKDIR/cheaper_tickets_accuracy_vs_density.png" \
    "$WORKDIR/cheaper_tickets_accuracy_vs_cost.png" "$HERE/"
