"""The instability experiment mode: records per (trial, warmup, level, k), resume, report."""

import json
import os

import numpy as np

from lth_jax import config as config_lib
from lth_jax import instability_experiment


def _config(warmup=0):
    c = config_lib.base_config()
    c.dataset.name = c.dataset.source = "synthetic"
    c.dataset.image_shape = (6, 6, 1)
    c.dataset.num_classes = 4
    c.dataset.train_size, c.dataset.test_size, c.dataset.validation_size = 300, 80, 60
    c.train.iterations, c.train.eval_every, c.train.batch_size = 60, 20, 16
    c.train.eval_batch_size = 80
    c.train.warmup_iterations = warmup
    c.prune.levels = 0
    c.trials = 1
    return c


def test_records_resume_and_report(tmp_path):
    lines = []
    records = instability_experiment.run(_config(), str(tmp_path), [0, 20], points=3,
                                         log=lines.append)
    assert [(r["trial"], r["warmup"], r["level"], r["k"]) for r in records] == [
        (0, 0, 0, 0), (0, 0, 0, 20)]
    for r in records:
        assert r["density"] == 1.0 and len(r["error"]) == 3
        np.testing.assert_allclose(r["barrier"], max(r["error"]) - (r["error"][0] + r["error"][-1]) / 2,
                                   atol=1e-6)
    assert os.path.exists(tmp_path / "instability.png") and os.path.exists(tmp_path / "instability.md")
    # Resume: nothing left to compute, the same records.
    again = instability_experiment.run(_config(), str(tmp_path), [0, 20], points=3, log=lines.append)
    assert again == records
    with open(tmp_path / "instability.jsonl") as f:
        assert len(f.readlines()) == 2


def test_a_config_with_warmup_is_also_run_without(tmp_path):
    records = instability_experiment.run(_config(warmup=20), str(tmp_path), [20], points=3,
                                         log=lambda _: None)
    assert sorted(r["warmup"] for r in records) == [0, 20]
    table = (tmp_path / "instability.md").read_text()
    assert "| 20 | 100.0 |" in table and "| 0 | 100.0 |" in table


def test_another_experiment_in_the_workdir_is_refused(tmp_path):
    instability_experiment.run(_config(), str(tmp_path), [0], points=3, log=lambda _: None)
    other = _config()
    other.train.learning_rate = 0.1
    try:
        instability_experiment.run(other, str(tmp_path), [0], points=3, log=lambda _: None)
    except ValueError as e:
        assert "another instability experiment" in str(e)
    else:
        raise AssertionError("a different config was accepted")
    assert json.loads((tmp_path / "instability_config.json").read_text())["points"] == 3
