"""LeNet-300-100: the fully connected MNIST network of the paper (784-300-100-10, ReLU).

Parameter paths (Flax auto names): ``Dense_0`` (in->300), ``Dense_1`` (300->100),
``Dense_2`` (100->num_classes, the output layer), each with ``kernel`` and ``bias``.
With a 28x28x1 input the kernels hold 235,200 + 30,000 + 1,000 = 266,200 weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# The paper initialises every layer with Gaussian Glorot. JAX's glorot_normal draws from a normal
# truncated at two standard deviations, rescaled so the std is exactly sqrt(2 / (fan_in + fan_out)).
KERNEL_INIT = nn.initializers.glorot_normal()
BIAS_INIT = nn.initializers.zeros


class LeNet300100(nn.Module):
    """Fully connected 300-100-num_classes network with ReLU.

    ``__call__(x, train=False)``: ``x`` has a leading batch axis and any trailing shape (it is
    flattened, so NHWC images and already flat vectors both work); returns float32 logits of shape
    ``(batch, num_classes)``. ``train`` is accepted for a uniform signature and has no effect (no
    dropout, no batch norm). Pure: the output depends only on params and ``x``.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # nothing in this network behaves differently in training
        x = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(300, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x))
        x = nn.relu(nn.Dense(100, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x))
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


def lenet300_100(*, num_classes: int = 10) -> LeNet300100:
    """Builds LeNet-300-100 with ``num_classes`` outputs."""
    return LeNet300100(num_classes=num_classes)
