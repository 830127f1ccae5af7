#!/usr/bin/env bash
# Run (or resume) the cheaper-tickets experiment (issue 18) and copy its results here.
#
#   bash experiments/cheaper_tickets/run.sh
#       # WORKDIR (default runs/cheaper_tickets), TICKETS (default runs/cheaper_tickets_lottery)
#
# First the lottery that provides θ₀ and the IMP masks: LeNet-300-100 on Fashion-MNIST, 3 trials,
# levels 0..15, 10K iterations (config.py), no controls: 48 trainings, 480K model-steps. Then, for
# each trial, the masks of IMP, one-shot, early-bird, SNIP, GraSP, SynFlow and random at 51.3%,
# 21.1%, 7.0% and 3.6% of the weights and the layerwise shuffles of five of them: 48 runs trained
# together per trial, 1.44M model-steps. Interrupt it at any time; running it again resumes. Needs
# the Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist). At the end it copies
# the records, their config, the table and the plots here, and the lottery's records as
# lottery_results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/cheaper_tickets
WORKDIR="${WORKDIR:-runs/cheaper_tickets}"
TICKETS="${TICKETS:-runs/cheaper_tickets_lottery}"
PYTHON="${PYTHON:-python}"

"$PYTHON" -m lth_jax.main --config="$HERE/config.py" --workdir="$TICKETS" --noreport
"$PYTHON" -m lth_jax.cheaper_tickets --config="$HERE/config.py" --workdir="$WORKDIR" \
    --tickets="$TICKETS"
cp "$WORKDIR/cheaper_tickets.jsonl" "$WORKDIR/cheaper_tickets_config.json" \
    "$WORKDIR/cheaper_tickets.md" "$WORKDIR/cheaper_tickets_accuracy_vs_density.png" \
    "$WORKDIR/cheaper_tickets_accuracy_vs_cost.png" "$HERE/"
cp "$TICKETS/results.jsonl" "$HERE/lottery_results.jsonl"
