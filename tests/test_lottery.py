"""End-to-end lottery experiments on synthetic data: records, the pruning ladder, masks, resume."""

import json
import os

import jax
import numpy as np
import pytest

from lth_jax import config as config_lib
from lth_jax import lottery, masks, pruning
from lth_jax import train as train_lib

TIMING = set(lottery.TIMING_FIELDS)


def tiny_config(**overrides):
    c = config_lib.base_config()
    c.model.name = "lenet300_100"
    c.dataset.name = "synthetic"
    c.dataset.source = "synthetic"
    c.dataset.image_shape = (8, 8, 1)
    c.dataset.train_size = 700
    c.dataset.test_size = 200
    c.dataset.validation_size = 100
    c.train.iterations = 300
    c.train.batch_size = 50
    c.train.eval_every = 50
    c.train.eval_batch_size = 128
    c.prune.levels = 3
    c.trials = 2
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lottery") / "run")
    logs = []
    traces = {"n": 0}
    original = train_lib.train_run

    def counting(*args, **kwargs):
        traces["n"] += 1
        return original(*args, **kwargs)

    train_lib.train_run = counting
    try:
        records = lottery.run(tiny_config(), workdir, log=logs.append)
    finally:
        train_lib.train_run = original
    return workdir, records, logs, traces["n"]


def test_records_fields_and_counts(finished):
    workdir, records, logs, _ = finished
    assert len(records) == 2 * (1 + 3 * 3)  # level 0: ticket; levels 1-3: ticket, reinit, random_prune
    on_disk = lottery.read_records(workdir)
    assert strip_timing(on_disk) == strip_timing(records)
    required = {"trial", "level", "variant", "density", "layer_density", "early_stop_iteration",
                "test_accuracy_at_early_stop", "final_test_accuracy", "train_seconds",
                "eval_iterations", "val_loss", "val_accuracy", "test_accuracy", "status"}
    for r in records:
        assert required <= set(r)
        assert r["status"] == "ok"
        assert r["eval_iterations"] == list(range(50, 301, 50))
        assert 50 <= r["early_stop_iteration"] <= 300
        assert r["early_stop_iteration"] % 50 == 0
        i = r["eval_iterations"].index(r["early_stop_iteration"])
        assert r["val_loss"][i] == min(r["val_loss"])
        assert r["test_accuracy_at_early_stop"] == r["test_accuracy"][i]
        assert r["final_test_accuracy"] == r["test_accuracy"][-1]
    assert {(r["level"], r["variant"]) for r in records} == {(0, "ticket")} | {
        (lv, v) for lv in (1, 2, 3) for v in ("ticket", "reinit", "random_prune")}
    dense = [r for r in records if r["level"] == 0]
    assert np.mean([r["final_test_accuracy"] for r in dense]) > 0.3  # learnable data, 10 classes
    assert any("level  3/3" in line for line in logs)


def test_densities_follow_the_ladder_exactly(finished):
    _, records, _, _ = finished
    sizes = {"Dense_0/kernel": 64 * 300, "Dense_1/kernel": 300 * 100, "Dense_2/kernel": 100 * 10}
    rates = {"Dense_0/kernel": 0.2, "Dense_1/kernel": 0.2, "Dense_2/kernel": 0.1}
    alive = dict(sizes)
    for level in range(4):
        if level:
            alive = {k: a - int(np.round(np.float32(rates[k]) * np.float32(a))) for k, a in alive.items()}
        for r in records:
            if r["level"] == level:  # every variant has the ticket's per-layer counts
                assert r["layer_density"] == {k: alive[k] / sizes[k] for k in sizes}
                assert r["density"] == sum(alive.values()) / sum(sizes.values())


def test_masks_only_shrink_and_pruned_weights_are_zero(finished):
    workdir, _, _, _ = finished
    saved = lottery.load_experiment(workdir)
    assert sorted(saved["levels"]) == [0, 1, 2, 3]
    for level in range(1, 4):
        new, old = saved["levels"][level]["mask"], saved["levels"][level - 1]["mask"]
        assert masks.is_subset(new, old) and not masks.is_subset(old, new)
        for trained, mask in zip(jax.tree.leaves(saved["levels"][level]["trained_params"]),
                                 jax.tree.leaves(new)):
            assert np.all(trained[~mask] == 0.0)
            assert np.count_nonzero(trained[mask]) > 0.99 * mask.sum()
    # every run of a level (controls too): exactly zero where pruned
    runs = lottery.load_checkpoint(workdir, "level_003")["runs"]
    for trained, mask in zip(jax.tree.leaves(runs["trained_params"]), jax.tree.leaves(runs["mask"])):
        assert np.all(trained[~mask] == 0.0)
    # the ticket is trained from m ⊙ θ0: θ0 is saved and unchanged in shape
    theta0 = saved["theta0"]["params"]
    assert theta0["Dense_0"]["kernel"].shape == (2, 64, 300)
    assert not np.array_equal(theta0["Dense_0"]["kernel"][0], theta0["Dense_0"]["kernel"][1])


def test_ticket_mask_is_magnitude_pruning_of_previous_level(finished):
    workdir, _, _, _ = finished
    saved = lottery.load_experiment(workdir)
    rates = pruning.rates_by_rule(saved["theta0"]["params"],
                                  [(r".*Dense_2/kernel", 0.1), (r".*kernel", 0.2)])
    for t in range(2):
        pick = lambda tree: jax.tree.map(lambda x: x[t], tree)
        prev = saved["levels"][1]
        expected = pruning.layerwise_magnitude(pick(prev["trained_params"]), pick(prev["mask"]), rates)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(pick(saved["levels"][2]["mask"]))):
            np.testing.assert_array_equal(a, b)


def test_one_compilation_serves_every_pruning_level(finished):
    _, _, _, traces = finished
    assert traces == 2  # the dense level-0 program and one program for levels 1..3


def test_resume_after_kill_equals_uninterrupted(finished, tmp_path):
    _, uninterrupted, _, _ = finished
    workdir = str(tmp_path / "run")

    class Killed(Exception):
        pass

    def die_after_level_1(line):
        if line.startswith("level  1/"):
            raise Killed()

    with pytest.raises(Killed):
        lottery.run(tiny_config(), workdir, log=die_after_level_1)
    partial = lottery.read_records(workdir)
    assert {r["level"] for r in partial} == {0, 1}
    # a half-written line, as a SIGKILL in the middle of an append would leave
    with open(os.path.join(workdir, lottery.RESULTS), "a") as f:
        f.write('{"trial": 0, "level": 2, "vari')
    logs = []
    resumed = lottery.run(tiny_config(), workdir, log=logs.append)
    assert any(line.startswith("resuming: levels 0..1") for line in logs)
    assert strip_timing(resumed) == strip_timing(uninterrupted)
    assert strip_timing(lottery.read_records(workdir)) == strip_timing(uninterrupted)


def test_workdir_with_another_config_is_refused(finished):
    workdir, _, _, _ = finished
    with pytest.raises(lottery.ExperimentError, match="train.learning_rate"):
        lottery.run(tiny_config(**{"train.learning_rate": 0.01}), workdir)


def test_rewinding_one_shot_global(tmp_path):
    """Late resetting to θ_k and one-shot global pruning with the output layer exempt."""
    cfg = tiny_config(**{"train.iterations": 150, "prune.rewind_iteration": 50,
                         "prune.one_shot": True, "prune.levels": 2, "prune.strategy": "global",
                         "prune.rules": ((r".*Dense_2/kernel", 0.0), (r".*kernel", 0.2)),
                         "trials": 1, "controls.random_prune": False})
    records = lottery.run(cfg, str(tmp_path / "run"), log=lambda _: None)
    assert [(r["level"], r["variant"]) for r in records] == [
        (0, "ticket"), (1, "ticket"), (1, "reinit"), (2, "ticket"), (2, "reinit")]
    assert records[0]["eval_iterations"] == [50, 100, 150]
    assert records[1]["eval_iterations"] == [100, 150]  # a rewound run trains from k=50 to the end
    saved = lottery.load_experiment(str(tmp_path / "run"))
    assert not np.array_equal(saved["theta_rewind"]["params"]["Dense_0"]["kernel"],
                              saved["theta0"]["params"]["Dense_0"]["kernel"])
    hidden = 64 * 300 + 300 * 100
    for r in records[1:]:
        assert r["layer_density"]["Dense_2/kernel"] == 1.0  # exempt from global pruning
    level = {1: records[1], 2: records[3]}
    for lv, r in level.items():  # one-shot to level L removes round((1 - 0.8^L) · hidden) at once
        alive = r["layer_density"]["Dense_0/kernel"] * 64 * 300 + r["layer_density"]["Dense_1/kernel"] * 300 * 100
        removed = int(np.round(np.float32(pruning.compound_rate(0.2, lv)) * np.float32(hidden)))
        assert round(alive) == hidden - removed
    # one-shot level 2 is not a subset of level 1 in general, but both prune the dense weights
    dense = jax.tree.map(lambda x: x[0], saved["levels"][0]["trained_params"])
    expected = pruning.global_magnitude(dense, masks.ones_like(dense), pruning.compound_rate(0.2, 2),
                                        pruning.rates_by_rule(dense, cfg.prune.rules))
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(saved["levels"][2]["mask"])):
        np.testing.assert_array_equal(a, b[0])
