"""The cheaper-tickets branch: a tiny trunk (LeNet on 8x8 synthetic data, levels 0..3), then
every method's masks at two of its levels trained together. Asserts exact counts, the documented
costs, IMP/one-shot/random against the trunk's own masks, the layerwise shuffles, each mask trained
once, resume without recomputation, the report and the command line."""

import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import REPO, cli_flags, tiny_config
from lth_jax import branches, lottery, masks, pruning, scores, workdir
from lth_jax.branches import base
from lth_jax.branches import cheaper_tickets as ct

# 4 evaluations of 25 iterations; the trunk's layerwise rules (fc 20%, output 10%) give levels at
# 80.2%, 64.3% and 51.6% of the weights; the branch compares at levels 2 and 3.
SMALL = dict(train__iterations=100, train__eval_every=25, prune__levels=3, trials=1,
             controls__reinit=False, controls__random_prune=False)
LEVELS = (2, 3)
# ε = 1 makes every distance count as small: the detector fires at its (W+1)-th mask, iteration
# 3 · 25 = 75 with W = 2, whatever the training does (a cost known exactly).
FIELDS = dict(levels=LEVELS, score_batches=2, synflow_rounds=5, early_bird_epsilon=1.0,
              early_bird_window=2)
B = 50  # TINY's train.batch_size


def _config():
    return tiny_config(**SMALL)


def branch_config(**fields):
    c = branches.default_config(ct)
    for k, v in {**FIELDS, **fields}.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lottery"))
    lines = []
    folder = base.run(branch_config(), _config(), path, log=lines.append)
    records = workdir.read_records(folder, key=ct.RECORD_KEY)
    return {"workdir": path, "dir": folder, "records": records, "lines": lines,
            "saved": workdir.load_experiment(path), "exp": lottery.setup(_config())}


def _mask(experiment, record):
    return jax.tree.map(np.asarray, masks.load(os.path.join(experiment["dir"], record["mask_file"])))


def _by(records, method, level):
    (r,) = [r for r in records if r["method"] == method and r["level"] == level]
    return r


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _leaf(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def f32_round(fraction, n):
    return int(np.round(np.float32(fraction) * np.float32(n)))


def test_every_group_is_recorded_once_and_each_mask_trained_once(experiment):
    records = experiment["records"]
    expected = {(0, lv, m) for lv in LEVELS for m in ct.METHODS} | {
        (0, lv, f"{m}+shuffle") for lv in LEVELS for m in ct.SHUFFLED}
    assert {(r["trial"], r["level"], r["method"]) for r in records} == expected
    assert len(records) == len(expected) == 24
    assert all(r["status"] == "ok" for r in records)
    assert all(0.0 <= r["test_accuracy_at_early_stop"] <= 1.0 for r in records)
    assert all(r["early_stop_iteration"] in (25, 50, 75, 100) for r in records)
    # IMP's tickets are the trunk's runs: their outcome is the trunk's record, not trained again.
    trunk = {(r["level"], r["variant"]): r for r in experiment["saved"]["records"]}
    for level in LEVELS:
        imp = _by(records, "imp", level)
        assert imp["trained_in"] == "trunk"
        for field in ("early_stop_iteration", "test_accuracy_at_early_stop", "val_loss",
                      "final_test_accuracy"):
            assert imp[field] == trunk[(level, "ticket")][field]
    # The others (random too: this trunk has no random-pruning control) in one batch per trial,
    # every distinct mask once.
    trained = [r for r in records if r["trained_in"] == "branch" and "same_mask_as" not in r]
    digests = {workdir.digest(_mask(experiment, r)) for r in trained}
    assert len(digests) == len(trained) == trained[0]["runs_in_program"] == 22
    assert "levels [2, 3]" in "\n".join(experiment["lines"])


def test_imp_masks_are_the_lotterys_levels_and_random_is_its_control(experiment):
    saved, exp = experiment["saved"], experiment["exp"]
    level_density = {lv: ct._density(jax.tree.map(lambda x: x[0], saved["levels"][lv]["mask"]),
                                     exp.prunable) for lv in saved["levels"]}
    assert sorted(level_density) == [0, 1, 2, 3]
    for level in LEVELS:
        imp = _by(experiment["records"], "imp", level)
        level_mask = jax.tree.map(lambda x: np.asarray(x[0]), saved["levels"][level]["mask"])
        assert imp["target_density"] == imp["density"] == level_density[level]
        assert _equal(_mask(experiment, imp), level_mask)
        # The lottery's random-pruning control at that level: same key, same mask.
        random = _by(experiment["records"], "random", level)
        # (Jitted as the mode jits it: one compilation, shared through the XLA cache.)
        expected = jax.jit(pruning.random_like)(
            lottery.trial_key(0, 0, lottery.RANDOM_MASK, level), level_mask)
        assert _equal(_mask(experiment, random), jax.tree.map(np.asarray, expected))
        assert random["layer_alive"] == imp["layer_alive"]
        assert not _equal(_mask(experiment, random), level_mask)


def test_achieved_densities_are_exact_counts(experiment):
    exp = experiment["exp"]
    sizes = {"Dense_0/kernel": 64 * 300, "Dense_1/kernel": 300 * 100, "Dense_2/kernel": 100 * 10}
    total = sum(sizes.values())
    for level in LEVELS:
        target = _by(experiment["records"], "imp", level)["target_density"]
        # SNIP, GraSP, SynFlow: one global ranking, exactly round(target · total) weights.
        for method in ("snip", "grasp", "synflow"):
            r = _by(experiment["records"], method, level)
            assert r["alive"] == f32_round(target, total) == sum(r["layer_alive"].values())
            assert r["density"] == r["alive"] / total
        # One-shot and early-bird: IMP's allocation, round(d_l · n_l) per layer.
        allocation = ct.lottery_allocation(exp, target)
        per_leaf = {k: _leaf(allocation.density, k) for k in sizes}
        expected = {k: f32_round(per_leaf[k], n) for k, n in sizes.items()}
        for method in ("oneshot", "earlybird"):
            r = _by(experiment["records"], method, level)
            assert r["layer_alive"] == expected
            assert abs(r["alive"] - target * total) <= len(sizes)


def test_lottery_allocation_follows_the_rates():
    exp = lottery.setup(_config())
    for target in (0.9, 0.513, 0.07):
        a = ct.lottery_allocation(exp, target)
        assert a.allocation == "layerwise"
        d = {k: _leaf(a.density, k) for k in ("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel")}
        # One exponent x for every layer: d_l = (1 - r_l)^x with rates 0.2, 0.2, 0.1.
        xs = [math.log(d["Dense_0/kernel"]) / math.log(0.8), math.log(d["Dense_1/kernel"]) / math.log(0.8),
              math.log(d["Dense_2/kernel"]) / math.log(0.9)]
        assert max(xs) - min(xs) < 1e-9
        kept = 64 * 300 * d["Dense_0/kernel"] + 300 * 100 * d["Dense_1/kernel"] + 1000 * d["Dense_2/kernel"]
        assert kept == pytest.approx(target * 50200, rel=1e-9)
        assert _leaf(a.density, "Dense_0/bias") == 1.0
    glob = lottery.setup(tiny_config(**SMALL, prune__strategy="global", prune__global_rate=0.2))
    a = ct.lottery_allocation(glob, 0.3)
    assert (a.allocation, a.density) == ("global", 0.3)
    # The output layer exempt (1000 of 50,200 weights): 1% cannot be reached.
    exempt = lottery.setup(tiny_config(**SMALL, prune__rules=((r"Dense_2/kernel", 0.0),
                                                               (r".*kernel", 0.2))))
    a = ct.lottery_allocation(exempt, 0.5)
    assert _leaf(a.density, "Dense_2/kernel") == 1.0
    kept = 49200 * _leaf(a.density, "Dense_0/kernel") + 1000
    assert kept == pytest.approx(0.5 * 50200, rel=1e-9)
    with pytest.raises(ValueError, match="never prune"):
        ct.lottery_allocation(exempt, 0.01)


def test_one_shot_is_magnitude_of_the_trained_dense_network(experiment):
    saved, exp = experiment["saved"], experiment["exp"]
    trained = jax.tree.map(lambda x: x[0], saved["levels"][0]["trained_params"])
    for level in LEVELS:
        a = ct.lottery_allocation(exp, _by(experiment["records"], "imp", level)["target_density"])
        expected = jax.jit(lambda t, d: scores.magnitude(t, masks.ones_like(t), d, a.prunable,
                                                         a.allocation))(trained, a.density)
        r = _by(experiment["records"], "oneshot", level)
        assert _equal(_mask(experiment, r), jax.tree.map(np.asarray, expected))


def test_costs_are_as_documented(experiment):
    records = experiment["records"]
    for level in LEVELS:
        cost = {r["method"]: (r["cost_model_steps"], r["cost_fwd_bwd_passes"], r["cost_examples"])
                for r in records if r["level"] == level}
        assert cost["imp"] == (100 * level, 0, 0)            # one full training per level
        assert cost["oneshot"] == (100, 0, 0)                # one training
        assert cost["earlybird"] == (75, 0, 0)               # fired at its 3rd mask
        assert cost["snip"] == (0, 2, 2 * B)                 # one fwd+bwd per batch
        assert cost["grasp"] == (0, 6, 6 * B)                # fwd+bwd + jvp (2) per batch
        assert cost["synflow"] == (0, 5, 5)                  # one fwd+bwd per round, 1 example
        assert cost["random"] == (0, 0, 0)                   # layerwise: counts from the rates
        for r in records:
            if r["level"] == level:
                assert r["imp_cost"] == 100 * level
                assert r["cost"] == r["cost_model_steps"] + r["cost_examples"] / B
                if "+" in r["method"]:
                    assert cost[r["method"]] == cost[r["source"]]
        eb = _by(records, "earlybird", level)["early_bird"]
        assert eb == {"found": True, "iteration": 75, "epsilon": 1.0, "window": 2,
                      "every_iterations": 25}
    # With rewinding to k, levels after 0 train from k: level 3 = 100 + 2 · (100 - 25).
    assert [ct.imp_cost(level, 100, 25) for level in range(4)] == [0, 100, 175, 250]


def test_shuffles_keep_layer_counts_at_other_positions(experiment):
    records = experiment["records"]
    for level in LEVELS:
        for method in ct.SHUFFLED:
            source, shuffled = _by(records, method, level), _by(records, f"{method}+shuffle", level)
            assert shuffled["source"] == method
            assert shuffled["layer_alive"] == source["layer_alive"]
            assert shuffled["alive"] == source["alive"]
            a, b = _mask(experiment, source), _mask(experiment, shuffled)
            for path in source["layer_alive"]:
                x, y = _leaf(a, path), _leaf(b, path)
                assert x.sum() == y.sum() and not np.array_equal(x, y), (method, path)
            assert np.all(_leaf(b, "Dense_0/bias"))  # never-pruned leaves stay all-True


def test_early_bird_that_never_fires_takes_the_final_dense_mask(experiment, tmp_path):
    # ε = 0: no distance is below it. Training runs to the end, and the last mask is the magnitude
    # mask of the trunk's trained dense network (the early-bird run is the trunk's level 0): it is
    # one-shot's mask, trained once for both.
    path = str(tmp_path / "w")
    shutil.copytree(experiment["workdir"], path, ignore=shutil.ignore_patterns("branches"))
    folder = base.run(branch_config(levels=(3,), methods=("earlybird", "oneshot"), shuffle=False,
                                    early_bird_epsilon=0.0), _config(), path, log=lambda _: None)
    eb, oneshot = (_by(workdir.read_records(folder, key=ct.RECORD_KEY), m, 3)
                   for m in ("earlybird", "oneshot"))
    assert eb["early_bird"]["found"] is False and eb["early_bird"]["iteration"] == 100
    assert eb["cost_model_steps"] == 100
    assert _equal(masks.load(os.path.join(folder, eb["mask_file"])),
                  masks.load(os.path.join(folder, oneshot["mask_file"])))
    assert eb["same_mask_as"] == "oneshot" and "same_mask_as" not in oneshot
    assert eb["test_accuracy_at_early_stop"] == oneshot["test_accuracy_at_early_stop"]


def test_resume_gives_the_same_records_without_recomputation(experiment, monkeypatch):
    path = experiment["dir"]
    with open(os.path.join(path, workdir.RESULTS)) as f:
        before = f.read()

    def fail(*args, **kwargs):
        raise AssertionError("recomputed on resume")

    monkeypatch.setattr(ct, "find_masks", fail)
    monkeypatch.setattr(lottery.Runner, "begin", fail)
    again = base.run(branch_config(), _config(), experiment["workdir"], log=lambda _: None)
    assert again == path
    assert workdir.read_records(path, key=ct.RECORD_KEY) == experiment["records"]
    with open(os.path.join(path, workdir.RESULTS)) as f:
        assert f.read() == before
    written = base.write_report(path)
    assert sorted(os.path.basename(p) for p in written) == sorted(
        [ct.REPORT, ct.DENSITY_PLOT, ct.COST_PLOT])
    assert all(os.path.getsize(p) > 0 for p in written)
    table = open(os.path.join(path, ct.REPORT)).read()
    assert "| 2 | 64.3% |" in table and "| 3 | 51.6% |" in table
    assert "SNIP+shuffle" in table and "## Cost to find the mask" in table
    assert "95% confidence interval" in table


def test_refusals(experiment, tmp_path):
    def refused(match, config=None, **fields):
        with pytest.raises(Exception, match=match) as info:
            base.run(branch_config(**fields), config or _config(), str(tmp_path / "new"),
                     log=lambda _: None)
        assert "\n" not in str(info.value)
        assert not os.path.exists(tmp_path / "new" / "branches")  # nothing written before

    refused("branch.methods", methods=("imp", "lottery"))
    refused("branch.levels", levels=(0, 2))
    refused("config.prune.levels", levels=(2, 5))  # the trunk stops at 3
    refused("branch.allocation", allocation="everywhere")
    refused("config.prune.one_shot", config=tiny_config(**{**SMALL, "prune__one_shot": True}))
    refused("branch.trials", trials=2)
    # Another experiment in --workdir: the trunk refuses it, naming the field.
    other = _config()
    other.train.learning_rate = 0.1
    with pytest.raises(lottery.ExperimentError, match="train.learning_rate"):
        base.run(branch_config(), other, experiment["workdir"], log=lambda _: None)


def test_command_line_resumes_a_finished_branch(experiment, tmp_path):
    path = str(tmp_path / "copy")
    shutil.copytree(experiment["workdir"], path)
    flags = cli_flags(**SMALL)
    cmd = [sys.executable, "-m", "lth_jax.main", "--config=configs/tiny.py", *flags,
           f"--workdir={path}", "--branch=configs/branches/cheaper_tickets.py",
           "--branch.levels=(2, 3)", "--branch.score_batches=2", "--branch.synflow_rounds=5",
           "--branch.early_bird_epsilon=1.0", "--branch.early_bird_window=2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "report:" in done.stdout and "iteration 25/" not in done.stdout  # nothing trained
    folder = os.path.join(path, "branches", os.path.basename(experiment["dir"]))
    assert workdir.read_records(folder, key=ct.RECORD_KEY) == experiment["records"]
    bad = subprocess.run(cmd + ["--branch.methods=('imp', 'magic')"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("lth_jax: error: ") \
        and len(bad.stderr.strip().splitlines()) == 1 and "magic" in bad.stderr
