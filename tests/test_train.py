"""The masked train step, the optimizer, and a whole training run as one program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import fusion_emitters, synthetic_lenet
from lth_jax import config as config_lib
from lth_jax import masks
from lth_jax import train as train_lib


@pytest.fixture
def same_numbers_across_loop_shapes():
    """For the tests that compare programs of other loop shapes bit for bit
    (helpers.FUSION_EMITTERS)."""
    with fusion_emitters():
        yield


def train_cfg(**kw):
    c = config_lib.base_config().train
    c.iterations, c.eval_every, c.batch_size, c.eval_batch_size = 60, 20, 16, 64
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def setup():
    return synthetic_lenet(keep=0.5)


def test_learning_rate_schedule_warmup_and_drops():
    lr = train_lib.learning_rate_schedule(train_cfg(learning_rate=0.1, warmup_iterations=10,
                                                    lr_drops=(20, 30), lr_drop_factor=0.1))
    got = [float(lr(t)) for t in (0, 4, 9, 10, 19, 20, 29, 30, 100)]
    np.testing.assert_allclose(got, [0.01, 0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    flat = train_lib.learning_rate_schedule(train_cfg(learning_rate=3e-4))
    assert float(flat(0)) == pytest.approx(3e-4) and float(flat(10**6)) == pytest.approx(3e-4)


@pytest.mark.parametrize("optimizer,wd", [("adam", 0.0), ("momentum", 1e-2), ("sgd", 1e-2)])
def test_pruned_weights_stay_exactly_zero(setup, optimizer, wd):
    ds, model, params, mask = setup
    trainer = train_lib.make_trainer(model, train_cfg(optimizer=optimizer, weight_decay=wd,
                                                      learning_rate=0.05), augment=False)
    # start from params that are NOT zero where pruned: the step must still zero them
    state = trainer.init_state(params, {})
    step = jax.jit(trainer.step)
    x, y = jnp.asarray(ds.train_images[:16]), jnp.asarray(ds.train_labels[:16])
    for t in range(5):
        state, loss = step(state, mask, x, y, jnp.int32(t), jax.random.key(t))
        assert np.isfinite(float(loss))
    for p, m, p0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask), jax.tree.leaves(params)):
        p, m = np.asarray(p), np.asarray(m)
        assert np.all(p[~m] == 0.0)
        if p.ndim == 2:  # survivors train (some sit behind dead ReLUs and get no gradient)
            assert np.mean(p[m] != np.asarray(p0)[m]) > 0.5
    for leaf in jax.tree.leaves(state.opt_state):  # masked gradients: no momentum where pruned
        if hasattr(leaf, "shape") and leaf.shape == mask["Dense_0"]["kernel"].shape:
            assert np.all(np.asarray(leaf)[~np.asarray(mask["Dense_0"]["kernel"])] == 0.0)


def test_step_equals_hand_written_masked_sgd(setup):
    ds, model, params, mask = setup
    trainer = train_lib.make_trainer(model, train_cfg(optimizer="sgd", learning_rate=0.1),
                                     augment=False)
    x, y = jnp.asarray(ds.train_images[:16]), jnp.asarray(ds.train_labels[:16])
    masked = masks.apply(params, mask)
    state, _ = trainer.step(trainer.init_state(masked, {}), mask, x, y, jnp.int32(0), jax.random.key(0))
    loss = lambda p: jnp.mean(train_lib.cross_entropy(model.apply({"params": p}, x), y))
    grads = jax.grad(loss)(masked)
    expected = jax.tree.map(lambda p, g, m: jnp.where(m, p - 0.1 * g, 0.0), masked, grads, mask)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def run_batch(setup, trainer, runs=2, batching="vmap", start=0, capture=-1):
    ds, model, params, mask = setup
    data = train_lib.device_data(ds, trainer.eval_batch_size)
    stack = lambda t: jax.tree.map(lambda x: jnp.stack([x] * runs), t)
    keys = jnp.stack([jax.random.key(i) for i in range(runs)])
    fn = train_lib.make_run_fn(trainer, start=start, capture_iteration=capture, batching=batching)
    return fn(data, stack(masks.apply(params, mask)), stack({}), stack(mask), keys, keys)


def test_run_records_early_stopping_and_test_at_best(setup, same_numbers_across_loop_shapes):
    ds, model, _, _ = setup
    trainer = train_lib.make_trainer(model, train_cfg(learning_rate=3e-3), augment=False)
    full = run_batch(setup, trainer)
    assert full.val_loss.shape == (2, 3)
    np.testing.assert_array_equal(train_lib.eval_iterations(trainer), [20, 40, 60])
    for r in range(2):
        best = int(full.best_period[r])
        assert best == int(np.argmin(np.asarray(full.val_loss[r])))
        assert float(full.best_test_accuracy[r]) == float(full.test_accuracy[r][best])
        assert float(full.final_test_accuracy[r]) == float(full.test_accuracy[r][-1])
    assert not np.array_equal(full.val_loss[0], full.val_loss[1])  # different data order per key
    # a sparser test curve leaves the early-stop test accuracy exactly the same
    sparse = run_batch(setup, train_lib.make_trainer(
        model, train_cfg(learning_rate=3e-3, test_every_evals=2), augment=False))
    assert np.isnan(sparse.test_accuracy[0][0]) and not np.isnan(sparse.test_accuracy[0][1])
    np.testing.assert_array_equal(train_lib.tested_evaluations(
        train_lib.make_trainer(model, train_cfg(test_every_evals=2), augment=False)), [False, True, False])
    np.testing.assert_array_equal(sparse.best_test_accuracy, full.best_test_accuracy)
    np.testing.assert_array_equal(sparse.val_loss, full.val_loss)


def test_map_and_vmap_agree_with_single_runs(setup):
    ds, model, params, mask = setup
    trainer = train_lib.make_trainer(model, train_cfg(), augment=False)
    mapped = run_batch(setup, trainer, runs=2, batching="map")
    vmapped = run_batch(setup, trainer, runs=2, batching="vmap")
    single = run_batch(setup, trainer, runs=1, batching="map")
    np.testing.assert_array_equal(mapped.val_loss[0], single.val_loss[0])
    np.testing.assert_allclose(vmapped.val_loss, mapped.val_loss, rtol=1e-5)


def test_rewind_capture_and_start(setup, same_numbers_across_loop_shapes):
    ds, model, params, mask = setup
    trainer = train_lib.make_trainer(model, train_cfg(), augment=False)
    res = run_batch(setup, trainer, runs=1, capture=20)
    # θ_k after 20 iterations equals the params of a run that stops at 20
    short = train_lib.make_trainer(model, train_cfg(iterations=20), augment=False)
    ref = run_batch(setup, short, runs=1)
    for a, b in zip(jax.tree.leaves(res.captured_params), jax.tree.leaves(ref.params)):
        np.testing.assert_array_equal(a, b)
    late = run_batch(setup, trainer, runs=1, start=20)
    assert late.val_loss.shape == (1, 2)
    np.testing.assert_array_equal(train_lib.eval_iterations(trainer, 20), [40, 60])


def test_divergence_is_detected_in_the_program(setup):
    ds, model, _, _ = setup
    trainer = train_lib.make_trainer(model, train_cfg(optimizer="sgd", learning_rate=1e30),
                                     augment=False)
    res = run_batch(setup, trainer)
    assert 0 <= int(res.nonfinite_step[0]) < 60
    calm = run_batch(setup, train_lib.make_trainer(model, train_cfg(), augment=False))
    assert int(calm.nonfinite_step[0]) == -1


def test_early_stopping_helper_first_minimum_and_nan():
    its = np.array([100, 200, 300, 400])
    assert train_lib.early_stopping(np.array([0.5, 0.2, 0.2, 0.3]), its) == (1, 200)
    assert train_lib.early_stopping(np.array([np.nan, 0.4, 0.2, np.inf]), its) == (2, 300)


def test_chunked_evaluation_pads_without_bias():
    split = train_lib.chunk_split(np.ones((5, 2, 2, 1), np.float32), np.arange(5, dtype=np.int32), 2)
    assert split.images.shape == (3, 2, 2, 2, 1)
    np.testing.assert_array_equal(split.weights.reshape(-1), [1, 1, 1, 1, 1, 0])
