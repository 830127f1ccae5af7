#!/usr/bin/env bash
# Run (or resume) the cheaper-tickets experiment (issue 18) with the branch command, and copy its
# records, report and plots here.
#
#   bash experiments/cheaper_tickets/run.sh      # WORKDIR (default runs/cheaper_tickets)
#
# 1. The cheaper-tickets branch (branch.py) on the lottery of config.py. The branch first trains
#    (or resumes) the trunk: LeNet-300-100 on Fashion-MNIST, 3 trials, levels 0..15, 10K
#    iterations, no controls (48 trainings, 480K model-steps). Then per trial the masks of
#    one-shot, early-bird, SNIP, GraSP, SynFlow and random at the densities of levels 3, 7, 12
#    and 15, and the layerwise shuffles of five of them, trained together (44 runs per trial,
#    fewer when two masks are equal); IMP's outcomes are the trunk's tickets'.
# 2. The early-bird ε/W sweep: early_bird.py's settings, each a branch folder of its own on the
#    same trunk (early-bird alone, no shuffles); early_bird_sweep.py tabulates them.
# 3. connectivity.py: dead units and disconnected weights of every saved mask.
# Interrupt it at any time (Ctrl-C); running it again resumes. Needs the Fashion-MNIST IDX files
# (Debian: apt-get install dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/cheaper_tickets
WORKDIR="${WORKDIR:-runs/cheaper_tickets}"
PYTHON="${PYTHON:-python}"
CONFIG="$HERE/config.py"

branch_folder() {  # the folder of branch spec $1 (FILE[:ARG]) on the lottery of $CONFIG
    "$PYTHON" - "$CONFIG" "$1" "$WORKDIR" <<'PY'
import sys
from lth_jax import config as config_lib
from lth_jax.branches import base
config, (path, _, arg), workdir = config_lib.load_file(sys.argv[1]), sys.argv[2].partition(":"), sys.argv[3]
branch = config_lib.load_file(path, arg or None)
print(base.folder_of(workdir, str(branch.name),
                     base.branch_identity(config_lib.identity(config_lib.to_json(config)), branch)))
PY
}

"$PYTHON" -m lth_jax.main --config="$CONFIG" --workdir="$WORKDIR" --branch="$HERE/branch.py"
MAIN=$(branch_folder "$HERE/branch.py")
SWEEP=()
for s in eps0.1_w10 eps0.1_w20 eps0.05_w5 eps0.02_w5 eps0.01_w5; do
    "$PYTHON" -m lth_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
        --branch="$HERE/early_bird.py:$s"
    SWEEP+=("$s=$(branch_folder "$HERE/early_bird.py:$s")")
done

cp "$MAIN/results.jsonl" "$MAIN/config.json" "$MAIN/cheaper_tickets.md" \
    "$MAIN/cheaper_tickets_accuracy_vs_density.png" "$MAIN/cheaper_tickets_accuracy_vs_cost.png" \
    "$HERE/"
cp "$WORKDIR/results.jsonl" "$HERE/lottery_results.jsonl"
cp "$WORKDIR/config.json" "$HERE/lottery_config.json"
mkdir -p "$HERE/early_bird_sweep"
for pair in "${SWEEP[@]}"; do
    cp "${pair#*=}/results.jsonl" "$HERE/early_bird_sweep/${pair%%=*}.jsonl"
    cp "${pair#*=}/config.json" "$HERE/early_bird_sweep/${pair%%=*}_config.json"
done
"$PYTHON" "$HERE/early_bird_sweep.py" --records="$HERE" > "$HERE/early_bird_sweep.md"
"$PYTHON" "$HERE/connectivity.py" --folder="$MAIN" > "$HERE/connectivity.md"
