#!/usr/bin/env bash
# Run (or resume) the structured-sparsity experiment (issue 19) and write its results here.
#
#   bash experiments/structured_sparsity/run.sh        # WORKDIR (default runs/structured_sparsity)
#
# Four lotteries of LeNet-300-100 on Fashion-MNIST (config.py), one per pruning pattern, 2 trials,
# the ticket and its reinit control at every level, 10K iterations per training: unstructured
# (levels 0..10), 2:4 (0..2), 1:4 (0..3), neuron (0..10); 42 + 10 + 14 + 42 = 108 trainings (2
# dense runs at level 0, then 2 trials x 2 variants per level), 1.08M model-steps. Then the tables
# and the plot (summarize.py) and the speed-up of compact networks (benchmarks/structured_speed.py).
# Interrupt it at any time; running it again resumes. Needs the Fashion-MNIST IDX files (Debian:
# apt-get install dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/structured_sparsity
WORKDIR="${WORKDIR:-runs/structured_sparsity}"
PYTHON="${PYTHON:-python}"

for pattern in unstructured 2:4 1:4 neuron; do
    "$PYTHON" -m lth_jax.main --config="$HERE/config.py:$pattern" \
        --workdir="$WORKDIR/${pattern/:/_}" --noreport
    mkdir -p "$HERE/${pattern/:/_}"
    cp "$WORKDIR/${pattern/:/_}/results.jsonl" "$WORKDIR/${pattern/:/_}/config.json" \
        "$HERE/${pattern/:/_}/"
done
"$PYTHON" "$HERE/summarize.py" --out="$HERE"
"$PYTHON" benchmarks/structured_speed.py --json="$HERE/speed.json"
