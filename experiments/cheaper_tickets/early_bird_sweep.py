r"""The measured effect of the early-bird detector's ε and window W (issue 18): the table.

    python experiments/cheaper_tickets/early_bird_sweep.py [--records=experiments/cheaper_tickets]

``run.sh`` runs each setting of ``early_bird.py`` as a branch of its own on the cheaper-tickets
trunk (early-bird alone, no shuffles) and copies its records to
``early_bird_sweep/eps<ε>_w<W>.jsonl`` (its branch config beside it, ``..._config.json``). This
prints a Markdown table: per setting and level, the iteration of the mask the detector took (mean
and range over trials), in how many trials it fired before the end of training, the early-bird
ticket's test accuracy at early stop (mean ± 95% CI over trials), and its paired gap to IMP (the
trunk's ticket of the same trial and level, from the main branch's ``results.jsonl``). The main
branch's own setting (ε = 0.1, W = 5) is the first row, read from those records.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from lth_jax import stats
from lth_jax import workdir as workdir_lib
from lth_jax.branches import cheaper_tickets


def _read(path: str) -> list[dict]:
    return workdir_lib.read_records(os.path.dirname(path), file=os.path.basename(path),
                                    key=cheaper_tickets.RECORD_KEY)


def _pp(e: stats.Estimate, signed: bool = False) -> str:
    if e.mean is None:
        return "—"
    text = f"{100 * e.mean:+.2f}" if signed else f"{100 * e.mean:.2f}"
    return text if e.half_width is None else f"{text} ± {100 * e.half_width:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", default=os.path.dirname(os.path.abspath(__file__)),
                        help="the folder with results.jsonl and early_bird_sweep/")
    args = parser.parse_args()
    main_records = _read(os.path.join(args.records, "results.jsonl"))
    ok = lambda r: r["status"] == "ok"  # noqa: E731
    imp = {(r["trial"], r["level"]): r["test_accuracy_at_early_stop"]
           for r in main_records if r["method"] == "imp" and ok(r)}
    settings = [((0.1, 5), [r for r in main_records if r["method"] == "earlybird"])]
    for path in glob.glob(os.path.join(args.records, "early_bird_sweep", "*.jsonl")):
        with open(path[:-len(".jsonl")] + "_config.json") as f:
            branch = json.load(f)["branch"]
        settings.append(((branch["early_bird_epsilon"], branch["early_bird_window"]),
                         [r for r in _read(path) if r["method"] == "earlybird"]))
    settings.sort(key=lambda s: (-s[0][0], s[0][1]))
    trials = len({r["trial"] for _, rs in settings for r in rs})
    print("# Early-bird: the effect of ε and W\n")
    print(f"LeNet-300-100 on Fashion-MNIST, the cheaper-tickets trunk, {trials} trials; a mask "
          "every 100 iterations. *Fired at*: the iteration of the mask taken, mean (min–max) over "
          "trials; *fired in*: trials whose detector fired before the end of training (10,000; "
          "otherwise the last mask, the one-shot mask, is taken and the whole training charged). "
          "*Acc*: test accuracy at early stop (%), mean ± 95% CI over trials; *gap*: paired, the "
          "early-bird ticket minus IMP's ticket of the same trial and level (pp, mean ± 95% CI). "
          "ε = 0.1, W = 5 is the main branch's run.\n")
    print("| ε | W | level | density | fired at | fired in | acc % | gap to IMP pp |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (epsilon, window), records in settings:
        for level in sorted({r["level"] for r in records}):
            rs = [r for r in records if r["level"] == level]
            fired = [r["early_bird"]["iteration"] for r in rs]
            found = sum(bool(r["early_bird"]["found"]) for r in rs)
            acc = {r["trial"]: r["test_accuracy_at_early_stop"] for r in rs if ok(r)}
            gap = stats.paired_difference(acc, {t: a for (t, lv), a in imp.items() if lv == level})
            density = sum(r["target_density"] for r in rs) / len(rs)
            print(f"| {epsilon:g} | {window} | {level} | {100 * density:.1f}% | "
                  f"{sum(fired) / len(fired):,.0f} ({min(fired):,}–{max(fired):,}) | "
                  f"{found}/{len(rs)} | {_pp(stats.mean_ci(acc.values()))} | "
                  f"{_pp(gap, signed=True)} |")


if __name__ == "__main__":
    main()
