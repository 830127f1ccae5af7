"""lth_jax.scores: masks at a target density from scores (SNIP, GraSP, SynFlow, magnitude) and the
early-bird detector. References are computed independently (NumPy float64, closed forms, explicit
Hessians) on tiny models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import helpers
from helpers import assert_tree_equal, stack
from lth_jax import masks, models, pruning, scores

SHAPES = {"Dense_0": {"kernel": (6, 5), "bias": (5,)},
          "Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
          "Dense_1": {"kernel": (5, 3), "bias": (3,)}}


def make_params(seed, shapes=SHAPES, quantize=None):
    return helpers.make_params(seed, shapes, quantize=quantize)


def random_mask(seed, params, keep=0.9, prunable=None):
    """Random on the prunable leaves (``pruning.prunable`` unless given), all-True elsewhere."""
    prunable = pruning.prunable(params) if prunable is None else prunable
    return helpers.random_mask(seed, params, keep, prunable)


def count_keep(density, total):
    """round(float32(d) · float32(total)), half to even: the counting rule, in NumPy."""
    return int(np.round(np.float32(density) * np.float32(total)))


def reference_keep(score_list, alive_list, keep):
    """NumPy reference: pool, keep the `keep` highest alive scores; among ties the earlier entry
    is removed first. Returns the new flat alive arrays."""
    s = np.concatenate([np.asarray(x, np.float64).ravel() for x in score_list])
    a = np.concatenate([np.asarray(x).ravel() for x in alive_list])
    idx = np.flatnonzero(a)
    remove = max(len(idx) - keep, 0)
    order = sorted(idx, key=lambda i: (s[i], i))  # lowest score first, earlier position first
    out = a.copy()
    out[order[:remove]] = False
    parts, off = [], 0
    for x in alive_list:
        parts.append(out[off:off + np.size(x)].reshape(np.shape(x)))
        off += np.size(x)
    return parts


def alive(tree):
    return int(sum(np.sum(np.asarray(m)) for m in jax.tree.leaves(tree)))


def kernel_alive(mask, prunable):
    return int(masks.count(mask, prunable)[0])


# ---------------------------------------------------------------- mask_from_scores

@pytest.mark.parametrize("density", [0.0, 0.036, 0.21, 0.5, 0.51, 0.8, 0.95, 1.0])
def test_global_keeps_exact_count_highest_scores(density):
    params = make_params(0)
    prunable = pruning.prunable(params)
    s = make_params(1, quantize=2)  # ties at the threshold
    mask = random_mask(2, params, keep=0.9)
    new = scores.mask_from_scores(s, mask, density, prunable, "global")

    total = sum(np.size(p) for p, u in zip(jax.tree.leaves(params), jax.tree.leaves(prunable)) if u)
    alive_before = kernel_alive(mask, prunable)
    assert kernel_alive(new, prunable) == min(alive_before, count_keep(density, total))
    assert masks.is_subset(new, mask)
    idx = [i for i, u in enumerate(jax.tree.leaves(prunable)) if u]
    expected = reference_keep([jax.tree.leaves(s)[i] for i in idx],
                              [jax.tree.leaves(mask)[i] for i in idx], count_keep(density, total))
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(np.asarray(jax.tree.leaves(new)[i]), expected[j])
    for m_old, m_new, u in zip(jax.tree.leaves(mask), jax.tree.leaves(new), jax.tree.leaves(prunable)):
        if not u:
            np.testing.assert_array_equal(np.asarray(m_old), np.asarray(m_new))


@pytest.mark.parametrize("per_leaf", [False, True])
def test_layerwise_keeps_exact_count_per_leaf(per_leaf):
    params = make_params(3)
    prunable = pruning.prunable(params)
    s = make_params(4, quantize=2)
    mask = random_mask(5, params, keep=0.95)
    if per_leaf:
        density = {"Dense_0": {"kernel": 0.21, "bias": 0.0},   # bias not prunable: untouched
                   "Conv_0": {"kernel": 0.5, "bias": 0.5},
                   "Dense_1": {"kernel": 0.8, "bias": 1.0}}
    else:
        density = 0.3
    new = scores.mask_from_scores(s, mask, density, prunable, "layerwise")
    dens = jax.tree.leaves(density) if per_leaf else [density] * len(jax.tree.leaves(mask))
    for m_old, m_new, sc, d, u in zip(jax.tree.leaves(mask), jax.tree.leaves(new), jax.tree.leaves(s),
                                      dens, jax.tree.leaves(prunable)):
        if not u:
            np.testing.assert_array_equal(np.asarray(m_old), np.asarray(m_new))
            continue
        keep = count_keep(d, np.size(m_old))
        assert int(np.sum(np.asarray(m_new))) == min(keep, int(np.sum(np.asarray(m_old))))
        (expected,) = reference_keep([sc], [m_old], keep)
        np.testing.assert_array_equal(np.asarray(m_new), expected)
    assert masks.is_subset(new, mask)


def test_counts_round_half_to_even():
    # 10 weights: 0.25·10 = 2.5 -> 2, 0.75·10 = 7.5 -> 8, 0.05·10 = 0.5 -> 0.
    p = {"kernel": jnp.arange(10, dtype=jnp.float32).reshape(2, 5)}
    prunable = {"kernel": True}
    m = masks.ones_like(p)
    for d, keep in [(0.25, 2), (0.75, 8), (0.05, 0), (0.35, 4)]:
        for allocation in scores.ALLOCATIONS:
            new = scores.mask_from_scores(p, m, d, prunable, allocation)
            assert alive(new) == keep, (d, allocation)
            # the highest scores survive: positions 10-keep .. 9
            np.testing.assert_array_equal(np.asarray(new["kernel"]).ravel(), np.arange(10) >= 10 - keep)


def test_ties_go_by_position_and_nothing_revives():
    p = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.ones((3, 2))}}
    prunable = pruning.prunable(p)
    m = masks.ones_like(p)
    new = scores.mask_from_scores(p, m, 0.5, prunable, "global")  # all tied: earlier removed first
    assert not np.asarray(new["a"]["kernel"]).any() and np.asarray(new["b"]["kernel"]).all()
    # A mask with fewer survivors than the target is returned as it is (masks only shrink).
    sparse = {"a": {"kernel": jnp.zeros((2, 3), bool)},
              "b": {"kernel": jnp.array([[True, False], [False, False], [False, True]])}}
    for allocation in scores.ALLOCATIONS:
        assert_tree_equal(scores.mask_from_scores(p, sparse, 0.9, prunable, allocation), sparse)


def test_magnitude_equals_pruning_core_counts_and_ties():
    params = make_params(6, quantize=1)  # heavy ties
    prunable = pruning.prunable(params)
    m = masks.ones_like(params)
    total = kernel_alive(m, prunable)
    # global: keep round(0.3·total) == total − round(0.7·total) for this total
    assert count_keep(0.3, total) == total - count_keep(0.7, total)
    assert_tree_equal(scores.magnitude(params, m, 0.3, prunable, "global"),
                      pruning.global_magnitude(params, m, 0.7, prunable))
    rates = pruning.rates_by_rule(params, [(r".*Conv.*kernel", 0.5), (r".*kernel", 0.2)])
    dens = scores.densities_from_rates(rates)
    for leaf, d, r, u in zip(jax.tree.leaves(params), jax.tree.leaves(dens), jax.tree.leaves(rates),
                             jax.tree.leaves(prunable)):
        if u:
            assert count_keep(d, leaf.size) == leaf.size - count_keep(r, leaf.size)
    assert_tree_equal(scores.magnitude(params, m, dens, prunable, "layerwise"),
                      pruning.layerwise_magnitude(params, m, rates))


def test_densities_like_reproduces_a_masks_layer_counts():
    # Another method at exactly a ticket's per-layer counts, including a 300x784-sized leaf.
    shapes = {"big": {"kernel": (784, 300)}, "small": {"kernel": (7, 3)}, "out": {"bias": (3,)}}
    p = make_params(19, shapes)
    prunable = pruning.prunable(p)
    for seed, keep in [(0, 0.036), (1, 0.51), (2, 0.8)]:
        ticket = random_mask(seed, p, keep=keep)
        dens = scores.densities_like(ticket)
        new = jax.jit(lambda s, d: scores.mask_from_scores(s, masks.ones_like(s), d, prunable,
                                                           "layerwise"))(make_params(seed + 50, shapes), dens)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ticket)):
            assert alive(a) == alive(b)


def test_densities_from_rates():
    params = make_params(0)
    rates = pruning.rates_by_rule(params, [(r".*Dense_1/kernel", 0.1), (r".*kernel", 0.2)])
    d = scores.densities_from_rates(rates, rounds=3)
    assert d["Dense_1"]["kernel"] == pytest.approx(0.9 ** 3)
    assert d["Dense_0"]["kernel"] == pytest.approx(0.8 ** 3)
    assert d["Dense_0"]["bias"] == 1.0


def test_bad_arguments():
    params = make_params(0)
    prunable = pruning.prunable(params)
    m = masks.ones_like(params)
    with pytest.raises(ValueError, match="allocation"):
        scores.mask_from_scores(params, m, 0.5, prunable, "per_layer")
    with pytest.raises(ValueError, match="outside"):
        scores.mask_from_scores(params, m, 1.5, prunable)
    with pytest.raises(ValueError, match="one scalar density"):
        scores.mask_from_scores(params, m, jax.tree.map(lambda _: 0.5, params), prunable, "global")
    with pytest.raises(ValueError, match="rounds"):
        scores.synflow(lambda p, x: x, params, m, 0.5, prunable, input_shape=(1,), rounds=0)
    with pytest.raises(ValueError, match="window"):
        scores.early_bird_update(scores.early_bird_init(m), m, prunable, window=0)


def test_jit_with_traced_density_and_prunable_and_vmap():
    params = make_params(7)
    prunable = pruning.prunable(params)
    s = make_params(8, quantize=2)
    mask = random_mask(9, params)
    dens = jax.tree.map(lambda u: 0.4 if u else 1.0, prunable)
    for allocation, d in [("global", 0.2), ("layerwise", 0.3), ("layerwise", dens)]:
        eager = scores.mask_from_scores(s, mask, d, prunable, allocation)
        fn = jax.jit(functools.partial(scores.mask_from_scores, allocation=allocation))
        traced_prunable = jax.tree.map(jnp.asarray, prunable)  # bool arrays: traced selection
        assert_tree_equal(fn(s, mask, d, traced_prunable), eager)
    # vmap over a leading trial axis of scores and masks
    trials = [(make_params(10 + t, quantize=2), random_mask(20 + t, params)) for t in range(3)]
    batched = jax.vmap(lambda sc, m: scores.mask_from_scores(sc, m, 0.25, prunable))(
        stack([t[0] for t in trials]), stack([t[1] for t in trials]))
    for t, (sc, m) in enumerate(trials):
        assert_tree_equal(jax.tree.map(lambda x: x[t], batched),
                          scores.mask_from_scores(sc, m, 0.25, prunable))


# ---------------------------------------------------------------- SNIP and GraSP

RNG = np.random.default_rng(42)
XB = RNG.normal(size=(2, 8, 5)).astype(np.float32)   # 2 batches of 8 examples, 5 features
YB = RNG.normal(size=(2, 8, 3)).astype(np.float32)


def linear_loss(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"]["kernel"] + p["w"]["bias"] - y) ** 2)


def linear_setup():
    p = {"w": {"kernel": jnp.asarray(RNG.normal(size=(5, 3)).astype(np.float32)),
               "bias": jnp.asarray(RNG.normal(size=(3,)).astype(np.float32))}}
    m = {"w": {"kernel": jnp.asarray(RNG.random((5, 3)) < 0.7), "bias": jnp.ones(3, bool)}}
    return p, m


def test_snip_equals_hand_computed_reference():
    p, m = linear_setup()
    w = np.asarray(p["w"]["kernel"], np.float64) * np.asarray(m["w"]["kernel"])
    b = np.asarray(p["w"]["bias"], np.float64)
    g = np.zeros_like(w)
    for x, y in zip(XB.astype(np.float64), YB.astype(np.float64)):
        r = x @ w + b - y
        g += 2.0 / r.size * x.T @ r   # d mean((xw+b-y)^2) / dw
    g /= len(XB)
    expected = np.abs(w * g)
    got = scores.snip_scores(linear_loss, p, m, (jnp.asarray(XB), jnp.asarray(YB)))
    np.testing.assert_allclose(np.asarray(got["w"]["kernel"]), expected, rtol=1e-5, atol=1e-7)
    assert not np.asarray(got["w"]["kernel"])[~np.asarray(m["w"]["kernel"])].any()
    prunable = pruning.prunable(p)
    new = scores.snip(linear_loss, p, m, (jnp.asarray(XB), jnp.asarray(YB)), 0.4, prunable)
    (ref,) = reference_keep([got["w"]["kernel"]], [m["w"]["kernel"]], count_keep(0.4, 15))
    np.testing.assert_array_equal(np.asarray(new["w"]["kernel"]), ref)
    assert alive(new["w"]["kernel"]) == min(count_keep(0.4, 15), alive(m["w"]["kernel"]))


def test_grasp_hg_equals_closed_form_for_least_squares():
    # L_b = mean((x_b W + b − y_b)^2) is quadratic in W: H_b = 2/(B·O) · (x_bᵀ x_b) ⊗ I, so
    # Hg = mean_b 2/(B·O) · x_bᵀ x_b · G, with G the mean gradient restricted to the (masked) kernel.
    p, m = linear_setup()
    mk = np.asarray(m["w"]["kernel"])
    w = np.asarray(p["w"]["kernel"], np.float64) * mk
    b = np.asarray(p["w"]["bias"], np.float64)
    xs, ys = XB.astype(np.float64), YB.astype(np.float64)
    g = np.mean([2.0 / (8 * 3) * x.T @ (x @ w + b - y) for x, y in zip(xs, ys)], axis=0) * mk
    hg = np.mean([2.0 / (8 * 3) * x.T @ x @ g for x in xs], axis=0) * mk
    expected = -w * hg
    prunable = pruning.prunable(p)
    got = scores.grasp_scores(linear_loss, p, m, (jnp.asarray(XB), jnp.asarray(YB)), prunable)
    np.testing.assert_allclose(np.asarray(got["w"]["kernel"]), expected, rtol=1e-4, atol=1e-6)
    # GraSP keeps the lowest S (removes the largest).
    new = scores.grasp(linear_loss, p, m, (jnp.asarray(XB), jnp.asarray(YB)), 0.4, prunable)
    (ref,) = reference_keep([-expected], [mk], count_keep(0.4, 15))
    np.testing.assert_array_equal(np.asarray(new["w"]["kernel"]), ref)


def mlp_loss(p, batch):
    x, y = batch
    h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return jnp.mean((h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"] - y) ** 2)


def test_grasp_hg_equals_explicit_hessian_on_tanh_mlp():
    shapes = {"Dense_0": {"kernel": (5, 4), "bias": (4,)}, "Dense_1": {"kernel": (4, 3), "bias": (3,)}}
    p = make_params(11, shapes)
    prunable = pruning.prunable(p)
    m = random_mask(12, p, keep=0.7)
    batches = (jnp.asarray(XB), jnp.asarray(YB))
    flat, unravel = ravel_pytree(p)
    mflat = ravel_pytree(jax.tree.map(lambda x: x.astype(jnp.float32), m))[0]
    sel = ravel_pytree(jax.tree.map(lambda x, u: jnp.full(x.shape, float(u)), p, prunable))[0]

    def full_loss(v, b):
        return mlp_loss(unravel(v * mflat), b)

    grad, hessian = jax.jit(jax.grad(full_loss)), jax.jit(jax.hessian(full_loss))
    g = np.mean([np.asarray(grad(flat, (XB[i], YB[i]))) for i in range(2)], axis=0)
    h = np.mean([np.asarray(hessian(flat, (XB[i], YB[i])), np.float64) for i in range(2)], axis=0)
    hg = h @ (g * np.asarray(sel))
    expected = -(np.asarray(flat) * np.asarray(mflat)) * hg
    got = ravel_pytree(scores.grasp_scores(mlp_loss, p, m, batches, prunable))[0]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-4, atol=1e-6)


def test_snip_grasp_under_jit_and_vmap():
    shapes = {"Dense_0": {"kernel": (5, 4), "bias": (4,)}, "Dense_1": {"kernel": (4, 3), "bias": (3,)}}
    prunable = pruning.prunable(make_params(0, shapes))
    batches = (jnp.asarray(XB), jnp.asarray(YB))
    trials = [(make_params(30 + t, shapes), random_mask(40 + t, make_params(0, shapes))) for t in range(2)]
    for method in (scores.snip, scores.grasp):
        fn = jax.jit(lambda p, m, d: method(mlp_loss, p, m, batches, d, prunable))
        batched = jax.vmap(fn, in_axes=(0, 0, None))(stack([t[0] for t in trials]),
                                                     stack([t[1] for t in trials]), 0.3)
        for t, (p, m) in enumerate(trials):
            one = fn(p, m, 0.3)   # (eager = reference: the tests above)
            assert_tree_equal(jax.tree.map(lambda x: x[t], batched), one)
            assert kernel_alive(one, prunable) == min(kernel_alive(m, prunable), count_keep(0.3, 32))
            assert masks.is_subset(one, m)


# ---------------------------------------------------------------- SynFlow

def linear2_apply(p, x):
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


@pytest.mark.parametrize("with_bias", [False, True])
def test_synflow_closed_form_two_layer_linear(with_bias):
    shapes = {"Dense_0": {"kernel": (4, 6), "bias": (6,)}, "Dense_1": {"kernel": (6, 3), "bias": (3,)}}
    p = make_params(13, shapes)
    if not with_bias:
        p = jax.tree.map(lambda x: x if x.ndim > 1 else jnp.zeros_like(x), p)
    m = random_mask(14, p, keep=0.7)
    w1 = np.abs(np.asarray(p["Dense_0"]["kernel"], np.float64)) * np.asarray(m["Dense_0"]["kernel"])
    w2 = np.abs(np.asarray(p["Dense_1"]["kernel"], np.float64)) * np.asarray(m["Dense_1"]["kernel"])
    b1 = np.abs(np.asarray(p["Dense_0"]["bias"], np.float64))
    # R = Σ_k ( Σ_j (Σ_i |W1[i,j]| + |b1[j]|) |W2[j,k]| + |b2[k]| )
    s1 = w1 * w2.sum(axis=1)[None, :]                 # |W1[i,j]| · Σ_k |W2[j,k]|
    s2 = w2 * (w1.sum(axis=0) + b1)[:, None]          # |W2[j,k]| · (Σ_i |W1[i,j]| + |b1[j]|)
    got = scores.synflow_scores(linear2_apply, p, m, (4,))
    np.testing.assert_allclose(np.asarray(got["Dense_0"]["kernel"]), s1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["Dense_1"]["kernel"]), s2, rtol=1e-5)
    if not with_bias:  # conservation: each layer's scores sum to R
        r = w1.sum(axis=0) @ w2.sum(axis=1)
        assert s1.sum() == pytest.approx(r) and s2.sum() == pytest.approx(r)


class TinyConv(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), use_bias=False)(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, use_bias=False)(x))
        return nn.Dense(5, use_bias=False)(x.reshape((x.shape[0], -1)))


def test_synflow_conservation_on_flax_conv_net():
    # Bias-free ReLU net: R is linear in each layer's |weights| (ReLU acts on non-negative values),
    # so Σ_layer |θ|·∂R/∂|θ| = R for every layer (Euler), whatever the mask.
    model = TinyConv()
    p = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))["params"]
    prunable = pruning.prunable(p)
    m = random_mask(15, p, keep=0.8, prunable=prunable)
    apply_fn = lambda q, x: model.apply({"params": q}, x)
    s = jax.jit(lambda q, mm: scores.synflow_scores(apply_fn, q, mm, (6, 6, 2)))(p, m)
    r = float(jnp.sum(jax.jit(apply_fn)(jax.tree.map(jnp.abs, masks.apply(p, m)), jnp.ones((1, 6, 6, 2)))))
    for leaf in jax.tree.leaves(s):
        assert float(jnp.sum(leaf)) == pytest.approx(r, rel=1e-4)


def test_synflow_rounds_reach_exact_target_and_match_reference_loop():
    shapes = {"Dense_0": {"kernel": (8, 7), "bias": (7,)}, "Dense_1": {"kernel": (7, 6), "bias": (6,)},
              "Dense_2": {"kernel": (6, 3), "bias": (3,)}}
    p = make_params(16, shapes)

    def relu_apply(q, x):
        x = jax.nn.relu(x @ q["Dense_0"]["kernel"] + q["Dense_0"]["bias"])
        x = jax.nn.relu(x @ q["Dense_1"]["kernel"] + q["Dense_1"]["bias"])
        return x @ q["Dense_2"]["kernel"] + q["Dense_2"]["bias"]

    prunable = pruning.prunable(p)
    m0 = masks.ones_like(p)
    total = kernel_alive(m0, prunable)   # 56 + 42 + 18 = 116
    per_leaf = {"Dense_0": {"kernel": 0.2, "bias": 1.0}, "Dense_1": {"kernel": 0.3, "bias": 1.0},
                "Dense_2": {"kernel": 0.6, "bias": 1.0}}
    rounds = 4
    synflow = jax.jit(lambda q, m, d, allocation: scores.synflow(
        relu_apply, q, m, d, prunable, input_shape=(8,), rounds=rounds, allocation=allocation),
        static_argnames="allocation")
    step = jax.jit(lambda m, d, allocation: scores.mask_from_scores(
        scores.synflow_scores(relu_apply, p, m, (8,)), m, d, prunable, allocation),
        static_argnames="allocation")
    for allocation, density in [("global", 0.036), ("global", 0.21), ("layerwise", per_leaf)]:
        got = synflow(p, m0, density, allocation)
        # reference: the rounds written out, re-scoring the current mask each time
        ref = m0
        for k in range(1, rounds + 1):
            ref = step(ref, jax.tree.map(lambda d: density_at(d, k, rounds), density), allocation)
        assert_tree_equal(got, ref)
        if allocation == "global":
            assert kernel_alive(got, prunable) == count_keep(density, total)
        else:
            dens = jax.tree.leaves(per_leaf) if isinstance(density, dict) else [density] * 6
            for leaf, d, u in zip(jax.tree.leaves(got), dens, jax.tree.leaves(prunable)):
                assert alive(leaf) == (count_keep(d, leaf.size) if u else leaf.size)
    # one round is one-shot SynFlow
    one = scores.synflow(relu_apply, p, m0, 0.1, prunable, input_shape=(8,), rounds=1)
    assert_tree_equal(one, scores.mask_from_scores(scores.synflow_scores(relu_apply, p, m0, (8,)),
                                                   m0, 0.1, prunable))


def density_at(d, k, n):
    d = np.float32(d)
    return d if k == n else jnp.float32(d) ** (jnp.float32(k) / n)


def test_synflow_iterative_keeps_every_layer_alive():
    # Layer collapse is what iterative SynFlow avoids (the paper's point): at 2% density a 30-20-2
    # net keeps weights in both layers, and the count is exact.
    shapes = {"Dense_0": {"kernel": (30, 20), "bias": (20,)}, "Dense_1": {"kernel": (20, 2), "bias": (2,)}}
    p = make_params(17, shapes)
    prunable = pruning.prunable(p)
    m0 = masks.ones_like(p)
    it = scores.synflow(linear2_apply, p, m0, 0.02, prunable, input_shape=(30,), rounds=20)
    assert kernel_alive(it, prunable) == count_keep(0.02, 640)
    assert alive(it["Dense_0"]["kernel"]) > 0 and alive(it["Dense_1"]["kernel"]) > 0


def test_synflow_vmap_over_trials_and_batchnorm_eval_mode():
    class BNNet(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Dense(6)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(3)(nn.relu(x))

    model = BNNet()
    variables = model.init(jax.random.key(1), jnp.zeros((2, 4)))
    stats = variables["batch_stats"]
    apply_fn = lambda q, x: model.apply({"params": q, "batch_stats": stats}, x, train=False)
    prunable = pruning.prunable(variables["params"])
    keys = jax.random.split(jax.random.key(2), 3)
    ps = jax.vmap(lambda k: model.init(k, jnp.zeros((2, 4)))["params"])(keys)
    ms = jax.vmap(masks.ones_like)(ps)
    f = lambda q, m: scores.synflow(apply_fn, q, m, 0.3, prunable, input_shape=(4,), rounds=3)
    batched = jax.jit(jax.vmap(f))(ps, ms)
    single = jax.jit(f)
    for t in range(3):
        q = jax.tree.map(lambda x: x[t], ps)
        one = single(q, masks.ones_like(q))
        assert_tree_equal(jax.tree.map(lambda x: x[t], batched), one)
        assert kernel_alive(one, prunable) == count_keep(0.3, 24 + 18)


def test_lenet_all_methods_exact_density_under_jit():
    model = models.create("lenet300_100")
    p = models.init(model, jax.random.key(0), (28, 28, 1))["params"]
    prunable = pruning.prunable(p)
    m0 = masks.ones_like(p)
    rng = np.random.default_rng(0)
    batches = (jnp.asarray(rng.random((2, 16, 28, 28, 1)).astype(np.float32)),
               jnp.asarray(rng.integers(0, 10, (2, 16))))

    def loss_fn(q, b):
        logits = model.apply({"params": q}, b[0])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), b[1][:, None], axis=1))

    apply_fn = lambda q, x: model.apply({"params": q}, x)
    keep = count_keep(0.036, 266_200)
    found = jax.jit(lambda q, m: {   # one program: compiling once is most of this test's time
        "snip": scores.snip(loss_fn, q, m, batches, 0.036, prunable),
        "grasp": scores.grasp(loss_fn, q, m, batches, 0.036, prunable),
        "synflow": scores.synflow(apply_fn, q, m, 0.036, prunable, input_shape=(28, 28, 1), rounds=5),
        "magnitude": scores.magnitude(q, m, 0.036, prunable),
    })(p, m0)
    for name, mask in found.items():
        assert kernel_alive(mask, prunable) == keep, name
        assert alive(mask) == keep + 300 + 100 + 10, name   # biases untouched
    # The methods find different masks (sanity: they are not all the magnitude mask).
    assert float(masks.overlap(found["snip"], found["synflow"], prunable)) < 0.99


def test_nnx_state():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear1 = nnx.Linear(4, 6, rngs=rngs)
            self.linear2 = nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, x):
            return self.linear2(nnx.relu(self.linear1(x)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
    apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)
    loss_fn = lambda s, b: jnp.mean((apply_fn(s, b[0]) - b[1]) ** 2)
    prunable = pruning.prunable(state)
    m = masks.ones_like(state)
    batches = (jnp.asarray(XB[:, :, :4]), jnp.asarray(YB))
    found = jax.jit(lambda s, mm: (
        scores.snip(loss_fn, s, mm, batches, 0.5, prunable),
        scores.grasp(loss_fn, s, mm, batches, 0.5, prunable, "layerwise"),
        scores.synflow(apply_fn, s, mm, 0.5, prunable, input_shape=(4,), rounds=3)))(state, m)
    for new in found:
        masks.check_matches(state, new)
        assert kernel_alive(new, prunable) == 21


# ---------------------------------------------------------------- early bird

def test_hamming_distance():
    a = {"k": {"kernel": jnp.array([[True, True, False, False, True]] * 2)},
         "k2": {"bias": jnp.ones(5, bool)}}
    b = {"k": {"kernel": jnp.array([[True, False, False, True, True]] * 2)},
         "k2": {"bias": jnp.zeros(5, bool)}}
    prunable = {"k": {"kernel": True}, "k2": {"bias": False}}
    assert float(scores.hamming_distance(a, b, prunable)) == pytest.approx(4 / 10)
    assert float(scores.hamming_distance(a, b)) == pytest.approx(9 / 15)   # None: every leaf
    assert float(scores.hamming_distance(a, a, prunable)) == 0.0
    assert float(jax.jit(scores.hamming_distance)(a, b, prunable)) == pytest.approx(0.4)


def mask_sequence(distances, n=20, seed=0):
    """Masks m_0, m_1, ... of one 20-weight leaf with hamming(m_t, m_{t-1}) = distances[t-1]."""
    rng = np.random.default_rng(seed)
    m = rng.random(n) < 0.5
    seq = [m.copy()]
    for d in distances:
        flip = rng.choice(n, size=int(round(d * n)), replace=False)
        m = m.copy()
        m[flip] = ~m[flip]
        seq.append(m)
    return [{"layer": {"kernel": jnp.asarray(x.reshape(4, 5)), "bias": jnp.ones(3, bool)}} for x in seq]


PRUNABLE_EB = {"layer": {"kernel": True, "bias": False}}


def run_detector(seq, **kw):
    state = scores.early_bird_init(seq[0])
    states = []
    for m in seq:
        state = scores.early_bird_update(state, m, PRUNABLE_EB, **kw)
        states.append(state)
    return states


def test_early_bird_fires_exactly_when_window_of_small_distances_completes():
    # d_1..d_12; ε = 0.1 strict: 0.1 itself does not count. Runs below ε: t=2,3 (then 0.15 resets),
    # t=5 (then 0.1 resets), t=7..11 -> the fifth consecutive small distance is at t = 11.
    dists = [0.2, 0.05, 0.05, 0.15, 0.05, 0.1, 0.05, 0.0, 0.05, 0.05, 0.05, 0.3]
    seq = mask_sequence(dists)
    states = run_detector(seq)
    for t, s in enumerate(states[1:], start=1):
        assert float(s.distance) == pytest.approx(dists[t - 1])
    assert float(states[0].distance) == np.inf
    assert [int(s.streak) for s in states] == [0, 0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 5, 0]
    assert [bool(s.found) for s in states] == [False] * 11 + [True, True]
    assert int(states[-1].found_at) == 11
    assert_tree_equal(states[-1].ticket, seq[11])   # frozen at firing despite the later change
    assert_tree_equal(states[10].ticket, seq[10])   # before firing: the last mask fed
    # a smaller window fires earlier; a looser ε fires at the first run of 3
    assert int(run_detector(seq, window=2)[-1].found_at) == 3
    assert int(run_detector(seq, epsilon=0.16, window=3)[-1].found_at) == 4


def test_early_bird_never_fires_on_a_moving_mask_and_works_in_scan_and_vmap():
    quiet = mask_sequence([0.2, 0.05, 0.05, 0.15, 0.05, 0.1, 0.05, 0.0, 0.05, 0.05, 0.05, 0.3])
    moving = mask_sequence([0.3] * 12, seed=1)
    assert not bool(run_detector(moving)[-1].found)
    assert int(run_detector(moving)[-1].found_at) == -1

    def scan(seq):
        def body(state, m):
            state = scores.early_bird_update(state, m, PRUNABLE_EB)
            return state, state.found
        return jax.lax.scan(body, scores.early_bird_init(jax.tree.map(lambda x: x[0], seq)), seq)

    both = stack([stack(quiet), stack(moving)])
    final, found = jax.jit(jax.vmap(scan))(both)
    np.testing.assert_array_equal(np.asarray(found[0]), [False] * 11 + [True, True])
    assert not np.asarray(found[1]).any()
    np.testing.assert_array_equal(np.asarray(final.found_at), [11, -1])
    assert_tree_equal(jax.tree.map(lambda x: x[0], final.ticket), quiet[11])


def test_early_bird_with_magnitude_masks_of_a_training_network():
    # The intended use: the magnitude mask of the dense weights at the target density at each
    # evaluation. Weights that stop changing give distance 0 and the detector fires after W+1.
    p = make_params(18)
    prunable = pruning.prunable(p)
    state = scores.early_bird_init(masks.ones_like(p))
    update = jax.jit(lambda s, q: scores.early_bird_update(
        s, scores.magnitude(q, masks.ones_like(q), 0.2, prunable), prunable))
    for t in range(8):
        q = p if t >= 2 else make_params(100 + t)   # different weights at t = 0, 1, then fixed
        state = update(state, q)
    assert bool(state.found) and int(state.found_at) == 2 + scores.EARLY_BIRD_WINDOW
    assert_tree_equal(state.ticket, scores.magnitude(p, masks.ones_like(p), 0.2, prunable))


def test_score_pieces_under_jit_equal_eager_with_prunable_traced():
    """The README's scores.* rows not covered above, each under jax.jit against its eager value:
    the two density helpers, the raw SNIP and GraSP scores, and the three methods with their
    ``prunable`` passed as a traced argument."""
    shapes = {"Dense_0": {"kernel": (5, 4), "bias": (4,)}, "Dense_1": {"kernel": (4, 3), "bias": (3,)}}
    params = make_params(50, shapes)
    mask = random_mask(51, params)
    prunable = pruning.prunable(params)
    batches = (jnp.asarray(XB), jnp.asarray(YB))
    rates = pruning.rates_by_rule(params, [(r".*kernel", 0.2)])
    cases = {
        "densities_like": (scores.densities_like, (mask,)),
        "densities_from_rates": (lambda r: scores.densities_from_rates(r, 3), (rates,)),
        "snip_scores": (lambda p, m: scores.snip_scores(mlp_loss, p, m, batches), (params, mask)),
        "grasp_scores": (lambda p, m, u: scores.grasp_scores(mlp_loss, p, m, batches, u),
                         (params, mask, prunable)),
        "snip(prunable traced)": (lambda p, m, u: scores.snip(mlp_loss, p, m, batches, 0.3, u),
                                  (params, mask, prunable)),
        "grasp(prunable traced)": (lambda p, m, u: scores.grasp(mlp_loss, p, m, batches, 0.3, u),
                                   (params, mask, prunable)),
    }
    for name, (fn, args) in cases.items():
        eager, jitted = fn(*args), jax.jit(fn)(*args)
        for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7,
                                       err_msg=name)
