r"""The measured effect of the early-bird detector's ε and window W (issue 18).

    python experiments/cheaper_tickets/early_bird_sweep.py \
        [--workdir=runs/cheaper_tickets] [--tickets=runs/cheaper_tickets_lottery] \
        [--settings=0.1:10,0.1:20,0.05:5,0.02:5,0.01:5] [--out=experiments/cheaper_tickets]

For each ``ε:W`` setting, ``lth_jax.cheaper_tickets.run`` with ``methods=["earlybird"]`` (no
shuffles) on the same lottery and config as the main run (``experiments/cheaper_tickets/``), in
``WORKDIR/early_bird_eps<ε>_w<W>`` (resumable like the main run). Then a table in
``OUT/early_bird_sweep.md``: per setting and target density, the iteration at which the detector
fired (mean and range over trials; how many trials fired at all), the mean test accuracy at early
stop of the early-bird ticket, and IMP's from the main run's records in ``WORKDIR``; the main run's
own setting (ε = 0.1, W = 5) is the first row, read from those records. Each setting's records are
copied to ``OUT/early_bird_sweep/early_bird_eps<ε>_w<W>.jsonl``.
"""

import argparse
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from lth_jax import cheaper_tickets  # noqa: E402
from lth_jax import config as config_lib  # noqa: E402


def _config():
    return config_lib.load_file(os.path.join(HERE, "config.py"))


def _rows(records, method):
    out = {}
    for r in records:
        if r["method"] == method:
            out.setdefault(r["target_density"], []).append(r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/cheaper_tickets")
    parser.add_argument("--tickets", default="runs/cheaper_tickets_lottery")
    parser.add_argument("--settings", default="0.1:10,0.1:20,0.05:5,0.02:5,0.01:5")
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    config = _config()
    main_records = cheaper_tickets.read_records(args.workdir)
    if not main_records:
        sys.exit(f"{args.workdir} has no cheaper-tickets records: run experiments/cheaper_tickets/"
                 "run.sh first")
    imp = {d: np.mean([r["test_accuracy_at_early_stop"] for r in rs])
           for d, rs in _rows(main_records, "imp").items()}
    results = [((0.1, 5), _rows(main_records, "earlybird"))]
    for setting in args.settings.split(","):
        epsilon, window = float(setting.split(":")[0]), int(setting.split(":")[1])
        workdir = os.path.join(args.workdir, f"early_bird_eps{epsilon:g}_w{window}")
        print(f"early-bird ε={epsilon:g} W={window}: {workdir}", flush=True)
        options = cheaper_tickets.Options(early_bird_epsilon=epsilon, early_bird_window=window,
                                          shuffle=False)
        records = cheaper_tickets.run(config, workdir, tickets=args.tickets,
                                      methods=["earlybird"], options=options,
                                      log=lambda line: print("  " + line, flush=True))
        results.append(((epsilon, window), _rows(records, "earlybird")))
        os.makedirs(os.path.join(args.out, "early_bird_sweep"), exist_ok=True)
        shutil.copy(os.path.join(workdir, cheaper_tickets.RECORDS),
                    os.path.join(args.out, "early_bird_sweep", os.path.basename(workdir) + ".jsonl"))

    lines = ["# Early-bird: the effect of ε and W", "",
             "LeNet-300-100 on Fashion-MNIST, the lottery and config of this folder's main run, "
             f"{int(config.trials)} trials; masks every 100 iterations. *Fired*: the iteration "
             "of the mask taken, mean (min–max) over trials, and in how many trials the detector "
             "fired before the end of training (10,000). *Acc*: test accuracy at early stop of the "
             "early-bird ticket (mean over trials, %); IMP's from the main run.", "",
             "| ε | W | target | fired at | fired in | acc | IMP acc | gap (pp) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (epsilon, window), by_density in results:
        for density in sorted(by_density, reverse=True):
            rs = by_density[density]
            fired = [r["early_bird"]["iteration"] for r in rs]
            found = sum(bool(r["early_bird"]["found"]) for r in rs)
            acc = 100 * np.mean([r["test_accuracy_at_early_stop"] for r in rs])
            ref = 100 * imp[density] if density in imp else float("nan")
            lines.append(f"| {epsilon:g} | {window} | {100 * density:.1f}% | "
                         f"{np.mean(fired):,.0f} ({min(fired):,}–{max(fired):,}) | "
                         f"{found}/{len(rs)} | {acc:.2f} | {ref:.2f} | {acc - ref:+.2f} |")
    path = os.path.join(args.out, "early_bird_sweep.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
