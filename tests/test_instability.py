"""Instability analysis: the error barrier between two copies trained from one state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import synthetic_lenet
from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import instability, masks, models
from lth_jax import train as train_lib


def _trainer(model, **kw):
    c = config_lib.base_config().train
    c.iterations, c.eval_every, c.batch_size, c.eval_batch_size = 40, 20, 16, 64
    c.learning_rate = 0.05
    c.optimizer = "momentum"
    for k, v in kw.items():
        c[k] = v
    return train_lib.make_trainer(model, c, augment=False)


@pytest.fixture(scope="module")
def lenet():
    ds, model, params, mask = synthetic_lenet(keep=0.7)
    trainer = _trainer(model)
    return trainer, train_lib.device_data(ds, 64), params, mask


def test_error_barrier_formula():
    np.testing.assert_allclose(instability.error_barrier(np.array([0.1, 0.3, 0.2])), 0.15)
    np.testing.assert_allclose(instability.error_barrier(np.array([0.2, 0.1, 0.2])), 0.0)
    np.testing.assert_allclose(instability.error_barrier(np.array([[0.1, 0.1], [0.4, 0.2]])),
                               [0.0, 0.1], atol=1e-7)


def test_interpolate_ends_and_middle():
    a, b = {"w": jnp.array([0.0, 2.0])}, {"w": jnp.array([4.0, -2.0])}
    np.testing.assert_array_equal(instability.interpolate(a, b, 0.0)["w"], a["w"])
    np.testing.assert_array_equal(instability.interpolate(a, b, 1.0)["w"], b["w"])
    np.testing.assert_array_equal(instability.interpolate(a, b, 0.25)["w"], [1.0, 1.0])


def test_the_path_from_a_run_to_itself_is_flat(lenet):
    trainer, data, params, mask = lenet
    curve = jax.jit(lambda p: instability.linear_path(trainer, data, data.test, (p, {}), (p, {}),
                                                      mask, points=5))(params)
    assert curve.error.shape == (5,)
    assert np.all(np.asarray(curve.error) == float(curve.error[0]))
    assert float(curve.barrier) == 0.0


def test_identical_noise_gives_identical_copies_and_no_barrier(lenet):
    trainer, data, params, mask = lenet
    key = jax.random.key(7)
    keys = jnp.stack([key, key])
    result = instability.instability(trainer, data, params, {}, mask, start=0, data_keys=keys,
                                     noise_keys=keys, points=5)
    for leaf in jax.tree.leaves(result.runs.params):
        np.testing.assert_array_equal(leaf[0], leaf[1])
    assert float(result.curve.barrier) == 0.0


def test_endpoints_equal_the_runs_own_evaluations_and_copies_differ(lenet):
    trainer, data, params, mask = lenet
    data_keys = jnp.stack([jax.random.key(1), jax.random.key(2)])
    noise_keys = jnp.stack([jax.random.key(3), jax.random.key(4)])
    result = instability.instability(trainer, data, params, {}, mask, start=0,
                                     data_keys=data_keys, noise_keys=noise_keys, points=7)
    runs = result.runs
    assert not np.array_equal(jax.tree.leaves(runs.params)[0][0],
                              jax.tree.leaves(runs.params)[0][1])
    # final_test_* of each run is its own evaluation of its final params on the test split.
    np.testing.assert_allclose(result.curve.error[0], 1 - runs.final_test_accuracy[0], atol=1e-6)
    np.testing.assert_allclose(result.curve.error[-1], 1 - runs.final_test_accuracy[1], atol=1e-6)
    np.testing.assert_allclose(result.curve.loss[0], runs.final_test_loss[0], rtol=1e-5)
    barrier = float(result.curve.barrier)
    assert barrier >= 0.0
    np.testing.assert_allclose(barrier, float(instability.error_barrier(result.curve.error)))
    # Pruned weights stay pruned in both copies.
    for leaf, m in zip(jax.tree.leaves(runs.params), jax.tree.leaves(mask)):
        assert np.all(np.asarray(leaf)[:, ~np.asarray(m)] == 0.0)


def test_batch_norm_statistics_are_reestimated_from_training_batches():
    ds = data_lib.load({"name": "synthetic", "source": "synthetic", "image_shape": (8, 8, 3),
                        "num_classes": 4, "train_size": 200, "test_size": 40,
                        "validation_size": 40}, seed=0)
    data = train_lib.device_data(ds, 40)
    model = models.ResNet(widths=(4, 8), blocks_per_stage=1, num_classes=4)
    variables = models.init(model, jax.random.key(0), (8, 8, 3))
    trainer = _trainer(model)
    mask = masks.ones_like(variables["params"])
    key = jax.random.key(5)
    stats = instability.reestimate_batch_stats(trainer, data, variables["params"],
                                               variables["batch_stats"], mask, key, 3)
    # Reference: the stem's batch-norm input is conv(x); its per-channel mean over each batch,
    # averaged over the 3 batches.
    conv = models.Conv(4, (3, 3), padding="SAME", use_bias=False)
    means = []
    for i in range(3):
        idx = data_lib.batch_indices(key, i, data.train_labels.shape[0], trainer.batch_size)
        y = conv.apply({"params": variables["params"]["Conv_0"]}, data.train_images[idx])
        means.append(jnp.mean(y, axis=(0, 1, 2)))
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], np.mean(means, axis=0),
                               rtol=1e-4, atol=1e-5)
    curve = jax.jit(lambda v: instability.linear_path(
        trainer, data, data.test, (v["params"], v["batch_stats"]),
        (v["params"], v["batch_stats"]), mask, points=3, bn_batches=2))(variables)
    assert float(curve.barrier) == 0.0 and np.all(np.isfinite(np.asarray(curve.loss)))
