#!/usr/bin/env bash
# The convergence probe behind config.py: dense LeNet-300-100 on Fashion-MNIST (1 trial, level 0
# only, trial 0's θ₀ and data order, the same as the trunk's trial 0) under four optimizer /
# schedule settings; prints the validation loss curve of each and copies the records to probe/.
# About 90K model-steps (a few minutes here).
#
#   bash experiments/retraining/probe.sh        # PROBE_DIR (default runs/retraining_probe)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/retraining
DIR="${PROBE_DIR:-runs/retraining_probe}"
PYTHON="${PYTHON:-python}"
mkdir -p "$HERE/probe"
probe() {  # name, then --config.* overrides of config.py
    local name=$1; shift
    "$PYTHON" -m lth_jax.main --config="$HERE/config.py" --workdir="$DIR/$name" --noreport \
        --config.trials=1 --config.prune.levels=0 "$@"
    cp "$DIR/$name/results.jsonl" "$HERE/probe/$name.jsonl"
}
# the chosen setup: SGD 0.1, T = 8,000, drops at 4,000 and 7,000
probe sgd_lr0.1_T8000
# a shorter budget, the same shape (drops at T/2 and 7T/8)
probe sgd_lr0.1_T4000 --config.train.iterations=4000 --config.train.lr_drops="(2000, 3500)"
# a longer budget, the same shape
probe sgd_lr0.1_T16000 --config.train.iterations=16000 --config.train.lr_drops="(8000, 14000)"
# momentum 0.9 at 0.1
probe momentum0.9_lr0.1_T8000 --config.train.optimizer=momentum
"$PYTHON" - "$HERE"/probe/*.jsonl <<'PY'
import json, sys
for path in sys.argv[1:]:
    (r,) = [json.loads(line) for line in open(path)]
    it, vl = r["eval_iterations"], r["val_loss"]
    best = min(range(len(vl)), key=vl.__getitem__)
    print(f"{path.rsplit('/', 1)[-1]}: min val loss {vl[best]:.4f} at {it[best]} (last {vl[-1]:.4f} "
          f"at {it[-1]}); test acc at early stop {100 * r['test_accuracy_at_early_stop']:.2f}%, "
          f"final {100 * r['final_test_accuracy']:.2f}%")
    print("   val loss every 500:", " ".join(f"{i}:{v:.3f}" for i, v in zip(it, vl) if i % 500 == 0))
PY
