#!/usr/bin/env bash
# The paper's convolutional lottery-ticket figures on CIFAR-10 (Frankle & Carbin 2019: Conv-2/4/6
# with and without dropout, VGG-19, and "ResNet-18" = a CIFAR ResNet-20), at the paper's
# iterations, learning rates, batch sizes and pruning rates (configs/*.py, which give the paper's
# setups), with the random-reinit control and TRIALS trials (default 3; the paper ran 5).
#
#   bash experiments/paper_conv_figures/run.sh                          # all eight in turn
#   ONLY="conv2 resnet18" bash experiments/paper_conv_figures/run.sh    # some of them
#   TRIALS=5 RANDOM_PRUNE=True bash experiments/paper_conv_figures/run.sh  # 5 trials, both controls
#
# It needs a GPU: on the 2-core CPU of this project Conv-2 trains at ~10 model-steps/s and VGG-19
# at ~1 (benchmarks/results/input_gradient_convolution.json), so the eight lotteries would take about a
# year there. The expected time on one GPU is an estimate from FLOP counts, not a measurement
# (README.md: 14-47 h for all eight at 3 trials).
#
# Resume: run the same command again (same TRIALS and RANDOM_PRUNE: they are part of each
# experiment's identity, and a workdir holding another experiment is refused). Finished levels are
# kept and an interrupted level continues from its last checkpoint (runtime.checkpoint_minutes,
# default 10). A finished experiment is skipped quickly: the program sees every level done.
#
# CIFAR-10: the first run fetches the official cifar-10-python.tar.gz (verified by SHA-256) into
# the data cache. A machine without internet needs the extracted cifar-10-batches-py folder: put
# its parent folder in DATA (DATA=/data/cifar bash ...). Each workdir gets report.md, results.csv
# and the plots (python -m lth_jax.report), 95% confidence intervals over the trials.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORKDIR="${WORKDIR:-runs/paper_conv_figures}"
PYTHON="${PYTHON:-python}"
TRIALS="${TRIALS:-3}"
RANDOM_PRUNE="${RANDOM_PRUNE:-False}"
ONLY="${ONLY:-conv2 conv2_dropout conv4 conv4_dropout conv6 conv6_dropout vgg19 resnet18}"
DATA_FLAGS=()
if [ -n "${DATA:-}" ]; then
    DATA_FLAGS=(--config.dataset.source=files "--config.dataset.path=$DATA")
fi

for name in $ONLY; do
    if [ ! -f "configs/$name.py" ]; then
        echo "run.sh: no configs/$name.py (ONLY takes: conv2 conv2_dropout conv4 conv4_dropout" \
             "conv6 conv6_dropout vgg19 resnet18)" >&2
        exit 2
    fi
    echo "== $name: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    "$PYTHON" -m lth_jax.main --config="configs/$name.py" --workdir="$WORKDIR/$name" \
        --config.trials="$TRIALS" --config.controls.reinit=True \
        --config.controls.random_prune="$RANDOM_PRUNE" "${DATA_FLAGS[@]}"
done
echo "== done: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); reports in $WORKDIR/*/report.md"
