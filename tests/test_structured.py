"""N:M and neuron/filter pruning (lth_jax.structured) and compaction (lth_jax.compaction):
exact patterns and counts against NumPy references, the whole-neuron rule, masks only shrink over
rounds, jit/vmap, and compact models that compute the masked dense model's logits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import assert_tree_equal, make_params, stack
from lth_jax import compaction, masks, models, pruning, structured

MLP_SHAPES = {"Dense_0": {"kernel": (12, 10), "bias": (10,)},
              "Dense_1": {"kernel": (10, 8), "bias": (8,)},
              "Dense_2": {"kernel": (8, 3), "bias": (3,)}}
# A Conv-2-like chain on 4x4 inputs: two convs, one 2x2 pool, then 2*2*6 = 24 inputs to Dense_0.
CONV_SHAPES = {"Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
               "Conv_1": {"kernel": (3, 3, 4, 6), "bias": (6,)},
               "Dense_0": {"kernel": (24, 5), "bias": (5,)},
               "Dense_1": {"kernel": (5, 5), "bias": (5,)},
               "Dense_2": {"kernel": (5, 3), "bias": (3,)}}


# Jitted once per shape: eager JAX compiles every small op on its own, which costs more here.
nm_magnitude = jax.jit(structured.nm_magnitude, static_argnames=("m", "partial"))
neuron_magnitude = jax.jit(structured.neuron_magnitude, static_argnames=("links", "norm"))
global_neuron_magnitude = jax.jit(structured.global_neuron_magnitude,
                                  static_argnames=("links", "norm", "normalize"))
is_consistent = jax.jit(structured.is_consistent, static_argnames=("links",))


def random_mask(seed, params, keep=0.7):
    return helpers.random_mask(seed, params, keep)


def kernel_rates(params, rate):
    return pruning.rates_by_rule(params, [(r".*kernel", rate)])


def units(mask, layer):
    """NumPy: which units of ``layer`` have an alive kernel weight."""
    k = np.asarray(mask[layer]["kernel"])
    return k.reshape(-1, k.shape[-1]).any(axis=0)


def is_subset(new, old):
    return all((~np.asarray(n) | np.asarray(o)).all()
               for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(old)))


def groups(a, m):
    """(..., in, out) -> (number of groups, m): each row one group of m consecutive inputs."""
    a = np.moveaxis(np.asarray(a), -2, -1)
    return a.reshape(-1, m)


# ----------------------------------------------------------------------------- N:M


def nm_reference(w, alive, n, m):
    """Per group: the min(n, alive) alive entries of largest |w| (values distinct)."""
    wg, ag = groups(np.abs(w), m), groups(alive, m)
    keep = np.zeros_like(ag)
    for g in range(wg.shape[0]):
        idx = np.flatnonzero(ag[g])
        best = idx[np.argsort(-wg[g, idx], kind="stable")[:n]]
        keep[g, best] = True
    shape = np.moveaxis(np.asarray(w), -2, -1).shape
    return np.moveaxis(keep.reshape(shape), -1, -2)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_nm_keeps_exactly_the_n_largest_of_each_group(n, m):
    shapes = {"Dense_0": {"kernel": (16, 5), "bias": (5,)},
              "Conv_0": {"kernel": (3, 3, 8, 4), "bias": (4,)}}
    params = make_params(0, shapes)
    mask = masks.ones_like(params)
    new = nm_magnitude(params, mask, kernel_rates(params, 0.2), n=n, m=m)
    for layer in shapes:
        got = np.asarray(new[layer]["kernel"])
        assert (groups(got, m).sum(axis=1) == n).all()          # exactly n alive in every group
        want = nm_reference(params[layer]["kernel"], mask[layer]["kernel"], n, m)
        np.testing.assert_array_equal(got, want)
        assert np.asarray(new[layer]["bias"]).all()               # rate 0: untouched
    assert structured.is_nm(new, n, m)
    assert not structured.is_nm(mask, n, m)
    # The Conv grouping is along the input channels at one (h, w, out) position.
    k, g = np.asarray(new["Conv_0"]["kernel"]), np.asarray(params["Conv_0"]["kernel"])
    block = k[1, 2, 0:m, 3]
    assert block.sum() == n
    assert set(np.flatnonzero(block)) == set(np.argsort(-np.abs(g[1, 2, 0:m, 3]))[:n])


def test_nm_on_a_pruned_mask_ties_and_nan():
    params = make_params(1, {"Dense_0": {"kernel": (12, 7)}})
    mask = random_mask(2, params, keep=0.6)
    new = nm_magnitude(params, mask, kernel_rates(params, 1.0), n=2, m=4)
    want = nm_reference(params["Dense_0"]["kernel"], mask["Dense_0"]["kernel"], 2, 4)
    np.testing.assert_array_equal(np.asarray(new["Dense_0"]["kernel"]), want)
    assert is_subset(new, mask)
    # Ties: equal |w| -> the lower input index goes first. NaN counts as the largest.
    w = jnp.array([[1.0], [-1.0], [1.0], [0.5], [jnp.nan], [0.1], [0.2], [0.3]])
    tied = structured.nm_magnitude({"k": w}, {"k": jnp.ones((8, 1), bool)}, {"k": 1.0}, n=2, m=4)
    np.testing.assert_array_equal(np.asarray(tied["k"])[:, 0],
                                  [False, True, True, False, True, False, False, True])


def test_nm_partial_groups():
    params = make_params(3, {"Dense_0": {"kernel": (6, 3)}})
    mask = masks.ones_like(params)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        structured.nm_magnitude(params, mask, kernel_rates(params, 0.2), n=2, m=4)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        structured.is_nm(mask, 2, 4)
    for n in (1, 2, 3):
        new = np.asarray(nm_magnitude(params, mask, kernel_rates(params, 0.2), n=n, m=4,
                                      partial="pad")["Dense_0"]["kernel"])
        assert (new[:4].sum(axis=0) == n).all()                    # the full group
        assert (new[4:].sum(axis=0) == min(n, 2)).all()            # the short group of 2
        w = np.abs(np.asarray(params["Dense_0"]["kernel"]))
        for col in range(3):
            assert set(4 + np.flatnonzero(new[4:, col])) == set(4 + np.argsort(-w[4:, col])[:min(n, 2)])
        assert structured.is_nm({"Dense_0": {"kernel": jnp.asarray(new)}}, n, 4, partial="pad")
    with pytest.raises(ValueError, match="input axis"):
        structured.nm_magnitude({"b": jnp.ones(4)}, {"b": jnp.ones(4, bool)}, {"b": 0.2}, n=2, m=4)
    with pytest.raises(ValueError, match="n must be"):
        structured.nm_magnitude(params, mask, kernel_rates(params, 0.2), n=5, m=4)


def test_nm_reached_by_rounds():
    params = make_params(4, {"Dense_0": {"kernel": (16, 6), "bias": (6,)},
                             "Conv_0": {"kernel": (3, 3, 4, 2)}})
    rates = kernel_rates(params, 0.2)
    dense = masks.ones_like(params)
    assert structured.nm_rounds(2, 4) == 2 and structured.nm_rounds(1, 4) == 3
    assert structured.nm_rounds(1, 8, step=2) == 4
    step = jax.jit(lambda p, mk, r, n: structured.nm_iterative(p, mk, rates, r, n=n, m=4))
    mask = dense
    for level, alive in enumerate([3, 2, 1, 1], start=1):
        new = step(params, mask, 1, 1)
        assert is_subset(new, mask)                          # masks only shrink
        for layer in ("Dense_0", "Conv_0"):
            assert (groups(new[layer]["kernel"], 4).sum(axis=1) == alive).all()
        # One-shot to this level from the dense mask is the same mask.
        assert_tree_equal(step(params, dense, level, 1), new)
        mask = new
    assert_tree_equal(mask, nm_magnitude(params, dense, rates, n=1, m=4))
    # 2:4 stops at 2 per group.
    two = step(params, step(params, step(params, dense, 1, 2), 1, 2), 1, 2)
    assert_tree_equal(two, nm_magnitude(params, dense, rates, n=2, m=4))


def test_nm_jit_and_vmap():
    params = [make_params(s, {"Dense_0": {"kernel": (8, 4), "bias": (4,)}}) for s in (5, 6, 7)]
    mks = [random_mask(s, p) for s, p in zip((8, 9, 10), params)]
    rates = kernel_rates(params[0], 0.2)
    fn = jax.jit(jax.vmap(lambda p, mk, r, n: structured.nm_magnitude(p, mk, r, n=n, m=4),
                          in_axes=(0, 0, None, 0)))
    got = fn(stack(params), stack(mks), rates, jnp.array([1, 2, 3]))
    for i, n in enumerate((1, 2, 3)):
        want = structured.nm_magnitude(params[i], mks[i], rates, n=n, m=4)
        assert_tree_equal(jax.tree.map(lambda x: x[i], got), want)
    # A traced zero rate leaves the leaf as it was.
    zero = jax.jit(lambda r: structured.nm_magnitude(params[0], mks[0], r, n=1, m=4))(
        jax.tree.map(lambda _: 0.0, rates))
    assert_tree_equal(zero, mks[0])
    for i, n in enumerate((1, 2, 3)):
        assert bool(jax.jit(lambda mk: structured.is_nm(mk, n, 4))(jax.tree.map(lambda x: x[i], got)))
    # prunable traced too (the bias leaf then unselected at run time, not skipped at trace time)
    one = jax.tree.map(lambda x: x[0], got)
    selection = pruning.prunable(one)
    traced = jax.jit(lambda mk, sel: structured.is_nm(mk, 1, 4, sel))
    assert bool(traced(one, selection)) and not bool(traced(mks[0], selection))
    assert not bool(traced(one, jax.tree.map(lambda _: True, selection)))  # a selected bias: no


# ----------------------------------------------------------------------------- links


def test_sequential_links():
    assert structured.sequential_links(make_params(0, MLP_SHAPES)) == (
        ("Dense_0", "Dense_1"), ("Dense_1", "Dense_2"))
    assert structured.sequential_links(make_params(0, CONV_SHAPES)) == (
        ("Conv_0", "Conv_1"), ("Conv_1", "Dense_0"), ("Dense_0", "Dense_1"), ("Dense_1", "Dense_2"))
    lenet = jax.eval_shape(lambda k: models.init(models.create("lenet300_100"), k, (28, 28, 1)),
                           jax.random.key(0))
    assert structured.sequential_links(lenet) == (
        ("params/Dense_0", "params/Dense_1"), ("params/Dense_1", "params/Dense_2"))
    vgg = jax.eval_shape(lambda k: models.init(models.create("vgg19"), k, (32, 32, 3))["params"],
                         jax.random.key(0))
    with pytest.raises(ValueError, match="pass links explicitly"):
        structured.sequential_links(vgg)
    bad = make_params(0, {"Dense_0": {"kernel": (4, 5)}, "Dense_1": {"kernel": (7, 2)}})
    with pytest.raises(ValueError, match="not a multiple"):
        structured.sequential_links(bad)
    params = make_params(0, MLP_SHAPES)
    with pytest.raises(ValueError, match="consumer of two links"):
        structured.neuron_magnitude(params, masks.ones_like(params), kernel_rates(params, 0.2),
                                    links=[("Dense_0", "Dense_1"), ("Dense_0", "Dense_1")])
    with pytest.raises(ValueError, match="no leaf 'Dense_9/kernel'"):
        structured.alive_units(params, links=[("Dense_0", "Dense_9")])


# ----------------------------------------------------------------------------- neurons


def unit_norms(params, mask, layer, norm):
    w = np.where(np.asarray(mask[layer]["kernel"]), np.asarray(params[layer]["kernel"]), 0.0)
    w = w.reshape(-1, w.shape[-1])
    return np.abs(w).sum(0) if norm == "l1" else np.sqrt((w * w).sum(0))


def check_removed(old, new, links, removed):
    """``new`` = ``old`` minus exactly the incoming and outgoing weights of ``removed`` units."""
    want = jax.tree.map(np.array, old)
    for producer, consumer in links:
        dead = removed.get(producer, np.zeros(0, int))
        want[producer]["kernel"][..., dead] = False
        want[producer]["bias"][dead] = False
        units = np.asarray(old[producer]["kernel"]).shape[-1]
        rows = np.isin(np.arange(want[consumer]["kernel"].shape[-2]) % units, dead)
        want[consumer]["kernel"][..., rows, :] = False
    assert_tree_equal(new, want)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_neuron_magnitude_counts_scores_and_whole_neuron_rule(norm):
    params = make_params(11, MLP_SHAPES)
    old = random_mask(12, params, keep=0.8)
    old = jax.tree.map(lambda m, p: m | (np.ndim(p) == 1), old, params)  # biases alive
    rates = pruning.rates_by_rule(params, [(r"Dense_0/kernel", 0.3), (r"Dense_1/kernel", 0.35),
                                           (r"Dense_2/kernel", 0.5)])
    new = neuron_magnitude(params, old, rates, norm=norm)
    links = structured.sequential_links(params)
    removed = {}
    # round(0.3 · 10) = 3 and round(0.35 · 8) = round(2.8) = 3 units go.
    for layer, k in (("Dense_0", 3), ("Dense_1", 3)):
        scores = unit_norms(params, old, layer, norm)
        removed[layer] = np.sort(np.argsort(scores, kind="stable")[:k])
        assert units(new, layer).sum() == len(scores) - k
    check_removed(old, new, links, removed)
    assert is_consistent(new)
    if norm == "l2":  # eagerly (no jit) the same, and alive_units as NumPy says
        assert_tree_equal(structured.neuron_magnitude(params, old, rates, norm=norm), new)
        for layer, alive in structured.alive_units(new).items():
            np.testing.assert_array_equal(np.asarray(alive), units(new, layer))
        assert structured.is_consistent(new) is True
    assert np.asarray(new["Dense_2"]["bias"]).all()  # the output layer's units never go
    assert not is_consistent(jax.tree.map(  # a dead column with a live bias is not
        lambda m: m.at[:, 0].set(False) if m.shape == (12, 10) else m, old))


def test_neuron_rounds_shrink_and_stay_consistent():
    params = make_params(13, CONV_SHAPES)
    rates = kernel_rates(params, 0.25)
    mask = masks.ones_like(params)
    alive = {"Conv_0": 4, "Conv_1": 6, "Dense_0": 5, "Dense_1": 5}
    for _ in range(3):
        # Each round the params move, so the scores change between rounds.
        params = jax.tree.map(lambda p: np.asarray(p) * np.float32(1.1) + np.float32(0.05), params)
        new = neuron_magnitude(params, mask, rates)
        assert is_subset(new, mask)
        assert is_consistent(new)
        for layer, a in alive.items():
            alive[layer] = a - int(np.round(np.float32(0.25) * np.float32(a)))
            assert units(new, layer).sum() == alive[layer]
        mask = new
    # Conv_1 -> Dense_0 through the flatten: the rows (y·2 + x)·6 + c of a removed filter c.
    dead = np.flatnonzero(~units(mask, "Conv_1"))
    assert len(dead) > 0
    for c in dead:
        assert not np.asarray(mask["Dense_0"]["kernel"])[[c, c + 6, c + 12, c + 18]].any()
        assert not np.asarray(mask["Conv_1"]["kernel"])[..., c].any() and not mask["Conv_1"]["bias"][c]
    dead0 = np.flatnonzero(~units(mask, "Conv_0"))
    assert not np.asarray(mask["Conv_1"]["kernel"])[:, :, dead0, :].any()  # Conv -> Conv rows


def test_global_neuron_magnitude():
    params = make_params(14, CONV_SHAPES)
    params["Conv_0"]["kernel"] = params["Conv_0"]["kernel"] * 3.0  # layers on different scales
    old = masks.ones_like(params)
    select = pruning.prunable(params)
    select["Dense_1"]["kernel"] = False  # not pooled: keeps its units
    for norm, normalize in (("l2", "fan_in"), ("l1", "fan_in"), ("l2", "none")):
        new = global_neuron_magnitude(params, old, 0.4, select, norm=norm, normalize=normalize)
        pooled = ("Conv_0", "Conv_1", "Dense_0")
        scores = []
        for layer in pooled:
            fan = math.prod(CONV_SHAPES[layer]["kernel"][:-1])
            div = 1.0 if normalize == "none" else (fan if norm == "l1" else math.sqrt(fan))
            scores.append(unit_norms(params, old, layer, norm) / np.float32(div))
        flat = np.concatenate(scores)
        k = int(np.round(np.float32(0.4) * np.float32(flat.size)))  # round(0.4 · 15) = 6
        gone = np.argsort(flat, kind="stable")[:k]
        offsets = np.cumsum([0] + [len(s) for s in scores])
        removed = {layer: gone[(gone >= offsets[i]) & (gone < offsets[i + 1])] - offsets[i]
                   for i, layer in enumerate(pooled)}
        check_removed(old, new, structured.sequential_links(params), removed)
        assert np.asarray(new["Dense_1"]["bias"]).all()  # not pooled: none of its units removed
    # Eagerly (no jit) the same; checked on the small MLP, where eager dispatch is cheap.
    mlp = make_params(15, MLP_SHAPES)
    assert_tree_equal(structured.global_neuron_magnitude(mlp, masks.ones_like(mlp), 0.3,
                                                         pruning.prunable(mlp), norm="l1"),
                      global_neuron_magnitude(mlp, masks.ones_like(mlp), 0.3, pruning.prunable(mlp),
                                              norm="l1"))


def test_neuron_jit_vmap_traced_rates():
    params = [make_params(s, CONV_SHAPES) for s in (20, 21)]
    mks = [random_mask(s, p, keep=0.9) for s, p in zip((22, 23), params)]
    rates = [kernel_rates(params[0], r) for r in (0.2, 0.5)]
    fn = jax.jit(jax.vmap(lambda p, mk, r: structured.neuron_magnitude(p, mk, r)))
    got = fn(stack(params), stack(mks), stack(rates))
    for i in range(2):
        want = neuron_magnitude(params[i], mks[i], rates[i])
        assert_tree_equal(jax.tree.map(lambda x: x[i], got), want)
    consistent = jax.jit(jax.vmap(structured.is_consistent))(got)
    assert np.asarray(consistent).all()
    gl = jax.jit(jax.vmap(lambda p, mk, s: structured.global_neuron_magnitude(p, mk, 0.3, s),
                          in_axes=(0, 0, None)))
    got = gl(stack(params), stack(mks), pruning.prunable(params[0]))
    for i in range(2):
        want = global_neuron_magnitude(params[i], mks[i], 0.3, pruning.prunable(params[0]))
        assert_tree_equal(jax.tree.map(lambda x: x[i], got), want)
    # A traced zero rate removes nothing.
    zero = neuron_magnitude(params[0], mks[0], kernel_rates(params[0], 0.0))
    assert_tree_equal(zero, mks[0])
    # alive_units under jit (links are static: sequential_links reads only the tree's paths)
    jitted = jax.jit(structured.alive_units)(mks[0])
    eager = structured.alive_units(mks[0])
    assert set(jitted) == set(eager) and all(np.array_equal(jitted[k], eager[k]) for k in eager)


# ----------------------------------------------------------------------------- compaction


def param_count(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def model_params(seed, model, input_shape):
    """Params of ``model`` with Glorot-scale normal values from NumPy (a real init compiles slowly
    here), a few units made small as training would."""
    shapes = jax.eval_shape(lambda k: models.init(model, k, input_shape)["params"], jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(s):
        fan = math.prod(s.shape[:-1]) + s.shape[-1] if len(s.shape) > 1 else 1
        w = rng.normal(size=s.shape) * math.sqrt(2.0 / fan)
        return jnp.asarray((w * rng.uniform(0.2, 1.0, size=s.shape[-1])).astype(np.float32))
    return jax.tree.map(draw, shapes)


def masked(params, mask):
    return jax.tree.map(lambda p, m: np.where(np.asarray(m), np.asarray(p), np.float32(0)), params, mask)


def test_compact_lenet_equals_masked_dense():
    model = models.create("lenet300_100")
    params = model_params(0, model, (28, 28, 1))
    rates = pruning.rates_by_rule(params, [(r"Dense_2/kernel", 0.0), (r".*kernel", 0.5)])
    mask = neuron_magnitude(params, masks.ones_like(params), rates, norm="l1")
    mask = neuron_magnitude(params, mask, rates, norm="l1")                         # 300 -> 150 -> 75
    extra = random_mask(1, params, keep=0.7)                                        # + unstructured
    mask = jax.tree.map(lambda m, e: m & (e | (m.ndim == 1)), mask, extra)
    out = compaction.compact(model, params, mask)
    assert isinstance(out.model, compaction.CompactMLP)
    assert tuple(out.model.features) == (75, 25)
    assert param_count(out.params) == 784 * 75 + 75 + 75 * 25 + 25 + 25 * 10 + 10
    assert jax.tree.map(jnp.shape, out.params) == jax.tree.map(
        jnp.shape, jax.eval_shape(out.model.init, jax.random.key(1), jnp.zeros((1, 784)))["params"])
    assert masks.count(out.mask)[0] == masks.count(mask)[0]  # every alive weight is kept
    x = np.random.default_rng(2).normal(size=(16, 28, 28, 1)).astype(np.float32)
    dense = jax.jit(model.apply)({"params": masked(params, mask)}, x)
    small = jax.jit(out.model.apply)({"params": out.params}, x)
    np.testing.assert_allclose(np.asarray(small), np.asarray(dense), rtol=1e-5, atol=1e-5)
    # At full width the compact family is LeNet-300-100: same param names and shapes.
    assert jax.eval_shape(compaction.CompactMLP((300, 100)).init, jax.random.key(3), x) == \
        jax.eval_shape(model.init, jax.random.key(3), x)


def test_compact_conv2_equals_masked_dense():
    model = models.create("conv2", conv="xla")
    params = model_params(1, model, (32, 32, 3))
    rates = pruning.rates_by_rule(params, [(r"Dense_2/kernel", 0.0), (r"Conv_0/kernel", 0.25),
                                           (r"Conv_1/kernel", 0.5), (r".*kernel", 0.75)])
    hidden = ("Conv_0", "Conv_1", "Dense_0", "Dense_1")
    mask = global_neuron_magnitude(params, masks.ones_like(params), 0.1, pruning.prunable(params))
    alive = {k: int(units(mask, k).sum()) for k in hidden}
    assert sum(alive.values()) == 640 - 64  # round(0.1 · 640) units pooled
    mask = neuron_magnitude(params, mask, rates, norm="l2")
    n = {k: int(units(mask, k).sum()) for k in hidden}
    for k, r in zip(hidden, (0.25, 0.5, 0.75, 0.75)):  # then round(r · alive) per layer
        assert n[k] == alive[k] - int(np.round(np.float32(r) * np.float32(alive[k])))
    out = compaction.compact(model, params, mask)
    assert isinstance(out.model, compaction.CompactConvNet)
    assert tuple(out.model.conv_features) == (n["Conv_0"], n["Conv_1"])
    assert tuple(out.model.dense_features) == (n["Dense_0"], n["Dense_1"])
    c0, c1, d0, d1 = n["Conv_0"], n["Conv_1"], n["Dense_0"], n["Dense_1"]
    assert param_count(out.params) == (9 * 3 * c0 + c0 + 9 * c0 * c1 + c1 + 16 * 16 * c1 * d0 + d0
                                       + d0 * d1 + d1 + d1 * 10 + 10)
    x = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
    dense = jax.jit(model.apply)({"params": masked(params, mask)}, x)
    small = jax.jit(out.model.apply)({"params": out.params}, x)
    np.testing.assert_allclose(np.asarray(small), np.asarray(dense), rtol=1e-5, atol=1e-5)
    # Compacting again changes nothing.
    again = compaction.compact(out.model, out.params, out.mask)
    assert again.model == out.model
    assert_tree_equal(again.params, out.params)


def test_kept_units_from_any_mask():
    params = make_params(30, MLP_SHAPES)
    mask = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
    mask["Dense_0"]["kernel"][:, 0] = False                  # no incoming, bias alive: kept (relu(b))
    mask["Dense_0"]["kernel"][:, 1] = False
    mask["Dense_0"]["bias"][1] = False                       # no incoming, no bias: goes
    mask["Dense_1"]["kernel"][2, :] = False                  # Dense_0 unit 2 unread: goes
    mask["Dense_1"]["kernel"][:, 4] = False                  # Dense_1 unit 4 reads only unit 1,
    mask["Dense_1"]["kernel"][1, 4] = True                   # which goes, and has no bias:
    mask["Dense_1"]["bias"][4] = False                       # it goes in the next sweep
    kept = compaction.kept_units(params, mask)
    np.testing.assert_array_equal(kept["Dense_0"], [True, False, False] + [True] * 7)
    np.testing.assert_array_equal(kept["Dense_1"], [True] * 4 + [False] + [True] * 3)
    model = compaction.CompactMLP((10, 8), num_classes=3)
    out = compaction.compact(model, params, mask)
    assert tuple(out.model.features) == (8, 7)
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(out.model.apply)({"params": out.params}, x)),
                               np.asarray(jax.jit(model.apply)({"params": masked(params, mask)}, x)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="compact handles"):
        compaction.compact(models.create("vgg19"), params, mask)
