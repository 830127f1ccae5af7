"""IMP with hardware-friendly patterns from the config (``prune.strategy`` "N:M", "neuron"): every
level's ticket mask is the structured round of the previous level's trained weights, N:M is
reached by rounds, whole neurons go with their outgoing rows, and what cannot work is refused."""

import jax
import numpy as np
import pytest

from helpers import tiny_config
from lth_jax import branches, lottery, masks, pruning, structured
from lth_jax.branches import base, cheaper_tickets
from lth_jax.config import ConfigError, validate

KERNELS = ("Dense_0", "Dense_1", "Dense_2")


def _trial(tree, t):
    return jax.tree.map(lambda x: np.asarray(x[t]), tree)


def _run(tmp_path, strategy, **overrides):
    cfg = tiny_config(**{"prune.strategy": strategy}, **overrides)
    workdir = str(tmp_path / strategy.replace(":", "_"))
    records = lottery.run(cfg, workdir, log=lambda _: None)
    return cfg, workdir, records, lottery.load_experiment(workdir)


def _equal_trees(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_two_four_is_reached_by_rounds_and_each_level_prunes_the_last_trained(tmp_path):
    cfg, workdir, records, saved = _run(tmp_path, "2:4")
    exp = lottery.setup(cfg)
    ticket = {(r["level"], r["trial"]): r for r in records if r["variant"] == "ticket"}
    for level, per_group in ((0, 4), (1, 3), (2, 2)):
        for t in range(2):
            mask = _trial(saved["levels"][level]["mask"], t)
            for name in KERNELS:
                kernel = mask[name]["kernel"]
                groups = kernel.reshape(kernel.shape[0] // 4, 4, kernel.shape[1]).sum(axis=1)
                assert (groups == per_group).all(), (level, t, name)
                assert mask[name]["bias"].all()  # rate 0: biases stay
            assert ticket[(level, t)]["density"] == per_group / 4
            if level:
                previous = saved["levels"][level - 1]
                expected = structured.nm_iterative(_trial(previous["trained_params"], t),
                                                   _trial(previous["mask"], t), exp.rates, 1,
                                                   n=2, m=4)
                _equal_trees(expected, mask)
                trained = _trial(saved["levels"][level]["trained_params"], t)
                for leaf, m in zip(jax.tree.leaves(trained), jax.tree.leaves(mask)):
                    assert (leaf[~m] == 0).all()  # pruned weights stay exactly zero
    assert structured.is_nm(_trial(saved["levels"][2]["mask"], 0), 2, 4)
    # the controls train the same counts per layer
    for r in records:
        if r["level"] == 2:
            assert r["density"] == 0.5, r["variant"]

    # the cheaper-tickets methods rank single weights: an N:M lottery is refused, naming the field
    with pytest.raises(ValueError, match="prune.strategy"):
        base.run(branches.default_config(cheaper_tickets), cfg, workdir, log=lambda _: None)


def test_neuron_strategy_removes_whole_neurons_with_their_outgoing_rows(tmp_path):
    # (No controls: the ticket's masks are the point, and every level is then one program.)
    cfg, _, records, saved = _run(tmp_path, "neuron", controls__reinit=False,
                                  controls__random_prune=False)
    exp = lottery.setup(cfg)
    hidden = {0: (300, 100), 1: (240, 80), 2: (192, 64)}  # 20% of the alive units per round
    for level, (units_0, units_1) in hidden.items():
        for t in range(2):
            mask = _trial(saved["levels"][level]["mask"], t)
            alive = structured.alive_units(mask)
            assert [int(alive["Dense_0"].sum()), int(alive["Dense_1"].sum())] == [units_0, units_1]
            assert structured.is_consistent(mask)
            # a removed neuron loses its column, its bias entry and its outgoing row, and only those
            assert int(mask["Dense_0"]["kernel"].sum()) == 64 * units_0
            assert int(mask["Dense_0"]["bias"].sum()) == units_0
            assert int(mask["Dense_1"]["kernel"].sum()) == units_0 * units_1
            assert int(mask["Dense_2"]["kernel"].sum()) == units_1 * 10
            if level:
                previous = saved["levels"][level - 1]
                expected = structured.neuron_magnitude(_trial(previous["trained_params"], t),
                                                       _trial(previous["mask"], t), exp.rates)
                _equal_trees(expected, mask)
    density = {r["level"]: r["density"] for r in records if r["variant"] == "ticket"}
    total = 64 * 300 + 300 * 100 + 100 * 10
    assert density[2] == pytest.approx((64 * 192 + 192 * 64 + 64 * 10) / total)


@pytest.mark.parametrize("strategy, message", [
    ("4:4", "1 <= N < M"), ("0:4", "1 <= N < M"), ("magnitude", "N:M pattern such as 2:4")])
def test_bad_strategy_is_refused_naming_the_field(strategy, message):
    with pytest.raises(ConfigError, match=f"prune.strategy.*{message}"):
        validate(tiny_config(**{"prune.strategy": strategy}))


def test_structured_strategies_the_network_cannot_take_are_refused():
    validate(tiny_config(**{"prune.strategy": "1:4", "prune.levels": 3}))  # valid as a config...
    with pytest.raises(ConfigError, match=r"prune.levels: 4, but N:M 1:4 is reached by rounds in 3"):
        lottery.setup(tiny_config(**{"prune.strategy": "1:4", "prune.levels": 4}))
    vgg = tiny_config(**{"model.name": "vgg19", "dataset.image_shape": (32, 32, 3),
                         "prune.strategy": "neuron"})
    with pytest.raises(ConfigError, match="prune.strategy: 'neuron' needs a sequential network"):
        lottery.setup(vgg)
    exp = lottery.setup(tiny_config(**{"prune.strategy": "global_neuron", "prune.global_rate": 0.2}))
    assert exp.strategy == "global_neuron" and exp.global_rate == 0.2


def test_one_shot_nm_is_the_rounds_at_once(tmp_path):
    """One-shot level L is L rounds of N:M applied to the dense network's trained weights."""
    cfg = tiny_config(**{"prune.strategy": "1:4", "prune.one_shot": True, "trials": 1,
                         "controls.random_prune": False})
    workdir = str(tmp_path / "oneshot")
    lottery.run(cfg, workdir, log=lambda _: None)
    saved = lottery.load_experiment(workdir)
    exp = lottery.setup(cfg)
    dense = _trial(saved["levels"][0]["trained_params"], 0)
    for level in (1, 2):
        expected = structured.nm_iterative(dense, jax.tree.map(np.ones_like, _trial(
            saved["levels"][0]["mask"], 0)), exp.rates, level, n=1, m=4)
        _equal_trees(expected, _trial(saved["levels"][level]["mask"], 0))
    assert float(masks.density(_trial(saved["levels"][2]["mask"], 0),
                                       pruning.prunable(dense))) == 0.5
