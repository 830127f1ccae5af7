"""Conv-2 / Conv-4 / Conv-6: the paper's VGG-like CIFAR-10 networks, optionally with dropout.

Architecture: pairs of 3x3 convolutions (padding SAME, with bias) + ReLU, widths 64,64 / +128,128 /
+256,256, each pair followed by a 2x2 max-pool with stride 2; then flatten, FC 256 + ReLU,
FC 256 + ReLU, FC num_classes.

Parameter paths (Flax auto names): ``Conv_0`` .. ``Conv_{2k-1}`` for the k conv pairs, then
``Dense_0``, ``Dense_1`` (hidden FC) and ``Dense_2`` (output), each with ``kernel`` and ``bias``.
Kernel counts on 32x32x3: Conv-2 4,300,992 (conv 38,592), Conv-4 2,425,024 (conv 259,776),
Conv-6 2,261,184 (conv 1,144,512).

Dropout (the paper's dropout variants, rate 0.5): applied after the ReLU of each of the two hidden
FC layers, never on the convolutions nor on the logits. The paper does not say where its dropout sits;
this is the classic placement for VGG-style heads. It is active only when ``train=True`` and then
needs an RNG stream named ``'dropout'`` (``model.apply(..., rngs={'dropout': key})``). With the
default ``dropout_rate=0.0`` no RNG is needed in either mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax.models.convolution import conv_function
from lth_jax.models.lenet import BIAS_INIT, KERNEL_INIT
from lth_jax.models.pooling import max_pool


class ConvNet(nn.Module):
    """Conv-k network: ``widths[i]`` is the width of the i-th pair of 3x3 convolutions.

    ``__call__(x, train=False)``: ``x`` is NHWC (any H, W at least ``2**len(widths)``; 28x28x1 and
    32x32x3 both work, the FC fan-in follows from the data); returns float32 logits of shape
    ``(batch, num_classes)``. Pure given params and, when ``train`` and ``dropout_rate > 0``, the
    ``'dropout'`` RNG.
    """

    widths: Sequence[int] = (64,)
    num_classes: int = 10
    dropout_rate: float = 0.0
    conv: str = "auto"  # convolution implementation, see lth_jax.models.convolution.resolve

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        conv = conv_function(self.conv)
        for width in self.widths:
            for _ in range(2):
                x = nn.Conv(width, (3, 3), padding="SAME", kernel_init=KERNEL_INIT,
                            bias_init=BIAS_INIT, conv_general_dilated=conv)(x)
                x = nn.relu(x)
            x = max_pool(x, 2)
        x = x.reshape((x.shape[0], -1))
        for _ in range(2):
            x = nn.relu(nn.Dense(256, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x))
            # Dropout has no parameters, so it does not shift the Dense_* auto names.
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


def conv2(*, num_classes: int = 10, dropout_rate: float = 0.0, conv: str = "auto") -> ConvNet:
    """Builds Conv-2 (conv 64,64, pool; FC 256-256-num_classes)."""
    return ConvNet(widths=(64,), num_classes=num_classes, dropout_rate=dropout_rate, conv=conv)


def conv4(*, num_classes: int = 10, dropout_rate: float = 0.0, conv: str = "auto") -> ConvNet:
    """Builds Conv-4 (conv 64,64, pool, 128,128, pool; FC 256-256-num_classes)."""
    return ConvNet(widths=(64, 128), num_classes=num_classes, dropout_rate=dropout_rate, conv=conv)


def conv6(*, num_classes: int = 10, dropout_rate: float = 0.0, conv: str = "auto") -> ConvNet:
    """Builds Conv-6 (conv 64,64, pool, 128,128, pool, 256,256, pool; FC 256-256-num_classes)."""
    return ConvNet(widths=(64, 128, 256), num_classes=num_classes, dropout_rate=dropout_rate, conv=conv)
