"""Results of a lottery-ticket experiment -> table (markdown, CSV) and plots (PNG).

Reads a work directory written by `lth_jax.lottery` (``config.json`` and ``results.jsonl``, one JSON
record per finished (trial, level, variant) run) and writes, into the same directory:

- ``report.md``: the dense baseline, a table by pruning level (test accuracy at the early-stopping
  iteration, final test accuracy, early-stopping iteration: mean [min–max] over trials, per variant),
  the runs still missing compared with ``config.json`` and the runs that diverged;
- ``results.csv``: one row per (level, variant) with the summary numbers;
- ``accuracy_vs_density.png``, ``early_stop_vs_density.png``, ``curves.png``: the paper's figures
  (Frankle & Carbin 2019, Figs. 3–5): test accuracy at early stop and early-stopping iteration against
  the percent of weights remaining (log axis, 100% on the left), and test accuracy against training
  iteration for a few levels. Error bars are the minimum and maximum over trials.

It works on a workdir that is still being written (partial results; a half-written last line).

Command line::

    python -m lth_jax.report --workdir=runs/lenet

This module does not import JAX, and imports matplotlib only when it draws (with the Agg canvas, no
pyplot, so it never changes the caller's backend).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lth_jax import workdir as workdir_lib

RESULTS_FILE = workdir_lib.RESULTS
CONFIG_FILE = workdir_lib.CONFIG
REPORT_FILE = "report.md"
CSV_FILE = "results.csv"
ACCURACY_PLOT = "accuracy_vs_density.png"
EARLY_STOP_PLOT = "early_stop_vs_density.png"
CURVES_PLOT = "curves.png"

#: Known variants, in display order. Unknown variants are shown after these, sorted by name.
VARIANTS = workdir_lib.VARIANTS
VARIANT_LABELS = {"ticket": "ticket", "reinit": "reinit", "random_prune": "random prune"}
_PLOT_LABELS = {
    "ticket": "winning ticket",
    "reinit": "random reinit",
    "random_prune": "random pruning",
}
_LINESTYLES = {"ticket": "-", "reinit": "--", "random_prune": ":"}
_MARKERS = {"ticket": "o", "reinit": "s", "random_prune": "^"}
_COLORS = {"ticket": "tab:blue", "reinit": "tab:orange", "random_prune": "tab:green"}

_METRICS = ("test_accuracy_at_early_stop", "final_test_accuracy", "early_stop_iteration")


class ResultsWarning(UserWarning):
    """A problem in results.jsonl that the report works around (half-written last line, duplicate)."""


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _check_workdir(workdir: str | os.PathLike) -> str:
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir {workdir!r} does not exist (or is not a directory)")
    return workdir


def load_results(workdir: str | os.PathLike) -> list[dict]:
    """Reads ``WORKDIR/results.jsonl``: one dict per finished run, in file order.

    The reading rule of ``lth_jax.workdir.read_records``, the same as the run's: blank lines are
    skipped; an unparseable *last* line (the process was killed while appending) is dropped with a
    `ResultsWarning`; an unparseable line anywhere else, or a record that is not a JSON object with
    ``trial``, ``level`` and ``variant``, raises ``ValueError`` naming the file and line number. If
    the same (trial, level, variant) appears twice, the later record wins (with a warning).

    Raises:
      FileNotFoundError: the workdir or its results.jsonl does not exist.
      ValueError: a corrupt line other than the last one.
    """
    workdir = _check_workdir(workdir)
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no {RESULTS_FILE} in workdir {workdir!r}: the experiment has not finished any run yet "
            "(or this is not an lth_jax workdir)"
        )
    return workdir_lib.read_records(
        workdir, warn=lambda message: warnings.warn(message, ResultsWarning, stacklevel=3))


def load_config(workdir: str | os.PathLike) -> dict | None:
    """Reads ``WORKDIR/config.json`` (the resolved experiment config); None if there is none.
    Raises ValueError if it is not a JSON object."""
    return workdir_lib.read_config(_check_workdir(workdir))


def _get(config: Mapping | None, *keys: str, default: Any = None) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _missing_lines(config: Mapping, missing: list[tuple[int, str, tuple[int, ...]]]) -> list[str]:
    """Markdown items for `missing`: a level with a run present gets one line per variant with its
    missing trials; consecutive levels with no run at all share one line ("levels 4–15: not run yet (108 runs)")."""
    per_level: dict[int, int] = {}
    for level, _, _ in expected_runs(config):
        per_level[level] = per_level.get(level, 0) + 1
    missing_per_level: dict[int, int] = {}
    for level, _, trials in missing:
        missing_per_level[level] = missing_per_level.get(level, 0) + len(trials)
    lines, empty = [], []  # empty: the current run of consecutive levels with no run yet

    def flush():
        if empty:
            name = f"level {empty[0]}" if len(empty) == 1 else f"levels {empty[0]}–{empty[-1]}"
            runs = sum(per_level[level] for level in empty)
            lines.append(f"- {name}: not run yet ({runs} run{'s' * (runs != 1)})")
            empty.clear()

    for level, variant, trials in missing:
        if missing_per_level[level] < per_level[level]:
            flush()
            lines.append(f"- level {level}, {variant}: trial(s) {', '.join(map(str, trials))}")
        elif not empty or empty[-1] != level:  # (a level's later variants are already counted)
            if empty and empty[-1] != level - 1:
                flush()
            empty.append(level)
    flush()
    return lines


def expected_runs(config: Mapping) -> list[tuple[int, str, int]]:
    """Every (level, variant, trial) the experiment in `config` will produce, sorted.

    Level 0 is the dense network: only "ticket". Each level 1..``prune.levels`` has "ticket" plus each
    control enabled in ``config["controls"]`` ("reinit", "random_prune"). Trials are 0..trials-1.
    (``lth_jax.workdir.expected_runs``.)
    """
    return workdir_lib.expected_runs(config)


def missing_runs(config: Mapping, records: Iterable[Mapping]) -> list[tuple[int, str, tuple[int, ...]]]:
    """The expected runs not in `records`: [(level, variant, (trial, ...)), ...], sorted by level.

    A diverged run counts as present (it finished; it is listed separately).
    """
    present = {(int(r["level"]), str(r["variant"]), int(r["trial"])) for r in records}
    missing: dict[tuple[int, str], list[int]] = {}
    for level, variant, trial in expected_runs(config):
        if (level, variant, trial) not in present:
            missing.setdefault((level, variant), []).append(trial)
    return [(level, variant, tuple(trials)) for (level, variant), trials in missing.items()]


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean, minimum and maximum over trials; all None when no trial has a value."""

    mean: float | None
    min: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        if not values:
            return cls(None, None, None)
        return cls(sum(values) / len(values), min(values), max(values))


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """The summary of one (level, variant) over its trials.

    `density` is the mean over all of its records (a property of the mask, so diverged runs count);
    the three `Stat` fields are over the records with status "ok" only, whose number is `n`.
    `n_diverged` counts the runs that diverged, `n_skipped` those not trained because their trial's
    ticket diverged at an earlier level.
    """

    level: int
    variant: str
    density: float
    n: int
    n_diverged: int
    test_accuracy_at_early_stop: Stat
    final_test_accuracy: Stat
    early_stop_iteration: Stat
    trials: tuple[int, ...]
    diverged_trials: tuple[int, ...]
    n_skipped: int = 0
    skipped_trials: tuple[int, ...] = ()

    @property
    def percent_remaining(self) -> float:
        return 100.0 * self.density

    def as_dict(self) -> dict[str, Any]:
        """A flat dict (the CSV row): accuracies as fractions in [0, 1], None where undefined."""
        out: dict[str, Any] = {
            "level": self.level,
            "variant": self.variant,
            "density": self.density,
            "percent_remaining": self.percent_remaining,
            "n": self.n,
            "n_diverged": self.n_diverged,
            "n_skipped": self.n_skipped,
        }
        for metric in _METRICS:
            stat = getattr(self, metric)
            out[f"{metric}_mean"] = stat.mean
            out[f"{metric}_min"] = stat.min
            out[f"{metric}_max"] = stat.max
        return out


CSV_COLUMNS = tuple(
    ["level", "variant", "density", "percent_remaining", "n", "n_diverged", "n_skipped"]
    + [f"{m}_{s}" for m in _METRICS for s in ("mean", "min", "max")]
)


def _variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANTS.index(variant), "") if variant in VARIANTS else (len(VARIANTS), variant)


def _is_ok(record: Mapping) -> bool:
    return record.get("status", "ok") == "ok"


def _is_skipped(record: Mapping) -> bool:
    return record.get("status") == "skipped"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(records: Iterable[Mapping]) -> list[SummaryRow]:
    """One `SummaryRow` per (level, variant) present in `records`, sorted by level then variant.

    Records whose ``status`` is not "ok" are excluded from the statistics and counted in
    `n_skipped` ("skipped": not trained) or `n_diverged` (any other); a missing ``status`` means
    "ok". Null or non-finite metric values of an
    "ok" record are skipped for that metric.
    """
    groups: dict[tuple[int, str], list[Mapping]] = {}
    for r in records:
        groups.setdefault((int(r["level"]), str(r["variant"])), []).append(r)
    rows = []
    for level, variant in sorted(groups, key=lambda k: (k[0], _variant_rank(k[1]))):
        group = sorted(groups[(level, variant)], key=lambda r: int(r["trial"]))
        ok = [r for r in group if _is_ok(r)]
        bad = [r for r in group if not _is_ok(r) and not _is_skipped(r)]
        skipped = [r for r in group if _is_skipped(r)]
        densities = [float(r["density"]) for r in group if _finite(r.get("density"))]
        stats = {m: Stat.of([float(r[m]) for r in ok if _finite(r.get(m))]) for m in _METRICS}
        rows.append(
            SummaryRow(
                level=level,
                variant=variant,
                density=sum(densities) / len(densities) if densities else float("nan"),
                n=len(ok),
                n_diverged=len(bad),
                trials=tuple(int(r["trial"]) for r in ok),
                diverged_trials=tuple(int(r["trial"]) for r in bad),
                n_skipped=len(skipped),
                skipped_trials=tuple(int(r["trial"]) for r in skipped),
                **stats,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------


def format_percent_remaining(density: float) -> str:
    """Percent of weights remaining as the paper writes it: 100, 51.3, 8.8, 3.6, 0.58 (one decimal
    from 1% up, two significant digits below)."""
    if not _finite(density):
        return "?"
    return _fmt_percent(100.0 * density)


def _fmt_percent(p: float) -> str:
    if p >= 99.95:
        return "100"
    return f"{p:.1f}" if p >= 1 else f"{p:.2g}"


def _fmt_acc(x: float | None) -> str:
    return f"{100.0 * x:.2f}"


def _fmt_iter(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def _fmt_stat(stat: Stat, fmt, n: int) -> str:
    if stat.mean is None:
        return "—"
    if n > 1:
        return f"{fmt(stat.mean)} [{fmt(stat.min)}–{fmt(stat.max)}]"
    return fmt(stat.mean)


def _ordered_variants(rows: Iterable[SummaryRow]) -> list[str]:
    return sorted({r.variant for r in rows}, key=_variant_rank)


def format_table(rows: Sequence[SummaryRow], trials: int | None = None) -> str:
    """A markdown table, one line per level, with for each variant three columns: test accuracy at
    the early-stopping iteration and final test accuracy (percent, 2 decimals) and the early-stopping
    iteration, each "mean [min–max]" over trials (just the value when there is one trial).

    A cell whose (level, variant) has fewer than `trials` finished runs (default: the largest count
    in `rows`) or diverged or skipped runs says so, e.g. "97.50 (n=1, 1 diverged)". "—" = no value.
    """
    variants = _ordered_variants(rows)
    if trials is None:
        trials = max((r.n + r.n_diverged + r.n_skipped for r in rows), default=0)
    header = ["level", "% weights remaining"]
    for v in variants:
        label = VARIANT_LABELS.get(v, v)
        header += [f"{label}: test acc @ early stop (%)", f"{label}: final test acc (%)",
                   f"{label}: early-stop iteration"]
    by_level: dict[int, dict[str, SummaryRow]] = {}
    for r in rows:
        by_level.setdefault(r.level, {})[r.variant] = r
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for level in sorted(by_level):
        cells = by_level[level]
        first = cells.get("ticket") or next(iter(cells.values()))
        line = [str(level), format_percent_remaining(first.density)]
        for v in variants:
            r = cells.get(v)
            if r is None:
                line += ["—"] * 3
                continue
            acc = _fmt_stat(r.test_accuracy_at_early_stop, _fmt_acc, r.n)
            notes = []
            if r.n < trials or r.n_diverged or r.n_skipped:
                notes.append(f"n={r.n}")
            if r.n_diverged:
                notes.append(f"{r.n_diverged} diverged")
            if r.n_skipped:
                notes.append(f"{r.n_skipped} skipped")
            if notes:
                acc += f" ({', '.join(notes)})"
            line += [acc, _fmt_stat(r.final_test_accuracy, _fmt_acc, r.n),
                     _fmt_stat(r.early_stop_iteration, _fmt_iter, r.n)]
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[SummaryRow], path: str | os.PathLike) -> None:
    """Writes `rows` as CSV with the header `CSV_COLUMNS`; undefined numbers are empty cells."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            d = row.as_dict()
            writer.writerow({k: ("" if d[k] is None else d[k]) for k in CSV_COLUMNS})


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _new_figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure  # lazy: importing this module stays cheap

    fig = Figure(figsize=(width, height), dpi=150, layout="constrained")
    return fig, fig.add_subplot()


def _level_densities(rows: Sequence[SummaryRow]) -> dict[int, float]:
    """One density per level (the ticket's if present), for the axis ticks."""
    out: dict[int, float] = {}
    for r in sorted(rows, key=lambda r: (r.level, _variant_rank(r.variant))):
        if r.level not in out and _finite(r.density) and r.density > 0:
            out[r.level] = r.density
    return out


def _density_axis(ax, densities: Sequence[float], max_labels: int = 12) -> None:
    """Log x axis in percent of weights remaining, inverted (100% on the left), one tick per density
    present; when there are many, only every k-th tick is labelled (always the first and last)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    percents = sorted({round(100.0 * d, 6) for d in densities}, reverse=True)
    ax.set_xscale("log")
    step = max(1, math.ceil(len(percents) / max_labels))
    idx = list(range(0, len(percents), step))
    last = len(percents) - 1
    if idx[-1] != last:
        if len(idx) > 1 and last - idx[-1] < step / 2:
            idx.pop()  # it would crowd the last label
        idx.append(last)
    labelled = {percents[i] for i in idx}
    ax.xaxis.set_major_locator(FixedLocator(percents))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _pos: _fmt_percent(x) if round(x, 6) in labelled else "")
    )
    hi, lo = percents[0], percents[-1]
    ax.set_xlim(hi * 1.12, lo / 1.12)  # inverted
    ax.set_xlabel("Percent of weights remaining")
    ax.grid(True, which="major", axis="both", alpha=0.3)


def _metric_lines(rows: Sequence[SummaryRow], metric: str, scale: float):
    """Per variant: (percents, means, lower errors, upper errors, borrowed). Controls start from the
    dense point (level 0 ticket), as in the paper's figures: at 100% a control is the dense network;
    borrowed = 1 when that first point is the dense one (its error bar is drawn once, by the ticket)."""
    dense = [r for r in rows if r.level == 0 and r.variant == "ticket"]
    out = {}
    for v in _ordered_variants(rows):
        vrows = [r for r in rows if r.variant == v and getattr(r, metric).mean is not None]
        borrowed = 0
        if v != "ticket" and vrows and dense and getattr(dense[0], metric).mean is not None:
            vrows = [dense[0]] + [r for r in vrows if r.level != 0]
            borrowed = 1
        vrows = [r for r in sorted(vrows, key=lambda r: r.level)
                 if _finite(r.density) and r.density > 0]
        if len(vrows) <= borrowed:
            continue
        xs = [r.percent_remaining for r in vrows]
        means = [scale * getattr(r, metric).mean for r in vrows]
        lo = [scale * (getattr(r, metric).mean - getattr(r, metric).min) for r in vrows]
        hi = [scale * (getattr(r, metric).max - getattr(r, metric).mean) for r in vrows]
        out[v] = (xs, means, lo, hi, borrowed)
    return out


def plot_metric_vs_density(
    rows: Sequence[SummaryRow], metric: str, path: str | os.PathLike, *, title: str = ""
) -> bool:
    """Plots `metric` ("test_accuracy_at_early_stop", "final_test_accuracy" or
    "early_stop_iteration") against percent of weights remaining, one line per variant, error bars =
    min–max over trials, a dotted line at the dense value. Returns False (writes nothing) if no data."""
    is_acc = metric != "early_stop_iteration"
    scale = 100.0 if is_acc else 1.0
    lines = _metric_lines(rows, metric, scale)
    if not lines:
        return False
    fig, ax = _new_figure()
    for v, (xs, means, lo, hi, borrowed) in lines.items():
        ax.errorbar(xs, means, yerr=[lo, hi], errorevery=(borrowed, 1), label=_PLOT_LABELS.get(v, v),
                    color=_COLORS.get(v), linestyle=_LINESTYLES.get(v, "-."),
                    marker=_MARKERS.get(v, "D"), markersize=4, capsize=3, linewidth=1.5)
    dense = [r for r in rows if r.level == 0 and r.variant == "ticket"]
    if dense and getattr(dense[0], metric).mean is not None:
        ax.axhline(scale * getattr(dense[0], metric).mean, color="gray", linestyle=":",
                   linewidth=1, label="dense")
    _density_axis(ax, list(_level_densities(rows).values()))
    ax.set_ylabel({"test_accuracy_at_early_stop": "Test accuracy at early stop (%)",
                   "final_test_accuracy": "Final test accuracy (%)",
                   "early_stop_iteration": "Early-stop iteration (val. loss)"}.get(metric, metric))
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    fig.savefig(path)
    return True


def mean_curve(records: Iterable[Mapping], level: int, variant: str, key: str = "test_accuracy"):
    """The evaluation curve `key` of the "ok" runs at (level, variant), aligned on
    ``eval_iterations`` (or, for the test curves, on ``test_iterations`` when a record has them: the
    test set may be measured at fewer evaluations): (iterations, mean, min, max) lists over the
    trials that have a finite value at each iteration. Empty lists if there is none."""
    values: dict[int, list[float]] = {}
    for r in records:
        if int(r["level"]) != level or r["variant"] != variant or not _is_ok(r):
            continue
        axis = "test_iterations" if key.startswith("test_") and "test_iterations" in r else "eval_iterations"
        its, ys = r.get(axis) or [], r.get(key) or []
        for it, y in zip(its, ys):
            if _finite(y):
                values.setdefault(int(it), []).append(float(y))
    its = sorted(values)
    return (its, [sum(values[i]) / len(values[i]) for i in its],
            [min(values[i]) for i in its], [max(values[i]) for i in its])


def default_curve_levels(levels: Iterable[int], n: int = 3) -> list[int]:
    """Level 0 (dense) if present plus `n` levels spread over the pruned ones: the levels at 1/n,
    2/n, ..., n/n of the ladder (e.g. 20 levels -> 0, 7, 14, 20)."""
    levels = sorted(set(levels))
    pruned = [l for l in levels if l > 0]
    picked = [0] if 0 in levels else []
    for k in range(1, n + 1):
        if pruned:
            lvl = pruned[max(0, math.ceil(k * len(pruned) / n) - 1)]
            if lvl not in picked:
                picked.append(lvl)
    return picked


def plot_curves(
    records: Sequence[Mapping],
    path: str | os.PathLike,
    *,
    levels: Sequence[int] | None = None,
    variants: Sequence[str] = ("ticket", "reinit"),
    title: str = "",
) -> bool:
    """Test accuracy vs training iteration, mean over trials, for the chosen `levels` (default:
    `default_curve_levels`): one colour per level, ticket solid, reinit dashed, random prune dotted;
    error bars (at ~15 points per curve) = min–max over trials. The y axis is zoomed on the part
    after the first fifth of training (early iterations fall below it), as in the paper's figures.
    Returns False (writes nothing) if there is no curve."""
    ok = [r for r in records if _is_ok(r)]
    if levels is None:
        levels = default_curve_levels(int(r["level"]) for r in ok)
    rows = {(r.level, r.variant): r for r in summarize(records)}
    fig, ax = _new_figure(7.0, 4.6)
    drawn = False
    zoom_lo, zoom_hi = [], []
    cycle = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
             "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    for i, level in enumerate(levels):
        for v in variants:
            its, mean, lo, hi = mean_curve(ok, level, v)
            if not its:
                continue
            row = rows.get((level, v))
            pct = format_percent_remaining(row.density) if row else "?"
            label = f"{pct}%" + (" (dense)" if level == 0 else "") + (
                "" if v == "ticket" else f" {_PLOT_LABELS.get(v, v)}")
            every = max(1, len(its) // 15)
            ax.errorbar(its, [100 * y for y in mean],
                        yerr=[[100 * (m - a) for m, a in zip(mean, lo)],
                              [100 * (b - m) for m, b in zip(mean, hi)]],
                        errorevery=every, capsize=2, color=cycle[i % len(cycle)],
                        linestyle=_LINESTYLES.get(v, "-."), linewidth=1.3, label=label)
            drawn = True
            zoom_lo.append(100 * min(mean[len(mean) // 5:]))
            zoom_hi.append(100 * max(hi))
    if not drawn:
        return False
    # Like the paper, zoom on where the curves differ: the range after the first fifth of training.
    lo_y, hi_y = min(zoom_lo), max(zoom_hi)
    if hi_y > lo_y:
        pad = 0.08 * (hi_y - lo_y)
        ax.set_ylim(lo_y - pad, hi_y + pad)
    ax.set_xlabel("Training iterations")
    ax.set_ylabel("Test accuracy (%)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", ncol=2)
    fig.savefig(path)
    return True


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _describe(config: Mapping | None, trials_seen: int) -> tuple[str, str]:
    model = _get(config, "model", "name", default="?")
    dataset = _get(config, "dataset", "name", default="?")
    title = f"# Lottery ticket report: {model} on {dataset}"
    if config is None:
        return title, f"No {CONFIG_FILE} in the workdir: the expected runs are unknown."
    iterations = _get(config, "train", "iterations", default="?")
    trials = _get(config, "trials", default=trials_seen)
    levels = _get(config, "prune", "levels", default="?")
    mode = "one-shot" if _get(config, "prune", "one_shot", default=False) else "iterative"
    controls = [VARIANT_LABELS[v] for v in ("reinit", "random_prune")
                if _get(config, "controls", v, default=False)]
    parts = [f"Model `{model}`, dataset `{dataset}`, {iterations} training iterations per run, "
             f"{trials} trial(s), {mode} pruning, levels 0–{levels}"]
    rewind = _get(config, "prune", "rewind_iteration", default=0)
    if rewind:
        parts.append(f"survivors rewound to iteration {rewind}")
    parts.append("controls: " + (", ".join(controls) if controls else "none"))
    return title, "; ".join(parts) + "."


def write_report(
    workdir: str | os.PathLike,
    *,
    curve_levels: Sequence[int] | None = None,
    plots: bool = True,
) -> str:
    """Writes report.md, results.csv and (if `plots` and there is data) the PNG figures into
    `workdir`, from its results.jsonl and config.json. Returns the path of report.md.

    Works on a workdir that is still running: what is not yet there is listed under "Missing".
    `curve_levels` picks the levels of curves.png (default: `default_curve_levels`).

    Raises:
      FileNotFoundError: the workdir or its results.jsonl does not exist.
      ValueError: results.jsonl has a corrupt line (other than a half-written last line).
    """
    return _write_report(workdir, curve_levels=curve_levels, plots=plots)[0]


def _write_report(workdir, *, curve_levels, plots) -> tuple[str, list[SummaryRow]]:
    workdir = _check_workdir(workdir)
    records = load_results(workdir)
    config = load_config(workdir)
    rows = summarize(records)
    trials = _get(config, "trials")
    title, intro = _describe(config, max((r.n + r.n_diverged + r.n_skipped for r in rows), default=0))

    md = [title, "", intro, ""]
    if config is not None:
        expected = expected_runs(config)
        present = {(int(r["level"]), str(r["variant"]), int(r["trial"])) for r in records}
        done = sum(1 for e in expected if e in present)
        counts = [f"{n} {what}" for n, what in ((sum(r.n_diverged for r in rows), "diverged"),
                                                  (sum(r.n_skipped for r in rows), "skipped")) if n]
        md += [f"Progress: {done} of {len(expected)} expected runs finished"
               + (f" ({', '.join(counts)})." if counts else "."), ""]
    if not records:
        md += ["No results yet.", ""]

    dense = next((r for r in rows if r.level == 0 and r.variant == "ticket"), None)
    md += ["## Dense baseline (level 0)", ""]
    if dense is None or dense.n == 0:
        md += ["Not available yet." if dense is None else "All dense runs diverged.", ""]
    else:
        acc, fin = dense.test_accuracy_at_early_stop, dense.final_test_accuracy
        es = dense.early_stop_iteration
        md += [
            f"- Test accuracy at early stop: {_fmt_stat(acc, _fmt_acc, dense.n)} % "
            f"(mean [min–max] over {dense.n} trial(s))",
            f"- Final test accuracy: {_fmt_stat(fin, _fmt_acc, dense.n)} %",
            f"- Early-stopping iteration: {_fmt_stat(es, _fmt_iter, dense.n)}",
            "",
        ]

    md += ["## Results by pruning level", ""]
    if rows:
        md += ["Test accuracy at the early-stopping iteration (minimum validation loss), final test "
               "accuracy, and the early-stopping iteration; mean [min–max] over trials. "
               "Diverged runs are excluded from the numbers.", "",
               format_table(rows, trials=trials if isinstance(trials, int) else None), ""]
    else:
        md += ["No results yet.", ""]

    written = []
    if plots and rows:
        plot_title = (f"{_get(config, 'model', 'name', default='?')} on "
                      f"{_get(config, 'dataset', 'name', default='?')}") if config else ""
        if plot_metric_vs_density(rows, "test_accuracy_at_early_stop",
                                  os.path.join(workdir, ACCURACY_PLOT), title=plot_title):
            written.append((ACCURACY_PLOT,
                            "Test accuracy at early stop vs percent of weights remaining"))
        if plot_metric_vs_density(rows, "early_stop_iteration",
                                  os.path.join(workdir, EARLY_STOP_PLOT), title=plot_title):
            written.append((EARLY_STOP_PLOT,
                            "Early-stopping iteration vs percent of weights remaining"))
        if plot_curves(records, os.path.join(workdir, CURVES_PLOT), levels=curve_levels,
                       title=plot_title):
            written.append((CURVES_PLOT, "Test accuracy vs training iteration"))
    if written:
        md += ["## Plots", ""]
        for name, caption in written:
            md += [f"![{caption}]({name})", ""]

    md += ["## Missing", ""]
    if config is None:
        md += [f"Unknown (no {CONFIG_FILE}).", ""]
    else:
        missing = missing_runs(config, records)
        if missing:
            md += _missing_lines(config, missing) + [""]
        else:
            md += ["Nothing: every expected run is present.", ""]

    md += ["## Diverged runs", ""]
    failed = sorted((r for r in records if not _is_ok(r) and not _is_skipped(r)),
                    key=lambda r: (int(r["level"]), _variant_rank(str(r["variant"])), int(r["trial"])))
    if failed:
        md += ["| level | variant | trial | % weights remaining | failure |",
               "|---:|---|---:|---:|---|"]
        for r in failed:
            reason = str(r.get("failure") or r.get("status", "")).replace("|", "\\|")
            md.append(f"| {r['level']} | {r['variant']} | {r['trial']} | "
                      f"{format_percent_remaining(float(r.get('density', float('nan'))))} | {reason} |")
        md.append("")
    else:
        md += ["None.", ""]
    skipped = [r for r in records if _is_skipped(r)]
    if skipped:
        md += ["## Skipped runs", "",
               "Not trained, because their trial's ticket diverged at an earlier level:", ""]
        for trial in sorted({int(r["trial"]) for r in skipped}):
            levels = sorted({int(r["level"]) for r in skipped if int(r["trial"]) == trial})
            n = sum(1 for r in skipped if int(r["trial"]) == trial)
            runs = f"{n} run{'s' * (n != 1)}"
            md.append(f"- trial {trial}: levels {levels[0]}–{levels[-1]} ({runs})"
                      if len(levels) > 1 else f"- trial {trial}: level {levels[0]} ({runs})")
        md.append("")

    write_csv(rows, os.path.join(workdir, CSV_FILE))
    path = os.path.join(workdir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return path, rows


def terminal_summary(workdir: str | os.PathLike, width: int = 100) -> str:
    """A short results table for a terminal, at most `width` (>= 60) columns: per level the percent
    of weights remaining and, per variant, the mean test accuracy at early stop with the mean
    early-stopping iteration in brackets. It says how many runs stopped at their last evaluation (a
    budget too short for the validation loss to turn) and where the full report is. The full tables
    (min–max over trials, final accuracy) stay in report.md.
    """
    workdir = _check_workdir(workdir)
    records = load_results(workdir)
    config = load_config(workdir)
    rows = summarize(records)
    variants = _ordered_variants(rows)
    title, _ = _describe(config, max((r.n + r.n_diverged for r in rows), default=0))
    trials = _get(config, "trials", default="?")
    iterations = _get(config, "train", "iterations", default=-1)
    lines = [title.lstrip("# "),
             f"test accuracy at early stop (%), mean over {trials} trial(s) [mean early-stop iteration]"]
    cell = max(14, min(22, (width - 16) // max(1, len(variants))))
    header = f"{'level':>5}  {'weights':>7}  " + "".join(
        f"{VARIANT_LABELS.get(v, v):<{cell}}" for v in variants)
    lines += [header.rstrip()]
    by_level: dict[int, dict[str, SummaryRow]] = {}
    for r in rows:
        by_level.setdefault(r.level, {})[r.variant] = r
    for level in sorted(by_level):
        cells = by_level[level]
        first = cells.get("ticket") or next(iter(cells.values()))
        line = f"{level:>5}  {format_percent_remaining(first.density) + '%':>7}  "
        for v in variants:
            r = cells.get(v)
            if r is None:
                text = ""
            elif r.test_accuracy_at_early_stop.mean is None:
                text = f"{r.n_diverged} diverged" if r.n_diverged else "—"
            else:
                text = _fmt_acc(r.test_accuracy_at_early_stop.mean)
                if r.early_stop_iteration.mean is not None:
                    text += f" [{int(round(r.early_stop_iteration.mean))}]"
                if r.n_diverged:
                    text += f" ({r.n_diverged} div.)"
            line += f"{text:<{cell}}"
        lines.append(line.rstrip())
    ok = [r for r in records if _is_ok(r) and _finite(r.get("early_stop_iteration"))]
    last = [r for r in ok
            if int(r["early_stop_iteration"]) == max(r.get("eval_iterations") or [iterations])]
    if ok and last:
        lines.append(f"{len(last)} of {len(ok)} runs had their minimum validation loss at their last "
                     "evaluation: longer training (train.iterations) would move those early stops.")
    missing = missing_runs(config, records) if config is not None else []
    if missing:
        lines.append(f"Missing: {sum(len(t) for _, _, t in missing)} run(s); see report.md.")
    lines.append(f"Full tables (min–max, final accuracy) and plots: "
                 f"{os.path.join(workdir, REPORT_FILE)}")
    out = []
    for line in lines:  # prose lines wrap; table lines fit by construction
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            cut = cut if cut > 0 else width
            out.append(line[:cut])
            line = "  " + line[cut:].lstrip()
        out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _define_flags():
    """Defined only when run as a program, so that importing this module (e.g. from lth_jax.main,
    which has its own --workdir) never registers duplicate absl flags."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "Experiment work directory (config.json, results.jsonl).")
    flags.DEFINE_list("curve_levels", None, "Levels for curves.png (default: dense + 3 spread out).")
    flags.DEFINE_bool("plots", True, "Write the PNG figures.")
    flags.mark_flag_as_required("workdir")
    return flags.FLAGS


def _main(argv: Sequence[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    try:
        levels = [int(x) for x in FLAGS.curve_levels] if FLAGS.curve_levels else None
    except ValueError:
        raise app.UsageError(f"--curve_levels must be integers, got {FLAGS.curve_levels}")
    try:
        path, rows = _write_report(FLAGS.workdir, curve_levels=levels, plots=FLAGS.plots)
    except (FileNotFoundError, ValueError) as e:
        print(f"lth_jax.report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(path)
    print(format_table(rows) if rows else "(no results yet)")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
