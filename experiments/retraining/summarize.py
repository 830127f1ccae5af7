"""Summarise the retraining comparison (issue 37): results.md, accuracy_vs_density.png,
difference_vs_density.png and accuracy_vs_cost.png from the records run.sh copied here.

    python experiments/retraining/summarize.py [--dir=experiments/retraining]

Every rule shares the trunk's trials (θ₀, data order and dense level 0), so rules are compared by
paired differences within a trial (``lth_jax.stats.paired_difference``), against weight rewinding
to θ₀ (k = 0, the trunk). Means carry Student's t 95% intervals over the 3 trials
(``lth_jax.stats.mean_ci``). An early stop at a retraining's last evaluation is censored
(``lth_jax.stats.censored``): the validation loss may still have been falling, so the accuracy at
that "early stop" is a lower bound on what the rule would reach with a longer budget; such cells
carry a "†".

The cost of a rule at level L is the sum of the records' ``cost_model_steps`` over levels 1..L
(one trial: every trial costs the same), the dense training (level 0, T model-steps, shared by
every rule) excluded; weight rewinding to θ_400 needs 400 dense steps more to reach θ_400, counted
in neither (the dense training passes through it).
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from lth_jax import stats  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "weight_rewinding_k0"
#: (file stem, colour, marker, line style), in the order of the tables.
RULES = (
    (REFERENCE, "black", "o", "-"),
    ("weight_rewinding_k400", "tab:gray", "s", "--"),
    ("lr_rewinding_t8000", "tab:blue", "^", "-"),
    ("lr_rewinding_t2000", "tab:cyan", "v", "--"),
    ("fine_tuning_t8000", "tab:red", "D", "-"),
    ("fine_tuning_t2000", "tab:orange", "d", "--"),
)
#: (a, b) of the extra table of paired differences a − b.
PAIRS = (("lr_rewinding_t8000", "fine_tuning_t8000"), ("lr_rewinding_t2000", "fine_tuning_t2000"),
         ("lr_rewinding_t2000", "fine_tuning_t8000"))
METRICS = (("test_accuracy_at_early_stop", "at early stop"), ("final_test_accuracy", "final"))
#: The densities of the cost plot: levels 1 (80%), 4 (41%), 7 (21%), 10 (11%) and the last.
COST_LEVELS = (1, 4, 7, 10)


def load(folder: str) -> tuple[dict, dict, dict]:
    """(records by stem -> {(trial, level): record}, labels by stem, the trunk's config)."""
    trunk_config = json.load(open(os.path.join(folder, "trunk_config.json")))
    T = int(trunk_config["train"]["iterations"])
    records, labels = {}, {}
    for stem, *_ in RULES:
        path = os.path.join(folder, f"{stem}.jsonl")
        if not os.path.exists(path):
            continue
        rows = [json.loads(line) for line in open(path) if line.strip()]
        records[stem] = {(r["trial"], r["level"]): r for r in rows if r["variant"] == "ticket"}
        if stem == REFERENCE:
            k = int(trunk_config["prune"]["rewind_iteration"])
            labels[stem] = f"weight rewinding, k = {k}"
            continue
        branch = json.load(open(os.path.join(folder, f"{stem}_config.json")))["branch"]
        rule = branch["rule"]
        if rule == "weight_rewinding":
            labels[stem] = f"weight rewinding, k = {branch['rewind_iteration']}"
        else:
            t = int(branch["retrain_iterations"] or T)
            frac = {T: "T", T // 2: "T/2", T // 4: "T/4"}.get(t, str(t))
            name = {"lr_rewinding": "LR rewinding", "fine_tuning": "fine-tuning"}[rule]
            labels[stem] = f"{name}, t = {t} ({frac})"
    for stem in records:  # the branches' level 0 is the trunk's dense level 0
        if stem != REFERENCE:
            records[stem].update({key: r for key, r in records[REFERENCE].items() if key[1] == 0})
    return records, labels, trunk_config


def ok(record: dict | None) -> bool:
    return record is not None and record.get("status") == "ok"


def values(recs: dict, level: int, metric: str) -> dict[int, float]:
    """trial -> the metric at ``level`` (finished runs only)."""
    return {t: r[metric] for (t, lv), r in recs.items() if lv == level and ok(r)}


def is_censored(r: dict) -> bool:
    return stats.censored(r["early_stop_iteration"], r["eval_iterations"][-1])


def n_censored(recs: dict, level: int) -> int:
    return sum(is_censored(r) for (t, lv), r in recs.items() if lv == level and ok(r))


def cost(recs: dict, level: int) -> int:
    """Model-steps of one trial's retrainings at levels 1..level (the dense level 0 excluded)."""
    trial = min(t for t, _ in recs)
    return sum(int(recs[(trial, lv)]["cost_model_steps"]) for lv in range(1, level + 1)
               if (trial, lv) in recs)


def pct(e: stats.Estimate, signed: bool = False) -> str:
    if e.n == 0:
        return "–"
    mean = f"{100 * e.mean:+.2f}" if signed else f"{100 * e.mean:.2f}"
    return mean + (f" ± {100 * e.half_width:.2f}" if e.has_interval else "")


def excludes_zero(e: stats.Estimate) -> bool:
    return e.has_interval and (e.low > 0 or e.high < 0)


def summarize(folder: str) -> list[str]:
    records, labels, trunk_config = load(folder)
    if REFERENCE not in records:
        raise SystemExit(f"{folder}: no {REFERENCE}.jsonl (run run.sh first)")
    stems = [stem for stem, *_ in RULES if stem in records]
    ref = records[REFERENCE]
    levels = sorted({lv for _, lv in ref})
    density = {lv: ref[min(t for t, l in ref if l == lv), lv]["density"] for lv in levels}
    for stem in stems:  # every rule prunes to the same per-layer counts at a level
        for (t, lv), r in records[stem].items():
            assert abs(r["density"] - density[lv]) < 1e-9, (stem, t, lv, r["density"])
    trials = sorted({t for t, _ in ref})
    T = int(trunk_config["train"]["iterations"])
    last = levels[-1]

    def est(stem: str, lv: int, metric: str) -> stats.Estimate:
        return stats.mean_ci(values(records[stem], lv, metric).values())

    def diff(stem: str, lv: int, metric: str) -> stats.Estimate:
        return stats.paired_difference(values(records[stem], lv, metric),
                                       values(ref, lv, metric))

    def mark(stem: str, lv: int) -> str:
        return "†" if n_censored(records[stem], lv) else ""

    out = ["# Retraining after pruning: weight rewinding, LR rewinding, fine-tuning", ""]
    out += [f"LeNet-300-100 on Fashion-MNIST, SGD {trunk_config['train']['learning_rate']}, batch "
            f"{trunk_config['train']['batch_size']}, T = {T} iterations, learning rate "
            f"×{trunk_config['train']['lr_drop_factor']} at "
            f"{', '.join(str(d) for d in trunk_config['train']['lr_drops'])}; layerwise pruning; "
            f"{len(trials)} trials (trials {', '.join(map(str, trials))}), the same θ₀, data "
            "order and dense level 0 for every rule. Test accuracy in %, mean ± the half-width "
            "of the 95% Student's t interval over the trials; Δ = rule − weight rewinding (k = 0), "
            "paired by trial. Made by `python experiments/retraining/summarize.py` from the "
            "records in this folder.", ""]
    note = stats.few_trials_note(len(trials))
    if note:
        out += [note, ""]
    out += ["† = at least one trial's early stop is at the retraining's last evaluation "
            "(censored: the accuracy at early stop is a lower bound on what a longer retraining "
            "would reach). **Bold** Δ: the 95% interval excludes 0.", ""]

    # The headline: accuracy at early stop, then the paired differences.
    for metric, what in METRICS:
        out += [f"## Test accuracy {what} (%)", ""]
        out += ["| level | density | " + " | ".join(labels[s] for s in stems) + " |",
                "|---:|---:|" + "---:|" * len(stems)]
        for lv in levels:
            cells = [pct(est(s, lv, metric)) + (mark(s, lv) if metric == METRICS[0][0] else "")
                     for s in stems]
            out.append(f"| {lv} | {100 * density[lv]:.2f}% | " + " | ".join(cells) + " |")
        out.append("")
        out += [f"## Δ test accuracy {what} against weight rewinding (k = 0), percentage points",
                ""]
        others = [s for s in stems if s != REFERENCE]
        out += ["| level | density | " + " | ".join(labels[s] for s in others) + " |",
                "|---:|---:|" + "---:|" * len(others)]
        for lv in levels[1:]:
            cells = []
            for s in others:
                e = diff(s, lv, metric)
                text = pct(e, signed=True)
                cells.append(f"**{text}**" if excludes_zero(e) else text)
            out.append(f"| {lv} | {100 * density[lv]:.2f}% | " + " | ".join(cells) + " |")
        out.append("")

    # Other pairs at equal or lower cost.
    pairs = [(a, b) for a, b in PAIRS if a in records and b in records]
    if pairs:
        out += ["## Other paired differences (percentage points; at early stop / final)", "",
                "LR rewinding against fine-tuning at the same budget, and LR rewinding by T/4 "
                "against fine-tuning by T (a quarter of its cost).", ""]
        out += ["| level | density | " + " | ".join(f"{labels[a]} − {labels[b]}" for a, b in pairs)
                + " |", "|---:|---:|" + "---:|" * len(pairs)]
        for lv in levels[1:]:
            cells = []
            for a, b in pairs:
                both = []
                for metric, _ in METRICS:
                    e = stats.paired_difference(values(records[a], lv, metric),
                                                values(records[b], lv, metric))
                    text = pct(e, signed=True)
                    both.append(f"**{text}**" if excludes_zero(e) else text)
                cells.append(" / ".join(both))
            out.append(f"| {lv} | {100 * density[lv]:.2f}% | " + " | ".join(cells) + " |")
        out.append("")

    # Early stops and censoring.
    out += ["## Early-stopping iteration (mean over trials; censored trials / trials)", "",
            "The iteration of the minimum validation loss, counted on the schedule (a retraining "
            f"by t iterations runs iterations {T} − t .. {T}; weight rewinding to θ_k runs "
            f"k .. {T}).", ""]
    out += ["| level | density | " + " | ".join(labels[s] for s in stems) + " |",
            "|---:|---:|" + "---:|" * len(stems)]
    for lv in levels:
        cells = []
        for s in stems:
            e = est(s, lv, "early_stop_iteration")
            n = len(values(records[s], lv, "early_stop_iteration"))
            cells.append(f"{e.mean:.0f} ({n_censored(records[s], lv)}/{n})" if e.n else "–")
        out.append(f"| {lv} | {100 * density[lv]:.2f}% | " + " | ".join(cells) + " |")
    out.append("")

    # Cost.
    out += ["## Retraining cost", "",
            "Model-steps of one trial's retrainings at levels 1..L (the sum of the records' "
            f"`cost_model_steps`), the dense training (level 0: {T} model-steps, shared by every "
            "rule) excluded; and the test accuracy at early stop reached at level L.", ""]
    out += ["| level | density | " + " | ".join(labels[s] for s in stems) + " |",
            "|---:|---:|" + "---:|" * len(stems)]
    for lv in levels[1:]:
        cells = [f"{cost(records[s], lv):,} → {pct(est(s, lv, METRICS[0][0]))}" for s in stems]
        out.append(f"| {lv} | {100 * density[lv]:.2f}% | " + " | ".join(cells) + " |")
    out.append("")
    missing = [s for s, *_ in RULES if s not in records]
    if missing:
        out += [f"Not yet recorded: {', '.join(missing)}.", ""]
    incomplete = [f"{labels[s]} (levels {sorted({lv for _, lv in records[s]})[-1]} of {last})"
                  for s in stems if max(lv for _, lv in records[s]) < last]
    if incomplete:
        out += [f"Incomplete: {'; '.join(incomplete)}.", ""]

    paths = [os.path.join(folder, "results.md")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    paths += plot_density(folder, records, labels, stems, levels, density)
    paths += plot_cost(folder, records, labels, stems, levels, density)
    return paths


def _errorbar(ax, xs, es, offset, **style):
    pts = [(x * offset, e) for x, e in zip(xs, es) if e.n]
    if not pts:
        return
    ax.errorbar([x for x, _ in pts], [100 * e.mean for _, e in pts],
                yerr=[100 * (e.half_width or 0.0) for _, e in pts], capsize=2.5, markersize=4,
                linewidth=1.2, **style)


def _density_axis(ax, xs) -> None:
    ax.set_xscale("log")
    ax.set_xticks(xs[::2] + ([xs[-1]] if len(xs) % 2 == 0 else []))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:.3g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("density: prunable weights remaining (%, log scale)")
    ax.grid(True, which="major", alpha=0.3)


def plot_density(folder, records, labels, stems, levels, density) -> list[str]:
    styles = {stem: (c, m, ls) for stem, c, m, ls in RULES}
    offsets = {s: 1.0 + 0.012 * (i - (len(stems) - 1) / 2) for i, s in enumerate(stems)}
    xs = [100 * density[lv] for lv in levels]
    n = len({t for t, _ in records[REFERENCE]})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, (metric, what) in zip(axes, METRICS):
        for s in stems:  # level 0 (the trunk's dense network, shared) drawn once
            c, m, ls = styles[s]
            shown = levels if s == REFERENCE else levels[1:]
            _errorbar(ax, [100 * density[lv] for lv in shown],
                      [stats.mean_ci(values(records[s], lv, metric).values()) for lv in shown],
                      offsets[s], color=c, marker=m, linestyle=ls, label=labels[s])
        _density_axis(ax, xs)
        ax.set_ylabel(f"test accuracy {what} (%)")
        ax.set_title(f"Test accuracy {what}, mean ± 95% CI over {n} trials")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("LeNet-300-100 on Fashion-MNIST: retraining rules after each pruning level")
    fig.tight_layout()
    path = os.path.join(folder, "accuracy_vs_density.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    ref = records[REFERENCE]
    for s in stems:
        if s == REFERENCE:
            continue
        c, m, ls = styles[s]
        es = [stats.paired_difference(values(records[s], lv, METRICS[0][0]),
                                      values(ref, lv, METRICS[0][0])) for lv in levels[1:]]
        _errorbar(ax, xs[1:], es, offsets[s], color=c, marker=m, linestyle=ls, label=labels[s])
    ax.axhline(0, color="black", linewidth=1, label=labels[REFERENCE] + " (reference)")
    _density_axis(ax, xs[1:])
    ax.set_ylabel("Δ test accuracy at early stop (percentage points)")
    ax.set_title(f"Paired difference against weight rewinding (k = 0), mean ± 95% CI, {n} trials",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path2 = os.path.join(folder, "difference_vs_density.png")
    fig.savefig(path2, dpi=110)
    plt.close(fig)
    return [path, path2]


def plot_cost(folder, records, labels, stems, levels, density) -> list[str]:
    styles = {stem: (c, m, ls) for stem, c, m, ls in RULES}
    chosen = [lv for lv in COST_LEVELS if lv in levels] + [levels[-1]]
    chosen = sorted(set(lv for lv in chosen if lv > 0))
    if not chosen:
        return []
    fig, grid = plt.subplots(len(METRICS), len(chosen), figsize=(3.4 * len(chosen), 7.6),
                             squeeze=False)
    n = len({t for t, _ in records[REFERENCE]})
    # rules of equal cost (weight rewinding k = 0, LR rewinding and fine-tuning by T) side by side
    offsets = {s: 1.0 + 0.04 * (i - (len(stems) - 1) / 2) for i, s in enumerate(stems)}
    for row, (metric, what) in zip(grid, METRICS):
        for ax, lv in zip(row, chosen):
            for s in stems:
                if not values(records[s], lv, metric):
                    continue
                c, m, _ = styles[s]
                e = stats.mean_ci(values(records[s], lv, metric).values())
                ax.errorbar([cost(records[s], lv) * offsets[s]], [100 * e.mean],
                            yerr=[100 * (e.half_width or 0.0)], color=c, marker=m, markersize=6,
                            capsize=3, linestyle="none", label=labels[s])
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}K"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            costs = [cost(records[s], lv) for s in stems]
            ax.set_xticks(sorted({min(costs), max(costs)}))  # (k = 400's 95% of T: unlabelled)
            ax.set_title(f"level {lv}: density {100 * density[lv]:.1f}%", fontsize=10)
            ax.grid(True, alpha=0.3)
        row[0].set_ylabel(f"test accuracy {what} (%)")
    for ax in grid[-1]:
        ax.set_xlabel("retraining model-steps, levels 1..L\n(one trial; dense training excluded)",
                      fontsize=8)
    handles, names = grid[0][-1].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=6, fontsize=8)
    fig.suptitle("Test accuracy against the total retraining cost of reaching the density, "
                 f"mean ± 95% CI over {n} trials (top: at early stop; bottom: final)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path = os.path.join(folder, "accuracy_vs_cost.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=HERE, help="the folder with the records (default: here)")
    args = parser.parse_args()
    for path in summarize(args.dir):
        print(path)


if __name__ == "__main__":
    main()
