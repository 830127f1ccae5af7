"""The library as a researcher uses it in their own training code: optax (masked_updates), every
public function under jax.jit / jax.vmap, rule checking, saved masks, Flax NNX states."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import helpers
from helpers import assert_tree_equal, stack
from lth_jax import masks, models, pruning, tickets

SHAPES = {"Dense_0": {"kernel": (6, 5), "bias": (5,)},
          "Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
          "Dense_1": {"kernel": (5, 3), "bias": (3,)}}
RULES = [(r".*Dense_1/kernel", 0.1), (r".*Conv.*kernel", 0.15), (r".*kernel", 0.2)]


def make_params(seed, shapes=SHAPES):
    return helpers.make_params(seed, shapes)


def random_mask(seed, params, keep=0.6):
    return helpers.random_mask(seed, params, keep)


# ---------------------------------------------------------------- masked_updates

# A small regression problem whose gradient reaches every weight, pruned ones included.
MLP = {"w1": (6, 8), "b1": (8,), "w2": (8, 3), "b2": (3,)}
X = jnp.asarray(np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
Y = jnp.asarray(np.random.default_rng(1).normal(size=(32, 3)).astype(np.float32))


def mlp_loss(p):
    h = jnp.tanh(X @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] + p["b2"] - Y) ** 2)


def mlp_setup():
    params = make_params(3, MLP)
    mask = random_mask(4, params, keep=0.5)
    mask["b1"] = jnp.ones(8, bool)
    mask["b2"] = jnp.ones(3, bool)
    # every hidden unit keeps an outgoing weight, so every w1 weight has a nonzero gradient
    mask["w2"] = mask["w2"].at[:, 0].set(True)
    return masks.apply(params, mask), mask


LR, WD, B1, B2, EPS, MOM = 0.05, 0.1, 0.9, 0.999, 1e-8, 0.9


def ref_direction(name, g, p, state, t):
    """Numpy reference of the optimizer's update for one leaf (before masking)."""
    if name == "adam" or name == "adamw":
        state["m"] = B1 * state["m"] + (1 - B1) * g
        state["v"] = B2 * state["v"] + (1 - B2) * g * g
        mhat = state["m"] / (1 - B1 ** t)
        vhat = state["v"] / (1 - B2 ** t)
        u = mhat / (np.sqrt(vhat) + EPS)
        return -LR * (u + WD * p) if name == "adamw" else -LR * u
    if name == "sgd_momentum":
        state["m"] = g + MOM * state["m"]
        return -LR * state["m"]
    if name == "l2_sgd_momentum":
        state["m"] = (g + WD * p) + MOM * state["m"]
        return -LR * state["m"]
    raise ValueError(name)


OPTIMIZERS = {
    "adam": lambda: optax.adam(LR, b1=B1, b2=B2, eps=EPS),
    "adamw": lambda: optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD),
    "sgd_momentum": lambda: optax.sgd(LR, momentum=MOM),
    "l2_sgd_momentum": lambda: optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOM)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masked_updates_keeps_pruned_weights_exactly_zero(name):
    params, mask = mlp_setup()
    tx = optax.chain(OPTIMIZERS[name](), masks.masked_updates(mask))

    @jax.jit
    def step(params, opt_state):
        updates, opt_state = tx.update(jax.grad(mlp_loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    ref = jax.tree.map(np.asarray, params)
    ref_state = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v)} for k, v in ref.items()}
    for t in range(1, 16):
        grads = jax.tree.map(np.asarray, jax.grad(mlp_loss)(ref))
        for k in ref:
            u = ref_direction(name, grads[k], ref[k], ref_state[k], t)
            ref[k] = ref[k] + np.where(np.asarray(mask[k]), u, 0.0).astype(np.float32)
        params, opt_state = step(params, opt_state)
        for k in params:
            p = np.asarray(params[k])
            assert np.all(p[~np.asarray(mask[k])] == 0.0), (name, t, k)  # exactly, every step
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-4, atol=2e-5, err_msg=k)
    # the survivors did train
    w1, start = np.asarray(params["w1"]), np.asarray(mlp_setup()[0]["w1"])
    assert np.all(w1[np.asarray(mask["w1"])] != start[np.asarray(mask["w1"])])


def test_masked_updates_moments_as_documented():
    """Placed last, masked_updates leaves Adam's moments of pruned weights filling up (but unused);
    placed also first, they stay exactly 0. For Adam (elementwise) the weights are the same."""
    params, mask = mlp_setup()
    last = optax.chain(optax.adam(LR), masks.masked_updates(mask))
    both = optax.chain(masks.masked_updates(mask), optax.adam(LR), masks.masked_updates(mask))
    results = []
    for tx in (last, both):
        p, state = params, tx.init(params)
        for _ in range(5):
            updates, state = tx.update(jax.grad(mlp_loss)(p), state, p)
            p = optax.apply_updates(p, updates)
        results.append((p, state))
    (p_last, s_last), (p_both, s_both) = results
    pruned = ~np.asarray(mask["w1"])
    mu_last = np.asarray(s_last[0][0].mu["w1"])
    mu_both = np.asarray(s_both[1][0].mu["w1"])
    assert np.all(mu_last[pruned] != 0.0)
    assert np.all(mu_both[pruned] == 0.0)
    for k in p_last:
        np.testing.assert_array_equal(p_last[k], p_both[k])
    # the mask lives in the state, as a traced argument of a jitted step
    assert isinstance(s_last[1], masks.MaskedUpdatesState)
    assert_tree_equal(s_last[1].mask, mask)


def test_masked_updates_one_compiled_step_serves_every_mask():
    params, mask = mlp_setup()
    traces = []

    @jax.jit
    def step(params, opt_state):
        traces.append(1)
        tx = optax.chain(optax.adam(LR), masks.masked_updates(opt_state[1].mask))
        updates, opt_state = tx.update(jax.grad(mlp_loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for seed in (4, 5):
        mask = random_mask(seed, params, keep=0.5)
        p = masks.apply(params, mask)
        tx = optax.chain(optax.adam(LR), masks.masked_updates(mask))
        p, _ = step(p, tx.init(p))
        assert all(np.all(np.asarray(v)[~np.asarray(mask[k])] == 0) for k, v in p.items())
    assert len(traces) == 1


def test_masked_updates_checks_the_mask():
    params, mask = mlp_setup()
    with pytest.raises(TypeError, match="w1"):
        masks.masked_updates({**mask, "w1": mask["w1"].astype(jnp.float32)})
    bad = {**mask, "w2": jnp.ones((3, 8), bool)}
    with pytest.raises(ValueError, match="w2"):
        masks.masked_updates(bad).init(params)


def test_optax_masked_is_not_needed_but_masked_updates_composes_with_other_transforms():
    params, mask = mlp_setup()
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR), masks.masked_updates(mask))
    p, state = params, tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.grad(mlp_loss)(p), state, p)
        p = optax.apply_updates(p, updates)
    for k in p:
        assert np.all(np.asarray(p[k])[~np.asarray(mask[k])] == 0.0)


# ---------------------------------------------------------------- every public function under jit / vmap

def test_every_public_function_under_jit():
    params = make_params(0)
    mask = random_mask(1, params)
    other = random_mask(2, params)
    prunable = pruning.prunable(params)
    rates = pruning.rates_by_rule(params, RULES)
    key = jax.random.key(7)

    def init_fn(k):
        ks = jax.random.split(k, len(jax.tree.leaves(params)))
        return jax.tree.unflatten(jax.tree.structure(params),
                                  [jax.random.normal(kk, p.shape) for kk, p in zip(ks, jax.tree.leaves(params))])

    # (function, args, static_argnums), the arguments as the README shows them
    cases = {
        "masks.ones_like": (masks.ones_like, (params,), ()),
        "masks.apply": (masks.apply, (params, mask), ()),
        "masks.count": (masks.count, (mask, prunable), ()),
        "masks.density": (masks.density, (mask, prunable), ()),
        "masks.density(no prunable)": (masks.density, (mask,), ()),
        "masks.overlap": (masks.overlap, (mask, other, prunable), ()),
        "masks.is_subset": (masks.is_subset, (mask, other), ()),
        "masks.check_matches": (masks.check_matches, (params, mask), ()),
        "pruning.prunable": (pruning.prunable, (params,), ()),
        "pruning.layerwise_magnitude": (pruning.layerwise_magnitude, (params, mask, rates), ()),
        "pruning.global_magnitude": (pruning.global_magnitude, (params, mask, 0.2, prunable), ()),
        "pruning.global_magnitude(rates)": (pruning.global_magnitude, (params, mask, 0.2, rates), ()),
        "pruning.random": (pruning.random, (key, mask, rates), ()),
        "pruning.random_like": (pruning.random_like, (key, mask), ()),
        "pruning.per_round_rate": (pruning.per_round_rate, (0.9, 10), ()),
        "pruning.compound_rate": (pruning.compound_rate, (0.2, 3), ()),
        "pruning.num_to_remove": (pruning.num_to_remove, (0.2, masks.count(mask, prunable)), ()),
        "tickets.rewind": (tickets.rewind, (params, mask), ()),
        "tickets.reinit": (tickets.reinit, (init_fn, key, mask), (0,)),
    }
    for name, (fn, args, static) in cases.items():
        eager = fn(*args)
        jitted = jax.jit(fn, static_argnums=static)(*args)
        assert jax.tree.structure(jitted) == jax.tree.structure(jax.tree.map(jnp.asarray, eager)), name
        for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, err_msg=name)
    # rules are strings: static (hashable) or closed over
    rules = tuple(RULES)
    assert_tree_equal(jax.jit(pruning.rates_by_rule, static_argnums=1)(params, rules),
                      jax.tree.map(jnp.asarray, rates))
    # layer_density: floats on the host; arrays under jit (all leaves, NaN where not prunable)
    eager = masks.layer_density(mask, prunable)
    jitted = jax.jit(masks.layer_density)(mask, prunable)
    assert set(eager) == {"Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"}
    assert set(jitted) == set(masks.leaf_paths(mask))
    for path, value in jitted.items():
        if path in eager:
            assert float(value) == pytest.approx(eager[path], rel=1e-6)
        else:
            assert np.isnan(value)
    closed = jax.jit(lambda m: masks.layer_density(m, prunable))(mask)
    assert set(closed) == set(eager)
    # masked_updates inside a jitted function, its mask traced
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def masked(mask, grads):
        tx = optax.chain(optax.sgd(1.0), masks.masked_updates(mask))
        return tx.update(grads, tx.init(params), params)[0]

    for u, m in zip(jax.tree.leaves(masked(mask, grads)), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(u, np.where(m, -1.0, 0.0))


def test_jit_with_prunable_traced_equals_concrete_for_global_magnitude():
    """The issue's two failing calls, and global pruning with a selection known only at run time."""
    for seed in range(5):
        params = make_params(seed)
        mask = random_mask(seed + 10, params)
        prunable = pruning.prunable(params)
        selection = dict(prunable)
        selection["Conv_0"] = {"kernel": False, "bias": False}  # exempt a layer
        for sel in (prunable, selection):
            for rate in (0.0, 0.2, 0.5, 1.0):
                want = pruning.global_magnitude(params, mask, rate, sel)
                got = jax.jit(pruning.global_magnitude)(params, mask, rate, sel)
                assert_tree_equal(got, want)
            assert float(jax.jit(masks.density)(mask, sel)) == pytest.approx(
                float(masks.density(mask, sel)), rel=1e-7)


def test_vmap_over_trials_with_prunable():
    trials = [make_params(s) for s in range(3)]
    mask_list = [random_mask(20 + s, trials[s]) for s in range(3)]
    params, mask = stack(trials), stack(mask_list)
    prunable = pruning.prunable(trials[0])
    rates = pruning.rates_by_rule(trials[0], RULES)
    keys = jax.random.split(jax.random.key(0), 3)
    dens = jax.jit(jax.vmap(masks.density, in_axes=(0, None)))(mask, prunable)
    glob = jax.jit(jax.vmap(pruning.global_magnitude, in_axes=(0, 0, None, None)))(params, mask, 0.3, prunable)
    lw = jax.vmap(pruning.layerwise_magnitude, in_axes=(0, 0, None))(params, mask, rates)
    rnd = jax.vmap(pruning.random, in_axes=(0, 0, None))(keys, mask, rates)
    rew = jax.vmap(tickets.rewind)(params, mask)
    ov = jax.vmap(masks.overlap, in_axes=(0, 0, None))(lw, mask, prunable)
    for t in range(3):
        pick = lambda tree: jax.tree.map(lambda x: x[t], tree)
        assert float(dens[t]) == pytest.approx(float(masks.density(mask_list[t], prunable)))
        assert_tree_equal(pick(glob), pruning.global_magnitude(trials[t], mask_list[t], 0.3, prunable))
        assert_tree_equal(pick(lw), pruning.layerwise_magnitude(trials[t], mask_list[t], rates))
        assert_tree_equal(pick(rnd), pruning.random(keys[t], mask_list[t], rates))
        assert_tree_equal(pick(rew), tickets.rewind(trials[t], mask_list[t]))
        assert float(ov[t]) == 1.0  # pruning only removes: all of the new mask is in the old one


def test_host_side_helpers_say_so_under_jit():
    params = make_params(0)
    mask = masks.ones_like(params)
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(masks.summary)(mask)
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(lambda m: masks.save("never-written.npz", m))(mask)


def test_count_and_is_subset_concrete_types():
    params = make_params(0)
    mask = random_mask(1, params)
    alive, total = masks.count(mask, pruning.prunable(params))
    assert isinstance(total, int) and total == 6 * 5 + 3 * 3 * 2 * 4 + 5 * 3
    assert int(alive) == sum(int(np.sum(mask[k]["kernel"])) for k in mask)
    assert masks.is_subset(mask, masks.ones_like(params)) is True
    assert masks.is_subset(masks.ones_like(params), mask) is False


# ---------------------------------------------------------------- rates_by_rule checks

def test_rule_matching_no_prunable_leaf_raises_with_paths():
    params = make_params(0)
    with pytest.raises(ValueError) as err:
        pruning.rates_by_rule(params, [(r"kernel", 0.2)])
    message = str(err.value)
    assert "'kernel'" in message and "matches no prunable leaf" in message
    assert "Conv_0/kernel, Dense_0/kernel, Dense_1/kernel" in message
    assert "'.*kernel'" in message  # the fix
    with pytest.raises(ValueError, match=re.escape("rule #1 '.*Dense_2/kernel' matches no prunable leaf")):
        pruning.rates_by_rule(params, [(r".*kernel", 0.2), (r".*Dense_2/kernel", 0.1)])
    with pytest.raises(ValueError, match="which are not prunable"):
        pruning.rates_by_rule(params, [(r".*bias", 0.2)])
    # shadowed by an earlier rule: first match wins, so it would never apply
    with pytest.raises(ValueError, match=re.escape("rule #1 '.*Dense_1/kernel' sets no leaf")):
        pruning.rates_by_rule(params, [(r".*kernel", 0.2), (r".*Dense_1/kernel", 0.1)])
    # an exemption (rate 0) that matches counts
    rates = pruning.rates_by_rule(params, [(r".*Dense_1/kernel", 0.0), (r".*kernel", 0.2)])
    assert rates["Dense_1"]["kernel"] == 0.0 and rates["Dense_0"]["kernel"] == 0.2


def test_rules_apply_only_to_prunable_leaves():
    params = make_params(0)
    rates = pruning.rates_by_rule(params, [(r".*", 0.2)])
    assert rates["Dense_0"]["bias"] == 0.0 and rates["Dense_0"]["kernel"] == 0.2
    everything = jax.tree.map(lambda _: True, params)
    rates = pruning.rates_by_rule(params, [(r".*", 0.2)], prunable=everything)
    assert rates["Dense_0"]["bias"] == 0.2


@pytest.mark.parametrize("name", models.names())
def test_paper_rules_pass_the_check(name):
    spec = models.spec(name)
    model = models.create(name)
    shapes = jax.eval_shape(lambda k: models.init(model, k, spec.input_shape), jax.random.key(0))
    rates = pruning.rates_by_rule(shapes["params"], spec.rules)
    assert max(jax.tree.leaves(rates)) > 0
    # also on the full variables dict (paths start with "params/")
    pruning.rates_by_rule({"params": shapes["params"]}, spec.rules)


# ---------------------------------------------------------------- save / load

def test_save_load_round_trip_nested_and_inspectable(tmp_path):
    tree = {"Dense_0": {"kernel": np.random.default_rng(0).random((4, 3)) < 0.5, "bias": np.ones(3, bool)},
            "blocks": [{"kernel": np.zeros((2, 2), bool)}, (np.ones((), bool), None)]}
    path = tmp_path / "mask.npz"
    masks.save(path, tree)
    back = masks.load(path)
    assert_tree_equal(back, tree)
    assert all(x.dtype == jnp.bool_ for x in jax.tree.leaves(back))
    # inspectable with numpy alone: leaves under their paths, the structure as JSON
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(["Dense_0/kernel", "Dense_0/bias", "blocks/0/kernel",
                                          "blocks/1/0", masks.STRUCTURE_KEY])
        np.testing.assert_array_equal(f["Dense_0/kernel"], tree["Dense_0"]["kernel"])
        header = json.loads(str(f[masks.STRUCTURE_KEY]))
    assert header["format"] == "lth_jax.mask" and header["version"] == 1
    assert header["tree"]["dict"][0] == ["Dense_0", {"dict": [["kernel", {"leaf": "Dense_0/kernel"}],
                                                               ["bias", {"leaf": "Dense_0/bias"}]]}]
    # exactly the path given, no suffix added; an overwrite replaces it
    masks.save(tmp_path / "ticket", tree)
    assert (tmp_path / "ticket").is_file() and not (tmp_path / "ticket.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.npz", "ticket"]


def test_save_load_pruned_linen_mask_with_like(tmp_path):
    params = make_params(0)
    mask = pruning.layerwise_magnitude(params, masks.ones_like(params), pruning.rates_by_rule(params, RULES))
    masks.save(tmp_path / "m.npz", mask)
    assert_tree_equal(masks.load(tmp_path / "m.npz"), mask)
    assert_tree_equal(masks.load(tmp_path / "m.npz", like=params), mask)
    with pytest.raises(ValueError, match="Dense_9/kernel"):
        masks.load(tmp_path / "m.npz", like={**params, "Dense_9": {"kernel": jnp.ones((2, 2))}})
    wrong_shape = {**params, "Dense_1": {"kernel": jnp.ones((3, 5)), "bias": jnp.ones(3)}}
    with pytest.raises(ValueError, match=re.escape("'Dense_1/kernel' has shape (5, 3)")):
        masks.load(tmp_path / "m.npz", like=wrong_shape)


def test_save_refuses_non_bool_and_load_refuses_other_files(tmp_path):
    with pytest.raises(TypeError, match="Dense_0/kernel"):
        masks.save(tmp_path / "x.npz", {"Dense_0": {"kernel": np.ones((2, 2), np.float32)}})
    assert not (tmp_path / "x.npz").exists()
    np.savez(tmp_path / "plain.npz", a=np.ones(2, bool))
    with pytest.raises(ValueError, match="not an lth_jax mask file"):
        masks.load(tmp_path / "plain.npz")


# ---------------------------------------------------------------- Flax NNX

class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(4 * 8 * 8, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)])

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x))).reshape(x.shape[0], -1)
        return self.layers[1](nnx.relu(self.layers[0](x)))


def nnx_params(seed):
    return nnx.state(NNXNet(nnx.Rngs(seed)), nnx.Param)


def test_nnx_prunable_rules_and_pruning():
    theta = nnx_params(0)
    assert masks.leaf_paths(theta) == ["bn/bias", "bn/scale", "conv/bias", "conv/kernel",
                                       "layers/0/bias", "layers/0/kernel", "layers/1/bias",
                                       "layers/1/kernel"]
    prunable = pruning.prunable(theta)
    assert jax.tree.leaves(prunable) == [False, False, False, True, False, True, False, True]
    rates = pruning.rates_by_rule(theta, [(r"layers/1/kernel", 0.1), (r"conv/kernel", 0.15),
                                          (r".*kernel", 0.2)])
    mask = masks.ones_like(theta)
    assert type(mask) is nnx.State
    lw = pruning.layerwise_magnitude(theta, mask, rates)
    assert int(np.sum(lw["layers"][0]["kernel"][...])) == 256 * 16 - round(0.2 * 256 * 16)
    assert int(np.sum(lw["conv"]["kernel"][...])) == 36 - round(0.15 * 36)
    assert int(np.sum(lw["layers"][1]["kernel"][...])) == 48 - round(0.1 * 48)
    assert lw["bn"]["scale"][...].all()
    # the same as on a plain dict of the same arrays
    pure = nnx.to_pure_dict(theta)
    pure_lw = pruning.layerwise_magnitude(pure, masks.ones_like(pure), pruning.rates_by_rule(
        pure, [(r"layers/1/kernel", 0.1), (r"conv/kernel", 0.15), (r".*kernel", 0.2)]))
    for a, b in zip(jax.tree.leaves(lw), jax.tree.leaves(pure_lw)):
        np.testing.assert_array_equal(a, b)
    gl = jax.jit(pruning.global_magnitude)(theta, mask, 0.5, prunable)
    assert float(masks.density(gl, prunable)) == pytest.approx(0.5, abs=1e-3)
    rnd = pruning.random(jax.random.key(0), lw, rates)
    assert masks.is_subset(rnd, lw)
    like = pruning.random_like(jax.random.key(0), lw)
    assert [int(np.sum(x)) for x in jax.tree.leaves(like)] == [int(np.sum(x)) for x in jax.tree.leaves(lw)]
    assert "layers/0/kernel" in masks.summary(lw, prunable)


def test_nnx_rewind_reinit_and_save(tmp_path):
    theta = nnx_params(0)
    mask = pruning.layerwise_magnitude(theta, masks.ones_like(theta),
                                       pruning.rates_by_rule(theta, [(r".*kernel", 0.5)]))
    rewound = jax.jit(tickets.rewind)(theta, mask)
    assert type(rewound) is nnx.State
    for r, t, m in zip(jax.tree.leaves(rewound), jax.tree.leaves(theta), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(r, np.where(m, t, 0.0))
    init_fn = lambda key: nnx.state(NNXNet(nnx.Rngs(key)), nnx.Param)
    fresh = jax.jit(tickets.reinit, static_argnums=0)(init_fn, jax.random.key(5), mask)
    want = init_fn(jax.random.key(5))
    for r, f, m in zip(jax.tree.leaves(fresh), jax.tree.leaves(want), jax.tree.leaves(mask)):
        np.testing.assert_allclose(r, np.where(m, f, 0.0), rtol=1e-6)
    masks.save(tmp_path / "nnx.npz", mask)
    back = masks.load(tmp_path / "nnx.npz")
    assert jax.tree.structure(back) == jax.tree.structure(mask)
    assert_tree_equal(back, mask)
    assert_tree_equal(masks.load(tmp_path / "nnx.npz", like=theta), mask)
    assert_tree_equal(masks.apply(theta, back), rewound)


def test_nnx_optimizer_with_masked_updates():
    model = NNXNet(nnx.Rngs(0))
    theta0 = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    mask = pruning.global_magnitude(theta0, masks.ones_like(theta0), 0.6, pruning.prunable(theta0))
    nnx.update(model, tickets.rewind(theta0, mask))
    tx = optax.chain(optax.adamw(1e-2, weight_decay=1e-2), masks.masked_updates(mask))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 3)

    @nnx.jit
    def step(model, optimizer):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    losses = [float(step(model, optimizer)) for _ in range(10)]
    assert losses[-1] < losses[0]
    trained = nnx.state(model, nnx.Param)
    for w, m, w0 in zip(jax.tree.leaves(trained), jax.tree.leaves(mask), jax.tree.leaves(theta0)):
        w, m = np.asarray(w), np.asarray(m)
        assert np.all(w[~m] == 0.0)
    moved = np.asarray(trained["layers"][0]["kernel"][...]) != np.asarray(theta0["layers"][0]["kernel"][...])
    assert moved[np.asarray(mask["layers"][0]["kernel"][...])].all()
    # θ₀ (a copy) is untouched by the in-place training
    assert np.all(np.asarray(theta0["layers"][0]["kernel"][...]) != 0)
