"""Results of a lottery-ticket experiment -> tables (markdown, CSV) and plots (PNG).

Reads a work directory written by `lth_jax.lottery` (``config.json`` and ``results.jsonl``, one JSON
record per finished (trial, level, variant) run) and writes, into the same directory:

- ``report.md``: the dense baseline; a table by pruning level (test accuracy at the early-stopping
  iteration, final test accuracy, early-stopping iteration per variant: mean ± the half-width of
  the 95% confidence interval over trials, Student's t, with the SD beside it); the paired
  differences per density (ticket − each control, each variant − dense, within a trial); the
  winning-ticket verdict built on those intervals (`lth_jax.stats.winning_verdict`); how many early
  stops are censored (at the run's last evaluation: a lower bound); the runs still missing
  compared with ``config.json``, and the runs that diverged or were skipped;
- ``results.csv``: one row per (level, variant) with the summary numbers;
- ``accuracy_vs_density.png``, ``early_stop_vs_density.png``, ``curves.png``: the paper's figures
  (Frankle & Carbin 2019, Figs. 3–5): test accuracy at early stop and early-stopping iteration
  against the percent of weights remaining (log axis, 100% on the left), and test accuracy against
  training iteration for a few levels. Error bars are 95% confidence intervals of the mean; points
  with censored early stops are ringed, and the budget (``train.iterations``) is drawn where early
  stops come near it.

It works on a workdir that is still being written (partial results; a half-written last line), and
on any records that parse: values that are missing, null, non-finite, out of range (an accuracy
outside [0, 1], a 400-digit integer) or of the wrong type are left out and counted.

Command line::

    python -m lth_jax.report --workdir=runs/lenet

This module does not import JAX, and imports matplotlib only when it draws (with the Agg canvas, no
pyplot, so it never changes the caller's backend).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from lth_jax import stats
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
_ACCURACIES = ("test_accuracy_at_early_stop", "final_test_accuracy")
#: The largest iteration taken as a number (float64 holds every integer up to it exactly).
_MAX_ITERATION = 2 ** 53
#: Config fields the report reads as counts: (keys, smallest allowed value). Larger values than
#: _MAX_COUNT are refused too: expected_runs lists every run.
_CONFIG_COUNTS = ((("trials",), 1), (("prune", "levels"), 0), (("train", "iterations"), 1),
                  (("train", "eval_every"), 1))
_MAX_COUNT = 1_000_000
_ERROR_BARS = "error bars: 95% confidence interval of the mean over trials (Student's t)"


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

    Raises:
      ValueError: it is not a JSON object, or a field the report counts with (``trials``,
        ``prune.levels``, ``train.iterations``, ``train.eval_every``) is not a whole number in
        range; the message is one line naming the file and the field.
    """
    workdir = _check_workdir(workdir)
    config = workdir_lib.read_config(workdir)
    if config is not None:
        check_config(config, os.path.join(workdir, CONFIG_FILE))
    return config


def check_config(config: Mapping, path: str = CONFIG_FILE) -> None:
    """Raises ``ValueError`` (one line: `path`, the field, the value) if a count the report uses is
    not an integer from its minimum to 1,000,000 (``"trials": "two"``, ``"trials": 0``), or if the
    experiment would have more than 10,000,000 runs."""
    for keys, least in _CONFIG_COUNTS:
        if not _has(config, *keys):
            continue
        value = _get(config, *keys)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not whole or not least <= value <= _MAX_COUNT:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise workdir_lib.WorkdirError(
                f"{path}: field {'.'.join(keys)!r} must be an integer from {least} to "
                f"{_MAX_COUNT:,}, got {shown}")
    runs = _get(config, "trials", default=1) * (1 + len(VARIANTS) * _get(config, "prune", "levels",
                                                                          default=0))
    if runs > 10 * _MAX_COUNT:
        raise workdir_lib.WorkdirError(
            f"{path}: fields 'trials' and 'prune.levels' ask for up to {runs:,} runs; the report "
            f"lists at most {10 * _MAX_COUNT:,}")


def _has(config: Mapping | None, *keys: str) -> bool:
    return workdir_lib.get_field(config, *keys, default=_ABSENT) is not _ABSENT


_ABSENT = object()
_get = workdir_lib.get_field


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
# Values
# --------------------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    """A JSON number that is a finite float (a 400-digit integer is not: it has no float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _valid(metric: str, value: Any) -> bool:
    """`value` is usable as `metric`: an accuracy in [0, 1], an iteration in [0, 2**53]."""
    if not _finite(value):
        return False
    upper = 1.0 if metric in _ACCURACIES or metric.endswith("accuracy") else _MAX_ITERATION
    return 0.0 <= float(value) <= upper


def _density(record: Mapping) -> float | None:
    value = record.get("density")
    return float(value) if _finite(value) and 0.0 < float(value) <= 1.0 else None


def _iterations(value: Any) -> list[float | None]:
    """A record's list of iterations, an unusable entry as None (positions still line up)."""
    if not isinstance(value, list):
        return []
    return [float(x) if _valid("iteration", x) else None for x in value]


def last_evaluation(record: Mapping, budget: float | None = None) -> float | None:
    """The iteration of a run's last evaluation: the largest of its ``eval_iterations``, else
    `budget` (``train.iterations``); None if neither is known."""
    its = [x for x in _iterations(record.get("eval_iterations")) if x is not None]
    return max(its) if its else budget


def is_censored(record: Mapping, budget: float | None = None) -> bool:
    """Whether an "ok" run's early stop is censored (`lth_jax.stats.censored`): its minimum
    validation loss came at its last evaluation, so the true early stop is there or later."""
    es = record.get("early_stop_iteration")
    last = last_evaluation(record, budget)
    return (_is_ok(record) and _valid("early_stop_iteration", es) and last is not None
            and stats.censored(float(es), last))


def iteration_budget(config: Mapping | None) -> float | None:
    """``train.iterations`` of `config` (every run's budget); None if absent or unusable."""
    value = _get(config, "train", "iterations")
    return float(value) if _valid("iteration", value) and value > 0 else None


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stat:
    """One metric over trials (`lth_jax.stats.mean_ci`): n values, their mean, sample SD, 95%
    confidence interval [low, high] = mean ∓ half_width (Student's t), minimum and maximum. Fields
    are None where undefined: all of them for n = 0, the SD and the interval for n = 1."""

    n: int = 0
    mean: float | None = None
    sd: float | None = None
    low: float | None = None
    high: float | None = None
    half_width: float | None = None
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        e = stats.mean_ci(values)
        return cls(e.n, e.mean, e.sd, e.low, e.high, e.half_width,
                   min(values) if values else None, max(values) if values else None)


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """The summary of one (level, variant) over its trials.

    `density` is the mean over all of its records (a property of the mask, so diverged runs count);
    the three `Stat` fields are over the records with status "ok" only, whose number is `n`.
    `n_diverged` counts the runs that diverged, `n_skipped` those not trained because their trial's
    ticket diverged at an earlier level. `values` holds each metric's value per trial (for paired
    differences); `censored_trials` the trials whose early stop is censored (`is_censored`).
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
    censored_trials: tuple[int, ...] = ()
    values: Mapping[str, Mapping[int, float]] = dataclasses.field(default_factory=dict)

    @property
    def percent_remaining(self) -> float:
        return 100.0 * self.density

    @property
    def n_censored(self) -> int:
        return len(self.censored_trials)

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
            "n_censored": self.n_censored,
        }
        for metric in _METRICS:
            stat = getattr(self, metric)
            for field, value in zip(_STAT_COLUMNS, (stat.mean, stat.low, stat.high, stat.sd,
                                                    stat.min, stat.max)):
                out[f"{metric}_{field}"] = value
        return out


_STAT_COLUMNS = ("mean", "ci95_low", "ci95_high", "sd", "min", "max")
CSV_COLUMNS = tuple(
    ["level", "variant", "density", "percent_remaining", "n", "n_diverged", "n_skipped",
     "n_censored"] + [f"{m}_{s}" for m in _METRICS for s in _STAT_COLUMNS]
)


def _variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANTS.index(variant), "") if variant in VARIANTS else (len(VARIANTS), variant)


def _is_ok(record: Mapping) -> bool:
    return record.get("status", "ok") == "ok"


def _is_skipped(record: Mapping) -> bool:
    return record.get("status") == "skipped"


def summarize(records: Iterable[Mapping], budget: float | None = None) -> list[SummaryRow]:
    """One `SummaryRow` per (level, variant) present in `records`, sorted by level then variant.

    Records whose ``status`` is not "ok" are excluded from the statistics and counted in
    `n_skipped` ("skipped": not trained) or `n_diverged` (any other); a missing ``status`` means
    "ok". A metric value of an "ok" record that is missing, null, not a finite number or out of
    range (`invalid_values` counts them) is left out of that metric. `budget` (``train.iterations``)
    decides censoring for records without ``eval_iterations``.
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
        densities = [d for d in map(_density, group) if d is not None]
        values = {m: {int(r["trial"]): float(r[m]) for r in ok if _valid(m, r.get(m))}
                  for m in _METRICS}
        rows.append(
            SummaryRow(
                level=level,
                variant=variant,
                density=math.fsum(densities) / len(densities) if densities else float("nan"),
                n=len(ok),
                n_diverged=len(bad),
                trials=tuple(int(r["trial"]) for r in ok),
                diverged_trials=tuple(int(r["trial"]) for r in bad),
                n_skipped=len(skipped),
                skipped_trials=tuple(int(r["trial"]) for r in skipped),
                censored_trials=tuple(int(r["trial"]) for r in ok if is_censored(r, budget)),
                values=values,
                **{m: Stat.of(list(values[m].values())) for m in _METRICS},
            )
        )
    return rows


def invalid_values(records: Iterable[Mapping]) -> int:
    """How many metric values of "ok" records the summary leaves out as unusable (present but not a
    finite number in range: an accuracy of 1.5, a NaN, a 400-digit integer, a string)."""
    return sum(1 for r in records if _is_ok(r) for m in _METRICS
               if r.get(m) is not None and not _valid(m, r.get(m)))


# --------------------------------------------------------------------------------------------------
# Paired differences and the verdict
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
    """The paired difference `a` − `b` of `metric` over the trials both have (`stats.Estimate`);
    `a` and `b` are (level, variant)."""

    a: tuple[int, str]
    b: tuple[int, str]
    metric: str
    estimate: stats.Estimate


def paired(rows: Sequence[SummaryRow], a: tuple[int, str], b: tuple[int, str], metric: str) -> Pair:
    """`a` − `b` (each a (level, variant)) of `metric`, within each trial both have
    (`lth_jax.stats.paired_difference`). Level 0's "ticket" is the dense network."""
    by = {(r.level, r.variant): r for r in rows}
    left = by[a].values.get(metric, {}) if a in by else {}
    right = by[b].values.get(metric, {}) if b in by else {}
    return Pair(a, b, metric, stats.paired_difference(left, right))


def stop_margin(config: Mapping | None, records: Sequence[Mapping] = ()) -> float:
    """The verdict's early-stop margin m: one evaluation interval (``train.eval_every``; else the
    smallest gap between a record's evaluations; else 0). Early stops are only known to that
    resolution."""
    every = _get(config, "train", "eval_every")
    if _valid("iteration", every) and every > 0:
        return float(every)
    for r in records:
        its = sorted({x for x in _iterations(r.get("eval_iterations")) if x is not None})
        gaps = [b - a for a, b in zip(its, its[1:])]
        if gaps:
            return min(gaps)
    return 0.0


@dataclasses.dataclass(frozen=True)
class Judgement:
    """The winning-ticket verdict on one (level, variant) with the paired intervals it rests on."""

    level: int
    variant: str
    accuracy: stats.Estimate
    early_stop: stats.Estimate
    verdict: stats.Verdict


def verdicts(rows: Sequence[SummaryRow], margin: float,
             accuracy_margin: float = stats.ACCURACY_MARGIN) -> list[Judgement]:
    """`lth_jax.stats.winning_verdict` for every (level ≥ 1, variant) against the dense network of
    the same trials: ticket − dense test accuracy at early stop and early-stopping iteration.
    Controls are judged by the same rule, which shows how much the rule itself lets through."""
    dense = next((r for r in rows if r.level == 0 and r.variant == "ticket"), None)
    if dense is None:
        return []
    out = []
    for r in rows:
        if r.level == 0:
            continue
        acc = paired(rows, (r.level, r.variant), (0, "ticket"), "test_accuracy_at_early_stop")
        stop = paired(rows, (r.level, r.variant), (0, "ticket"), "early_stop_iteration")
        common = set(r.values["early_stop_iteration"]) & set(dense.values["early_stop_iteration"])
        verdict = stats.winning_verdict(
            acc.estimate, stop.estimate, stop_margin=margin, accuracy_margin=accuracy_margin,
            ticket_censored=bool(common & set(r.censored_trials)),
            dense_censored=bool(common & set(dense.censored_trials)))
        out.append(Judgement(r.level, r.variant, acc.estimate, stop.estimate, verdict))
    return out


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


def _fmt_acc(x: float) -> str:
    return f"{100.0 * x:.2f}"


def _fmt_iter(x: float) -> str:
    # Early stops fall on evaluations: a mean of them is not known below one iteration.
    return f"{x:.0f}"


def _fmt_spread(x: float) -> str:
    return f"{x:.0f}"


def _fmt_stat(stat: Stat, fmt, spread=None) -> str:
    """"mean ± half-width (SD sd)"; the value alone for one trial; "—" for none."""
    spread = spread or fmt
    if stat.mean is None:
        return "—"
    if stat.half_width is None:
        return fmt(stat.mean)
    return f"{fmt(stat.mean)} ± {spread(stat.half_width)} (SD {spread(stat.sd)})"


def _fmt_diff(e: stats.Estimate, accuracy: bool, n_full: int | None = None) -> str:
    """A paired difference: "+0.52 ± 0.72 (p 0.09)", in pp for accuracies; "—" for no pair."""
    if e.mean is None:
        return "—"
    scale, digits = (100.0, 2) if accuracy else (1.0, 0)
    text = f"{scale * e.mean:+.{digits}f}"
    if e.half_width is not None:
        text += f" ± {scale * e.half_width:.{digits}f} (p {format_p(e.p)})"
    if n_full is not None and e.n < n_full:
        text += f" (n={e.n})"
    return text


def format_p(p: float | None) -> str:
    """A p value in two significant digits ("0.092"), "<0.001" below that, "—" for None."""
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def _ordered_variants(rows: Iterable[SummaryRow]) -> list[str]:
    return sorted({r.variant for r in rows}, key=_variant_rank)


def _by_level(rows: Iterable[SummaryRow]) -> dict[int, dict[str, SummaryRow]]:
    by_level: dict[int, dict[str, SummaryRow]] = {}
    for r in rows:
        by_level.setdefault(r.level, {})[r.variant] = r
    return dict(sorted(by_level.items()))


def _level_percent(cells: Mapping[str, SummaryRow]) -> str:
    first = cells.get("ticket") or next(iter(cells.values()))
    return format_percent_remaining(first.density)


def format_table(rows: Sequence[SummaryRow], trials: int | None = None) -> str:
    """A markdown table, one line per level, with for each variant three columns: test accuracy at
    the early-stopping iteration and final test accuracy (percent, 2 decimals) and the
    early-stopping iteration, each "mean ± half-width (SD sd)": the 95% confidence interval of the
    mean over trials (Student's t) and the sample SD; just the value when there is one trial.

    A cell whose (level, variant) has fewer than `trials` finished runs (default: the largest count
    in `rows`) or diverged or skipped runs says so, e.g. "97.50 (n=1, 1 diverged)"; an early-stop
    cell says how many of its early stops are censored ("1 censored"). "—" = no value.
    """
    variants = _ordered_variants(rows)
    if trials is None:
        trials = max((r.n + r.n_diverged + r.n_skipped for r in rows), default=0)
    header = ["level", "% weights remaining"]
    for v in variants:
        label = VARIANT_LABELS.get(v, v)
        header += [f"{label}: test acc @ early stop (%)", f"{label}: final test acc (%)",
                   f"{label}: early-stop iteration"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for level, cells in _by_level(rows).items():
        line = [str(level), _level_percent(cells)]
        for v in variants:
            r = cells.get(v)
            if r is None:
                line += ["—"] * 3
                continue
            acc = _fmt_stat(r.test_accuracy_at_early_stop, _fmt_acc)
            notes = []
            n_acc = r.test_accuracy_at_early_stop.n  # (fewer than r.n where a value is unusable)
            if n_acc < trials or r.n_diverged or r.n_skipped:
                notes.append(f"n={n_acc}")
            if r.n_diverged:
                notes.append(f"{r.n_diverged} diverged")
            if r.n_skipped:
                notes.append(f"{r.n_skipped} skipped")
            if notes:
                acc += f" ({', '.join(notes)})"
            stop = _fmt_stat(r.early_stop_iteration, _fmt_iter, _fmt_spread)
            stop_notes = [f"n={r.early_stop_iteration.n}"] if r.early_stop_iteration.n < r.n else []
            if r.n_censored:
                stop_notes.append(f"{r.n_censored} censored")
            if stop_notes:
                stop += f" ({', '.join(stop_notes)})"
            final = _fmt_stat(r.final_test_accuracy, _fmt_acc)
            if r.final_test_accuracy.n < r.n:
                final += f" (n={r.final_test_accuracy.n})"
            line += [acc, final, stop]
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def _pairs_of(rows: Sequence[SummaryRow]) -> list[tuple[tuple[int, str] | None, str, str]]:
    """The difference columns: (b, a-variant, label) where b = None means "dense"."""
    variants = _ordered_variants(rows)
    cols: list[tuple[tuple[int, str] | None, str, str]] = []
    for v in variants:
        cols.append((None, v, f"{VARIANT_LABELS.get(v, v)} − dense"))
    for v in variants:
        if v != "ticket":
            cols.append(((0, v), "ticket", f"ticket − {VARIANT_LABELS.get(v, v)}"))
    return cols


def format_differences(rows: Sequence[SummaryRow], trials: int | None = None) -> str:
    """A markdown table of paired differences per level (same trial on both sides): each variant −
    the dense network, and ticket − each control, in test accuracy at early stop (pp) and in
    early-stopping iteration: "mean ± half-width of the 95% CI (p value of the paired t test)"."""
    if trials is None:
        trials = max((r.n for r in rows), default=0)
    cols = _pairs_of(rows)
    header = ["level", "% weights remaining"]
    for _, _, label in cols:
        header += [f"{label}: test acc @ early stop (pp)", f"{label}: early-stop iteration"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for level, cells in _by_level(rows).items():
        if level == 0:
            continue
        line = [str(level), _level_percent(cells)]
        for against, v, _ in cols:
            if v not in cells or (against is not None and against[1] not in cells):
                line += ["—", "—"]
                continue
            b = (0, "ticket") if against is None else (level, against[1])
            for metric, is_acc in (("test_accuracy_at_early_stop", True),
                                   ("early_stop_iteration", False)):
                e = paired(rows, (level, v), b, metric).estimate
                line.append(_fmt_diff(e, is_acc, trials))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def format_verdicts(judgements: Sequence[Judgement], rows: Sequence[SummaryRow]) -> str:
    """A markdown table: per level, each variant's verdict ("winning", "not winning", "not shown",
    "no verdict") with its reason."""
    variants = [v for v in _ordered_variants(rows) if any(j.variant == v for j in judgements)]
    by = {(j.level, j.variant): j for j in judgements}
    header = ["level", "% weights remaining"] + [VARIANT_LABELS.get(v, v) for v in variants]
    rule = "|---:|---:|" + "|".join(["---"] * len(variants)) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    for level, cells in _by_level(rows).items():
        if level == 0:
            continue
        line = [str(level), _level_percent(cells)]
        for v in variants:
            j = by.get((level, v))
            line.append("—" if j is None else f"**{j.verdict.label}** ({j.verdict.reason})")
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


def _late_sentence(records: Sequence[Mapping], budget: float | None) -> str | None:
    """How many "ok" runs had their minimum validation loss at their last evaluation (censored)."""
    ok = [r for r in records if _is_ok(r) and _valid("early_stop_iteration",
                                                      r.get("early_stop_iteration"))]
    last = [r for r in ok if is_censored(r, budget)]
    if not (ok and last):
        return None
    return (f"{len(last)} of {len(ok)} runs had their minimum validation loss at their last "
            "evaluation: longer training (train.iterations) would move those early stops.")


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _new_figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure  # lazy: importing this module stays cheap

    fig = Figure(figsize=(width, height), dpi=150, layout="constrained")
    return fig, fig.add_subplot()


def _text(label: str) -> str:
    """A label as matplotlib shows it literally ("$" would start mathtext)."""
    return str(label).replace("$", r"\$")


def _trials_phrase(ns: Iterable[int]) -> str:
    ns = sorted({n for n in ns if n > 0})
    if not ns:
        return "no trials"
    if len(ns) == 1:
        return f"{ns[0]} trial{'s' * (ns[0] != 1)}"
    return f"{ns[0]}–{ns[-1]} trials"


def _caption(fig, ax, title: str, ns: Iterable[int], extra: str = "") -> None:
    """The title, and under it what the error bars are (every figure says so), wrapped to the
    figure's width."""
    import textwrap

    ns = list(ns)
    note = f"{_ERROR_BARS}, {_trials_phrase(ns)}"
    if 1 in ns:
        note += "; none where a point has one trial"
    note += f"; {extra}" if extra else ""
    chars = int(14 * fig.get_figwidth())
    ax.set_title((_text(title) + "\n" if title else "") + textwrap.fill(note, chars),
                 fontsize="small")


def _legend(ax, **kwargs) -> None:
    """The legend with the data series first, then the reference lines and markers (matplotlib
    lists plain lines before error-bar series)."""
    from matplotlib.container import ErrorbarContainer

    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(handles)), key=lambda i: not isinstance(handles[i], ErrorbarContainer))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], **kwargs)


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


class _Line(NamedTuple):
    percents: list[float]
    means: list[float]
    errors: list[float]        # half-widths of the 95% CI; 0 where there is no interval
    censored: list[bool]       # the point includes a censored early stop
    ns: list[int]
    borrowed: int              # 1 when the first point is the dense one (drawn by the ticket)


def _metric_lines(rows: Sequence[SummaryRow], metric: str, scale: float) -> dict[str, _Line]:
    """Per variant, its points. Controls start from the dense point (level 0 ticket), as in the
    paper's figures: at 100% a control is the dense network."""
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
        stats_ = [getattr(r, metric) for r in vrows]
        out[v] = _Line([r.percent_remaining for r in vrows],
                       [scale * s.mean for s in stats_],
                       [scale * (s.half_width or 0.0) for s in stats_],
                       [bool(r.n_censored) for r in vrows],
                       [s.n for s in stats_], borrowed)
    return out


def plot_metric_vs_density(
    rows: Sequence[SummaryRow], metric: str, path: str | os.PathLike, *, title: str = "",
    budget: float | None = None,
) -> bool:
    """Plots `metric` ("test_accuracy_at_early_stop", "final_test_accuracy" or
    "early_stop_iteration") against percent of weights remaining, one line per variant, error bars =
    95% confidence intervals of the mean over trials, a dotted line at the dense value. Points that
    include a censored early stop are ringed. For the early-stopping iteration, `budget`
    (``train.iterations``) is drawn as a line when an early stop or an interval comes within half of
    it, and named in the caption otherwise. Returns False (writes nothing) if there is no data."""
    is_acc = metric != "early_stop_iteration"
    scale = 100.0 if is_acc else 1.0
    lines = _metric_lines(rows, metric, scale)
    if not lines:
        return False
    fig, ax = _new_figure(6.8, 4.8)
    any_censored = False
    for v, line in lines.items():
        ax.errorbar(line.percents, line.means, yerr=line.errors, errorevery=(line.borrowed, 1),
                    label=_text(_PLOT_LABELS.get(v, v)), color=_COLORS.get(v),
                    linestyle=_LINESTYLES.get(v, "-."), marker=_MARKERS.get(v, "D"), markersize=4,
                    capsize=3, linewidth=1.5)
        marked = [(x, y) for i, (x, y, c) in enumerate(zip(line.percents, line.means,
                                                             line.censored))
                  if c and i >= line.borrowed]
        if marked:
            any_censored = True
            ax.plot(*zip(*marked), linestyle="none", marker="o", markersize=10,
                    markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.0)
    dense = [r for r in rows if r.level == 0 and r.variant == "ticket"]
    if dense and getattr(dense[0], metric).mean is not None:
        ax.axhline(scale * getattr(dense[0], metric).mean, color="gray", linestyle=":",
                   linewidth=1, label="dense network (mean)")
        if dense[0].n_censored:
            any_censored = True
    if any_censored:
        ax.plot([], [], linestyle="none", marker="o", markersize=10, markerfacecolor="none",
                markeredgecolor="black", label="ringed: includes censored early stops")
    extra = ""
    if not is_acc and budget is not None:
        top = max(m + e for line in lines.values() for m, e in zip(line.means, line.errors))
        if top >= 0.5 * budget or any_censored:
            ax.axhline(budget, color="red", linestyle="-.", linewidth=1,
                       label=f"budget: train.iterations = {_fmt_iter(budget)}")
        else:
            extra = f"budget (train.iterations) {_fmt_iter(budget)}, above the plot"
    if any_censored:
        extra = "; ".join(filter(None, [extra, "censored: minimum val. loss at the last evaluation "
                                               "(a lower bound)"]))
    _density_axis(ax, list(_level_densities(rows).values()))
    ax.set_ylabel({"test_accuracy_at_early_stop": "Test accuracy at early stop (%)",
                   "final_test_accuracy": "Final test accuracy (%)",
                   "early_stop_iteration": "Early-stop iteration (val. loss)"}.get(metric, metric))
    _caption(fig, ax, title, [n for line in lines.values() for n in line.ns], extra)
    _legend(ax, fontsize="x-small")
    fig.savefig(path)
    return True


class Curve(NamedTuple):
    """A mean curve over trials: per iteration, the mean, the 95% interval (low = high = mean where
    only one trial has a value) and the number of trials."""

    iterations: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    n: list[int]


def mean_curve(records: Iterable[Mapping], level: int, variant: str,
               key: str = "test_accuracy") -> Curve:
    """The evaluation curve `key` of the "ok" runs at (level, variant), aligned on
    ``eval_iterations`` (or, for the test curves, on ``test_iterations`` when a record has them: the
    test set may be measured at fewer evaluations), over the trials that have a usable value at each
    iteration (finite; an accuracy in [0, 1]). Empty lists if there is none."""
    values: dict[float, list[float]] = {}
    for r in records:
        if int(r["level"]) != level or str(r["variant"]) != variant or not _is_ok(r):
            continue
        axis = ("test_iterations" if key.startswith("test_") and "test_iterations" in r
                else "eval_iterations")
        its, ys = _iterations(r.get(axis)), r.get(key)
        if not isinstance(ys, list):
            continue
        for it, y in zip(its, ys):
            if it is not None and (_valid(key, y) if key.endswith("accuracy") else _finite(y)):
                values.setdefault(it, []).append(float(y))
    its = sorted(values)
    estimates = [stats.mean_ci(values[i]) for i in its]
    return Curve(its, [e.mean for e in estimates],
                 [e.low if e.low is not None else e.mean for e in estimates],
                 [e.high if e.high is not None else e.mean for e in estimates],
                 [e.n for e in estimates])


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


def _ranges(values: Sequence[int]) -> str:
    """1, 2, 3, 5, 7, 8 -> "1–3, 5, 7–8"."""
    out, run = [], []
    for v in sorted(values):
        if run and v != run[-1] + 1:
            out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(v)
    if run:
        out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def plot_curves(
    records: Sequence[Mapping],
    path: str | os.PathLike,
    *,
    levels: Sequence[int] | None = None,
    variants: Sequence[str] = ("ticket", "reinit"),
    title: str = "",
    budget: float | None = None,
) -> bool:
    """Test accuracy vs training iteration, mean over trials, for the chosen `levels` (default:
    `default_curve_levels`): one colour per level, ticket solid, reinit dashed, random prune dotted,
    a marker at every test point (so that a curve of one point shows); error bars (at ~15 points
    per curve) = 95% confidence intervals over trials. The axes hold every point (nothing is
    clipped): x from 0 to the budget (`budget`, drawn as a line, else the last point), y over every
    point and error bar. The caption names the levels and variants left out. The legend sits
    outside the axes. Returns False (writes nothing) if there is no curve."""
    ok = [r for r in records if _is_ok(r)]
    all_levels = sorted({int(r["level"]) for r in ok})
    if levels is None:
        levels = default_curve_levels(all_levels)
    rows = {(r.level, r.variant): r for r in summarize(records)}
    fig, ax = _new_figure(8.6, 4.8)
    drawn_levels, drawn_variants, ns, last, first = set(), set(), [], 0.0, 0.0
    cycle = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
             "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    curves = [(i, level, v, mean_curve(ok, level, v)) for i, level in enumerate(levels)
              for v in variants]
    curves = [c for c in curves if c[3].iterations]
    # A few test points per curve (a test every 1,000 iterations of a 1,500-iteration budget) put
    # every curve's points at the same x: they are spread sideways so that none hides another.
    sparse = curves and max(len(c[3].iterations) for c in curves) <= 3
    span = max([budget or 0.0] + [c[3].iterations[-1] for c in curves])
    for k, (i, level, v, curve) in enumerate(curves):
        row = rows.get((level, v))
        pct = format_percent_remaining(row.density) if row else "?"
        label = f"{pct}%" + (" (dense)" if level == 0 else "") + (
            "" if v == "ticket" else f" {_PLOT_LABELS.get(v, v)}")
        every = max(1, len(curve.iterations) // 15)
        shift = (k - (len(curves) - 1) / 2) * 0.012 * span if sparse else 0.0
        ax.errorbar([x + shift for x in curve.iterations], [100 * y for y in curve.mean],
                    yerr=[100 * (h - m) for m, h in zip(curve.mean, curve.high)],
                    errorevery=every, capsize=2, color=cycle[i % len(cycle)],
                    linestyle=_LINESTYLES.get(v, "-."), linewidth=1.3,
                    marker=_MARKERS.get(v, "D"),
                    markersize=3 if len(curve.iterations) > 30 else 5,
                    markevery=max(1, len(curve.iterations) // 30), label=_text(label))
        drawn_levels.add(level)
        drawn_variants.add(v)
        ns += curve.n
        last = max(last, curve.iterations[-1])
        first = min(first, curve.iterations[0] + shift)
    if not curves:
        return False
    right = max(last, budget or 0.0)
    if budget is not None:
        ax.axvline(budget, color="red", linestyle="-.", linewidth=1,
                   label=f"budget: train.iterations = {_fmt_iter(budget)}")
    ax.set_xlim(min(0.0, first - 0.01 * right), right * 1.03)
    ax.set_xlabel("Training iterations")
    ax.set_ylabel("Test accuracy (%)")
    ax.grid(True, alpha=0.3)
    left_out = []
    other_levels = [lvl for lvl in all_levels if lvl not in drawn_levels]
    if other_levels:
        left_out.append(f"level{'s' * (len(other_levels) > 1)} {_ranges(other_levels)}")
    other_variants = sorted({str(r["variant"]) for r in ok} - drawn_variants, key=_variant_rank)
    if other_variants:
        left_out.append(", ".join(_PLOT_LABELS.get(v, v) for v in other_variants))
    extra = ("not shown: " + "; ".join(left_out) + " (report.md has every level)"
             if left_out else "")
    if sparse and len(curves) > 1:
        extra = "; ".join(filter(None, [extra, "points of one iteration spread sideways"]))
    _caption(fig, ax, title, ns, _text(extra))
    _legend(ax, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
    subset = _get(config, "dataset", "train_subset")
    if subset:
        parts.append(f"trained on a subset of {subset} examples")
    every = _get(config, "train", "eval_every")
    if every:
        parts.append(f"validation every {every} iterations")
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
      ValueError: results.jsonl has a corrupt line (other than a half-written last line), or
        config.json a field the report cannot use (one line naming the file and the field).
    """
    return _write_report(workdir, curve_levels=curve_levels, plots=plots)[0]


def _statistics_lines(rows: Sequence[SummaryRow], records: Sequence[Mapping],
                      budget: float | None, invalid: int) -> list[str]:
    ns = sorted({r.n for r in rows if r.n})
    md = ["## How to read the numbers", "",
          "- Every number is a mean over trials ± the half-width of its 95% confidence interval "
          "(Student's t with n − 1 degrees of freedom), with the sample SD in brackets; a cell "
          "with one trial shows that trial's value alone (no interval). Differences are paired: "
          "taken within a trial (same θ₀ and data order), then averaged; p is the paired t test's "
          "two-sided p value."]
    note = stats.few_trials_note(ns[-1]) if ns else None  # (cells with fewer trials say "n=")
    if note:
        md.append(f"- {note}")
    late = _late_sentence(records, budget)
    if late:
        md.append(f"- {late} Such an early stop is *censored*: the minimum may come later, so the "
                  "recorded iteration is a lower bound (marked \"censored\" in the tables, ringed "
                  "in the plots).")
    else:
        md.append("- No early stop is censored: every run's minimum validation loss came before "
                  "its last evaluation.")
    late = [r for r in records if _is_ok(r) and not is_censored(r, budget)
            and _valid("early_stop_iteration", r.get("early_stop_iteration"))
            and last_evaluation(r, budget) and float(r["early_stop_iteration"])
            >= 0.9 * float(last_evaluation(r, budget))]
    if late:
        md.append(f"- {len(late)} more run(s) stopped in the last 10% of their budget, not at its "
                  "end: their validation loss may have been flat or still falling there, so read "
                  "those early stops with care.")
    if invalid:
        md.append(f"- {invalid} metric value(s) in results.jsonl were not finite numbers in range "
                  "(an accuracy outside [0, 1], a NaN, an integer too large for a float) and are "
                  "left out.")
    return md + [""]


def _verdict_lines(config: Mapping | None, rows: Sequence[SummaryRow],
                   records: Sequence[Mapping]) -> list[str]:
    margin = stop_margin(config, records)
    judgements = verdicts(rows, margin)
    if not judgements:
        return []
    pp = 100 * stats.ACCURACY_MARGIN
    counts: dict[str, int] = {}
    for j in judgements:
        if j.variant == "ticket":
            counts[j.verdict.label] = counts.get(j.verdict.label, 0) + 1
    summary = ", ".join(f"{n} {label}" for label, n in counts.items())
    return [
        "## Winning tickets: the verdict", "",
        f"A ticket is **winning** when the 95% interval of its paired difference to the dense "
        f"network (same trial) in test accuracy at early stop lies above −{pp:g} pp, and that of "
        f"its early-stopping iteration below +{_fmt_iter(margin)} (one evaluation interval); "
        f"**not winning** when an interval lies wholly beyond its margin; **not shown** when an "
        f"interval straddles it; **no verdict** with fewer than two paired trials. A censored "
        f"ticket early stop (a lower bound) cannot show \"not later\". The controls are judged by "
        f"the same rule: a control that passes it shows what the rule lets through at this number "
        f"of trials (`lth_jax.stats.winning_verdict`).", "",
        f"Tickets: {summary}." if summary else "No ticket has a verdict.", "",
        format_verdicts(judgements, rows), ""]


def _write_report(workdir, *, curve_levels, plots) -> tuple[str, list[SummaryRow]]:
    workdir = _check_workdir(workdir)
    records = load_results(workdir)
    config = load_config(workdir)
    budget = iteration_budget(config)
    rows = summarize(records, budget)
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
    else:
        md += _statistics_lines(rows, records, budget, invalid_values(records))

    dense = next((r for r in rows if r.level == 0 and r.variant == "ticket"), None)
    md += ["## Dense baseline (level 0)", ""]
    if dense is None or dense.n == 0:
        md += ["Not available yet." if dense is None else "All dense runs diverged.", ""]
    else:
        acc, fin = dense.test_accuracy_at_early_stop, dense.final_test_accuracy
        es = dense.early_stop_iteration
        censored = f" ({dense.n_censored} censored)" if dense.n_censored else ""
        md += [
            f"- Test accuracy at early stop: {_fmt_stat(acc, _fmt_acc)} % "
            f"(mean ± 95% CI (SD) over {dense.n} trial(s))",
            f"- Final test accuracy: {_fmt_stat(fin, _fmt_acc)} %",
            f"- Early-stopping iteration: {_fmt_stat(es, _fmt_iter, _fmt_spread)}{censored}",
            "",
        ]

    md += ["## Results by pruning level", ""]
    if rows:
        md += ["Test accuracy at the early-stopping iteration (minimum validation loss), final test "
               "accuracy, and the early-stopping iteration; mean ± 95% CI (SD) over trials. "
               "Diverged runs are excluded from the numbers.", "",
               format_table(rows, trials=trials if isinstance(trials, int) else None), ""]
        if any(r.level > 0 for r in rows):
            md += ["## Paired differences", "",
                   "Within each trial, then over trials: mean ± 95% CI (p of the paired t test). "
                   "Positive accuracy differences favour the first-named; negative early-stop "
                   "differences mean it stops earlier.", "",
                   format_differences(rows, trials if isinstance(trials, int) else None), ""]
        md += _verdict_lines(config, rows, records)
    else:
        md += ["No results yet.", ""]

    written = []
    if plots and rows:
        plot_title = (f"{_get(config, 'model', 'name', default='?')} on "
                      f"{_get(config, 'dataset', 'name', default='?')}") if config else ""
        if plot_metric_vs_density(rows, "test_accuracy_at_early_stop",
                                  os.path.join(workdir, ACCURACY_PLOT), title=plot_title,
                                  budget=budget):
            written.append((ACCURACY_PLOT,
                            "Test accuracy at early stop vs percent of weights remaining"))
        if plot_metric_vs_density(rows, "early_stop_iteration",
                                  os.path.join(workdir, EARLY_STOP_PLOT), title=plot_title,
                                  budget=budget):
            written.append((EARLY_STOP_PLOT,
                            "Early-stopping iteration vs percent of weights remaining"))
        if plot_curves(records, os.path.join(workdir, CURVES_PLOT), levels=curve_levels,
                       title=plot_title, budget=budget):
            written.append((CURVES_PLOT, "Test accuracy vs training iteration"))
    if written:
        md += ["## Plots", "", f"Every plot's {_ERROR_BARS}; ringed points include censored early "
               "stops. A point's interval includes the trial-to-trial spread that the variants of "
               "one trial share; the paired differences above remove it, so two overlapping bars "
               "can still differ.", ""]
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
            density = _density(r)
            md.append(f"| {r['level']} | {r['variant']} | {r['trial']} | "
                      f"{format_percent_remaining(density if density is not None else math.nan)} "
                      f"| {reason} |")
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
    (confidence intervals, paired differences, the verdict, final accuracy) stay in report.md.
    """
    workdir = _check_workdir(workdir)
    records = load_results(workdir)
    config = load_config(workdir)
    budget = iteration_budget(config)
    rows = summarize(records, budget)
    variants = _ordered_variants(rows)
    title, _ = _describe(config, max((r.n + r.n_diverged for r in rows), default=0))
    trials = _get(config, "trials", default="?")
    lines = [title.lstrip("# "),
             f"test accuracy at early stop (%), mean over {trials} trial(s) [mean early-stop iteration]"]
    cell = max(14, min(22, (width - 16) // max(1, len(variants))))
    header = f"{'level':>5}  {'weights':>7}  " + "".join(
        f"{VARIANT_LABELS.get(v, v):<{cell}}" for v in variants)
    lines += [header.rstrip()]
    for level, cells in _by_level(rows).items():
        line = f"{level:>5}  {_level_percent(cells) + '%':>7}  "
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
    late = _late_sentence(records, budget)
    if late:
        lines.append(late)
    missing = missing_runs(config, records) if config is not None else []
    if missing:
        lines.append(f"Missing: {sum(len(t) for _, _, t in missing)} run(s); see report.md.")
    lines.append(f"Full tables (confidence intervals, paired differences, verdict) and plots: "
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
        branch_paths = write_branch_reports(FLAGS.workdir)
    except (FileNotFoundError, ValueError) as e:
        print(f"lth_jax.report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(path)
    print(format_table(rows) if rows else "(no results yet)")
    for written in branch_paths:
        print(written)


def write_branch_reports(workdir: str | os.PathLike) -> list[str]:
    """Each branch's tables and plots (``W/branches/*``), written by its own module into its
    folder; returns their paths. Imports the branches (and so JAX) only when there are any."""
    root = os.path.join(os.fspath(workdir), "branches")
    if not os.path.isdir(root):
        return []
    from lth_jax.branches import base
    return [p for folder in base.folders(os.fspath(workdir)) for p in base.write_report(folder)]


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
