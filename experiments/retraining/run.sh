#!/usr/bin/env bash
# Run (or resume) the retraining comparison (issue 37) and copy its records here.
#
#   bash experiments/retraining/run.sh        # WORKDIR (default runs/retraining)
#
# The trunk (config.py): LeNet-300-100 on Fashion-MNIST, SGD 0.1, T = 8,000 iterations, 3 trials,
# levels 0..14 (4.5% of the weights), retrained by weight rewinding to θ₀ (k = 0), no controls:
# 3 × 15 × 8,000 = 360,000 model-steps. Then five retrain branches on the same trunk (its dense
# level 0: the same θ₀, data order and dense training), 14 levels × 3 trials each:
#   lr_rewinding_t8000     learning-rate rewinding, t = T      336,000 model-steps
#   lr_rewinding_t2000     learning-rate rewinding, t = T/4     84,000
#   fine_tuning_t8000      fine-tuning, t = T                  336,000
#   fine_tuning_t2000      fine-tuning, t = T/4                 84,000
#   weight_rewinding_k400  weight rewinding to θ_400 (T/20)    319,200 (+ 1,200 to reach θ_400)
# In all about 1.52M model-steps: ~40-60 min at the 400-700 model-steps/s LeNet gets on this
# loaded 2-core CPU. Interrupt it at any time (Ctrl-C, SIGINT); the same command resumes. Needs the
# Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist). At the end it copies the records
# here: weight_rewinding_k0.jsonl (the trunk's results.jsonl) with trunk_config.json, and for each
# branch NAME.jsonl (its results.jsonl) with NAME_config.json (its config.json); then summarize.py
# writes results.md and the plots.
#
# CONFIG, BRANCHES (the folder of the branch files) and OUT (where the copies go) default to this
# folder; they exist for a shrunk smoke test of this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/retraining
WORKDIR="${WORKDIR:-runs/retraining}"
CONFIG="${CONFIG:-$HERE/config.py}"
BRANCHES="${BRANCHES:-$HERE}"
OUT="${OUT:-$HERE}"
PYTHON="${PYTHON:-python}"
RULES="lr_rewinding_t8000 lr_rewinding_t2000 fine_tuning_t8000 fine_tuning_t2000 weight_rewinding_k400"

"$PYTHON" -m lth_jax.main --config="$CONFIG" --workdir="$WORKDIR" --noreport
for name in $RULES; do
    "$PYTHON" -m lth_jax.main --config="$CONFIG" --workdir="$WORKDIR" --noreport \
        --branch="$BRANCHES/branch.py:$name"
done

mkdir -p "$OUT"
cp "$WORKDIR/results.jsonl" "$OUT/weight_rewinding_k0.jsonl"
cp "$WORKDIR/config.json" "$OUT/trunk_config.json"
for name in $RULES; do
    # the branch's folder: the one in WORKDIR/branches whose config.json holds this branch config
    folder=$("$PYTHON" - "$WORKDIR" "$BRANCHES/branch.py" "$name" <<'PY'
import json, sys
from lth_jax import config
from lth_jax.branches import base
workdir, path, setting = sys.argv[1:]
wanted = config.to_json(config.load_file(path, setting))
found = [f for f in base.folders(workdir)
         if json.load(open(f"{f}/config.json"))["branch"] == wanted]
if len(found) != 1:
    sys.exit(f"{path}:{setting}: {len(found)} branch folders in {workdir}/branches hold its config")
print(found[0])
PY
)
    cp "$folder/results.jsonl" "$OUT/$name.jsonl"
    cp "$folder/config.json" "$OUT/${name}_config.json"
done
"$PYTHON" "$HERE/summarize.py" --dir="$OUT"
