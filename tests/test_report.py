"""Tests of lth_jax.report on small synthetic workdirs whose answers are known: 2 trials x levels
0..2 x three variants, and 3 trials built so that each verdict comes out once; the report's input
checks; and a property-based test that writes the report for any records that parse."""

import csv
import json
import math
import os
import struct
import subprocess
import sys
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lth_jax import report

# (level, variant) -> per trial: (test_accuracy_at_early_stop, final_test_accuracy, early_stop_iteration)
NUMBERS = {
    (0, "ticket"): [(0.9800, 0.9790, 5000), (0.9760, 0.9750, 5600)],
    (1, "ticket"): [(0.9850, 0.9830, 4000), (0.9830, 0.9810, 4400)],
    (1, "reinit"): [(0.9770, 0.9760, 6000), (0.9750, 0.9740, 6500)],
    (1, "random_prune"): [(0.9740, 0.9730, 6200), (0.9720, 0.9710, 6400)],
    (2, "ticket"): [(0.9860, 0.9840, 3600), (0.9840, 0.9820, 3900)],
    (2, "reinit"): [(0.9700, 0.9690, 7000), (0.9660, 0.9650, 7300)],
    (2, "random_prune"): [(0.9680, 0.9670, 6800), (0.9640, 0.9630, 7100)],
}
DENSITY = {0: 1.0, 1: 0.8, 2: 0.513}
EVAL_ITERATIONS = [0, 2000, 4000, 6000, 8000]

CONFIG = {
    "model": {"name": "lenet300_100"},
    "dataset": {"name": "mnist"},
    "train": {"iterations": 8000},
    "prune": {"levels": 2, "one_shot": False},
    "controls": {"reinit": True, "random_prune": True},
    "trials": 2,
    "seed": 0,
}

# The table lines expected for the data above (level, % remaining, then per variant: acc, final,
# iter), each "mean ± half-width of the 95% CI (SD)". With two trials a and b: SD = |a − b| / √2,
# half-width = t_{0.975,1} · |a − b| / 2 = 12.7062 · |a − b| / 2; e.g. 98.00 and 97.60 give
# 97.80 ± 2.54 (SD 0.28), and 5000 and 5600 give 5300 ± 3812 (SD 424).
TABLE_ROWS = [
    "| 0 | 100 | 97.80 ± 2.54 (SD 0.28) | 97.70 ± 2.54 (SD 0.28) | 5300 ± 3812 (SD 424) "
    "| — | — | — | — | — | — |",
    "| 1 | 80.0 | 98.40 ± 1.27 (SD 0.14) | 98.20 ± 1.27 (SD 0.14) | 4200 ± 2541 (SD 283) "
    "| 97.60 ± 1.27 (SD 0.14) | 97.50 ± 1.27 (SD 0.14) | 6250 ± 3177 (SD 354) "
    "| 97.30 ± 1.27 (SD 0.14) | 97.20 ± 1.27 (SD 0.14) | 6300 ± 1271 (SD 141) |",
    "| 2 | 51.3 | 98.50 ± 1.27 (SD 0.14) | 98.30 ± 1.27 (SD 0.14) | 3750 ± 1906 (SD 212) "
    "| 96.80 ± 2.54 (SD 0.28) | 96.70 ± 2.54 (SD 0.28) | 7150 ± 1906 (SD 212) "
    "| 96.60 ± 2.54 (SD 0.28) | 96.50 ± 2.54 (SD 0.28) | 6950 ± 1906 (SD 212) |",
]


def make_record(trial, level, variant):
    acc, final, es = NUMBERS[(level, variant)][trial]
    curve = [0.1 + (acc - 0.1) * min(1.0, it / es) for it in EVAL_ITERATIONS]
    return {
        "trial": trial,
        "level": level,
        "variant": variant,
        "density": DENSITY[level],
        "layer_density": {"Dense_0/kernel": DENSITY[level], "Dense_1/kernel": DENSITY[level]},
        "early_stop_iteration": es,
        "test_accuracy_at_early_stop": acc,
        "final_test_accuracy": final,
        "train_seconds": 12.5,
        "eval_iterations": EVAL_ITERATIONS,
        "val_loss": [2.3 - 2.0 * c for c in curve],
        "val_accuracy": curve,
        "test_accuracy": curve,
        "status": "ok",
        "some_future_field": {"ignored": True},
    }


def all_records():
    return [make_record(t, level, v) for t in range(2) for (level, v) in NUMBERS]


def write_workdir(path, records, config=CONFIG, tail=""):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (path / "results.jsonl").write_text(lines + tail)
    return path


@pytest.fixture
def workdir(tmp_path):
    return write_workdir(tmp_path / "run", all_records())


def table_body(table):
    return table.splitlines()[2:]


def test_summarize_numbers(workdir):
    rows = report.summarize(report.load_results(workdir))
    assert [(r.level, r.variant) for r in rows] == [
        (0, "ticket"), (1, "ticket"), (1, "reinit"), (1, "random_prune"),
        (2, "ticket"), (2, "reinit"), (2, "random_prune")]
    r = rows[5]  # level 2 reinit
    assert (r.n, r.n_diverged, r.trials) == (2, 0, (0, 1))
    assert r.density == pytest.approx(0.513)
    acc = r.test_accuracy_at_early_stop
    assert acc.mean == pytest.approx(0.968)
    assert (acc.min, acc.max, acc.n) == (0.966, 0.970, 2)
    assert acc.sd == pytest.approx(0.004 / math.sqrt(2))
    assert acc.half_width == pytest.approx(12.7062047362 * 0.002, rel=1e-9)
    assert (acc.low, acc.high) == pytest.approx((0.968 - 0.0254124095, 0.968 + 0.0254124095))
    assert r.final_test_accuracy.mean == pytest.approx(0.967)
    es = r.early_stop_iteration
    assert (es.mean, es.min, es.max) == (7150, 7000, 7300)
    assert es.half_width == pytest.approx(12.7062047362 * 150, rel=1e-9)
    assert r.values["early_stop_iteration"] == {0: 7000.0, 1: 7300.0}
    assert r.censored_trials == ()


def test_table_and_report(workdir):
    rows = report.summarize(report.load_results(workdir))
    table = report.format_table(rows)
    assert table_body(table) == TABLE_ROWS
    header = table.splitlines()[0]
    assert header.startswith("| level | % weights remaining | ticket: test acc @ early stop (%) |")
    assert "random prune: early-stop iteration |" in header

    path = report.write_report(workdir)
    assert path == os.path.join(str(workdir), "report.md")
    md = open(path, encoding="utf-8").read()
    assert md.startswith("# Lottery ticket report: lenet300_100 on mnist\n")
    assert "8000 training iterations per run, 2 trial(s), iterative pruning, levels 0–2" in md
    assert "Progress: 14 of 14 expected runs finished." in md
    # Dense baseline comes before the table.
    assert md.index("## Dense baseline (level 0)") < md.index("## Results by pruning level")
    assert "- Test accuracy at early stop: 97.80 ± 2.54 (SD 0.28) %" in md
    assert "- Early-stopping iteration: 5300 ± 3812 (SD 424)" in md
    assert "With 2 trials the 95% interval is the mean ± 12.71 standard errors" in md
    assert "No early stop is censored" in md
    for line in TABLE_ROWS:
        assert line in md
    assert "## Missing\n\nNothing: every expected run is present." in md
    assert "## Diverged runs\n\nNone." in md
    for png in ("accuracy_vs_density.png", "early_stop_vs_density.png", "curves.png"):
        assert f"]({png})" in md


def test_csv(workdir):
    report.write_report(workdir, plots=False)
    with open(workdir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == list(report.CSV_COLUMNS)
    assert [(r["level"], r["variant"]) for r in rows] == [
        ("0", "ticket"), ("1", "ticket"), ("1", "reinit"), ("1", "random_prune"),
        ("2", "ticket"), ("2", "reinit"), ("2", "random_prune")]
    r = rows[3]  # level 1 random_prune
    assert float(r["density"]) == 0.8
    assert float(r["percent_remaining"]) == pytest.approx(80.0)
    assert (r["n"], r["n_diverged"], r["n_censored"]) == ("2", "0", "0")
    assert float(r["test_accuracy_at_early_stop_mean"]) == pytest.approx(0.973)
    assert float(r["test_accuracy_at_early_stop_ci95_low"]) == pytest.approx(0.973 - 0.0127062047)
    assert float(r["test_accuracy_at_early_stop_ci95_high"]) == pytest.approx(0.973 + 0.0127062047)
    assert float(r["test_accuracy_at_early_stop_sd"]) == pytest.approx(0.002 / math.sqrt(2))
    assert float(r["test_accuracy_at_early_stop_min"]) == 0.972
    assert float(r["test_accuracy_at_early_stop_max"]) == 0.974
    assert float(r["final_test_accuracy_mean"]) == pytest.approx(0.972)
    assert float(r["early_stop_iteration_mean"]) == 6300
    assert float(r["early_stop_iteration_min"]) == 6200
    assert float(r["early_stop_iteration_max"]) == 6400


def read_png_size(path):
    data = open(path, "rb").read()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pngs(workdir):
    report.write_report(workdir)
    for png in ("accuracy_vs_density.png", "early_stop_vs_density.png", "curves.png"):
        width, height = read_png_size(workdir / png)
        assert width > 300 and height > 200


def test_density_axis_ticks(workdir):
    """The x axis is log, inverted (100% on the left), with a tick at each density present."""
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    report._density_axis(ax, [1.0, 0.8, 0.513])
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > right  # inverted
    assert list(ax.get_xticks()) == [100.0, 80.0, 51.3]
    fmt = ax.xaxis.get_major_formatter()
    assert [fmt(x, i) for i, x in enumerate([100.0, 80.0, 51.3])] == ["100", "80.0", "51.3"]
    # Many levels: every tick present, a thinned subset labelled, always first and last.
    dens = [0.8**k for k in range(31)]
    report._density_axis(ax, dens, max_labels=10)
    fmt = ax.xaxis.get_major_formatter()
    labels = [fmt(x, i) for i, x in enumerate(ax.get_xticks())]
    assert len(labels) == 31 and labels[0] == "100" and labels[-1] == "0.12"
    assert 2 <= sum(bool(s) for s in labels) <= 11


def test_default_curve_levels():
    assert report.default_curve_levels(range(21)) == [0, 7, 14, 20]
    assert report.default_curve_levels([0, 1, 2]) == [0, 1, 2]
    assert report.default_curve_levels([0]) == [0]
    assert report.default_curve_levels([3, 5]) == [3, 5]


def test_partial_results_list_missing(tmp_path):
    records = [r for r in all_records()
               if not (r["level"] == 2 and (r["variant"] == "random_prune"
                                            or (r["variant"] == "reinit" and r["trial"] == 1)))]
    wd = write_workdir(tmp_path / "run", records)
    assert report.missing_runs(CONFIG, records) == [(2, "reinit", (1,)), (2, "random_prune", (0, 1))]
    md = open(report.write_report(wd), encoding="utf-8").read()
    missing = md.split("## Missing\n\n")[1].split("\n\n")[0].splitlines()
    assert missing == ["- level 2, reinit: trial(s) 1", "- level 2, random_prune: trial(s) 0, 1"]
    assert "Progress: 11 of 14 expected runs finished." in md
    # Level 2 reinit has one trial: no interval, and the cell says n=1; random prune is absent.
    assert ("| 2 | 51.3 | 98.50 ± 1.27 (SD 0.14) | 98.30 ± 1.27 (SD 0.14) | 3750 ± 1906 (SD 212) "
            "| 97.00 (n=1) | 96.90 | 7000 | — | — | — |") in md
    # Only the levels present are plotted.
    read_png_size(wd / "accuracy_vs_density.png")


def test_missing_levels_not_started_share_a_line(tmp_path):
    """Levels with no run at all are grouped into ranges; a partly run level is itemised."""
    records = [r for r in all_records()
               if r["level"] == 0 or (r["level"] == 2 and r["variant"] != "ticket")]
    wd = write_workdir(tmp_path / "run", records)
    md = open(report.write_report(wd), encoding="utf-8").read()
    missing = md.split("## Missing\n\n")[1].split("\n\n")[0].splitlines()
    assert missing == ["- level 1: not run yet (6 runs)", "- level 2, ticket: trial(s) 0, 1"]
    records = [r for r in all_records() if r["level"] == 1]
    assert report._missing_lines(CONFIG, report.missing_runs(CONFIG, records)) == [
        "- level 0: not run yet (2 runs)", "- level 2: not run yet (6 runs)"]


def test_missing_without_controls():
    config = dict(CONFIG, controls={"reinit": False, "random_prune": False}, trials=1)
    assert report.expected_runs(config) == [(0, "ticket", 0), (1, "ticket", 0), (2, "ticket", 0)]
    assert report.missing_runs(config, []) == [
        (0, "ticket", (0,)), (1, "ticket", (0,)), (2, "ticket", (0,))]


def test_empty_results_still_reports(tmp_path):
    wd = write_workdir(tmp_path / "run", [])
    md = open(report.write_report(wd), encoding="utf-8").read()
    assert "Progress: 0 of 14 expected runs finished." in md
    assert md.split("## Missing\n\n")[1].split("\n\n")[0] == "- levels 0–2: not run yet (14 runs)"
    assert not (wd / "curves.png").exists()


def test_half_written_last_line_is_ignored(tmp_path):
    wd = write_workdir(tmp_path / "run", all_records(), tail='{"trial": 1, "level": 2, "varia')
    with pytest.warns(report.ResultsWarning, match=r"results.jsonl:15: ignoring unparseable last line"):
        records = report.load_results(wd)
    assert len(records) == 14
    with pytest.warns(report.ResultsWarning):
        md = open(report.write_report(wd), encoding="utf-8").read()
    for line in TABLE_ROWS:
        assert line in md


def test_corrupt_middle_line_raises(tmp_path):
    wd = write_workdir(tmp_path / "run", all_records())
    lines = (wd / "results.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:40] + "\n"
    (wd / "results.jsonl").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"line 3 is not valid JSON"):
        report.load_results(wd)


def test_record_without_required_fields_raises(tmp_path):
    wd = write_workdir(tmp_path / "run", all_records()[:2] + [{"level": 0}] + all_records()[2:])
    with pytest.raises(ValueError, match=r"line 3 lacks required field\(s\) trial, variant"):
        report.load_results(wd)


def test_duplicate_record_keeps_later(tmp_path):
    later = make_record(0, 0, "ticket")
    later["test_accuracy_at_early_stop"] = 0.5
    wd = write_workdir(tmp_path / "run", all_records() + [later])
    with pytest.warns(report.ResultsWarning, match="duplicate"):
        records = report.load_results(wd)
    assert len(records) == 14
    dense = [r for r in records if r["level"] == 0 and r["trial"] == 0]
    assert [r["test_accuracy_at_early_stop"] for r in dense] == [0.5]


def test_diverged_excluded_and_listed(tmp_path):
    records = all_records()
    for r in records:
        if (r["level"], r["variant"], r["trial"]) == (2, "reinit", 1):
            r.update(status="diverged", failure="non-finite loss at iteration 1200",
                     test_accuracy_at_early_stop=None, final_test_accuracy=None,
                     early_stop_iteration=1200, test_accuracy=[0.1, None, None, None, None])
    wd = write_workdir(tmp_path / "run", records)
    rows = {(r.level, r.variant): r for r in report.summarize(records)}
    r = rows[(2, "reinit")]
    assert (r.n, r.n_diverged, r.trials, r.diverged_trials) == (1, 1, (0,), (1,))
    assert r.test_accuracy_at_early_stop.mean == 0.970
    assert r.early_stop_iteration.mean == 7000  # the diverged run's 1200 is not counted
    md = open(report.write_report(wd), encoding="utf-8").read()
    assert "Progress: 14 of 14 expected runs finished (1 diverged)." in md
    assert "| 97.00 (n=1, 1 diverged) | 96.90 | 7000 |" in md
    diverged = md.split("## Diverged runs\n\n")[1].strip().splitlines()
    assert diverged[2:] == ["| 2 | reinit | 1 | 51.3 | non-finite loss at iteration 1200 |"]
    with open(wd / "results.csv", newline="") as f:
        csv_rows = {(x["level"], x["variant"]): x for x in csv.DictReader(f)}
    assert (csv_rows[("2", "reinit")]["n"], csv_rows[("2", "reinit")]["n_diverged"]) == ("1", "1")
    read_png_size(wd / "curves.png")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lth_jax.report", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli(workdir):
    proc = run_cli(f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == os.path.join(str(workdir), "report.md")
    for line in TABLE_ROWS:
        assert line in out
    assert (workdir / "curves.png").exists()


def test_cli_errors(tmp_path):
    proc = run_cli(f"--workdir={tmp_path / 'nope'}")
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli(f"--workdir={tmp_path / 'empty'}")
    assert proc.returncode != 0
    assert "no results.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def test_import_is_cheap_and_defines_no_flags():
    code = ("import sys, lth_jax.report; from absl import flags; "
            "assert 'jax' not in sys.modules, 'jax imported'; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
            "assert 'workdir' not in flags.FLAGS, 'flags defined at import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_missing_workdir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_report(tmp_path / "nope")


def test_test_curve_uses_test_iterations_when_present():
    records = [make_record(0, 0, "ticket"), make_record(1, 0, "ticket")]
    for r, acc in zip(records, (0.5, 0.7)):
        r["eval_iterations"] = [100, 200, 300, 400]
        r["val_accuracy"] = [0.1, 0.2, 0.3, 0.4]
        r["test_iterations"] = [200, 400]  # test set measured every second evaluation
        r["test_accuracy"] = [acc, acc + 0.1]
    curve = report.mean_curve(records, 0, "ticket")
    assert curve.iterations == [200, 400] and curve.n == [2, 2]
    assert curve.mean == pytest.approx([0.6, 0.7])
    # two trials 0.2 apart: half-width 12.7062 · 0.1
    assert curve.low == pytest.approx([0.6 - 1.27062047362, 0.7 - 1.27062047362])
    curve = report.mean_curve(records, 0, "ticket", key="val_accuracy")
    assert curve.iterations == [100, 200, 300, 400]
    assert curve.mean == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert curve.low == curve.mean == curve.high  # equal values: a zero-width interval


# ---------------------------------------------------------------- three trials, every verdict once

# (level, variant) -> per trial (test accuracy at early stop, early-stop iteration); None: diverged.
# The budget is 1,000 iterations, evaluated every 100.
THREE = {
    (0, "ticket"): [(0.880, 600), (0.890, 700), (0.870, 500)],
    # ticket − dense: accuracy +0.5, +0.3, +0.8 pp; early stop −200, −300, −200: winning
    (1, "ticket"): [(0.885, 400), (0.893, 400), (0.878, 300)],
    # reinit − dense: accuracy −1.0, −0.5, −0.2 pp (interval straddles −0.5 pp): not shown
    (1, "reinit"): [(0.870, 600), (0.885, 800), (0.868, 700)],
    # ticket − dense: accuracy −2.0, −2.1, −1.9 pp: not winning; trials 0 and 2 censored
    (2, "ticket"): [(0.860, 1000), (0.869, 900), (0.851, 1000)],
    # one trial left (trial 1 diverged, trial 2 not run yet): no verdict
    (2, "reinit"): [(0.850, 1000), None],
}
CONFIG3 = {"model": {"name": "lenet300_100"}, "dataset": {"name": "mnist"},
           "train": {"iterations": 1000, "eval_every": 100}, "prune": {"levels": 2},
           "controls": {"reinit": True, "random_prune": False}, "trials": 3, "seed": 0}


def three_records():
    records = []
    for (level, variant), runs in THREE.items():
        for trial, run in enumerate(runs):
            r = {"trial": trial, "level": level, "variant": variant, "density": 0.8 ** level,
                 "eval_iterations": list(range(100, 1001, 100)), "status": "ok"}
            if run is None:
                r.update(status="diverged", failure="non-finite loss at iteration 300")
            else:
                r.update(test_accuracy_at_early_stop=run[0], final_test_accuracy=run[0] - 0.001,
                         early_stop_iteration=run[1])
            records.append(r)
    return records


@pytest.fixture
def three(tmp_path):
    return write_workdir(tmp_path / "three", three_records(), config=CONFIG3)


def test_paired_differences_and_verdicts_of_known_samples(three):
    rows = report.summarize(report.load_results(three), budget=1000)
    by = {(r.level, r.variant): r for r in rows}
    assert by[(2, "ticket")].censored_trials == (0, 2) and by[(2, "reinit")].censored_trials == (0,)
    d = report.paired(rows, (1, "ticket"), (0, "ticket"), "test_accuracy_at_early_stop").estimate
    # differences 0.005, 0.003, 0.008: mean 0.005333, SD 0.0025166, half-width 4.30265 · SD / √3
    assert d.n == 3 and d.mean == pytest.approx(0.0053333333)
    assert d.sd == pytest.approx(0.0025166115) and d.half_width == pytest.approx(0.0062516095)
    assert d.p == pytest.approx(0.0668610504, rel=1e-8)  # scipy.stats.ttest_1samp
    judged = {(j.level, j.variant): j.verdict.label for j in report.verdicts(rows, margin=100)}
    assert judged == {(1, "ticket"): "winning", (1, "reinit"): "not shown",
                      (2, "ticket"): "not winning", (2, "reinit"): "no verdict"}


def test_report_of_known_samples(three):
    md = open(report.write_report(three), encoding="utf-8").read()
    # dense: 0.88, 0.89, 0.87 -> 88.00 ± 4.30265 · 1.00 / √3 = 88.00 ± 2.48 (SD 1.00)
    assert "- Test accuracy at early stop: 88.00 ± 2.48 (SD 1.00) %" in md
    assert "With 3 trials the 95% interval is the mean ± 4.30 standard errors" in md
    assert ("3 of 13 runs had their minimum validation loss at their last evaluation: longer "
            "training (train.iterations) would move those early stops.") in md
    table = md.split("## Results by pruning level\n\n")[1].split("\n\n")[1].splitlines()
    assert table[4] == ("| 2 | 64.0 | 86.00 ± 2.24 (SD 0.90) | 85.90 ± 2.24 (SD 0.90) "
                        "| 967 ± 143 (SD 58) (2 censored) | 85.00 (n=1, 1 diverged) | 84.90 "
                        "| 1000 (1 censored) |")
    diffs = md.split("## Paired differences\n\n")[1].split("\n\n")[1].splitlines()
    # (each checked against scipy.stats.ttest_1samp of the per-trial differences)
    assert diffs[2] == ("| 1 | 80.0 | +0.53 ± 0.63 (p 0.067) | -233 ± 143 (p 0.02) "
                        "| -0.57 ± 1.00 (p 0.14) | +100 ± 248 (p 0.23) "
                        "| +1.10 ± 0.90 (p 0.034) | -333 ± 287 (p 0.038) |")
    assert diffs[3] == ("| 2 | 64.0 | -2.00 ± 0.25 (p <0.001) | +367 ± 379 (p 0.053) "
                        "| -3.00 (n=1) | +400 (n=1) | +1.00 (n=1) | +0 (n=1) |")
    assert "Tickets: 1 winning, 1 not winning." in md
    verdict = md.split("Tickets: 1 winning, 1 not winning.\n\n")[1].split("\n\n")[0].splitlines()
    assert verdict[2:] == [
        "| 1 | 80.0 | **winning** (accuracy within 0.5 pp of dense or above, early stop not later) "
        "| **not shown** (accuracy interval reaches below −0.5 pp; early-stop interval reaches "
        "above +100 iterations) |",
        "| 2 | 64.0 | **not winning** (accuracy shown more than 0.5 pp below dense) "
        "| **no verdict** (1 paired trial: no interval) |"]
    with open(three / "results.csv", newline="") as f:
        rows = {(r["level"], r["variant"]): r for r in csv.DictReader(f)}
    assert rows[("2", "ticket")]["n_censored"] == "2"
    text = report.terminal_summary(three)
    assert "3 of 13 runs had their minimum validation loss at their last" in text


class Captured:
    """The figures the plot functions draw (report._new_figure), to read their axes."""

    def __init__(self, monkeypatch):
        self.axes = []
        new = report._new_figure

        def capture(*args):
            fig, ax = new(*args)
            self.axes.append(ax)
            return fig, ax

        monkeypatch.setattr(report, "_new_figure", capture)


def test_equal_values_across_trials_plot_without_negative_error_bars(tmp_path, monkeypatch):
    """Three trials that agree at their one test point (all 70.0% at iteration 500): the mean is a
    rounding error away from the values, and the error bars must not go negative."""
    records = []
    for t in range(3):
        r = make_record(t % 2, 0, "ticket")
        r.update(trial=t, test_iterations=[500], test_accuracy=[0.7], eval_iterations=[250, 500],
                 test_accuracy_at_early_stop=0.7, early_stop_iteration=500)
        records.append(r)
    wd = write_workdir(tmp_path / "run", records,
                       config=dict(CONFIG, trials=3, prune={"levels": 0},
                                   train={"iterations": 500}))
    captured = Captured(monkeypatch)
    md = open(report.write_report(wd), encoding="utf-8").read()
    assert "- Test accuracy at early stop: 70.00 ± 0.00 (SD 0.00) %" in md
    assert "- Early-stopping iteration: 500 ± 0 (SD 0) (3 censored)" in md
    read_png_size(wd / "curves.png")
    curves = captured.axes[-1]
    # one test point: the x axis runs from 0 to past the budget (not a sliver around 500)
    left, right = curves.get_xlim()
    assert left <= 0 and right >= 500
    assert "budget: train.iterations = 500" in [t.get_text() for t in
                                                 curves.get_legend().get_texts()]


def test_curves_never_clip_a_point(tmp_path, monkeypatch):
    """A dense curve with an 84.0% point at iteration 400 among points near 90%: every point and
    error bar lies inside the axes; the caption names the level and the control left out."""
    records = []
    for t in range(2):
        for level in range(5):
            for v in ("ticket", "reinit", "random_prune") if level else ("ticket",):
                r = make_record(t, 0, "ticket")
                r.update(level=level, variant=v, density=0.8 ** level,
                         eval_iterations=[200, 400, 600, 800, 1000],
                         test_accuracy=[0.90 + 0.001 * t, 0.84 if level == 0 else 0.91, 0.90,
                                        0.905, 0.90])
                records.append(r)
    wd = write_workdir(tmp_path / "run", records,
                       config=dict(CONFIG, prune={"levels": 4}, train={"iterations": 1000}))
    captured = Captured(monkeypatch)
    report.write_report(wd)
    ax = captured.axes[-1]
    bottom, top = ax.get_ylim()
    assert bottom < 84.0 and top > 91.0
    assert report.default_curve_levels(range(5)) == [0, 2, 3, 4]
    title = " ".join(ax.get_title().split())  # (wrapped to the figure's width)
    assert "not shown: level 1; random pruning (report.md has every level)" in title
    assert "95% confidence interval of the mean over trials (Student's t), 2 trials" in title
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["100% (dense)", "64.0%", "64.0% random reinit", "51.2%",
                      "51.2% random reinit", "41.0%", "41.0% random reinit",
                      "budget: train.iterations = 1000"]


def test_early_stop_plot_marks_the_budget_and_censored_points(three, monkeypatch):
    captured = Captured(monkeypatch)
    report.write_report(three)
    accuracy, early_stop = captured.axes[0], captured.axes[1]
    labels = [t.get_text() for t in early_stop.get_legend().get_texts()]
    assert labels == ["winning ticket", "random reinit", "dense network (mean)",
                      "ringed: includes censored early stops",
                      "budget: train.iterations = 1000"]
    assert "ringed: includes censored early stops" in [
        t.get_text() for t in accuracy.get_legend().get_texts()]
    assert "censored: minimum val. loss at the last evaluation" in " ".join(
        early_stop.get_title().split())


def test_the_budget_far_above_the_early_stops_is_named_not_drawn(workdir, monkeypatch):
    captured = Captured(monkeypatch)
    config = dict(CONFIG, train={"iterations": 50_000})
    (workdir / "config.json").write_text(json.dumps(config))
    report.write_report(workdir)
    early_stop = captured.axes[1]
    assert "budget (train.iterations) 50000, above the plot" in " ".join(
        early_stop.get_title().split())
    assert early_stop.get_ylim()[1] < 50_000


# ---------------------------------------------------------------- input checks

@pytest.mark.parametrize("field, value, message", [
    ("trials", "two", "field 'trials' must be an integer from 1 to 1,000,000, got 'two'"),
    ("trials", 0, "field 'trials' must be an integer from 1 to 1,000,000, got 0"),
    ("trials", True, "field 'trials' must be an integer from 1 to 1,000,000, got True"),
    ("trials", 10 ** 400, "field 'trials' must be an integer from 1 to 1,000,000, got 1000000000"),
    ("prune", {"levels": 2.5}, "field 'prune.levels' must be an integer from 0 to 1,000,000"),
    ("train", {"iterations": "50K"}, "field 'train.iterations' must be an integer from 1"),
])
def test_a_bad_config_field_is_one_line_naming_the_file_and_field(tmp_path, field, value, message):
    wd = write_workdir(tmp_path / "run", all_records(), config=dict(CONFIG, **{field: value}))
    with pytest.raises(ValueError, match="config.json: " + message.replace("(", r"\(")) as e:
        report.write_report(wd)
    assert "\n" not in str(e.value) and str(wd / "config.json") in str(e.value)
    proc = run_cli(f"--workdir={wd}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lth_jax.report: error: {e.value}"]


def test_a_400_digit_integer_in_a_metric_is_left_out_and_counted(tmp_path):
    records = all_records()
    records[0]["test_accuracy_at_early_stop"] = 10 ** 400
    records[1]["early_stop_iteration"] = -(10 ** 400)
    records[2]["density"] = 10 ** 400
    records[3]["eval_iterations"] = [10 ** 400, 2000]
    wd = write_workdir(tmp_path / "run", records)
    proc = run_cli(f"--workdir={wd}")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    md = (wd / "report.md").read_text()
    assert "- 2 metric value(s) in results.jsonl were not finite numbers in range" in md
    # trial 0's dense accuracy and its level-1 ticket's early stop are left out: one value each,
    # marked n=1
    assert "| 0 | 100 | 97.60 (n=1) | 97.70 ± 2.54 (SD 0.28) | 5300 ± 3812 (SD 424) |" in md
    assert "| 1 | 80.0 | 98.40 ± 1.27 (SD 0.14) | 98.20 ± 1.27 (SD 0.14) | 4400 (n=1) |" in md


def test_an_accuracy_out_of_range_is_left_out(tmp_path):
    records = all_records()
    records[0]["test_accuracy_at_early_stop"] = 97.8  # a percentage where a fraction belongs
    rows = {(r.level, r.variant): r for r in report.summarize(records)}
    assert rows[(0, "ticket")].test_accuracy_at_early_stop.n == 1
    assert report.invalid_values(records) == 1


# ---------------------------------------------------------------- any valid records

_JUNK = st.one_of(st.none(), st.just(10 ** 400), st.just(-(10 ** 400)), st.just("x"),
                  st.floats(allow_nan=True, allow_infinity=True), st.just([1, 2]))
_ACCURACY = st.one_of(st.sampled_from([0.0, 0.7, 0.7000000000000001, 1.0]),
                      st.floats(0, 1), _JUNK)
_ITERATION = st.one_of(st.sampled_from([0, 500, 1000]), st.integers(0, 2000), _JUNK)
_ITERATIONS = st.one_of(st.lists(st.one_of(st.integers(0, 2000), _JUNK), max_size=5),
                        st.just([500]), st.just([250, 500, 750, 1000]), _JUNK)
_CURVE = st.one_of(st.lists(st.one_of(st.sampled_from([0.7]), st.floats(0, 1), _JUNK),
                            max_size=5), _JUNK)
_RECORD = st.fixed_dictionaries(
    {"trial": st.integers(0, 3), "level": st.integers(0, 3),
     "variant": st.sampled_from(["ticket", "ticket", "reinit", "random_prune", "new$variant"])},
    optional={"status": st.sampled_from(["ok", "ok", "ok", "diverged", "skipped", 7]),
              "density": st.one_of(st.sampled_from([1.0, 0.8, 0.64, 0.512]), _JUNK),
              "test_accuracy_at_early_stop": _ACCURACY, "final_test_accuracy": _ACCURACY,
              "early_stop_iteration": _ITERATION, "eval_iterations": _ITERATIONS,
              "test_iterations": _ITERATIONS, "test_accuracy": _CURVE, "val_loss": _CURVE,
              "failure": st.text(max_size=8)})
_CONFIG = st.fixed_dictionaries(
    {"trials": st.integers(1, 4), "prune": st.fixed_dictionaries({"levels": st.integers(0, 3)}),
     "controls": st.fixed_dictionaries({"reinit": st.booleans(), "random_prune": st.booleans()})},
    optional={"train": st.fixed_dictionaries({}, optional={
        "iterations": st.integers(1, 2000), "eval_every": st.integers(1, 500)}),
        "model": st.just({"name": "lenet300_100"})})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(records=st.lists(_RECORD, max_size=14), config=st.one_of(st.none(), _CONFIG),
       equal=st.booleans())
def test_the_report_is_written_for_any_records_that_parse(tmp_path_factory, records, config,
                                                          equal):
    """Equal values across trials, one trial, NaN, missing and junk values and curves, diverged and
    skipped runs, no config: report.md, results.csv and the terminal summary are written."""
    if equal:  # every run of a (level, variant) the same, down to the last bit
        for r in records:
            r.update(test_accuracy_at_early_stop=0.7, early_stop_iteration=500,
                     eval_iterations=[500], test_iterations=[500], test_accuracy=[0.7])
    wd = tmp_path_factory.mktemp("any")
    if config is not None:
        (wd / "config.json").write_text(json.dumps(config))
    (wd / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", report.ResultsWarning)
        md = open(report.write_report(wd), encoding="utf-8").read()
        text = report.terminal_summary(wd)
    assert md.startswith("# Lottery ticket report: ") and "## Missing" in md
    assert (wd / "results.csv").exists()
    assert "report.md" in text


def test_recorded_lenet_ticket_against_reinit_at_21_percent():
    """The recorded LeNet lottery's claim in numbers: at 21.1% the ticket beats reinit by 0.52 pp
    over 3 paired trials, t ≈ 3.1, p ≈ 0.09 (not a demonstrated difference at 95%)."""
    from helpers import REPO

    workdir = os.path.join(REPO, "experiments", "lenet_fashion_mnist")
    rows = report.summarize(report.load_results(workdir))
    d = report.paired(rows, (7, "ticket"), (7, "reinit"), "test_accuracy_at_early_stop").estimate
    assert d.n == 3
    assert (round(100 * d.mean, 2), round(d.t, 1), round(d.p, 2)) == (0.52, 3.1, 0.09)
    assert d.low < 0 < d.high
