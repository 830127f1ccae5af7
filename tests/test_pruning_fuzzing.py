"""Pruning fuzzing: on random PyTrees (nested containers, several dtypes and shapes, NaN and inf
weights, broken masks and rates) every pruning round either keeps the counting rule exactly or
raises ValueError/TypeError, and refuses every malformed input; ``masks.apply`` zeroes exactly the
pruned weights."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks, pruning

DTYPES = [np.float32, jnp.bfloat16, np.int32, np.bool_]
SHAPES = st.sampled_from([(), (0,), (3,), (2, 3)])  # few shapes and dtypes: few compilations


class Spec:
    """A leaf to be: its shape and dtype (an object, so that tree functions see a leaf)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __repr__(self):
        return f"Spec({self.shape}, {np.dtype(self.dtype).name})"


def leaf_specs():
    return st.builds(Spec, SHAPES, st.sampled_from(DTYPES))


def nested(leaf):
    return st.recursive(
        leaf,
        lambda inner: st.one_of(st.dictionaries(st.sampled_from("abcd"), inner, min_size=1,
                                                max_size=3),
                                st.lists(inner, min_size=1, max_size=3),
                                st.lists(inner, min_size=1, max_size=2).map(tuple)),
        max_leaves=4)


@st.composite
def pruning_inputs(draw):
    """(params, mask, rates): usually well-formed, sometimes broken in one way."""
    specs = draw(nested(leaf_specs()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def param(spec):
        shape, dtype = spec.shape, spec.dtype
        values = rng.normal(size=shape) * 10.0 ** rng.integers(-3, 4)
        if rng.random() < 0.2 and values.size:
            values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf, 0.0])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)  # inf -> INT_MIN/INT_MAX (see test_magnitude_of_the_most_...)
            return jnp.asarray(np.clip(np.nan_to_num(values), info.min, info.max).astype(dtype))
        return jnp.asarray(values).astype(dtype)

    params = jax.tree.map(param, specs)
    mask = jax.tree.map(lambda p: rng.random(np.shape(p)) < 0.7, params)
    rates = jax.tree.map(lambda p: float(rng.choice([0.0, 0.2, 0.5, 1.0, rng.random()])), params)
    fault = draw(st.sampled_from(["none"] * 4 + ["dtype", "shape", "structure", "rate", "rates_tree"]))
    leaves, treedef = jax.tree.flatten(mask)
    i = draw(st.integers(0, len(leaves) - 1))
    if fault == "dtype":  # a mask leaf of another dtype
        leaves[i] = leaves[i].astype(draw(st.sampled_from([np.int32, np.float32, np.uint8])))
        mask = jax.tree.unflatten(treedef, leaves)
    elif fault == "shape":
        leaves[i] = np.ones(np.shape(leaves[i]) + (2,), bool)
        mask = jax.tree.unflatten(treedef, leaves)
    elif fault == "structure":
        mask = draw(st.sampled_from([leaves, {"x": leaves}, leaves + [np.ones(3, bool)],
                                     tuple(leaves)]))
    elif fault == "rate":
        rate_leaves = jax.tree.leaves(rates)
        rate_leaves[i] = draw(st.sampled_from([-0.1, 1.5, float("nan"), float("inf")]))
        rates = jax.tree.unflatten(jax.tree.structure(rates), rate_leaves)
    elif fault == "rates_tree":
        rates = draw(st.sampled_from([jax.tree.leaves(rates)[:-1], {"x": 0.2}, 0.2]))
    return params, mask, rates, fault


def alive_count(m):
    return int(np.sum(np.asarray(m)))


def check_new_mask(new, mask, counts=None):
    """``new`` is a valid mask, a subset of ``mask``, with exactly the expected removals."""
    assert jax.tree.structure(new) == jax.tree.structure(mask)
    for i, (n, m) in enumerate(zip(jax.tree.leaves(new), jax.tree.leaves(mask))):
        n, m = np.asarray(n), np.asarray(m)
        assert n.dtype == np.bool_ and n.shape == m.shape
        assert not np.any(n & ~m), "a pruned weight came back"
        if counts is not None:
            assert m.sum() - n.sum() == counts[i]


def magnitudes(p):
    """|w| as the pruning contract orders them: NaN largest."""
    a = np.abs(np.asarray(p).astype(np.float64))
    return np.where(np.isnan(a), np.inf, a)


@hypothesis.settings(max_examples=20, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(inputs=pruning_inputs(), seed=st.integers(0, 100), global_rate=st.floats(0, 1))
def test_pruning_on_random_pytrees_works_or_raises_value_or_type_error(inputs, seed, global_rate):
    params, mask, rates, fault = inputs
    ref = lambda r, m: int(np.round(np.float32(r) * np.float32(alive_count(m)))) if r else 0
    counts = lambda: [ref(r, m) for r, m in zip(jax.tree.leaves(rates), jax.tree.leaves(mask))]

    def attempt(fn, must_fail):
        """fn() or None when it raised ValueError/TypeError (any other exception fails the test)."""
        try:
            out = fn()
        except (ValueError, TypeError):
            assert fault != "none", "well-formed input was refused"
            return None
        assert fault not in must_fail, f"input with a bad {fault} was accepted"
        return out

    # layerwise magnitude: exactly round(rate · alive) of the smallest |w| go, per leaf
    new = attempt(lambda: pruning.layerwise_magnitude(params, mask, rates),
                  ("dtype", "shape", "rate"))
    if new is not None:
        check_new_mask(new, mask, counts())
        for p, n, m in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(mask)):
            removed, kept = np.asarray(m) & ~np.asarray(n), np.asarray(n)
            if removed.any() and kept.any():
                assert magnitudes(p)[removed].max() <= magnitudes(p)[kept].min()

    # random pruning: the same counts at random positions
    new = attempt(lambda: pruning.random(jax.random.key(seed), mask, rates), ("dtype", "rate"))
    if new is not None:
        check_new_mask(new, mask, counts())

    # global magnitude, pooled over the leaves with rate > 0
    prunable = jax.tree.map(bool, rates)
    new = attempt(lambda: pruning.global_magnitude(params, mask, global_rate, prunable),
                  ("dtype", "shape"))
    if new is not None:
        chosen = [bool(s) for s in jax.tree.leaves(prunable)]
        check_new_mask(new, mask)
        pooled = sum(alive_count(m) for m, s in zip(jax.tree.leaves(mask), chosen) if s)
        removed = sum(alive_count(m) - alive_count(n) for m, n, s in
                      zip(jax.tree.leaves(mask), jax.tree.leaves(new), chosen) if s)
        assert removed == (int(np.round(np.float32(global_rate) * np.float32(pooled)))
                           if any(chosen) else 0)
        for p, m, n, s in zip(jax.tree.leaves(params), jax.tree.leaves(mask), jax.tree.leaves(new),
                              chosen):
            if not s:
                np.testing.assert_array_equal(np.asarray(m), np.asarray(n))
        gone = [magnitudes(p)[np.asarray(m) & ~np.asarray(n)]
                for p, m, n, s in zip(jax.tree.leaves(params), jax.tree.leaves(mask),
                                      jax.tree.leaves(new), chosen) if s]
        kept = [magnitudes(p)[np.asarray(n)]
                for p, n, s in zip(jax.tree.leaves(params), jax.tree.leaves(new), chosen) if s]
        gone = np.concatenate(gone) if gone else np.zeros(0)
        kept = np.concatenate(kept) if kept else np.zeros(0)
        if gone.size and kept.size:
            assert gone.max() <= kept.min()

    # applying the mask: zero exactly where pruned, dtypes and shapes kept
    applied = attempt(lambda: masks.apply(params, mask), ("dtype", "shape"))
    if applied is not None:
        for p, m, a in zip(jax.tree.leaves(params), jax.tree.leaves(mask), jax.tree.leaves(applied),
                           strict=True):
            m = np.asarray(m)
            assert a.dtype == p.dtype and a.shape == p.shape
            a, p = np.asarray(a).astype(np.float64), np.asarray(p).astype(np.float64)
            np.testing.assert_array_equal(a[~m], 0)
            np.testing.assert_array_equal(a[m], p[m])  # NaN where NaN


def test_magnitude_of_the_most_negative_integer():
    params = {"w": jnp.array([1, np.iinfo(np.int32).min, 2, 3], jnp.int32)}
    mask = masks.ones_like(params)
    new = pruning.layerwise_magnitude(params, mask, {"w": 0.25})
    np.testing.assert_array_equal(np.asarray(new["w"]), [False, True, True, True])
