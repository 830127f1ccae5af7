"""Forward + backward of the 2x2 max-pools of Conv-2/4/6 and VGG-19 (batch 60, CIFAR shapes) on one
single-threaded XLA:CPU device, inside ``lax.scan`` as a training run has them:
``flax.linen.max_pool`` (its gradient is a ``select_and_scatter``) against
``lth_jax.models.pooling.max_pool`` (a reshape and a max).

    python benchmarks/cpu_kernels/pool_backward.py

Each case scans 8 different inputs (so that XLA cannot hoist the work out of the loop) and prints
the median of 5 calls per pool.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lth_jax.models.pooling import max_pool  # noqa: E402
from lth_jax.timing import per_step_ms  # noqa: E402

BATCH, STEPS, CALLS = 60, 8, 5
# (input of the pool: height = width, channels); Conv-2/4/6 pool at 32, 16, 8; VGG-19 also at 2.
SHAPES = [(32, 64), (16, 128), (8, 256), (4, 512), (2, 512)]


def milliseconds(pool, inputs) -> float:
    """Median ms of one forward + backward pass of ``pool`` inside a scan over ``inputs``."""
    def body(total, x):
        grad = jax.grad(lambda x: jnp.sum(pool(x) ** 2))(x)
        return total + grad[0, 0, 0, 0], None

    return per_step_ms(body, inputs, CALLS)


def main() -> None:
    stock = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}; batch {BATCH}, median of {CALLS}")
    print(f"{'input':>16} {'nn.max_pool ms':>15} {'max_pool ms':>12} {'ratio':>6}")
    for size, channels in SHAPES:
        inputs = jax.random.normal(jax.random.key(size), (STEPS, BATCH, size, size, channels))
        a, b = milliseconds(stock, inputs), milliseconds(max_pool, inputs)
        print(f"{f'{size}x{size}x{channels}':>16} {a:15.2f} {b:12.2f} {a / b:6.1f}")


if __name__ == "__main__":
    main()
