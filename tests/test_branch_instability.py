"""The instability branch: records per (trial, warmup, level, k), θ_k from the trunk's dense
trajectory, resume without recomputation, the report."""

import os

import jax
import numpy as np
import pytest

from helpers import fusion_emitters
from lth_jax import branches, lottery, workdir
from lth_jax import config as config_lib
from lth_jax.branches import base
from lth_jax.branches import instability


def _config(warmup=0, levels=0):
    c = config_lib.base_config()
    c.dataset.name = c.dataset.source = "synthetic"
    c.dataset.image_shape = (6, 6, 1)
    c.dataset.num_classes = 4
    c.dataset.train_size, c.dataset.test_size, c.dataset.validation_size = 300, 80, 60
    c.train.iterations, c.train.eval_every, c.train.batch_size = 60, 20, 16
    c.train.eval_batch_size = 80
    c.train.warmup_iterations = warmup
    c.prune.levels = levels
    c.controls.reinit = c.controls.random_prune = False
    c.trials = 1
    return c


def _branch(**fields):
    c = branches.default_config(instability)
    c.points = 3
    for k, v in fields.items():
        c[k] = v
    return c


def test_records_resume_and_report(tmp_path):
    lines = []
    folder = base.run(_branch(ks=(0, 20)), _config(), str(tmp_path), log=lines.append)
    records = workdir.read_records(folder, key=instability.RECORD_KEY)
    assert [(r["trial"], r["warmup"], r["level"], r["k"]) for r in records] == [
        (0, 0, 0, 0), (0, 0, 0, 20)]
    for r in records:
        assert r["density"] == 1.0 and len(r["error"]) == 3
        np.testing.assert_allclose(r["barrier"], max(r["error"]) - (r["error"][0] + r["error"][-1]) / 2,
                                   atol=1e-6)
    paths = base.write_report(folder)
    assert sorted(map(os.path.basename, paths)) == ["instability.md", "instability.png"]
    # Its live curves: a TensorBoard run per copy of each batch, in the branch's folder.
    from lth_jax import tensorboard
    runs = tensorboard.read_scalars(os.path.join(folder, "tensorboard"))
    assert sorted(runs) == [f"warmup_0/trial_0/{k}" for k in (
        "k_0/level_00/copy_a", "k_0/level_00/copy_b", "k_20/level_00/copy_a",
        "k_20/level_00/copy_b", "theta_k")]
    assert [s for s, _ in runs["warmup_0/trial_0/k_20/level_00/copy_b"]["loss/validation"]] == [
        40, 60]
    assert [s for s, _ in runs["warmup_0/trial_0/theta_k"]["loss/validation"]] == [20]
    assert "95% confidence interval" in open(paths[0]).read()
    # Resume: nothing left to compute, the same records.
    again = base.run(_branch(ks=(0, 20)), _config(), str(tmp_path), log=lines.append)
    assert again == folder
    assert workdir.read_records(folder, key=instability.RECORD_KEY) == records


def test_theta_k_is_the_trunks_dense_trajectory(tmp_path):
    """θ_k equals the trunk's level-0 run captured at k (a trunk that rewinds to k keeps it)."""
    with fusion_emitters():  # programs of another loop shape compared bit for bit
        config = _config()
        config.prune.rewind_iteration = 40
        lottery.run(config, str(tmp_path), log=lambda _: None)
        folder = base.run(_branch(ks=(40,)), config, str(tmp_path), log=lambda _: None)
    kept = workdir.read_checkpoint(folder, "theta_k_w0_t0")[0]["40"]
    trunk = lottery.load_experiment(str(tmp_path))["theta_rewind"]
    for a, b in zip(jax.tree.leaves(kept["params"]),
                    jax.tree.leaves(jax.tree.map(lambda x: x[0], trunk["params"])), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_trunk_with_warmup_is_also_run_without_and_tickets_are_tested(tmp_path):
    folder = base.run(_branch(ks=(20,), levels=(0, 1)), _config(warmup=20, levels=1),
                      str(tmp_path), log=lambda _: None)
    records = workdir.read_records(folder, key=instability.RECORD_KEY)
    assert sorted((r["warmup"], r["level"]) for r in records) == [(0, 0), (0, 1), (20, 0), (20, 1)]
    assert {r["density"] for r in records if r["level"] == 1} == {
        lottery.load_experiment(str(tmp_path))["records"][1]["density"]}
    table = open(base.write_report(folder)[0]).read()
    assert "| 20 | 100.0 |" in table and "| 0 | 100.0 |" in table


def test_defaults_scale_with_the_trunk():
    exp = lottery.setup(_config(levels=3))
    c = _branch()
    assert instability.ks_of(c, exp) == [0, 20]  # fractions of 60 iterations, multiples of 20
    assert instability.levels_of(c, exp) == [0, 3]


@pytest.mark.parametrize("field, value, match", [
    ("ks", (), "k_fractions"), ("ks", (30,), "branch.ks"), ("ks", (60,), "branch.ks"),
    ("k_fractions", (1.5,), "branch.k_fractions"), ("points", 1, "branch.points"),
    ("levels", (-1,), "branch.levels")])
def test_bad_fields_are_refused_before_anything_is_written(tmp_path, field, value, match):
    fields = {field: value}
    if field == "ks" and not value:
        fields["k_fractions"] = ()
    with pytest.raises(config_lib.ConfigError, match=match):
        base.run(_branch(**fields), _config(), str(tmp_path), log=lambda _: None)
    assert os.listdir(tmp_path) == []
