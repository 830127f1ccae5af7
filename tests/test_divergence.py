"""Divergence: a run whose training loss becomes non-finite, or whose period mean blows up, is
recorded as ``diverged`` (with level, variant, trial and iteration) and the trial's later levels as
``skipped``; no NaN or inf ever reaches results.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from helpers import TINY, quiet, strip_timing, tiny_no_controls
from lth_jax import lottery
from lth_jax import train as train_lib
from lth_jax import workdir as workdir_lib

LEVELS = TINY["prune.levels"]


def _raise_on_constant(token):
    raise ValueError(f"results.jsonl holds the non-JSON number {token}")


def test_divergence_is_recorded_and_later_levels_are_skipped(tmp_path):
    workdir = str(tmp_path / "run")
    logs = []
    # (the reference's shapes: only the training program is compiled anew)
    cfg = tiny_no_controls(train__optimizer="sgd", train__learning_rate=1e30)
    records = lottery.run(cfg, workdir, log=logs.append)
    with open(os.path.join(workdir, lottery.RESULTS)) as f:
        text = f.read()
    on_disk = [json.loads(line, parse_constant=_raise_on_constant) for line in text.splitlines()]
    assert strip_timing(on_disk) == strip_timing(records)
    assert [(r["level"], r["trial"]) for r in records] == [(lv, t) for lv in range(LEVELS + 1)
                                                          for t in range(TINY["trials"])]

    accuracy_fields = ("early_stop_iteration", "val_loss_at_early_stop", "val_accuracy_at_early_stop",
                       "test_accuracy_at_early_stop", "final_test_accuracy")
    for r in records:
        assert all(r[field] is None for field in accuracy_fields), r
        for curve in ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
            assert all(v is None or math.isfinite(v) for v in r[curve])
        if r["level"] == 0:
            assert r["status"] == "diverged"
            failure = r["failure"]
            assert "non-finite training loss at iteration" in failure
            iteration = int(failure.split("iteration ")[1].split()[0])
            assert 0 <= iteration < TINY["train.iterations"]
            assert f"level 0, variant ticket, trial {r['trial']}" in failure
        else:  # the trial's ticket diverged at level 0: every later level is skipped, untrained
            assert r["status"] == "skipped", r
            assert "not trained: the trial's ticket diverged at level 0" in r["failure"]
            assert r["runs_in_program"] == 0 and r["train_seconds"] == 0.0 and r["val_loss"] == []
    assert workdir_lib.read_checkpoint(workdir, "level_001")[0].get("runs") is None  # none trained
    assert any(line.startswith("WARNING: non-finite training loss") for line in logs)
    assert any("no ticket finished" in line for line in logs)

    # resumed at level 2, the skipped records are the same
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", f"level_{LEVELS:03d}"))
    assert strip_timing(lottery.run(cfg, resumed, log=quiet)) == strip_timing(records)


def test_a_finite_blow_up_is_divergence(tmp_path):
    """Adam at learning rate 1e6: the losses stay finite (~1e6 and more) at chance accuracy. The
    rule (train.diverged): a period's mean training loss above 10 x max(initial loss, ln classes)."""
    cfg = tiny_no_controls(train__learning_rate=1e6, prune__levels=1)
    records = lottery.run(cfg, str(tmp_path / "run"), log=quiet)
    for r in records:
        if r["level"] == 0:
            assert r["status"] == "diverged", r
            assert "above 10 x max(initial loss, ln classes)" in r["failure"], r["failure"]
            assert all(v is None or v < 1e38 for v in r["train_loss"])
        else:
            assert r["status"] == "skipped"


def test_no_run_of_the_recorded_lenet_experiment_trips_the_divergence_rule():
    """experiments/lenet_fashion_mnist: 138 runs of 50K iterations (their records have no initial
    loss: the bound is then 10 x ln 10 = 23; the largest period mean there is 1.85)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments", "lenet_fashion_mnist", "results.jsonl")
    with open(path) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 138
    for r in records:
        loss = np.array(r["train_loss"], np.float64)
        assert np.isfinite(loss).all()
        assert train_lib.diverged(loss, r.get("initial_train_loss") or np.nan, 10) == -1
    assert max(max(r["train_loss"]) for r in records) < 0.1 * 10 * math.log(10)


@pytest.mark.parametrize("nonfinite_step", [0, -1])
def test_non_finite_numbers_never_reach_the_results(tiny_exp, nonfinite_step):
    """make_record on a RunResult whose evaluations are all NaN/inf, with a non-finite training
    loss (nonfinite_step 0) or without one (as when the loss blows up at the last step of a run
    with one evaluation period, after its loss was measured): the record is not 'ok', names level, variant and trial, has None
    where numbers are missing and serialises as strict JSON."""
    shapes = jax.eval_shape(tiny_exp.init_variables, jax.random.key(0))["params"]
    mask = jax.tree.map(lambda s: np.ones(s.shape, bool), shapes)
    periods = TINY["train.iterations"] // TINY["train.eval_every"]
    nan = np.full((1, periods), np.nan, np.float32)
    result = train_lib.RunResult(
        params=None, batch_stats=None, train_loss=np.ones((1, periods), np.float32), val_loss=nan,
        val_accuracy=nan, test_loss=np.full((1, periods), np.inf, np.float32), test_accuracy=nan,
        best_period=np.array([-1]), best_test_loss=np.array([np.nan]),
        best_test_accuracy=np.array([np.nan]), final_test_loss=np.array([np.inf]),
        final_test_accuracy=np.array([np.nan]), nonfinite_step=np.array([nonfinite_step]),
        captured_params=None, captured_batch_stats=None, initial_loss=np.array([2.3]))
    record = lottery.make_record(tiny_exp, result, 0, trial=1, level=2, variant="reinit", mask=mask,
                                 start=0, seconds=1.0, runs=1)
    assert record["status"] == "diverged"
    assert "level 2, variant reinit, trial 1" in record["failure"]
    assert record["test_accuracy_at_early_stop"] is None and record["final_test_accuracy"] is None
    json.loads(json.dumps(record), parse_constant=_raise_on_constant)
