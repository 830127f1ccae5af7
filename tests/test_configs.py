"""The paper configs: their hyperparameters, and each builds its model and takes training steps."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import config as config_lib
from lth_jax import lottery, masks

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
PAPER = ["lenet300_100", "conv2", "conv4", "conv6", "conv2_dropout", "conv4_dropout",
         "conv6_dropout", "vgg19", "resnet18"]


def load(name):
    return config_lib.load_file(os.path.join(CONFIGS, f"{name}.py"))


@pytest.mark.parametrize("name", PAPER + ["quickstart", "tiny"])
def test_config_is_valid(name):
    config_lib.validate(load(name))


def test_paper_hyperparameters():
    # (iterations, batch, optimizer, lr, warmup, drops, weight decay) from docs/paper.md
    expected = {
        "lenet300_100": (50_000, 60, "adam", 1.2e-3, 0, (), 0.0),
        "conv2": (20_000, 60, "adam", 2e-4, 0, (), 0.0),
        "conv4": (25_000, 60, "adam", 3e-4, 0, (), 0.0),
        "conv6": (30_000, 60, "adam", 3e-4, 0, (), 0.0),
        "conv2_dropout": (60_000, 60, "adam", 3e-4, 0, (), 0.0),
        "conv4_dropout": (75_000, 60, "adam", 2e-4, 0, (), 0.0),
        "conv6_dropout": (90_000, 60, "adam", 2e-4, 0, (), 0.0),
        "vgg19": (112_480, 64, "momentum", 0.1, 10_000, (56_240, 84_360), 1e-4),
        "resnet18": (30_000, 128, "momentum", 0.03, 20_000, (20_000, 25_000), 1e-4),
    }
    for name, (its, bs, opt, lr, warmup, drops, wd) in expected.items():
        t = load(name).train
        assert (t.iterations, t.batch_size, t.optimizer, t.warmup_iterations, tuple(t.lr_drops)) == \
            (its, bs, opt, warmup, drops), name
        assert t.learning_rate == pytest.approx(lr) and t.weight_decay == pytest.approx(wd), name
        assert load(name).dataset.validation_size == 5000
    assert load("conv6_dropout").model.dropout_rate == 0.5 and load("conv6").model.dropout_rate == 0.0


def shrink_to_synthetic(cfg):
    lenet = cfg.model.name == "lenet300_100"
    cfg.dataset.source = cfg.dataset.name = "synthetic"
    cfg.dataset.image_shape = (28, 28, 1) if lenet else (32, 32, 3)
    cfg.dataset.train_size, cfg.dataset.test_size, cfg.dataset.validation_size = 40, 8, 8
    cfg.train.iterations = cfg.train.eval_every = 2
    cfg.train.batch_size = 4
    cfg.train.warmup_iterations = 0
    cfg.train.lr_drops = ()
    cfg.train.eval_batch_size = 8
    cfg.trials = 1
    return cfg


@pytest.mark.parametrize("name", PAPER)
def test_builds_model_and_trains_a_few_steps(name):
    exp = lottery.setup(shrink_to_synthetic(load(name)))
    variables = jax.jit(exp.init_variables)(jax.random.key(0))
    params = variables["params"]
    # Half of every pruned leaf, at random positions: magnitude pruning sorts each leaf (~6 s
    # for VGG-19's 20M weights on this CPU) and is tested on its own in test_pruning.py; here
    # the point is that the model trains under a mask.
    rng = np.random.default_rng(1)
    mask = jax.tree.map(lambda p, r: jnp.asarray(rng.random(p.shape) < 0.5 if r > 0
                                                 else np.ones(p.shape, bool)), params, exp.rates)
    assert any(not bool(jnp.all(m)) for m in jax.tree.leaves(mask))
    state = exp.trainer.init_state(jax.jit(masks.apply)(params, mask), variables["batch_stats"])
    x = jnp.asarray(exp.data.train_images[:4])
    y = jnp.asarray(exp.data.train_labels[:4])
    step = jax.jit(exp.trainer.step)
    for t in range(2):
        state, loss = step(state, mask, x, y, jnp.int32(t), jax.random.key(t))
        assert np.isfinite(float(loss))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                          jax.tree.leaves(masks.apply(params, mask)))]
    assert any(changed)
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    if name in ("vgg19", "resnet18"):
        assert exp.strategy == "global" and exp.global_rate == 0.2 and exp.trainer.augment
        assert variables["batch_stats"]
    else:
        assert exp.strategy == "layerwise" and not exp.trainer.augment


# ----------------------------------------------------------------------------- recorded experiments

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")


def load_experiment_config(path, arg=None):
    return config_lib.load_file(os.path.join(EXPERIMENTS, path), arg)


def without_runtime(config: dict) -> dict:
    """What the identity compares: no runtime.*, later fields at their neutral default left out."""
    return config_lib.comparable(config)


STRUCTURED = ("unstructured", "2:4", "1:4", "neuron")


@pytest.mark.parametrize("path, arg", [
    ("lenet_fashion_mnist/config.py", None), ("conv2_fashion_mnist/config.py", None),
    ("cheaper_tickets/config.py", None), ("instability/conv2.py", None)]
    + [("structured_sparsity/config.py", p) for p in STRUCTURED])
def test_experiment_config_is_valid(path, arg):
    config_lib.validate(load_experiment_config(path, arg))


def test_recorded_experiments_were_made_by_their_config_files():
    """The records in experiments/ are what the folders' commands make: each recorded config
    equals its config file's (runtime.* aside, which changes how, not what, is computed)."""
    import json

    def recorded(*parts):
        with open(os.path.join(EXPERIMENTS, *parts)) as f:
            return json.load(f)

    for pattern in STRUCTURED:
        made = lottery.config_to_json(load_experiment_config("structured_sparsity/config.py", pattern))
        saved = recorded("structured_sparsity", pattern.replace(":", "_"), "config.json")
        assert without_runtime(saved) == without_runtime(made), pattern
    conv2 = lottery.config_to_json(load_experiment_config("conv2_fashion_mnist/config.py"))
    assert without_runtime(recorded("conv2_fashion_mnist", "config.json")) == without_runtime(conv2)

    # Branches: each folder's config.json is {"branch": the branch config, "trunk": the trunk's
    # identity}, and the trunk's own config.json was copied beside it.
    def branch_made_by(folder, saved_name, trunk_file, branch_file, arg=None):
        trunk = lottery.config_to_json(load_experiment_config(trunk_file))
        branch = config_lib.to_json(load_experiment_config(branch_file, arg))
        assert recorded(*folder, saved_name) == {"branch": branch,
                                                  "trunk": config_lib.identity(trunk)}, saved_name
        return trunk

    cheaper = branch_made_by(["cheaper_tickets"], "config.json", "cheaper_tickets/config.py",
                             "cheaper_tickets/branch.py")
    assert cheaper["train"]["iterations"] == 10_000
    assert without_runtime(recorded("cheaper_tickets", "lottery_config.json")) == \
        without_runtime(cheaper)
    with open(os.path.join(EXPERIMENTS, "cheaper_tickets", "lottery_results.jsonl")) as f:
        assert {json.loads(line)["experiment"] for line in f} == {config_lib.identity(cheaper)}
    sweep = sorted(os.listdir(os.path.join(EXPERIMENTS, "cheaper_tickets", "early_bird_sweep")))
    settings = [name[:-len("_config.json")] for name in sweep if name.endswith("_config.json")]
    assert len(settings) == 5 and sorted(f"{s}.jsonl" for s in settings) == [
        name for name in sweep if name.endswith(".jsonl")]
    for setting in settings:
        branch_made_by(["cheaper_tickets", "early_bird_sweep"], f"{setting}_config.json",
                       "cheaper_tickets/config.py", "cheaper_tickets/early_bird.py", setting)
    for part, trunk_file in (("lenet", "cheaper_tickets/config.py"),
                             ("conv2", "instability/conv2.py")):
        trunk = branch_made_by(["instability", part], "config.json", trunk_file,
                               f"instability/{part}_branch.py")
        assert without_runtime(recorded("instability", part, "trunk_config.json")) == \
            without_runtime(trunk), part


def test_later_fields_at_their_default_keep_the_identity_and_are_checked():
    """Fields added after experiments were recorded (config.LATER_FIELDS) are left out of the
    identity at their neutral default, so a config.json saved before they existed has the same
    identity; set, they change it, and they are validated like the other fields."""
    c = load("tiny")
    resolved = config_lib.to_json(c)
    before = json.loads(json.dumps(resolved))
    for name in config_lib.LATER_FIELDS:
        group, field = name.split(".")
        del before[group][field]
    assert config_lib.identity(before) == config_lib.identity(resolved)
    assert config_lib.differences(before, resolved) == []
    c.dataset.train_subset = 300
    config_lib.validate(c)
    assert config_lib.identity(config_lib.to_json(c)) != config_lib.identity(resolved)
    assert lottery.setup(c).data.train_images.shape[0] == 300
    c.dataset.train_subset = -1
    with pytest.raises(config_lib.ConfigError, match="dataset.train_subset"):
        config_lib.validate(c)