"""CIFAR ResNet-20 (the paper's "ResNet-18"): 16, 3x[16,16], 3x[32,32], 3x[64,64], avg-pool, Dense.

Stem: 3x3 conv 16 + BN + ReLU. Three stages of three basic blocks (16, 32, 64 filters); the first
block of stages 2 and 3 has stride 2 and a 1x1 projection shortcut (conv + BN), the others an
identity shortcut. Global average pool, Dense num_classes. Convolutions have no bias.

Parameter paths: ``Conv_0``, ``BatchNorm_0`` (stem); ``BasicBlock_0`` .. ``BasicBlock_8``, each
with ``Conv_0``, ``BatchNorm_0``, ``Conv_1``, ``BatchNorm_1`` and, in ``BasicBlock_3`` and
``BasicBlock_6``, ``shortcut_conv`` and ``shortcut_bn``; ``Dense_0`` (output). 270,896 kernel
weights: 2,560 in the 1x1 shortcuts, 640 in the output layer. Batch norm, the ReLU and the residual
sum after it are one :class:`lth_jax.models.batch_norm.BatchNorm` (Flax's values, a closed-form
backward pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax.models.batch_norm import BatchNorm
from lth_jax.models.convolution import conv_function
from lth_jax.models.lenet import BIAS_INIT, KERNEL_INIT
from lth_jax.models.vgg import BN_EPSILON, BN_MOMENTUM


def _batch_norm(train: bool, name: str | None = None) -> BatchNorm:
    """Batch norm fused with the ReLU and residual sum after it (``batch_norm.BatchNorm``: Flax's
    parameters, statistics and values, a closed-form backward pass)."""
    return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     name=name)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection: relu(bn(conv(relu(bn(conv x)))) + s(x)).

    The shortcut ``s`` is the identity when the shape is unchanged, else a 1x1 conv with ``strides``
    followed by BN, named ``shortcut_conv`` / ``shortcut_bn`` so pruning rules can exempt it.
    """

    features: int
    strides: int = 1
    conv: str = "auto"  # convolution implementation, see lth_jax.models.convolution.resolve

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = conv_function(self.conv)
        y = nn.Conv(self.features, (3, 3), strides=(self.strides, self.strides), padding="SAME",
                    use_bias=False, kernel_init=KERNEL_INIT, conv_general_dilated=conv)(x)
        y = _batch_norm(train)(y, relu=True)
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False,
                    kernel_init=KERNEL_INIT, conv_general_dilated=conv)(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), strides=(self.strides, self.strides),
                               use_bias=False, kernel_init=KERNEL_INIT, conv_general_dilated=conv,
                               name="shortcut_conv")(x)
            shortcut = _batch_norm(train, name="shortcut_bn")(shortcut)
        return _batch_norm(train)(y, shortcut, relu=True)


class ResNet(nn.Module):
    """CIFAR ResNet: a stem conv of ``widths[0]``, then ``blocks_per_stage`` blocks per width.

    ``__call__(x, train=False)``: ``x`` NHWC, returns float32 logits ``(batch, num_classes)``.
    Batch norm as in :class:`lth_jax.models.vgg.VGG`: pass ``mutable=['batch_stats']`` in training;
    evaluation uses the running averages and is pure.
    """

    widths: Sequence[int] = (16, 32, 64)
    blocks_per_stage: int = 3
    num_classes: int = 10
    conv: str = "auto"  # convolution implementation, see lth_jax.models.convolution.resolve

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=False,
                    kernel_init=KERNEL_INIT, conv_general_dilated=conv_function(self.conv))(x)
        x = _batch_norm(train)(x, relu=True)
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                # Downsample at the first block of every stage but the first.
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, strides, conv=self.conv)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


def resnet20(*, num_classes: int = 10, conv: str = "auto") -> ResNet:
    """Builds the CIFAR ResNet-20 that the paper calls ResNet-18."""
    return ResNet(widths=(16, 32, 64), blocks_per_stage=3, num_classes=num_classes, conv=conv)
