"""End-to-end lottery experiments on synthetic data, in this process (one device): records, the
pruning ladder, masks, one compiled program per level shape, chunks, and resume (after a level and
in the middle of one, stopped at several points)."""

import os

import jax
import numpy as np
import pytest

from helpers import fusion_emitters, strip_timing, tiny_config
from lth_jax import config as config_lib
from lth_jax import lottery, masks, pruning
from lth_jax import train as train_lib
from lth_jax import workdir as workdir_lib

LEVELS = 2


@pytest.fixture(scope="module", autouse=True)
def _fusion_emitters():
    """This file compares programs of other loop shapes bit for bit (helpers.FUSION_EMITTERS)."""
    with fusion_emitters():
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lottery") / "run")
    logs = []
    traces = {"n": 0}
    original = train_lib.advance

    def counting(*args, **kwargs):
        traces["n"] += 1
        return original(*args, **kwargs)

    train_lib.advance = counting
    try:
        records = lottery.run(tiny_config(), workdir, log=logs.append)
    finally:
        train_lib.advance = original
    return workdir, records, logs, traces["n"]


def test_records_fields_and_counts(finished):
    workdir, records, logs, _ = finished
    assert len(records) == 2 * (1 + LEVELS * 3)  # level 0: ticket; then ticket, reinit, random_prune
    on_disk = lottery.read_records(workdir)
    assert strip_timing(on_disk) == strip_timing(records)
    required = {"trial", "level", "variant", "density", "layer_density", "early_stop_iteration",
                "test_accuracy_at_early_stop", "final_test_accuracy", "train_seconds",
                "eval_iterations", "val_loss", "val_accuracy", "test_accuracy", "status"}
    for r in records:
        assert required <= set(r)
        assert r["status"] == "ok"
        assert r["eval_iterations"] == list(range(25, 101, 25))
        assert 25 <= r["early_stop_iteration"] <= 100
        assert r["early_stop_iteration"] % 25 == 0
        i = r["eval_iterations"].index(r["early_stop_iteration"])
        assert r["val_loss"][i] == min(r["val_loss"])
        assert r["test_accuracy_at_early_stop"] == r["test_accuracy"][i]
        assert r["final_test_accuracy"] == r["test_accuracy"][-1]
    assert {(r["level"], r["variant"]) for r in records} == {(0, "ticket")} | {
        (lv, v) for lv in (1, 2) for v in ("ticket", "reinit", "random_prune")}
    dense = [r for r in records if r["level"] == 0]
    assert np.mean([r["final_test_accuracy"] for r in dense]) > 0.3  # learnable data, 10 classes
    assert any("level  2/2" in line for line in logs)
    # progress lines within each level (runtime.progress_seconds=0: one per chunk)
    assert any(line.startswith("level  1  iteration 100/100  best val loss") for line in logs)
    assert all(r["experiment"] == workdir_lib.identity(lottery.config_to_json(tiny_config()))
               for r in records)


def test_densities_follow_the_ladder_exactly(finished):
    _, records, _, _ = finished
    sizes = {"Dense_0/kernel": 64 * 300, "Dense_1/kernel": 300 * 100, "Dense_2/kernel": 100 * 10}
    rates = {"Dense_0/kernel": 0.2, "Dense_1/kernel": 0.2, "Dense_2/kernel": 0.1}
    alive = dict(sizes)
    for level in range(LEVELS + 1):
        if level:
            alive = {k: a - int(np.round(np.float32(rates[k]) * np.float32(a))) for k, a in alive.items()}
        for r in records:
            if r["level"] == level:  # every variant has the ticket's per-layer counts
                assert r["layer_density"] == {k: alive[k] / sizes[k] for k in sizes}
                assert r["density"] == sum(alive.values()) / sum(sizes.values())


def test_masks_only_shrink_and_pruned_weights_are_zero(finished):
    workdir, _, _, _ = finished
    saved = lottery.load_experiment(workdir)
    assert sorted(saved["levels"]) == [0, 1, 2]
    for level in range(1, LEVELS + 1):
        new, old = saved["levels"][level]["mask"], saved["levels"][level - 1]["mask"]
        assert masks.is_subset(new, old) and not masks.is_subset(old, new)
        for trained, mask in zip(jax.tree.leaves(saved["levels"][level]["trained_params"]),
                                 jax.tree.leaves(new)):
            assert np.all(trained[~mask] == 0.0)
            assert np.count_nonzero(trained[mask]) > 0.99 * mask.sum()
    # every run of a level (controls too): exactly zero where pruned
    runs = lottery.load_checkpoint(workdir, "level_002")["runs"]
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
    assert traces == 2  # the dense level-0 program (2 runs) and one for levels 1..2 (6 runs)


def test_resume_after_kill_equals_uninterrupted(finished, tmp_path):
    _, uninterrupted, _, _ = finished
    workdir = str(tmp_path / "run")

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


class Killed(Exception):
    pass


def test_stopped_mid_level_at_several_points_resumes_identically(finished, tmp_path):
    """Chunks of one evaluation period, an intra-level checkpoint after each. The run is killed
    (an exception out of the log, as abrupt as it gets in-process) at four points: level 0 before
    its first checkpoint, level 0 after two, level 1 after one, level 2 after three; one more
    kill leaves the debris of a checkpoint write cut short. Every rerun continues from the last
    checkpoint, and the final records and checkpoints equal the uninterrupted run's, whose chunks
    were of another length."""
    ref_dir, uninterrupted, _, _ = finished
    workdir = str(tmp_path / "run")
    # Chunks of one slice of a whole period (the uninterrupted run had slices of 5 steps).
    cfg = tiny_config(runtime__chunk_seconds=1e-6, runtime__checkpoint_minutes=1e-9,
                      runtime__slice_iterations=25)

    def killed_at(level, iteration):
        logs = []

        def log(line):
            logs.append(line)
            if line.startswith(f"level {level:2d}  iteration {iteration}/"):
                raise Killed()

        with pytest.raises(Killed):
            lottery.run(cfg, workdir, log=log)
        return logs

    killed_at(0, 25)       # no checkpoint yet: level 0 starts again
    logs = killed_at(0, 75)
    assert not any("resuming at" in line for line in logs)
    logs = killed_at(1, 50)
    assert "level 0: resuming at iteration 50 from its intra-level checkpoint" in logs
    assert os.path.isdir(workdir_lib.checkpoint_path(workdir, "progress_001"))
    meta = workdir_lib.checkpoint_meta(workdir, "progress_001")
    assert meta["runs"] == [[v, t] for v in ("ticket", "reinit", "random_prune") for t in (0, 1)]
    logs = killed_at(2, 100)  # the last chunk: its checkpoint is the level's own
    assert "level 1: resuming at iteration 25 from its intra-level checkpoint" in logs
    # a checkpoint write cut short by a SIGKILL leaves these; they are cleaned away
    for debris in ("progress_002.staging", "progress_002.staging.orbax-checkpoint-tmp-1"):
        os.makedirs(os.path.join(workdir, "checkpoints", debris, "x"))
    logs = []
    resumed = lottery.run(cfg, workdir, log=logs.append)
    assert "level 2: resuming at iteration 75 from its intra-level checkpoint" in logs
    assert any(line.startswith("resuming: levels 0..1 already finished") for line in logs)
    assert strip_timing(resumed) == strip_timing(uninterrupted)
    assert strip_timing(lottery.read_records(workdir)) == strip_timing(uninterrupted)
    assert sorted(workdir_lib.checkpoint_names(workdir)) == ["init", "level_000", "level_001",
                                                             "level_002"]
    for name in ("init", "level_000", "level_001", "level_002"):
        for x, y in zip(jax.tree.leaves(lottery.load_checkpoint(workdir, name)),
                        jax.tree.leaves(lottery.load_checkpoint(ref_dir, name)), strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_whole_level_in_one_chunk_equals_chunks_of_slices(exp_tiny):
    """``Runner.__call__`` (one chunk: what the benchmark times) and chunks of 1, 7, 2 and 10
    slices (cut inside evaluation periods, 5 slices each) give bit-identical results: the same
    compiled program, continued from its state; so does a snapshot taken inside a period."""
    import jax.numpy as jnp

    runner = lottery.Runner(exp_tiny)
    assert runner.slice_iterations == 5  # auto: the largest divisor of eval_every=25 up to 10
    keys = jnp.stack([lottery.trial_key(0, t, lottery.INIT) for t in range(2)])
    v = jax.jit(jax.vmap(exp_tiny.init_variables))(keys)
    mask = jax.vmap(masks.ones_like)(v["params"])
    whole = runner(v["params"], v["batch_stats"], mask, keys, keys, start=0, capture=50)
    training = runner.begin(v["params"], v["batch_stats"], mask, keys, keys, start=0, capture=50)
    assert training.slices == 20
    for count in (1, 7, 2, 10):
        assert not training.done
        training.advance(count)
    assert training.done
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(training.result()), strict=True):
        np.testing.assert_array_equal(a, b)
    # a snapshot taken between chunks, inside period 2, continues exactly, in another Training
    training = runner.begin(v["params"], v["batch_stats"], mask, keys, keys, start=0, capture=50)
    training.advance(13)
    again = runner.begin(v["params"], v["batch_stats"], mask, keys, keys, start=0, capture=50,
                         saved=training.snapshot())
    assert (again.slice, again.iterations) == (13, 65)
    again.advance(7)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(again.result()), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(whole.train_loss).all() and whole.train_loss.shape == (2, 4)


def test_the_automatic_slice_follows_the_cost_of_a_step(exp_tiny):
    """On a CPU: tiny LeNet keeps the largest divisor of eval_every up to 10; Conv-2 (15.5 GFLOP a
    step, 5 trials x 3 variants on one device) gets slices of one step; a GPU/TPU keeps 10."""
    from lth_jax.config import conv_config

    assert lottery.Runner(exp_tiny).slice_iterations == 5
    c = conv_config("conv2", dropout=False)
    c.dataset.source = "synthetic"
    c.dataset.train_size, c.dataset.validation_size, c.dataset.test_size = 100, 10, 10
    conv = lottery.setup(c)
    runner = lottery.Runner(conv)
    assert runner.slice_iterations == 1
    assert runner._auto_slice("gpu") == 10
    assert lottery.Runner(conv, slice_iterations=20).slice_iterations == 20


@pytest.mark.parametrize("slice_iterations", [25, 1])
def test_the_slice_length_does_not_change_the_numbers(exp_tiny, slice_iterations):
    """A period in one slice of 25 steps, or in 25 slices of one step (a one-step scan, which XLA
    simplifies away), trains and evaluates to the same bits as slices of 5 (on this CPU): the
    step is the same program, and the period's losses are collected in the RunState and averaged
    once, whatever the slicing."""
    import jax.numpy as jnp

    keys = jnp.stack([lottery.trial_key(0, t, lottery.INIT) for t in range(2)])
    v = jax.jit(jax.vmap(exp_tiny.init_variables))(keys)
    mask = jax.vmap(masks.ones_like)(v["params"])
    ref = lottery.Runner(exp_tiny)(v["params"], v["batch_stats"], mask, keys, keys, start=25,
                                   capture=-1)
    other = lottery.Runner(exp_tiny, slice_iterations=slice_iterations)(
        v["params"], v["batch_stats"], mask, keys, keys, start=25, capture=-1)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(other), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(config_lib.ConfigError, match="runtime.slice_iterations"):
        lottery.Runner(exp_tiny, slice_iterations=7)


@pytest.fixture(scope="module")
def exp_tiny():
    return lottery.setup(tiny_config())


def test_workdir_with_another_config_is_refused(finished):
    workdir, _, _, _ = finished
    with pytest.raises(lottery.ExperimentError, match="train.learning_rate"):
        lottery.run(tiny_config(**{"train.learning_rate": 0.01}), workdir)


def test_rewinding_one_shot_global(tmp_path):
    """Late resetting to θ_k and one-shot global pruning with the output layer exempt."""
    cfg = tiny_config(**{"train.iterations": 75, "prune.rewind_iteration": 25,
                         "prune.one_shot": True, "prune.levels": 2, "prune.strategy": "global",
                         "prune.rules": ((r".*Dense_2/kernel", 0.0), (r".*kernel", 0.2)),
                         "trials": 1, "controls.random_prune": False})
    records = lottery.run(cfg, str(tmp_path / "run"), log=lambda _: None)
    assert [(r["level"], r["variant"]) for r in records] == [
        (0, "ticket"), (1, "ticket"), (1, "reinit"), (2, "ticket"), (2, "reinit")]
    assert records[0]["eval_iterations"] == [25, 50, 75]
    assert records[1]["eval_iterations"] == [50, 75]  # a rewound run trains from k=25 to the end
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
