"""VGG-19, CIFAR variant: 3x3 conv + batch norm + ReLU, global average pool, one Dense layer.

Layout: 2x64, pool, 2x128, pool, 4x256, pool, 4x512, pool, 4x512, global average pool,
Dense num_classes. Pools are 2x2 max-pools with stride 2. Convolutions have no bias (the batch norm
that follows has its own shift). Batch norm and the ReLU after it are one
:class:`lth_jax.models.batch_norm.BatchNorm` (Flax's values, a closed-form backward pass).

Parameter paths (Flax auto names): ``Conv_0`` .. ``Conv_15`` (``kernel`` only), ``BatchNorm_0`` ..
``BatchNorm_15`` (``scale``, ``bias``; running ``mean``/``var`` in collection ``'batch_stats'``),
``Dense_0`` (output: ``kernel``, ``bias``). 20,024,000 kernel weights, 5,120 of them in the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax.models.batch_norm import BatchNorm
from lth_jax.models.convolution import conv_function
from lth_jax.models.lenet import BIAS_INIT, KERNEL_INIT
from lth_jax.models.pooling import max_pool

# Batch-norm settings shared with the ResNet: PyTorch-style momentum 0.1 == Flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

VGG19_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


class VGG(nn.Module):
    """VGG with batch norm; ``stages`` is a sequence of (width, number of convs).

    A max-pool follows every stage but the last, which is followed by global average pooling.
    ``__call__(x, train=False)``: ``x`` NHWC, returns float32 logits ``(batch, num_classes)``.
    In training (``train=True``) batch norm normalises with batch statistics and the caller must
    pass ``mutable=['batch_stats']`` to receive the updated running averages; in evaluation it uses
    the running averages and is pure.
    """

    stages: Sequence[tuple[int, int]] = VGG19_STAGES
    num_classes: int = 10
    conv: str = "auto"  # convolution implementation, see lth_jax.models.convolution.resolve

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        conv = conv_function(self.conv)
        for i, (width, depth) in enumerate(self.stages):
            for _ in range(depth):
                x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False,
                            kernel_init=KERNEL_INIT, conv_general_dilated=conv)(x)
                x = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                              epsilon=BN_EPSILON)(x, relu=True)
            if i < len(self.stages) - 1:
                x = max_pool(x, 2)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


def vgg19(*, num_classes: int = 10, conv: str = "auto") -> VGG:
    """Builds the CIFAR VGG-19 of the paper."""
    return VGG(stages=VGG19_STAGES, num_classes=num_classes, conv=conv)
