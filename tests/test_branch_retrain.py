"""Retraining after pruning (Renda et al., ICLR 2020): prune.retrain in the lottery and the
retrain branch, which retrains the trunk's level 0 by another rule. Each rule's learning rates,
where each retraining starts, LR rewinding with t = T against rewinding the trained weights,
and weight rewinding unchanged against records made before the rules existed."""

import json
import os

import jax
import numpy as np
import pytest

from helpers import REPO, fusion_emitters, tiny_config
from lth_jax import branches, lottery, masks, workdir
from lth_jax import config as config_lib
from lth_jax.branches import base, retrain
from lth_jax.lottery import imp as imp_lib

# SGD with momentum and a step schedule: warmup over 10 iterations, drops at 50 and 75.
SCHEDULE = dict(train__optimizer="momentum", train__learning_rate=0.05,
                train__warmup_iterations=10, train__lr_drops=(50, 75), train__lr_drop_factor=0.1,
                controls__reinit=False, controls__random_prune=False, prune__levels=2)


def _branch(**fields):
    c = branches.default_config(retrain)
    for k, v in fields.items():
        c[k] = v
    return c


def test_each_rule_starts_where_it_says_with_the_rate_it_says():
    exp = lottery.setup(tiny_config(**SCHEDULE))
    lr = exp.trainer.lr
    T = exp.trainer.iterations
    rates = {s: float(lr(s)) for s in range(T)}
    assert rates[0] == pytest.approx(0.005) and rates[60] == pytest.approx(0.005)
    # Weight rewinding to k = 25: the schedule replayed from 25.
    wr = retrain.experiment(_branch(rule="weight_rewinding", rewind_iteration=25), exp)
    assert wr.retrain_start == 25 and wr.retraining() is wr
    # LR rewinding, t = 50: the last 50 iterations of the schedule, the same rate at every step.
    lrr = retrain.experiment(_branch(rule="lr_rewinding", retrain_iterations=50), exp)
    assert lrr.retrain_start == 50
    assert [float(lrr.retraining().trainer.lr(s)) for s in range(50, T)] == [
        rates[s] for s in range(50, T)]
    # Fine-tuning, t = 25: 25 iterations at the schedule's final rate lr(T - 1).
    ft = retrain.experiment(_branch(rule="fine_tuning", retrain_iterations=25), exp)
    assert ft.retrain_start == 75
    assert {float(ft.retraining().trainer.lr(s)) for s in range(75, T)} == {rates[T - 1]}
    assert float(ft.retraining().trainer.lr(0)) == rates[T - 1] != rates[0]
    assert ft.retraining().programs_key != exp.programs_key  # a program of its own


def _capturing_run(config, path, base_trunk=None):
    """lottery.run, keeping the runs each level trains (what they start from)."""
    seen = {}
    real = imp_lib.LevelTrainer.__call__

    def spy(self, level, runs, trials, *, start, capture):
        seen[level] = (jax.tree.map(np.asarray, runs), start)
        return real(self, level, runs, trials, start=start, capture=capture)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imp_lib.LevelTrainer, "__call__", spy)
        records = lottery.run(config, path, log=lambda _: None, base=base_trunk)
    return records, seen


def test_fine_tuning_starts_from_the_masked_trained_weights_and_records_say_so(tmp_path):
    config = tiny_config(**SCHEDULE, prune__retrain="fine_tuning", prune__retrain_iterations=25)
    records, seen = _capturing_run(config, str(tmp_path))
    saved = lottery.load_experiment(str(tmp_path))
    for level in (1, 2):
        (params, _, mask), start = seen[level][0]["ticket"], seen[level][1]
        source = saved["levels"][level - 1]
        assert start == 75
        assert masks.is_subset(mask, source["mask"])
        expected = jax.tree.map(lambda p, m: np.where(m, p, 0), source["trained_params"], mask)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
    for r in records:
        assert r["cost_model_steps"] == (100 if r["level"] == 0 else 25)
        assert r.get("retrain") == (None if r["level"] == 0 else "fine_tuning")
        assert r["eval_iterations"][0] == (25 if r["level"] == 0 else 100)


def test_lr_rewinding_with_t_equal_to_T_is_weight_rewinding_to_the_trained_weights(tmp_path):
    """Level 1 of LR rewinding with t = T trains m ⊙ θ_trained from iteration 0 with the whole
    schedule: the same program and numbers as training that network from scratch by hand."""
    config = tiny_config(**SCHEDULE)
    lottery.run(config, str(tmp_path), log=lambda _: None)
    folder = base.run(_branch(rule="lr_rewinding", levels=1), config, str(tmp_path),
                      log=lambda _: None)
    mine = workdir.read_checkpoint(folder, workdir.level_checkpoint(1))[0]["ticket"]
    trunk = lottery.load_experiment(str(tmp_path))["levels"][0]
    exp = lottery.setup(config)
    mask = mine["mask"]
    start = jax.tree.map(lambda p, m: np.where(m, p, 0), trunk["trained_params"], mask)
    keys = [lottery.trial_key(0, t, p) for p in (lottery.DATA, lottery.NOISE) for t in (0, 1)]
    by_hand = imp_lib.make_runner(exp)(start, trunk["trained_batch_stats"], mask,
                                       jax.numpy.stack(keys[:2]), jax.numpy.stack(keys[2:]),
                                       start=0, capture=-1)
    for a, b in zip(jax.tree.leaves(by_hand.params), jax.tree.leaves(mine["trained_params"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    records = workdir.read_records(folder)
    assert [r["retrain"] for r in records] == ["lr_rewinding"] * 2
    # Reopened, the folder keeps every trial's records (its config.json names no trials: the
    # runs of a level come from the experiment's config).
    again = base.run(_branch(rule="lr_rewinding", levels=1), config, str(tmp_path),
                     log=lambda _: None)
    assert workdir.read_records(again) == records
    np.testing.assert_array_equal([r["val_loss"] for r in records],
                                  np.asarray(by_hand.val_loss, np.float64).tolist())


def test_weight_rewinding_is_unchanged_against_records_made_before_the_rules(tmp_path):
    """tests/data/weight_rewinding_records.json: the tiny lottery (rewinding to k = 25) run by
    the code before prune.retrain existed, on this kind of machine. Today's code gives the same
    records, every field bit for bit (the new cost and rule fields aside)."""
    with open(os.path.join(REPO, "tests", "data", "weight_rewinding_records.json")) as f:
        saved = json.load(f)
    cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
    if cpu[:1] != [saved["cpu"]]:
        pytest.skip(f"made on {saved['cpu']}; float rounding may differ on {cpu[:1]}")
    records = lottery.run(tiny_config(prune__rewind_iteration=25), str(tmp_path),
                          log=lambda _: None)
    assert len(records) == len(saved["records"]) == 14
    for now, before in zip(records, saved["records"]):
        assert {k: now[k] for k in before} == before
        assert set(now) - set(before) <= {"cost_model_steps", "retrain", "train_seconds"}
    assert saved["records"][0]["experiment"] == records[0]["experiment"]  # the same identity


def test_a_retrain_branch_shares_the_trunks_level_0_and_rewinds_elsewhere(tmp_path):
    # θ_50 two ways (a capture inside level 0, a run stopped at 50): programs of other loop
    # shapes, compared bit for bit under the fusion emitters (helpers.fusion_emitters).
    with fusion_emitters():
        config = tiny_config(**SCHEDULE)
        lottery.run(config, str(tmp_path), log=lambda _: None)
        logs = []
        folder = base.run(_branch(rule="weight_rewinding", rewind_iteration=50), config,
                          str(tmp_path), log=logs.append)
        assert not any(line.startswith("level  0  iteration") for line in logs)  # not trained again
        records = workdir.read_records(folder)
        assert sorted({r["level"] for r in records}) == [1, 2]
        assert all(r["eval_iterations"][0] == 75 and r["cost_model_steps"] == 50 for r in records)
        # θ_50 comes from the dense trajectory of the trunk's level 0 (all trials in one batch).
        theta = workdir.read_checkpoint(folder, workdir.INIT)[0]
        trunk = lottery.load_experiment(str(tmp_path))
        for a, b in zip(jax.tree.leaves(theta["theta0"]), jax.tree.leaves(trunk["theta0"])):
            np.testing.assert_array_equal(a, b)
        k50 = tiny_config(**{**SCHEDULE, "prune__levels": 0}, prune__rewind_iteration=50)
        lottery.run(k50, str(tmp_path / "k50"), log=lambda _: None)
        for a, b in zip(jax.tree.leaves(theta["theta_rewind"]),
                        jax.tree.leaves(lottery.load_experiment(str(tmp_path / "k50"))["theta_rewind"])):
            np.testing.assert_array_equal(a, b)
        table = open(os.path.join(folder, "report.md")).read() if os.path.exists(
            os.path.join(folder, "report.md")) else open(base.write_report(folder)[0]).read()
        assert "weight rewinding (k = 50)" in table


@pytest.mark.parametrize("overrides, match", [
    (dict(prune__retrain="lr_rewinding"), "prune.retrain_iterations"),
    (dict(prune__retrain="lr_rewinding", prune__retrain_iterations=30), "prune.retrain_iterations"),
    (dict(prune__retrain="fine_tuning", prune__retrain_iterations=25, prune__rewind_iteration=25),
     "prune.rewind_iteration"),
    (dict(prune__retrain_iterations=25), "prune.retrain_iterations"),
    (dict(prune__retrain="lr_rewinding", prune__retrain_iterations=25, controls__reinit=True),
     "controls.reinit"),
    (dict(prune__retrain="rewinding"), "prune.retrain")])
def test_combinations_that_mean_nothing_are_refused_naming_the_field(overrides, match):
    config = tiny_config(**{**SCHEDULE, "controls__reinit": False, **overrides})
    with pytest.raises(config_lib.ConfigError, match=match) as info:
        config_lib.validate(config)
    assert "\n" not in str(info.value)


def test_branch_fields_are_refused_by_their_names(tmp_path):
    for fields, match in ((dict(rule="fine_tuning", rewind_iteration=25), "branch.rewind_iteration"),
                          (dict(rule="weight_rewinding", retrain_iterations=25),
                           "branch.retrain_iterations"),
                          (dict(rule="lr_rewinding", retrain_iterations=30),
                           "branch.retrain_iterations"),
                          (dict(rule="lr_rewinding", reinit=True), "branch.reinit"),
                          (dict(rule="magic"), "branch.rule")):
        with pytest.raises(config_lib.ConfigError, match=match):
            base.run(_branch(**fields), tiny_config(**SCHEDULE), str(tmp_path), log=lambda _: None)
    assert os.listdir(tmp_path) == []


def test_random_pruning_under_lr_rewinding_draws_among_the_previous_survivors(tmp_path):
    config = tiny_config(**{**SCHEDULE, "controls__random_prune": True},
                         prune__retrain="lr_rewinding", prune__retrain_iterations=50)
    _, seen = _capturing_run(config, str(tmp_path))
    saved = lottery.load_experiment(str(tmp_path))
    for level in (1, 2):
        ticket, random_run = seen[level][0]["ticket"], seen[level][0]["random_prune"]
        previous = saved["levels"][level - 1]["mask"]
        assert masks.is_subset(random_run[2], previous)
        assert masks.layer_density(random_run[2]) == masks.layer_density(ticket[2])
        assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(random_run[2]),
                                                            jax.tree.leaves(ticket[2])))
        # on the previous network's trained weights, as the ticket
        trained = saved["levels"][level - 1]["trained_params"]
        expected = jax.tree.map(lambda p, m: np.where(m, p, 0), trained, random_run[2])
        for a, b in zip(jax.tree.leaves(random_run[0]), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(a, b)


def test_the_recorded_retraining_comparison_was_made_by_its_config_files():
    """experiments/retraining: every branch's saved config is branch.py's setting of that name on
    the trunk of config.py, and the trunk's copied config is config.py's."""
    folder = os.path.join(REPO, "experiments", "retraining")
    trunk = lottery.config_to_json(config_lib.load_file(os.path.join(folder, "config.py")))
    with open(os.path.join(folder, "trunk_config.json")) as f:
        saved_trunk = json.load(f)
    assert config_lib.identity(saved_trunk) == config_lib.identity(trunk)
    names = sorted(n[:-len("_config.json")] for n in os.listdir(folder)
                   if n.endswith("_config.json") and n != "trunk_config.json")
    assert len(names) == 5
    for name in names:
        with open(os.path.join(folder, f"{name}_config.json")) as f:
            saved = json.load(f)
        branch = config_lib.load_file(os.path.join(folder, "branch.py"), name)
        assert saved == {"branch": config_lib.to_json(branch),
                         "trunk": config_lib.identity(trunk)}, name
        with open(os.path.join(folder, f"{name}.jsonl")) as f:  # each record names its branch
            assert {json.loads(line)["experiment"] for line in f} == {
                base.branch_identity(config_lib.identity(trunk), branch)}, name
