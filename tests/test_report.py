"""Tests of lth_jax.report on a small synthetic workdir (2 trials, levels 0..2, three variants)."""

import csv
import json
import os
import struct
import subprocess
import sys

import pytest

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

# The table lines expected for the data above (level, % remaining, then per variant: acc, final, iter).
TABLE_ROWS = [
    "| 0 | 100 | 97.80 [97.60–98.00] | 97.70 [97.50–97.90] | 5300 [5000–5600] | — | — | — | — | — | — |",
    "| 1 | 80.0 | 98.40 [98.30–98.50] | 98.20 [98.10–98.30] | 4200 [4000–4400] "
    "| 97.60 [97.50–97.70] | 97.50 [97.40–97.60] | 6250 [6000–6500] "
    "| 97.30 [97.20–97.40] | 97.20 [97.10–97.30] | 6300 [6200–6400] |",
    "| 2 | 51.3 | 98.50 [98.40–98.60] | 98.30 [98.20–98.40] | 3750 [3600–3900] "
    "| 96.80 [96.60–97.00] | 96.70 [96.50–96.90] | 7150 [7000–7300] "
    "| 96.60 [96.40–96.80] | 96.50 [96.30–96.70] | 6950 [6800–7100] |",
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
    assert r.test_accuracy_at_early_stop.mean == pytest.approx(0.968)
    assert r.test_accuracy_at_early_stop.min == 0.966
    assert r.test_accuracy_at_early_stop.max == 0.970
    assert r.final_test_accuracy.mean == pytest.approx(0.967)
    es = r.early_stop_iteration
    assert (es.mean, es.min, es.max) == (7150, 7000, 7300)


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
    assert "- Test accuracy at early stop: 97.80 [97.60–98.00] %" in md
    assert "- Early-stopping iteration: 5300 [5000–5600]" in md
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
    assert (r["n"], r["n_diverged"]) == ("2", "0")
    assert float(r["test_accuracy_at_early_stop_mean"]) == pytest.approx(0.973)
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
    # Level 2 reinit has one trial: no range, and the cell says n=1; random prune is absent.
    assert ("| 2 | 51.3 | 98.50 [98.40–98.60] | 98.30 [98.20–98.40] | 3750 [3600–3900] "
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
    its, mean, lo, hi = report.mean_curve(records, 0, "ticket")
    assert its == [200, 400]
    assert mean == pytest.approx([0.6, 0.7]) and lo == pytest.approx([0.5, 0.6])
    its, mean, _, _ = report.mean_curve(records, 0, "ticket", key="val_accuracy")
    assert its == [100, 200, 300, 400] and mean == pytest.approx([0.1, 0.2, 0.3, 0.4])
