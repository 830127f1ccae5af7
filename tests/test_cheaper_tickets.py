"""The cheaper-tickets experiment mode: a tiny lottery first (LeNet on 8x8 synthetic data, levels
0..3), then every method's masks at two target densities trained together. Asserts exact counts,
the documented costs, IMP/one-shot/random against the lottery's own masks, the layerwise shuffles,
resume without recomputation, the report and the command line."""

import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, cli_flags, tiny_config
from lth_jax import cheaper_tickets as ct
from lth_jax import lottery, masks, pruning, scores, workdir

# 4 evaluations of 25 iterations; the lottery's layerwise rules (fc 20%, output 10%) give levels
# at 80.2%, 64.3% and 51.6% of the weights, the closest to the targets 0.7 and 0.5 are 2 and 3.
SMALL = dict(train__iterations=100, train__eval_every=25, prune__levels=3, trials=1,
             controls__reinit=False, controls__random_prune=False)
TARGETS = (0.7, 0.5)
# ε = 1 makes every distance count as small: the detector fires at its (W+1)-th mask, iteration
# 3 · 25 = 75 with W = 2, whatever the training does (a cost known exactly).
OPTIONS = ct.Options(score_batches=2, synflow_rounds=5, early_bird_epsilon=1.0,
                     early_bird_window=2)
B = 50  # TINY's train.batch_size


def _config():
    return tiny_config(**SMALL)


@pytest.fixture(scope="module")
def lottery_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lottery"))
    lottery.run(_config(), path, log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def experiment(lottery_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cheaper"))
    lines = []
    records = ct.run(_config(), path, tickets=lottery_dir, densities=TARGETS, options=OPTIONS,
                     log=lines.append)
    return {"dir": path, "records": records, "lines": lines, "tickets": lottery_dir,
            "saved": workdir.load_experiment(lottery_dir), "exp": lottery.setup(_config())}


def _mask(experiment, record):
    return jax.tree.map(np.asarray, masks.load(os.path.join(experiment["dir"], record["mask_file"])))


def _by(records, method, target):
    (r,) = [r for r in records if r["method"] == method and r["target_density"] == target]
    return r


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _leaf(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def f32_round(fraction, n):
    return int(np.round(np.float32(fraction) * np.float32(n)))


def test_every_group_is_recorded_once(experiment):
    records = experiment["records"]
    expected = {(0, t, m) for t in TARGETS for m in ct.METHODS} | {
        (0, t, f"{m}+shuffle") for t in TARGETS for m in ct.SHUFFLED}
    assert {(r["trial"], r["target_density"], r["method"]) for r in records} == expected
    assert len(records) == len(expected) == 24
    assert all(r["status"] == "ok" and r["runs_in_program"] == 24 for r in records)
    assert all(0.0 <= r["test_accuracy_at_early_stop"] <= 1.0 for r in records)
    assert all(r["early_stop_iteration"] in (25, 50, 75, 100) for r in records)


def test_imp_masks_are_the_lotterys_levels_and_random_is_its_control(experiment):
    saved, exp = experiment["saved"], experiment["exp"]
    level_density = {lv: ct._density(jax.tree.map(lambda x: x[0], saved["levels"][lv]["mask"]),
                                     exp.prunable) for lv in saved["levels"]}
    assert sorted(level_density) == [0, 1, 2, 3]
    for target, level in ((0.7, 2), (0.5, 3)):
        assert ct.closest_level(level_density, target) == level
        imp = _by(experiment["records"], "imp", target)
        level_mask = jax.tree.map(lambda x: np.asarray(x[0]), saved["levels"][level]["mask"])
        assert imp["imp_level"] == level and imp["density"] == level_density[level]
        assert _equal(_mask(experiment, imp), level_mask)
        # The lottery's random-pruning control at that level: same key, same mask.
        random = _by(experiment["records"], "random", target)
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
    for target in TARGETS:
        # SNIP, GraSP, SynFlow: one global ranking, exactly round(target · total) weights.
        for method in ("snip", "grasp", "synflow"):
            r = _by(experiment["records"], method, target)
            assert r["alive"] == f32_round(target, total) == sum(r["layer_alive"].values())
            assert r["density"] == r["alive"] / total
        # One-shot and early-bird: IMP's allocation, round(d_l · n_l) per layer.
        allocation = ct.lottery_allocation(exp, target)
        per_leaf = {k: _leaf(allocation.density, k) for k in sizes}
        expected = {k: f32_round(per_leaf[k], n) for k, n in sizes.items()}
        for method in ("oneshot", "earlybird"):
            r = _by(experiment["records"], method, target)
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
    for target in TARGETS:
        a = ct.lottery_allocation(exp, target)
        expected = jax.jit(lambda t, d: scores.magnitude(t, masks.ones_like(t), d, a.prunable,
                                                         a.allocation))(trained, a.density)
        r = _by(experiment["records"], "oneshot", target)
        assert _equal(_mask(experiment, r), jax.tree.map(np.asarray, expected))


def test_costs_are_as_documented(experiment):
    records = experiment["records"]
    for target, level in ((0.7, 2), (0.5, 3)):
        cost = {r["method"]: (r["cost_model_steps"], r["cost_fwd_bwd_passes"], r["cost_examples"])
                for r in records if r["target_density"] == target}
        assert cost["imp"] == (100 * level, 0, 0)            # one full training per level
        assert cost["oneshot"] == (100, 0, 0)                # one training
        assert cost["earlybird"] == (75, 0, 0)               # fired at its 3rd mask
        assert cost["snip"] == (0, 2, 2 * B)                 # one fwd+bwd per batch
        assert cost["grasp"] == (0, 6, 6 * B)                # fwd+bwd + jvp (2) per batch
        assert cost["synflow"] == (0, 5, 5)                  # one fwd+bwd per round, 1 example
        assert cost["random"] == (0, 0, 0)                   # layerwise: counts from the rates
        for r in records:
            if r["target_density"] == target:
                assert r["imp_cost"] == 100 * level
                assert r["cost"] == r["cost_model_steps"] + r["cost_examples"] / B
                if "+" in r["method"]:
                    assert cost[r["method"]] == cost[r["source"]]
        eb = _by(records, "earlybird", target)["early_bird"]
        assert eb == {"found": True, "iteration": 75, "epsilon": 1.0, "window": 2,
                      "every_iterations": 25}
    # With rewinding to k, levels after 0 train from k: level 3 = 100 + 2 · (100 - 25).
    assert [ct.imp_cost(level, 100, 25) for level in range(4)] == [0, 100, 175, 250]


def test_shuffles_keep_layer_counts_at_other_positions(experiment):
    records = experiment["records"]
    for target in TARGETS:
        for method in ct.SHUFFLED:
            source, shuffled = _by(records, method, target), _by(records, f"{method}+shuffle", target)
            assert shuffled["source"] == method
            assert shuffled["layer_alive"] == source["layer_alive"]
            assert shuffled["alive"] == source["alive"]
            a, b = _mask(experiment, source), _mask(experiment, shuffled)
            for path in source["layer_alive"]:
                x, y = _leaf(a, path), _leaf(b, path)
                assert x.sum() == y.sum() and not np.array_equal(x, y), (method, path)
            assert np.all(_leaf(b, "Dense_0/bias"))  # never-pruned leaves stay all-True


def test_early_bird_that_never_fires_takes_the_final_dense_mask(experiment):
    # ε = 0: no distance is below it. Training runs to the end, and the last mask is the magnitude
    # mask of the lottery's trained dense network: the early-bird run is the lottery's level 0.
    exp, saved = experiment["exp"], experiment["saved"]
    options = ct.Options(early_bird_epsilon=0.0, early_bird_window=2, shuffle=False)
    runs = ct.find_masks(exp, saved, 0, [(0.5, "earlybird"), (0.5, "oneshot")], options,
                         log=lambda _: None)
    oneshot, eb = runs
    assert eb["early_bird"]["found"] is False and eb["early_bird"]["iteration"] == 100
    assert eb["cost_model_steps"] == 100
    assert (eb["method"], oneshot["method"]) == ("earlybird", "oneshot")
    assert _equal(eb["mask"], oneshot["mask"])


def test_resume_gives_the_same_records_without_recomputation(experiment, monkeypatch):
    path = experiment["dir"]
    with open(os.path.join(path, ct.RECORDS)) as f:
        before = f.read()

    def fail(*args, **kwargs):
        raise AssertionError("recomputed on resume")

    monkeypatch.setattr(ct, "find_masks", fail)
    monkeypatch.setattr(lottery.Runner, "__call__", fail)
    again = ct.run(_config(), path, tickets=experiment["tickets"],
                   densities=TARGETS, options=OPTIONS, log=lambda _: None)
    assert again == experiment["records"]
    with open(os.path.join(path, ct.RECORDS)) as f:
        assert f.read() == before
    for name in (ct.REPORT, ct.DENSITY_PLOT, ct.COST_PLOT):
        assert os.path.getsize(os.path.join(path, name)) > 0
    table = open(os.path.join(path, ct.REPORT)).read()
    assert "| 70% (IMP 64.3%) |" in table and "| 50% (IMP 51.6%) |" in table
    assert "SNIP+shuffle" in table and "## Cost to find the mask" in table


def test_refusals(experiment, lottery_dir, tmp_path):
    with pytest.raises(ValueError, match="another cheaper-tickets experiment"):
        ct.run(_config(), experiment["dir"], tickets=lottery_dir, densities=TARGETS,
               options=ct.Options(score_batches=3), log=lambda _: None)
    other = _config()
    other.train.learning_rate = 0.1
    with pytest.raises(ValueError, match="train.learning_rate"):
        ct.run(other, str(tmp_path), tickets=lottery_dir, log=lambda _: None)
    with pytest.raises(ValueError, match="unknown method"):
        ct.run(_config(), str(tmp_path), tickets=lottery_dir, methods=["imp", "lottery"],
               log=lambda _: None)
    with pytest.raises(ValueError, match="trial"):
        ct.run(tiny_config(**{**SMALL, "trials": 2}), str(tmp_path), tickets=lottery_dir,
               log=lambda _: None)


def test_command_line_resumes_a_finished_experiment(experiment, lottery_dir, tmp_path):
    path = str(tmp_path / "copy")
    shutil.copytree(experiment["dir"], path)
    flags = cli_flags(**SMALL)
    cmd = [sys.executable, "-m", "lth_jax.cheaper_tickets", "--config=configs/tiny.py", *flags,
           f"--workdir={path}", f"--tickets={lottery_dir}", "--densities=0.7,0.5",
           "--score_batches=2", "--synflow_rounds=5", "--early_bird_epsilon=1", "--early_bird_window=2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "report:" in done.stdout and "training" not in done.stdout
    assert ct.read_records(path) == experiment["records"]
    bad = subprocess.run(cmd[:-4] + ["--methods=imp,magic"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("lth_jax: error: ") \
        and len(bad.stderr.strip().splitlines()) == 1 and "magic" in bad.stderr
