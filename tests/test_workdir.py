"""The work directory's format (lth_jax.workdir), without training: no JAX at import, one reading
rule for records, the lock, checkpoint digests, the experiment's identity, and the report telling
skipped runs from diverged ones."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers import REPO, lock_holder
from lth_jax import report
from lth_jax import workdir as wd


def test_workdir_and_report_import_no_jax():
    code = ("import sys, lth_jax.workdir, lth_jax.report; "
            "assert 'jax' not in sys.modules and 'orbax' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _write_lines(workdir, lines):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, wd.RESULTS), "w") as f:
        f.write("".join(lines))


def _record(trial, level, variant="ticket", **extra):
    return {"trial": trial, "level": level, "variant": variant, **extra}


def test_records_one_reading_rule(tmp_path):
    """Later duplicates win (warned), a half-written last line is dropped (warned), anything else
    that is not a record object is one WorkdirError line naming the line."""
    workdir = str(tmp_path)
    lines = [json.dumps(_record(0, 0, x=1)) + "\n", "\n", json.dumps(_record(1, 0)) + "\n",
             json.dumps(_record(0, 0, x=2)) + "\n", '{"trial": 1, "lev']
    _write_lines(workdir, lines)
    warned = []
    records = wd.read_records(workdir, warn=warned.append)
    assert records == [_record(1, 0), _record(0, 0, x=2)]
    assert len(warned) == 2 and "duplicate record for trial 0, level 0" in warned[0]
    assert "results.jsonl:5: ignoring unparseable last line" in warned[1]
    for bad, message in [("[1, 2]", "line 2 is a JSON list, not a record object"),
                         ('{"trial": 0, "variant": "ticket"}', "line 2 lacks required field(s) level"),
                         ('{"trial": 0, "lev', "line 2 is not valid JSON"),
                         ('{"trial": "x", "level": 0, "variant": "ticket"}', "non-integer trial")]:
        _write_lines(workdir, [lines[0], bad + "\n", lines[2]])
        with pytest.raises(wd.WorkdirError) as info:
            wd.read_records(workdir)
        assert message in str(info.value) and "\n" not in str(info.value)
        assert "remove that line" in str(info.value)


def test_the_report_reads_records_by_the_same_rule(tmp_path):
    workdir = str(tmp_path)
    _write_lines(workdir, [json.dumps(_record(0, 0, x=1)) + "\n", json.dumps(_record(0, 0, x=2)) + "\n"])
    with pytest.warns(report.ResultsWarning, match="duplicate"):
        assert report.load_results(workdir) == wd.read_records(workdir) == [_record(0, 0, x=2)]


def test_lock_names_its_holder_and_dead_holders_are_taken_over(tmp_path):
    workdir = str(tmp_path)
    first = wd.Lock(workdir).acquire()
    with pytest.raises(wd.WorkdirError) as info:
        wd.Lock(workdir).acquire()
    message = str(info.value)
    assert f"is in use by process {os.getpid()} on host {socket.gethostname()}, started " in message
    assert "\n" not in message
    first.release()
    again = wd.Lock(workdir).acquire()  # released cleanly: free again, naming no holder
    assert again.previous is None
    again.release()
    # A process that took the lock and was killed (SIGKILL): the kernel released its flock, the
    # file still names it; the next one takes the lock over and knows whom from.
    holder = lock_holder(workdir)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(wd.WorkdirError, match=f"in use by process {holder.pid} "):
            wd.Lock(workdir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    taken = wd.Lock(workdir).acquire()
    assert taken.previous["pid"] == holder.pid
    taken.release()


def _data_files(path):
    files = [os.path.join(root, f) for root, _, names in os.walk(path) for f in names
             if f != wd.META]
    return sorted(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_meta", "staging"])
def test_checkpoints_are_verified_on_load(tmp_path, damage):
    workdir = str(tmp_path)
    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(64, 300)).astype(np.float32), "mask": rng.random(100) < 0.5,
            "empty": {}, "n": np.int32(3), "pair": (np.arange(3), np.ones(2))}
    wd.write_checkpoint(workdir, "level_001", tree, {"experiment": "x"})
    back, meta = wd.read_checkpoint(workdir, "level_001")
    assert meta["experiment"] == "x" and meta["digest"] == wd.digest(tree) == wd.digest(back)
    np.testing.assert_array_equal(back["w"], tree["w"])
    path = wd.checkpoint_path(workdir, "level_001")
    biggest = _data_files(path)[-1]
    if damage == "flip":  # 64 bytes in the middle of the largest data file
        with open(biggest, "r+b") as f:
            f.seek(os.path.getsize(biggest) // 2)
            chunk = f.read(64)
            f.seek(-64, 1)
            f.write(bytes(b ^ 0xFF for b in chunk))
    elif damage == "truncate":
        with open(biggest, "r+b") as f:
            f.truncate(os.path.getsize(biggest) // 3)
    elif damage == "no_meta":  # cut short before the commit
        os.remove(os.path.join(path, wd.META))
    else:  # a write killed before its commit: the old checkpoint is still whole
        os.rename(path, path + ".staging")
    with pytest.raises(wd.CheckpointError) as info:
        wd.read_checkpoint(workdir, "level_001")
    message = str(info.value)
    assert message.startswith("checkpoint level_001 ") and "\n" not in message
    expected = {"flip": "is damaged", "truncate": "is damaged", "no_meta": "is incomplete",
                "staging": "does not exist"}[damage]
    assert expected in message
    wd.clean_checkpoints(workdir)
    assert wd.checkpoint_names(workdir) == ([] if damage == "staging" else ["level_001"])


def test_a_replaced_checkpoint_is_never_missing(tmp_path):
    """Overwriting renames the old one aside first; a crash between the renames leaves it as
    ``.old``, which ``clean_checkpoints`` puts back."""
    workdir = str(tmp_path)
    wd.write_checkpoint(workdir, "progress_000", {"a": np.arange(3)}, {})
    wd.write_checkpoint(workdir, "progress_000", {"a": np.arange(4)}, {})
    assert wd.read_checkpoint(workdir, "progress_000")[0]["a"].shape == (4,)
    path = wd.checkpoint_path(workdir, "progress_000")
    os.rename(path, path + ".old")
    wd.clean_checkpoints(workdir)
    assert wd.read_checkpoint(workdir, "progress_000")[0]["a"].shape == (4,)


def test_identity_ignores_runtime_only():
    config = {"seed": 0, "train": {"learning_rate": 0.1}, "runtime": {"devices": 0}}
    same = {**config, "runtime": {"devices": 2, "checkpoint_minutes": 0}}
    other = {**config, "train": {"learning_rate": 0.2}}
    assert wd.identity(config) == wd.identity(same) != wd.identity(other)


def test_expected_runs_and_variants():
    config = {"trials": 2, "prune": {"levels": 1}, "controls": {"reinit": True, "random_prune": False}}
    assert wd.variants(config) == ("ticket", "reinit")
    assert wd.expected_runs(config) == [(0, "ticket", 0), (0, "ticket", 1), (1, "ticket", 0),
                                        (1, "ticket", 1), (1, "reinit", 0), (1, "reinit", 1)]
    assert report.expected_runs(config) == wd.expected_runs(config)


def test_the_report_tells_skipped_from_diverged(tmp_path):
    workdir = str(tmp_path)
    config = {"trials": 2, "prune": {"levels": 2}, "controls": {"reinit": False,
                                                                   "random_prune": False},
              "model": {"name": "lenet300_100"}, "dataset": {"name": "mnist"}}
    ok = dict(status="ok", density=1.0, test_accuracy_at_early_stop=0.9, final_test_accuracy=0.9,
              early_stop_iteration=100, eval_iterations=[100], test_accuracy=[0.9])
    records = [_record(0, 0, **ok), _record(1, 0, **ok),
               _record(0, 1, **{**ok, "density": 0.8}),
               _record(1, 1, status="diverged", density=0.8, failure="non-finite training loss"),
               _record(0, 2, **{**ok, "density": 0.64}),
               _record(1, 2, status="skipped", density=0.64,
                       failure="not trained: the trial's ticket diverged at level 1")]
    with open(os.path.join(workdir, wd.CONFIG), "w") as f:
        json.dump(config, f)
    _write_lines(workdir, [json.dumps(r) + "\n" for r in records])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md = open(report.write_report(workdir, plots=False), encoding="utf-8").read()
    assert "(1 diverged, 1 skipped)" in md
    assert "(n=1, 1 diverged)" in md and "(n=1, 1 skipped)" in md
    diverged = md.split("## Diverged runs\n\n")[1].split("\n\n")[0].splitlines()
    assert len(diverged) == 3 and "| 1 | ticket | 1 |" in diverged[2]  # header, rule, one run
    assert "## Skipped runs" in md and "- trial 1: level 2 (1 run)" in md
    rows = {(r.level, r.variant): r for r in report.summarize(records)}
    assert (rows[(1, "ticket")].n_diverged, rows[(1, "ticket")].n_skipped) == (1, 0)
    assert (rows[(2, "ticket")].n_diverged, rows[(2, "ticket")].n_skipped) == (0, 1)
