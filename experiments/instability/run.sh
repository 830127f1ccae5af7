#!/usr/bin/env bash
# Run (or resume) the instability experiment (issue 20) with the branch command, and copy each
# part's records, report and plot into lenet/ and conv2/.
#
#   bash experiments/instability/run.sh [lenet] [conv2]      # default: both, in that order
#
# lenet: lenet_branch.py on the cheaper-tickets lottery (runs/cheaper_tickets, trained first if
#   missing: experiments/cheaper_tickets/config.py): the dense network and the tickets of levels
#   3, 7, 12, k = 0, 100, 500, 1000, 2000, 4000, 2 trials.
# conv2: conv2_branch.py on the lottery of conv2.py (runs/instability_conv2: the dense network
#   only, 1 trial), k = 0, 100, 500, 1000.
# Interrupt it at any time (Ctrl-C); running it again resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/instability
PYTHON="${PYTHON:-python}"

branch_folder() {  # the folder of branch file $3 on the lottery of config file $1 in workdir $2
    "$PYTHON" - "$1" "$2" "$3" <<'PY'
import sys
from lth_jax import config as config_lib
from lth_jax.branches import base
config, workdir = config_lib.load_file(sys.argv[1]), sys.argv[2]
branch = config_lib.load_file(sys.argv[3])
print(base.folder_of(workdir, str(branch.name),
                     base.branch_identity(config_lib.identity(config_lib.to_json(config)), branch)))
PY
}

run_part() {  # part, trunk config, trunk workdir, branch file
    "$PYTHON" -m lth_jax.main --config="$2" --workdir="$3" --branch="$4"
    local folder
    folder=$(branch_folder "$2" "$3" "$4")
    mkdir -p "$HERE/$1"
    cp "$folder/results.jsonl" "$folder/config.json" "$folder/instability.md" \
        "$folder/instability.png" "$HERE/$1/"
    cp "$3/config.json" "$HERE/$1/trunk_config.json"
}

for part in "${@:-lenet conv2}"; do
    for p in $part; do
        case "$p" in
            lenet) run_part lenet experiments/cheaper_tickets/config.py runs/cheaper_tickets \
                       "$HERE/lenet_branch.py" ;;
            conv2) run_part conv2 "$HERE/conv2.py" runs/instability_conv2 "$HERE/conv2_branch.py" ;;
            *) echo "unknown part $p (lenet or conv2)" >&2; exit 2 ;;
        esac
    done
done
