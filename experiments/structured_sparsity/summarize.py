r"""Table and plot of the structured-sparsity experiment (issue 19) from its four lottery workdirs.

    python experiments/structured_sparsity/summarize.py [--runs=experiments/structured_sparsity] \
        [--out=experiments/structured_sparsity]

Reads ``RUNS/<pattern>/results.jsonl`` for the patterns unstructured, 2_4, 1_4 and neuron (the
folders ``run.sh`` fills), and writes ``OUT/results.md`` (one table per pattern: every level's
density, the ticket's and the reinit control's test accuracy at early stop and early-stopping
iteration, means with min–max over trials, and whether the ticket is a *winning* ticket: at least
the dense network's mean accuracy in no more mean iterations) and ``OUT/accuracy_vs_density.png``
(accuracy at early stop and early-stopping iteration against the percent of weights remaining, one
colour per pattern; solid = ticket, dashed = reinit).
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from lth_jax import report  # noqa: E402
from lth_jax import workdir as workdir_lib  # noqa: E402

PATTERNS = {"unstructured": "unstructured", "2_4": "2:4", "1_4": "1:4", "neuron": "neurons"}
COLORS = {"unstructured": "tab:blue", "2_4": "tab:orange", "1_4": "tab:green", "neuron": "tab:red"}


def load(runs: str) -> dict[str, list[report.SummaryRow]]:
    out = {}
    for folder in PATTERNS:
        path = os.path.join(runs, folder)
        if os.path.isfile(os.path.join(path, workdir_lib.RESULTS)):
            out[folder] = report.summarize(workdir_lib.read_records(path))
    return out


def _stat(stat: report.Stat, scale: float, digits: int) -> str:
    if stat.mean is None:
        return "—"
    f = lambda x: f"{scale * x:,.{digits}f}"
    return f"{f(stat.mean)} ({f(stat.min)}–{f(stat.max)})"


def table(folder: str, rows: list[report.SummaryRow]) -> str:
    by = {(r.level, r.variant): r for r in rows}
    dense = by.get((0, "ticket"))
    lines = [f"### {PATTERNS[folder]}", "",
             "| level | % weights | ticket acc | reinit acc | ticket early stop | reinit early stop "
             "| winning ticket |",
             "|---:|---:|---:|---:|---:|---:|:---:|"]
    for level in sorted({r.level for r in rows}):
        ticket, reinit = by.get((level, "ticket")), by.get((level, "reinit"))
        if ticket is None:
            continue
        none = report.Stat(None, None, None)
        winning = "—"
        if level and dense and ticket.test_accuracy_at_early_stop.mean is not None:
            winning = "yes" if (ticket.test_accuracy_at_early_stop.mean
                                >= dense.test_accuracy_at_early_stop.mean
                                and ticket.early_stop_iteration.mean
                                <= dense.early_stop_iteration.mean) else "no"
        lines.append(
            f"| {level} | {report.format_percent_remaining(ticket.density)} "
            f"| {_stat(ticket.test_accuracy_at_early_stop, 100, 2)} "
            f"| {_stat(reinit.test_accuracy_at_early_stop if reinit else none, 100, 2)} "
            f"| {_stat(ticket.early_stop_iteration, 1, 0)} "
            f"| {_stat(reinit.early_stop_iteration if reinit else none, 1, 0)} | {winning} |")
    return "\n".join(lines)


def plot(results: dict[str, list[report.SummaryRow]], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), dpi=150, layout="constrained")
    acc_ax, stop_ax = fig.subplots(1, 2)
    densities = set()
    for folder, rows in results.items():
        dense = [r for r in rows if r.level == 0 and r.variant == "ticket"]
        for variant, style in (("ticket", "-"), ("reinit", "--")):
            vrows = sorted([r for r in rows if r.variant == variant], key=lambda r: r.level)
            if variant == "reinit":
                vrows = dense + vrows  # at 100% the control is the dense network
            if len(vrows) < 2:
                continue
            xs = [r.percent_remaining for r in vrows]
            densities.update(r.density for r in vrows)
            for ax, metric, scale in ((acc_ax, "test_accuracy_at_early_stop", 100.0),
                                      (stop_ax, "early_stop_iteration", 1.0)):
                stats = [getattr(r, metric) for r in vrows]
                ax.errorbar(xs, [scale * s.mean for s in stats],
                            yerr=[[scale * (s.mean - s.min) for s in stats],
                                  [scale * (s.max - s.mean) for s in stats]],
                            color=COLORS[folder], linestyle=style, marker="o" if style == "-" else "x",
                            # 2:4's levels are 1:4's first two (one weight per group per round):
                            # drawn wider underneath so that both stay visible
                            markersize=9 if folder == "2_4" else 4, capsize=2,
                            linewidth=4 if folder == "2_4" else 1.3,
                            zorder=1 if folder == "2_4" else 2,
                            label=f"{PATTERNS[folder]} {variant}")
    from matplotlib.ticker import FixedLocator, NullLocator, FuncFormatter

    ticks = [100, 75, 50, 35, 25, 15, 10]
    lowest = 100 * min(densities)
    for ax, label in ((acc_ax, "Test accuracy at early stop (%)"),
                      (stop_ax, "Early-stop iteration (val. loss)")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlim(112, lowest / 1.12)  # inverted: 100% on the left
        ax.set_xlabel("Percent of weights remaining")
        ax.grid(True, alpha=0.3)
        ax.set_ylabel(label)
    acc_ax.legend(fontsize="x-small", ncol=2)
    fig.suptitle("LeNet-300-100 on Fashion-MNIST: structured and N:M tickets (2 trials, min–max; "
                 "2:4 = 1:4's first two levels)")
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=HERE, help="folder holding the pattern folders")
    parser.add_argument("--out", default=HERE, help="where results.md and the plot go")
    args = parser.parse_args()
    results = load(args.runs)
    if not results:
        sys.exit(f"no results under {args.runs} (expected {', '.join(PATTERNS)} folders)")
    os.makedirs(args.out, exist_ok=True)
    text = ["# Structured sparsity: results", "",
            "Test accuracy (%) at the early-stopping iteration and that iteration, mean (min–max) "
            "over trials. Winning ticket: at least the dense network's mean accuracy, in no more "
            "mean iterations.", ""]
    text += [table(folder, rows) + "\n" for folder, rows in results.items()]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(text))
    plot(results, os.path.join(args.out, "accuracy_vs_density.png"))
    print(f"wrote {args.out}/results.md and accuracy_vs_density.png ({', '.join(results)})")


if __name__ == "__main__":
    main()
