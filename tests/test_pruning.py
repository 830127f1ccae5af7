"""The pure pruning core (masks, pruning, tickets) against straightforward numpy references."""

import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import assert_tree_equal
from lth_jax import masks, pruning, tickets

SHAPES = {"Dense_0": {"kernel": (7, 5), "bias": (5,)},
          "Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
          "Dense_1": {"kernel": (5, 3), "bias": (3,)}}


def make_params(seed, shapes=SHAPES, ties=False):
    return helpers.make_params(seed, shapes, ties=ties)


def random_mask(seed, params, keep=0.7):
    return helpers.random_mask(seed, params, keep)


def ref_k(rate, alive):
    return int(np.round(np.float32(rate) * np.float32(alive)))


def ref_remove_lowest(scores, alive, k):
    """Numpy reference: remove the k alive entries with the smallest score, ties by index."""
    alive = alive.copy()
    idx = np.flatnonzero(alive)
    order = idx[np.argsort(scores[idx], kind="stable")]
    alive[order[:k]] = False
    return alive


def ref_layerwise(params, mask, rates):
    def one(p, m, r):
        flat_m = np.asarray(m).reshape(-1)
        k = ref_k(r, flat_m.sum()) if r > 0 else 0
        return ref_remove_lowest(np.abs(np.asarray(p)).reshape(-1), flat_m, k).reshape(m.shape)
    return jax.tree.map(one, params, mask, rates)


def ref_global(params, mask, rate, prunable):
    p_leaves, m_leaves = jax.tree.leaves(params), jax.tree.leaves(mask)
    sel = [i for i, s in enumerate(jax.tree.leaves(prunable)) if s]
    scores = np.concatenate([np.abs(np.asarray(p_leaves[i])).reshape(-1) for i in sel])
    alive = np.concatenate([np.asarray(m_leaves[i]).reshape(-1) for i in sel])
    kept = ref_remove_lowest(scores, alive, ref_k(rate, alive.sum()))
    out, off = [np.asarray(m) for m in m_leaves], 0
    for i in sel:
        n = out[i].size
        out[i] = kept[off:off + n].reshape(out[i].shape)
        off += n
    return jax.tree.unflatten(jax.tree.structure(mask), out)


def alive_count(m):
    return int(sum(np.sum(np.asarray(x)) for x in jax.tree.leaves(m)))


RULES = [(r".*Dense_1/kernel", 0.1), (r".*Conv.*kernel", 0.15), (r".*kernel", 0.2)]


# ---------------------------------------------------------------- masks

def test_ones_like_apply_density():
    params = make_params(0)
    mask = masks.ones_like(params)
    assert all(m.dtype == jnp.bool_ and m.all() for m in jax.tree.leaves(mask))
    mask["Dense_0"]["kernel"] = mask["Dense_0"]["kernel"].at[0, :].set(False)
    applied = masks.apply(params, mask)
    np.testing.assert_array_equal(applied["Dense_0"]["kernel"][0], np.zeros(5))
    np.testing.assert_array_equal(applied["Dense_0"]["kernel"][1:], params["Dense_0"]["kernel"][1:])
    prunable = pruning.prunable(params)
    # leaves in sorted-key order: Conv_0/bias, Conv_0/kernel, Dense_0/bias, Dense_0/kernel, ...
    assert jax.tree.leaves(prunable) == [False, True, False, True, False, True]
    total = 7 * 5 + 3 * 3 * 2 * 4 + 5 * 3
    assert float(masks.density(mask, prunable)) == pytest.approx((total - 5) / total, abs=1e-7)
    assert masks.layer_density(mask, prunable) == {
        "Conv_0/kernel": 1.0, "Dense_0/kernel": pytest.approx(30 / 35), "Dense_1/kernel": 1.0}
    assert "total" in masks.summary(mask, prunable)


def test_apply_zeroes_nonfinite_pruned_weights():
    params = {"w": jnp.array([jnp.nan, jnp.inf, 1.0])}
    out = masks.apply(params, {"w": jnp.array([False, False, True])})
    np.testing.assert_array_equal(out["w"], [0.0, 0.0, 1.0])


def test_mask_mismatch_errors_name_the_path():
    params = make_params(0)
    bad_shape = masks.ones_like(params)
    bad_shape["Dense_1"]["kernel"] = jnp.ones((3, 5), bool)
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        masks.apply(params, bad_shape)
    missing = masks.ones_like(params)
    del missing["Conv_0"]
    with pytest.raises(ValueError, match="Conv_0/bias"):
        pruning.layerwise_magnitude(params, missing, pruning.rates_by_rule(params, RULES))
    not_bool = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), params)
    with pytest.raises(TypeError, match="Conv_0/bias"):
        masks.apply(params, not_bool)
    with pytest.raises(TypeError):
        pruning.random(jax.random.key(0), not_bool, pruning.rates_by_rule(params, RULES))


def test_overlap_and_subset():
    a = {"w": jnp.array([True, True, False, True])}
    b = {"w": jnp.array([True, False, False, True])}
    assert float(masks.overlap(a, b)) == pytest.approx(2 / 3)
    assert masks.is_subset(b, a) and not masks.is_subset(a, b)


# ---------------------------------------------------------------- rates

def test_rates_by_rule_first_match_wins_unmatched_zero():
    params = make_params(0)
    rates = pruning.rates_by_rule(params, RULES)
    assert rates == {"Dense_0": {"kernel": 0.2, "bias": 0.0}, "Conv_0": {"kernel": 0.15, "bias": 0.0},
                     "Dense_1": {"kernel": 0.1, "bias": 0.0}}
    # full match: a rule for "Dense_1" alone does not match "Dense_1/kernel", and says so
    with pytest.raises(ValueError, match=re.escape("'.*Dense_1.*'")):
        pruning.rates_by_rule(params, [("Dense_1", 0.5)])
    # nested under a "params" collection the paths get a prefix; ".*" rules still match
    assert pruning.rates_by_rule({"params": params}, RULES)["params"]["Dense_1"]["kernel"] == 0.1


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_out_of_range_names_rule(rate):
    with pytest.raises(ValueError, match=re.escape("'.*kernel'")):
        pruning.rates_by_rule(make_params(0), [(".*kernel", rate)])


def test_bad_rule_shape_and_regex():
    with pytest.raises(ValueError, match="rule #0"):
        pruning.rates_by_rule(make_params(0), [(".*kernel",)])
    with pytest.raises(ValueError, match="bad regex"):
        pruning.rates_by_rule(make_params(0), [("(kernel", 0.2)])


def test_rate_out_of_range_names_leaf():
    params = make_params(0)
    rates = pruning.rates_by_rule(params, RULES)
    rates["Dense_0"]["kernel"] = 1.2
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        pruning.layerwise_magnitude(params, masks.ones_like(params), rates)
    with pytest.raises(ValueError, match="global_magnitude"):
        pruning.global_magnitude(params, masks.ones_like(params), -0.5, pruning.prunable(params))


def test_per_round_rate():
    r = pruning.per_round_rate(0.9, 10)
    assert r == pytest.approx(1 - 0.1 ** 0.1)
    assert (1 - r) ** 10 == pytest.approx(0.1)
    assert pruning.per_round_rate(0.2, 1) == pytest.approx(0.2)
    assert pruning.compound_rate(0.2, 3) == pytest.approx(1 - 0.8 ** 3)
    with pytest.raises(ValueError):
        pruning.per_round_rate(0.5, 0)
    with pytest.raises(ValueError):
        pruning.per_round_rate(1.1, 3)


# ---------------------------------------------------------------- layerwise magnitude

@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(seed=st.integers(0, 10_000), ties=st.booleans(),
                  rate=st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.37, 1.0]), keep=st.floats(0.0, 1.0))
def test_layerwise_matches_reference(seed, ties, rate, keep):
    params = make_params(seed, ties=ties)
    mask = random_mask(seed + 1, params, keep)
    rates = pruning.rates_by_rule(params, [(r".*Dense_1/kernel", rate / 2), (r".*kernel", rate)])
    got = pruning.layerwise_magnitude(params, mask, rates)
    assert_tree_equal(got, ref_layerwise(params, mask, rates))
    assert masks.is_subset(got, mask)
    for m_new, m_old, r in zip(jax.tree.leaves(got), jax.tree.leaves(mask), jax.tree.leaves(rates)):
        alive = int(np.sum(m_old))
        assert alive - int(np.sum(m_new)) == (ref_k(r, alive) if r > 0 else 0)


def test_layerwise_exact_counts_and_untouched_leaves():
    params = make_params(3)
    mask = masks.ones_like(params)
    rates = pruning.rates_by_rule(params, RULES)
    new = pruning.layerwise_magnitude(params, mask, rates)
    assert int(new["Dense_0"]["kernel"].sum()) == 35 - round(0.2 * 35)  # 28
    assert int(new["Conv_0"]["kernel"].sum()) == 72 - round(0.15 * 72)  # 61 (10.8 -> 11)
    assert int(new["Dense_1"]["kernel"].sum()) == 15 - 2  # round(1.5) = 2, half to even
    assert new["Dense_0"]["bias"].all() and new["Conv_0"]["bias"].all()
    # the removed ones are the smallest |w| of the leaf
    w = np.abs(np.asarray(params["Dense_0"]["kernel"]))
    removed = ~np.asarray(new["Dense_0"]["kernel"])
    assert w[removed].max() <= w[~removed].min()


def test_ties_broken_by_position():
    params = {"k": jnp.array([[1.0, -1.0, 1.0], [2.0, 1.0, -2.0]])}
    mask = pruning.layerwise_magnitude(params, masks.ones_like(params), {"k": 0.5})
    np.testing.assert_array_equal(mask["k"], [[False, False, False], [True, True, True]])
    mask = pruning.layerwise_magnitude(params, masks.ones_like(params), {"k": 1 / 3})
    np.testing.assert_array_equal(mask["k"], [[False, False, True], [True, True, True]])


def test_iterative_ladder_only_shrinks():
    params = make_params(5)
    mask = masks.ones_like(params)
    rates = pruning.rates_by_rule(params, RULES)
    alive = 35
    for _ in range(12):
        params = jax.tree.map(lambda p: p + 0.3 * np.random.default_rng(0).normal(size=p.shape), params)
        new = pruning.layerwise_magnitude(params, mask, rates)
        assert masks.is_subset(new, mask)
        alive -= ref_k(0.2, alive)
        assert int(new["Dense_0"]["kernel"].sum()) == alive
        mask = new


def test_jit_and_vmap_over_trials():
    trials = [make_params(s) for s in range(3)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *trials)
    mask_list = [random_mask(10 + s, trials[s]) for s in range(3)]
    stacked_mask = jax.tree.map(lambda *x: jnp.stack(x), *mask_list)
    rates = pruning.rates_by_rule(trials[0], RULES)
    prunable = pruning.prunable(trials[0])
    lw = jax.jit(jax.vmap(lambda p, m: pruning.layerwise_magnitude(p, m, rates)))(stacked, stacked_mask)
    gl = jax.jit(jax.vmap(lambda p, m: pruning.global_magnitude(p, m, 0.3, prunable)))(stacked, stacked_mask)
    keys = jax.random.split(jax.random.key(0), 3)
    rnd = jax.jit(jax.vmap(lambda k, m: pruning.random(k, m, rates)))(keys, stacked_mask)
    for t in range(3):
        pick = lambda tree: jax.tree.map(lambda x: x[t], tree)
        assert_tree_equal(pick(lw), ref_layerwise(trials[t], mask_list[t], rates))
        assert_tree_equal(pick(gl), ref_global(trials[t], mask_list[t], 0.3, prunable))
        assert_tree_equal(pick(rnd), pruning.random(keys[t], mask_list[t], rates))


# ---------------------------------------------------------------- global magnitude

@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(seed=st.integers(0, 10_000), ties=st.booleans(),
                  rate=st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]), keep=st.floats(0.0, 1.0))
def test_global_matches_reference(seed, ties, rate, keep):
    params = make_params(seed, ties=ties)
    mask = random_mask(seed + 7, params, keep)
    prunable = pruning.prunable(params)
    got = pruning.global_magnitude(params, mask, rate, prunable)
    assert_tree_equal(got, ref_global(params, mask, rate, prunable))
    alive_before = sum(int(np.sum(m)) for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)) if s)
    assert alive_count(mask) - alive_count(got) == ref_k(rate, alive_before)


def test_global_one_threshold_and_exempt_leaves():
    params = make_params(11)
    exempt = pruning.rates_by_rule(params, [(r".*Dense_1/kernel", 0.0), (r".*kernel", 0.2)])
    new = pruning.global_magnitude(params, masks.ones_like(params), 0.5, exempt)
    assert new["Dense_1"]["kernel"].all()
    kept, removed = [], []
    for name in ("Dense_0", "Conv_0"):
        w = np.abs(np.asarray(params[name]["kernel"])).reshape(-1)
        m = np.asarray(new[name]["kernel"]).reshape(-1)
        kept.append(w[m])
        removed.append(w[~m])
    assert np.concatenate(removed).max() <= np.concatenate(kept).min()
    assert sum(len(r) for r in removed) == round(0.5 * (35 + 72))


# ---------------------------------------------------------------- random

def test_random_same_counts_as_layerwise_and_keyed():
    params = make_params(2)
    mask = random_mask(3, params, 0.8)
    rates = pruning.rates_by_rule(params, RULES)
    lw = pruning.layerwise_magnitude(params, mask, rates)
    r1 = pruning.random(jax.random.key(1), mask, rates)
    r2 = pruning.random(jax.random.key(1), mask, rates)
    r3 = pruning.random(jax.random.key(2), mask, rates)
    assert_tree_equal(r1, r2)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(r1), jax.tree.leaves(r3)))
    for a, b in zip(jax.tree.leaves(r1), jax.tree.leaves(lw)):
        assert int(np.sum(a)) == int(np.sum(b))
    assert masks.is_subset(r1, mask)


def test_random_like_keeps_per_leaf_counts():
    params = make_params(4)
    mask = pruning.global_magnitude(params, masks.ones_like(params), 0.6, pruning.prunable(params))
    rnd = pruning.random_like(jax.random.key(0), mask)
    for a, b in zip(jax.tree.leaves(rnd), jax.tree.leaves(mask)):
        assert int(np.sum(a)) == int(np.sum(b))
    assert rnd["Dense_0"]["bias"].all()
    assert not np.array_equal(rnd["Dense_0"]["kernel"], mask["Dense_0"]["kernel"])
    assert_tree_equal(rnd, pruning.random_like(jax.random.key(0), mask))


# ---------------------------------------------------------------- tickets

def test_rewind_is_mask_times_theta_and_pure():
    theta0 = make_params(0)
    snapshot = jax.tree.map(np.array, theta0)
    mask = random_mask(1, theta0)
    rewound = jax.jit(tickets.rewind)(theta0, mask)
    for r, t, m in zip(jax.tree.leaves(rewound), jax.tree.leaves(theta0), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(r, np.where(m, t, 0.0))
    assert_tree_equal(theta0, snapshot)


def test_reinit_fresh_weights_masked():
    mask = random_mask(1, make_params(0))

    def init_fn(key):
        keys = jax.random.split(key, len(jax.tree.leaves(mask)))
        return jax.tree.unflatten(jax.tree.structure(mask),
                                  [jax.random.normal(k, m.shape) for k, m in zip(keys, jax.tree.leaves(mask))])

    fresh = init_fn(jax.random.key(5))
    out = tickets.reinit(init_fn, jax.random.key(5), mask)
    for o, f, m in zip(jax.tree.leaves(out), jax.tree.leaves(fresh), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(o, np.where(m, f, 0.0))
    other = tickets.reinit(init_fn, jax.random.key(6), mask)
    assert not np.array_equal(other["Dense_0"]["kernel"], out["Dense_0"]["kernel"])
