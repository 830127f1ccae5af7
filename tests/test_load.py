"""A finished experiment loaded back (``lottery.load_experiment``): θ₀ is the seeded init, the
masks shrink level by level and match the recorded densities, and m ⊙ θ₀ trained again gives the
saved level bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from helpers import TINY, strip_timing, tiny_no_controls
from lth_jax import lottery, masks, tickets

LEVELS = TINY["prune.levels"]


def test_reference_run_is_complete(tiny_reference):
    workdir, records, _ = tiny_reference
    assert len(records) == 2 * (1 + LEVELS)
    assert all(r["status"] == "ok" for r in records)
    assert strip_timing(lottery.read_records(workdir)) == strip_timing(records)


def test_load_experiment_gives_theta0_masks_and_trained_params(tiny_reference, tiny_exp):
    workdir, records, _ = tiny_reference
    saved = lottery.load_experiment(workdir)
    assert saved["config"] == lottery.config_to_json(tiny_no_controls())
    assert strip_timing(saved["records"]) == strip_timing(records)
    trials = TINY["trials"]
    theta0 = saved["theta0"]
    # θ0 is the seeded init of each trial, unchanged by training
    fresh = jax.jit(jax.vmap(tiny_exp.init_variables))(
        jnp.stack([lottery.trial_key(0, t, lottery.INIT) for t in range(trials)]))
    for x, y in zip(jax.tree.leaves(fresh), jax.tree.leaves(theta0), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y)
    shapes = jax.tree.map(lambda x: (trials,) + x.shape,
                          jax.eval_shape(tiny_exp.init_variables, jax.random.key(0))["params"])
    assert sorted(saved["levels"]) == list(range(LEVELS + 1))
    for level, state in saved["levels"].items():
        for name in ("mask", "trained_params"):
            assert jax.tree.map(np.shape, state[name]) == shapes
        assert all(m.dtype == np.bool_ for m in jax.tree.leaves(state["mask"]))
        for p, m in zip(jax.tree.leaves(state["trained_params"]), jax.tree.leaves(state["mask"])):
            assert np.all(p[~m] == 0.0)
        if level:
            previous = saved["levels"][level - 1]["mask"]
            assert masks.is_subset(state["mask"], previous)
            assert not masks.is_subset(previous, state["mask"])
        kernels = [m for m, k in zip(jax.tree.leaves(state["mask"]),
                                     jax.tree.leaves(tiny_exp.prunable))
                   if k]
        density = [r["density"] for r in records if r["level"] == level and r["variant"] == "ticket"]
        for t in range(trials):
            alive = sum(int(m[t].sum()) for m in kernels)
            assert alive / sum(m[t].size for m in kernels) == density[t]


def test_rewinding_theta0_with_a_level_mask_reproduces_that_level(tiny_reference, tiny_exp):
    """m_L ⊙ θ0 (tickets.rewind) is the level's starting point: training it again gives the saved
    trained ticket and the recorded curves, bit for bit."""
    workdir, records, _ = tiny_reference
    saved = lottery.load_experiment(workdir)
    level = LEVELS
    mask = saved["levels"][level]["mask"]
    start = jax.vmap(tickets.rewind)(saved["theta0"]["params"], mask)
    for s, m, t0 in zip(jax.tree.leaves(start), jax.tree.leaves(mask),
                        jax.tree.leaves(saved["theta0"]["params"])):
        np.testing.assert_array_equal(np.asarray(s), np.where(m, t0, 0))
    trials = TINY["trials"]
    keys = lambda purpose: jnp.stack([lottery.trial_key(0, t, purpose) for t in range(trials)])
    result = lottery.Runner(tiny_exp)(start, saved["theta0"]["batch_stats"], mask,
                                 keys(lottery.DATA), keys(lottery.NOISE), start=0, capture=-1)
    trained = saved["levels"][level]["trained_params"]
    for x, y in zip(jax.tree.leaves(result.params), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(x, y)
    tickets_at_level = [r for r in records if r["level"] == level and r["variant"] == "ticket"]
    for t, r in enumerate(tickets_at_level):
        assert r["val_loss"] == [float(v) for v in np.asarray(result.val_loss[t], np.float64)]
