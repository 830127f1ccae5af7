#!/usr/bin/env bash
# Set up lth_jax and run the quickstart on real data (Fashion-MNIST): LeNet-300-100, the dense network
# and 4 pruning levels (configs/quickstart.py), 2 trials, both controls; ends by printing a summary
# table (the full report goes to runs/quickstart/report.md). Measured time: see README.md.
#
#   bash experiments/quickstart.sh            # venv in .venv, results in runs/quickstart
#   WORKDIR=runs/qs2 bash experiments/quickstart.sh   # another workdir (the same one resumes)
#
# Fashion-MNIST comes from local IDX files. Where they are missing this script tries, in order:
# Debian's package dataset-fashion-mnist (apt-get, as root), then a download of the four official
# files, checked against their SHA-256 (lth_jax.download), into the data cache ($LTH_JAX_DATA, else
# ~/.cache/lth_jax/datasets) under fashion_mnist/ (needs internet); otherwise it says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
WORKDIR="${WORKDIR:-runs/quickstart}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e .

FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have_files() {
  for f in $FILES; do [ -f "$1/$f" ] || return 1; done
}
CACHE="$("$VENV/bin/python" -c 'from lth_jax import download; print(download.cache_dir() / "fashion_mnist")')"
DATA=""
# (~/.cache/lth_jax/fashion_mnist: where earlier versions of this script downloaded)
for dir in "${DATA_DIR:-/nonexistent}" "$CACHE" /usr/share/datasets/fashion-mnist "$HOME/.cache/lth_jax/fashion_mnist"; do
  if have_files "$dir"; then DATA="$dir"; break; fi
done
if [ -z "$DATA" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "quickstart: installing Debian's dataset-fashion-mnist ..."
  if (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
      && have_files /usr/share/datasets/fashion-mnist; then
    DATA=/usr/share/datasets/fashion-mnist
  fi
fi
if [ -z "$DATA" ]; then
  echo "quickstart: downloading Fashion-MNIST into $CACHE ..."
  if "$VENV/bin/python" - <<'PY'
import sys
from lth_jax import download
try:
    download.fetch("fashion_mnist")
except download.DownloadError as e:
    sys.exit(f"quickstart: {e}")
PY
  then
    DATA="$CACHE"
  fi
fi
if [ -z "$DATA" ]; then
  cat >&2 <<'MSG'
quickstart: Fashion-MNIST not found and could not be fetched. Get the four IDX files
(train/t10k images-idx3 and labels-idx1, .gz) by one of:
  sudo apt-get install dataset-fashion-mnist          # Debian/Ubuntu: /usr/share/datasets/fashion-mnist
  or download them into a folder and run:  DATA_DIR=/that/folder bash experiments/quickstart.sh
MSG
  exit 1
fi

echo "quickstart: Fashion-MNIST from $DATA"
exec "$VENV/bin/python" -m lth_jax.main --config=configs/quickstart.py --workdir="$WORKDIR" \
  --config.dataset.path="$DATA"
