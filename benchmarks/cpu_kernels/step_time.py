"""Milliseconds of one training step of a paper config's network on one single-threaded XLA:CPU
device inside ``lax.scan``: the forward pass alone, and forward + backward + an SGD update (the
network's gradient cost without the optimizer's bookkeeping). Synthetic data of the dataset's
shape, the config's batch size; batch norm in training mode where the network has it.

    taskset -c 0 python benchmarks/cpu_kernels/step_time.py conv2 [steps]     # also conv4, conv6, vgg19, resnet18

To compare two versions of lth_jax, run it at each (alternating: the machine is noisy).
"""

import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from lth_jax import config as config_lib  # noqa: E402
from lth_jax import lottery  # noqa: E402
from lth_jax import train as train_lib  # noqa: E402


def main(name: str = "conv2", steps: str = "4") -> None:
    c = config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"))
    c.dataset.source = "synthetic"
    c.dataset.train_size, c.dataset.validation_size, c.dataset.test_size = 2000, 256, 256
    exp = lottery.setup(c)
    variables = exp.init_variables(lottery.trial_key(0, 0, lottery.INIT))
    stats = variables.get("batch_stats")
    batch = int(c.train.batch_size)
    x, y = exp.data.train_images[:batch], exp.data.train_labels[:batch]
    count = int(steps)

    def loss(params, images):
        if stats is not None:
            logits = exp.model.apply({"params": params, "batch_stats": stats}, images, train=True,
                                     mutable=["batch_stats"])[0]
        else:
            logits = exp.model.apply({"params": params}, images)
        return jnp.mean(train_lib.cross_entropy(logits, y))

    # Each step's images differ (t), so XLA cannot hoist the work out of the loop.
    def forward(params, t):
        value = loss(params, x + t * 1e-6)
        return jax.tree.map(lambda p: p + value * 1e-9, params), None

    def sgd(params, t):
        grads = jax.grad(loss)(params, x + t * 1e-6)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), None

    print(f"{name}, batch {batch}, jax {jax.__version__}, one core, {count} steps a call, best of 3")
    for label, body in (("forward", forward), ("forward + backward + SGD", sgd)):
        run = jax.jit(lambda p: lax.scan(body, p, jnp.arange(count, dtype=jnp.float32))[0])
        jax.block_until_ready(run(variables["params"]))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(run(variables["params"]))
            times.append(time.perf_counter() - start)
        print(f"  {label}: {min(times) / count * 1e3:.1f} ms a step", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
