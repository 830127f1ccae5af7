#!/usr/bin/env bash
# Run (or resume) the recorded Conv-2 / Fashion-MNIST experiment and refresh the results here.
#
#   bash experiments/conv2_fashion_mnist/run.sh      # WORKDIR (default runs/conv2_fashion_mnist)
#
# Trains 2 trials x levels 0..2 x (ticket, reinit) of Conv-2 on 28x28 Fashion-MNIST (config.py):
# about an hour on a 2-core CPU. Interrupt it at any time; running it again resumes. Needs the
# Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist). When the run stops, for
# whatever reason, the levels finished so far are copied here (results.jsonl, config.json) and
# report.md, results.csv and the PNGs are rebuilt from them; the report lists what is missing.
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/conv2_fashion_mnist
WORKDIR="${WORKDIR:-runs/conv2_fashion_mnist}"
PYTHON="${PYTHON:-python}"

"$PYTHON" -m lth_jax.main --config="$HERE/config.py" --workdir="$WORKDIR" --noreport
status=$?
if [ -f "$WORKDIR/results.jsonl" ]; then
  cp "$WORKDIR/results.jsonl" "$WORKDIR/config.json" "$HERE/"
  "$PYTHON" -m lth_jax.report --workdir="$HERE"
fi
exit $status
