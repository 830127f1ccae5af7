"""The forward pass of every 3x3 SAME convolution of VGG-19 on CIFAR-10 (batch 64, NHWC/HWIO) on one
single-threaded XLA:CPU device inside ``lax.scan`` (``lth_jax.timing``): XLA's own convolution against the patches
matmul of ``lth_jax.models.convolution`` (``P(x) · w``), and, for the 2x2 and 1x1 maps where the
kernel is larger than the input, what ``canonical_conv_general_dilated`` now does.

    taskset -c 0 python benchmarks/cpu_kernels/conv_forward.py
    taskset -c 0 python benchmarks/cpu_kernels/conv_forward.py narrow

``narrow`` times XLA's own convolution of ResNet-20's first stage (32x32 maps, batch 128, C -> C
channels) at C = 16 and at wider zero-padded widths: XLA:CPU hands convolutions of at most 16
channels to its slower Eigen code, and this measures whether padding them past that pays.

Each scans 4 different inputs (XLA cannot hoist the work out of the loop); median of 3 calls.
GFLOP/s count every kernel tap, the padding's included.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from lth_jax.models import convolution  # noqa: E402
from lth_jax.timing import scanned_ms  # noqa: E402

BATCH, STEPS, CALLS = 64, 4, 3
# (height = width, C_in, C_out): VGG-19's layers on 32x32 (its last stage at 2x2), and the 1x1 map
# that its last stage has on 28x28 inputs.
LAYERS = [(32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128), (8, 128, 256), (8, 256, 256),
          (4, 256, 512), (4, 512, 512), (2, 512, 512), (1, 512, 512)]


def main() -> None:
    dims = convolution._NHWC
    xla = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    ours = lambda x, w: convolution.canonical_conv_general_dilated(x, w, (1, 1), "SAME",
                                                                   dimension_numbers=dims)
    print(f"jax {jax.__version__}; batch {BATCH}; ms (GFLOP/s)")
    print(f"{'layer':>18} {'XLA convolution':>17} {'patches matmul':>16} {'lth_jax':>16}")
    for size, c_in, c_out in LAYERS:
        x = jax.random.normal(jax.random.key(0), (BATCH, size, size, c_in))
        w = jax.random.normal(jax.random.key(1), (3, 3, c_in, c_out))
        patches = lambda x, w: jnp.matmul(
            convolution._patches(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), (1, 1),
                                 (size, size)), w.reshape(-1, c_out))
        flops = 2 * BATCH * size * size * 9 * c_in * c_out
        cells = [f"{ms:7.1f} ({flops / ms / 1e6:5.0f})"
                 for ms in (scanned_ms(lambda x, f=f: f(x, w), x, steps=STEPS, calls=CALLS)
                           for f in (xla, patches, ours))]
        print(f"{f'{size}x{size} {c_in}->{c_out}':>18} {cells[0]:>17} {cells[1]:>16} {cells[2]:>16}",
              flush=True)


def narrow(batch: int = 128, size: int = 32) -> None:
    """XLA's convolution of a C -> C 3x3 SAME layer on ``size``² maps at several widths C."""
    dims = convolution._NHWC
    print(f"jax {jax.__version__}; batch {batch}, {size}x{size}; ms (GFLOP/s)")
    for c in (16, 17, 20, 24, 32):
        x = jax.random.normal(jax.random.key(0), (batch, size, size, c))
        w = jax.random.normal(jax.random.key(1), (3, 3, c, c))
        ms = scanned_ms(lambda x: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                           dimension_numbers=dims),
                        x, steps=STEPS, calls=CALLS)
        flops = 2 * batch * size * size * 9 * c * c
        print(f"{c:>4} channels {ms:7.2f} ms ({flops / ms / 1e6:5.0f})", flush=True)


if __name__ == "__main__":
    narrow() if sys.argv[1:] == ["narrow"] else main()
