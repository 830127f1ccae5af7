"""lth_jax.models.pooling.max_pool: nn.max_pool's values and gradients without select_and_scatter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lth_jax import models
from lth_jax.models.pooling import max_pool


def stock(x, window):
    return nn.max_pool(x, (window, window), strides=(window, window))


@pytest.mark.parametrize("shape, window", [
    ((2, 8, 8, 3), 2),
    ((2, 7, 9, 4), 2),      # odd sizes: the last row and column are dropped (VALID)
    ((1, 9, 9, 2), 3),
    ((3, 2, 6, 6, 1), 2),   # two leading axes
    ((6, 6, 5), 2),         # no batch axis
])
def test_values_and_gradients_equal_nn_max_pool(shape, window):
    x = jax.random.normal(jax.random.key(0), shape)  # continuous: no ties within a window
    np.testing.assert_array_equal(max_pool(x, window), stock(x, window))
    cotangent = jax.random.normal(jax.random.key(1), stock(x, window).shape)
    ours = jax.grad(lambda x: jnp.sum(max_pool(x, window) * cotangent))(x)
    want = jax.grad(lambda x: jnp.sum(stock(x, window) * cotangent))(x)
    np.testing.assert_array_equal(ours, want)
    # one nonzero per window: the gradient goes to the window's maximum only
    assert int(jnp.sum(ours != 0)) == cotangent.size


@pytest.mark.parametrize("shape, window", [((2, 8, 8, 3), 2), ((1, 9, 9, 2), 3), ((2, 7, 5, 1), 2)])
def test_tied_maxima_give_the_gradient_to_the_first_as_nn_max_pool_does(shape, window):
    # Values from {0, 1, 2}: most windows hold tied maxima, in every position pattern.
    x = jax.random.randint(jax.random.key(2), shape, 0, 3).astype(jnp.float32)
    cotangent = jax.random.normal(jax.random.key(3), stock(x, window).shape)
    ours = jax.grad(lambda x: jnp.sum(max_pool(x, window) * cotangent))(x)
    want = jax.grad(lambda x: jnp.sum(stock(x, window) * cotangent))(x)
    np.testing.assert_array_equal(ours, want)
    assert int(jnp.sum(ours != 0)) == cotangent.size  # one element per window, ties or not


def test_an_all_equal_window_gives_all_of_the_gradient_to_its_first_element():
    grad = jax.grad(lambda x: jnp.sum(3.0 * max_pool(x)))(jnp.zeros((1, 2, 2, 1)))
    np.testing.assert_array_equal(grad[0, :, :, 0], [[3.0, 0.0], [0.0, 0.0]])
    # later positions win only where the earlier ones are smaller
    x = jnp.array([[1.0, 2.0], [2.0, 0.0]]).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda x: jnp.sum(max_pool(x)))(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_refuses_a_window_larger_than_the_input():
    with pytest.raises(ValueError, match="does not fit"):
        max_pool(jnp.zeros((1, 1, 4, 2)), 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        max_pool(jnp.zeros((4, 2)), 2)


def _training_hlo(model, input_shape=(8, 8, 3)):
    variables = models.init(model, jax.random.key(0), input_shape)
    x = jnp.ones((2, *input_shape))

    def loss(p):
        if "batch_stats" in variables:
            return jnp.sum(model.apply({**variables, "params": p}, x, train=True,
                                       mutable=["batch_stats"])[0] ** 2)
        return jnp.sum(model.apply({"params": p}, x, train=True) ** 2)

    step = lambda p, _: (jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p)), None)
    return jax.jit(lambda p: lax.scan(step, p, None, length=2)[0]).lower(
        variables["params"]).as_text()


@pytest.mark.parametrize("model", [models.create("conv4"), models.VGG(stages=((8, 1), (8, 1)))],
                         ids=["conv4", "vgg (2 stages)"])
def test_no_select_and_scatter_in_a_training_step(model):
    # The regression this guards: XLA:CPU's select_and_scatter is ~7x slower than the rest of a pool.
    assert "select_and_scatter" not in _training_hlo(model)
    # what nn.max_pool's gradient would put there (so the check can fail)
    x = jnp.ones((2, 8, 8, 3))
    assert "select_and_scatter" in jax.jit(jax.grad(lambda x: jnp.sum(stock(x, 2)))).lower(x).as_text()
