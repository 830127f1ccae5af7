"""The seed decides everything, in this process: the same seed gives identical records, θ₀ and
masks; another seed changes θ₀, the masks and the data order (not the biases, which start at 0).
(Bit for bit across processes, devices and compile settings: tests/test_determinism.py.)
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from helpers import TINY, quiet, strip_timing, tiny_no_controls
from lth_jax import data as data_lib
from lth_jax import lottery


@pytest.fixture(scope="module")
def level0_runs(tmp_path_factory):
    """Level 0 of the reference experiment run again, with seed 0 and with seed 1."""
    runs = {}
    for seed in (0, 1):
        workdir = str(tmp_path_factory.mktemp(f"seed{seed}") / "run")
        cfg = tiny_no_controls(seed=seed, prune__levels=0)
        runs[seed] = (workdir, lottery.run(cfg, workdir, log=quiet))
    return runs


def test_same_seed_gives_identical_records_theta0_and_masks(tiny_reference, level0_runs):
    """Here in this process; the interrupted CLI (2 devices, another process) is checked against
    the same reference in the interruption test above."""
    ref_dir, ref_records, _ = tiny_reference
    workdir, records = level0_runs[0]
    # (prune.levels differs, and with it the experiment's identity)
    without_id = lambda rs: [{k: v for k, v in r.items() if k != "experiment"} for r in rs]
    assert without_id(strip_timing(records)) == without_id(
        strip_timing([r for r in ref_records if r["level"] == 0]))
    a, b = lottery.load_experiment(workdir), lottery.load_experiment(ref_dir)
    for part in (lambda s: s["theta0"], lambda s: s["theta_rewind"], lambda s: s["levels"][0]):
        for x, y in zip(jax.tree.leaves(part(a)), jax.tree.leaves(part(b)), strict=True):
            np.testing.assert_array_equal(x, y)


def next_masks(exp, saved):
    """The level-1 ticket masks from a saved level 0 (as lottery.run computes them)."""
    level0 = saved["levels"][0]
    return lottery.steps(exp).prune(level0["trained_params"], level0["mask"], 1)


def test_different_seed_changes_theta0_masks_and_data_order(tiny_reference, level0_runs, tiny_exp):
    (dir0, rec0), (dir1, rec1) = level0_runs[0], level0_runs[1]
    a, b = lottery.load_experiment(dir0), lottery.load_experiment(dir1)
    kernels = jax.tree.leaves(tiny_exp.prunable)  # biases start at 0 whatever the seed
    ref_masks = lottery.load_experiment(tiny_reference[0])["levels"][1]["mask"]
    theta0 = [jax.tree.leaves(s["theta0"]["params"]) for s in (a, b)]
    for x, y, kernel in zip(*theta0, kernels, strict=True):
        assert np.array_equal(x, y) != kernel
    masks1 = [jax.tree.leaves(next_masks(tiny_exp, s)) for s in (a, b)]
    for m0, m1, ref, kernel in zip(*masks1, jax.tree.leaves(ref_masks), kernels, strict=True):
        np.testing.assert_array_equal(m0, ref)  # (as the reference run pruned)
        assert np.array_equal(m0, m1) != kernel
    for r0, r1 in zip(rec0, rec1, strict=True):
        assert r0["val_loss"] != r1["val_loss"]
    # the data order itself: the first batches differ
    n, bs = 600, TINY["train.batch_size"]
    for trial in range(TINY["trials"]):
        first = [np.concatenate([np.asarray(data_lib.batch_indices(
            lottery.trial_key(seed, trial, lottery.DATA), t, n, bs)) for t in range(3)])
            for seed in (0, 1)]
        assert not np.array_equal(*first)
