r"""Tables and plot of the structured-sparsity experiment (issue 19) from its four lottery workdirs.

    python experiments/structured_sparsity/summarize.py [--runs=experiments/structured_sparsity] \
        [--out=experiments/structured_sparsity]

Reads ``RUNS/<pattern>/results.jsonl`` and ``config.json`` for the patterns unstructured, 2_4, 1_4
and neuron (the folders ``run.sh`` fills), and writes:

- ``OUT/results.md``: per pattern, every level's density; the ticket's and the reinit control's
  test accuracy at early stop and early-stopping iteration, each the mean ± the half-width of its
  95% confidence interval over trials (Student's t) with the SD; the paired difference ticket −
  reinit; and the winning-ticket verdict (`lth_jax.stats.winning_verdict`: the paired intervals
  of ticket − dense) for the ticket and, by the same rule, for the reinit control. Then each
  structured pattern against the unstructured ticket of the nearest density (rule − rule, paired
  by trial). Censored early stops (at the run's last evaluation) are marked.
- ``OUT/accuracy_vs_density.png``: accuracy at early stop and early-stopping iteration against the
  percent of weights remaining, one colour per pattern; solid = ticket, dashed = reinit; error
  bars = 95% confidence intervals.
"""

import argparse
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from lth_jax import report, stats  # noqa: E402
from lth_jax import workdir as workdir_lib  # noqa: E402

PATTERNS = {"unstructured": "unstructured", "2_4": "2:4", "1_4": "1:4", "neuron": "neurons"}
COLORS = {"unstructured": "tab:blue", "2_4": "tab:orange", "1_4": "tab:green", "neuron": "tab:red"}
ACC, STOP = "test_accuracy_at_early_stop", "early_stop_iteration"


class Pattern:
    """One pattern's lottery: its summary rows, the verdicts and the early-stop margin."""

    def __init__(self, folder: str, path: str):
        self.folder, self.name = folder, PATTERNS[folder]
        records = workdir_lib.read_records(path)
        config = report.load_config(path)
        self.budget = report.iteration_budget(config)
        self.rows = report.summarize(records, self.budget)
        self.by = {(r.level, r.variant): r for r in self.rows}
        self.margin = report.stop_margin(config, records)
        self.verdicts = {(j.level, j.variant): j for j in report.verdicts(self.rows, self.margin)}
        self.trials = max((r.n for r in self.rows), default=0)
        self.n_ok = sum(r.n for r in self.rows)
        self.n_censored = sum(r.n_censored for r in self.rows)


def load(runs: str) -> dict[str, Pattern]:
    out = {}
    for folder in PATTERNS:
        path = os.path.join(runs, folder)
        if os.path.isfile(os.path.join(path, workdir_lib.RESULTS)):
            out[folder] = Pattern(folder, path)
    return out


def _stat(stat: report.Stat, scale: float, digits: int) -> str:
    if stat.mean is None:
        return "—"
    f = lambda x: f"{scale * x:,.{digits}f}"  # noqa: E731
    if stat.half_width is None:
        return f(stat.mean)
    return f"{f(stat.mean)} ± {f(stat.half_width)} ({f(stat.sd)})"


def _stop(row: report.SummaryRow | None) -> str:
    if row is None:
        return "—"
    text = _stat(row.early_stop_iteration, 1, 0)
    return text + (f" ({row.n_censored} censored)" if row.n_censored else "")


def _diff(e: stats.Estimate, scale: float, digits: int) -> str:
    if e.mean is None:
        return "—"
    text = f"{scale * e.mean:+,.{digits}f}"
    if e.half_width is not None:
        text += f" ± {scale * e.half_width:,.{digits}f} (p {report.format_p(e.p)})"
    return text


def _verdict(p: Pattern, level: int, variant: str) -> str:
    j = p.verdicts.get((level, variant))
    return "—" if j is None else j.verdict.label


def table(p: Pattern) -> str:
    lines = [f"### {p.name}", "",
             "| level | % weights | ticket acc | reinit acc | ticket − reinit acc (pp) "
             "| ticket early stop | reinit early stop | ticket − reinit early stop "
             "| verdict: ticket | verdict: reinit (same rule) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|"]
    for level in sorted({r.level for r in p.rows}):
        ticket, reinit = p.by.get((level, "ticket")), p.by.get((level, "reinit"))
        if ticket is None:
            continue
        none = report.Stat()
        d_acc = report.paired(p.rows, (level, "ticket"), (level, "reinit"), ACC).estimate
        d_stop = report.paired(p.rows, (level, "ticket"), (level, "reinit"), STOP).estimate
        lines.append(
            f"| {level} | {report.format_percent_remaining(ticket.density)} "
            f"| {_stat(ticket.test_accuracy_at_early_stop, 100, 2)} "
            f"| {_stat(reinit.test_accuracy_at_early_stop if reinit else none, 100, 2)} "
            f"| {_diff(d_acc, 100, 2) if level else '—'} "
            f"| {_stop(ticket)} | {_stop(reinit)} | {_diff(d_stop, 1, 0) if level else '—'} "
            f"| {_verdict(p, level, 'ticket')} | {_verdict(p, level, 'reinit')} |")
    return "\n".join(lines)


def _nearest(p: Pattern, density: float) -> report.SummaryRow | None:
    """p's ticket row whose density is nearest `density` on a log scale (levels ≥ 1)."""
    rows = [r for r in p.rows if r.variant == "ticket" and r.level > 0 and r.density > 0]
    return min(rows, key=lambda r: abs(math.log(r.density / density)), default=None)


def against_unstructured(results: dict[str, Pattern]) -> str:
    """Each structured ticket − the unstructured ticket of the nearest density, paired by trial
    (same θ₀ and data order: level 0 is the same dense training in every folder)."""
    base = results.get("unstructured")
    if base is None:
        return ""
    lines = ["| pattern | % weights | unstructured % weights | acc difference (pp) "
             "| early-stop difference |", "|---|---:|---:|---:|---:|"]
    for folder, p in results.items():
        if folder == "unstructured":
            continue
        for r in sorted((r for r in p.rows if r.variant == "ticket" and r.level > 0),
                        key=lambda r: r.level):
            u = _nearest(base, r.density)
            if u is None:
                continue
            acc = stats.paired_difference(r.values[ACC], u.values[ACC])
            stop = stats.paired_difference(r.values[STOP], u.values[STOP])
            lines.append(f"| {p.name} | {report.format_percent_remaining(r.density)} "
                         f"| {report.format_percent_remaining(u.density)} | {_diff(acc, 100, 2)} "
                         f"| {_diff(stop, 1, 0)} |")
    return "\n".join(lines)


def plot(results: dict[str, Pattern], path: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig = Figure(figsize=(11, 4.8), dpi=150, layout="constrained")
    acc_ax, stop_ax = fig.subplots(1, 2)
    densities, trials, budget, censored = set(), set(), None, False
    series = 0
    for folder, p in results.items():
        dense = [r for r in p.rows if r.level == 0 and r.variant == "ticket"]
        budget = budget or p.budget
        for variant, style in (("ticket", "-"), ("reinit", "--")):
            vrows = sorted([r for r in p.rows if r.variant == variant], key=lambda r: r.level)
            if variant == "reinit":
                vrows = dense + vrows  # at 100% the control is the dense network
            if len(vrows) < 2:
                continue
            # each series a little to the side (a log axis: a factor), so that the wide
            # intervals of two trials do not hide each other
            shift = 1.0 + 0.012 * (series - 3.5)
            series += 1
            xs = [r.percent_remaining * shift for r in vrows]
            densities.update(r.density for r in vrows)
            for ax, metric, scale in ((acc_ax, ACC, 100.0), (stop_ax, STOP, 1.0)):
                st = [getattr(r, metric) for r in vrows]
                trials.update(s.n for s in st)
                ax.errorbar(xs, [scale * s.mean for s in st],
                            yerr=[scale * (s.half_width or 0.0) for s in st],
                            color=COLORS[folder], linestyle=style, marker="o" if style == "-" else "x",
                            # 2:4's levels are 1:4's first two (one weight per group per round):
                            # drawn wider underneath so that both stay visible
                            markersize=9 if folder == "2_4" else 4, capsize=2, elinewidth=1,
                            linewidth=4 if folder == "2_4" else 1.3,
                            zorder=1 if folder == "2_4" else 2,
                            label=f"{p.name} {variant}")
                marked = [(x, scale * s.mean) for x, s, r in zip(xs, st, vrows) if r.n_censored]
                if marked:
                    censored = True
                    ax.plot(*zip(*marked), linestyle="none", marker="o", markersize=11,
                            markerfacecolor="none", markeredgecolor="black")
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
    if budget is not None:
        stop_ax.axhline(budget, color="gray", linestyle="-.", linewidth=1,
                        label=f"budget: train.iterations = {budget:,.0f}")
    if censored:
        stop_ax.plot([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                     markeredgecolor="black", label="ringed: includes censored early stops")
    acc_ax.legend(fontsize="x-small", ncol=2)
    stop_ax.legend(fontsize="x-small", loc="upper left")
    n = "–".join(str(t) for t in sorted(t for t in trials if t > 1)) or "1"
    fig.suptitle("LeNet-300-100 on Fashion-MNIST: structured and N:M tickets (2:4 = 1:4's first two "
                 "levels)\nError bars: 95% confidence interval of the mean over "
                 f"{n} trials (Student's t); series offset sideways to stay visible",
                 fontsize="medium")
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=HERE, help="folder holding the pattern folders")
    parser.add_argument("--out", default=HERE, help="where results.md and the plot go")
    args = parser.parse_args()
    try:
        results = load(args.runs)
    except ValueError as e:  # a corrupt results.jsonl or config.json: its one line
        sys.exit(f"summarize: error: {e}")
    if not results:
        sys.exit(f"no results under {args.runs} (expected {', '.join(PATTERNS)} folders)")
    os.makedirs(args.out, exist_ok=True)
    some = next(iter(results.values()))
    n_ok = sum(p.n_ok for p in results.values())
    n_censored = sum(p.n_censored for p in results.values())
    pp = 100 * stats.ACCURACY_MARGIN
    text = [
        "# Structured sparsity: results", "",
        "Test accuracy (%) at the early-stopping iteration and that iteration: mean ± the "
        "half-width of the 95% confidence interval over trials (Student's t), with the SD in "
        "brackets. Differences are paired within a trial (same θ₀ and data order) and shown as "
        "mean ± 95% CI (p of the paired t test).", "",
        f"- {stats.few_trials_note(some.trials) or ''}".rstrip(" -"),
        f"- Verdict (`lth_jax.stats.winning_verdict`): **winning** when the 95% interval of the "
        f"paired difference ticket − dense lies above −{pp:g} pp in accuracy and below "
        f"+{some.margin:g} iterations (one evaluation) in early stop; **not winning** when an "
        f"interval lies wholly beyond its margin; **not shown** when it straddles one. The reinit "
        f"control is judged by the same rule: where it passes, the rule cannot tell a ticket from "
        f"its control at this number of trials.",
        f"- Censored early stops (minimum validation loss at the last evaluation, so a lower "
        f"bound): {n_censored} of {n_ok} runs.", ""]
    text += [table(p) + "\n" for p in results.values()]
    cross = against_unstructured(results)
    if cross:
        text += ["### Each structured ticket − the unstructured ticket of the nearest density", "",
                 "Paired by trial; accuracy in pp, early stop in iterations.", "", cross, ""]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(text))
    plot(results, os.path.join(args.out, "accuracy_vs_density.png"))
    print(f"wrote {args.out}/results.md and accuracy_vs_density.png ({', '.join(results)})")


if __name__ == "__main__":
    main()
