"""One Conv-2 training step (masked Adam, batch 60, 32x32x3 synthetic data) on one XLA:CPU device:
called from a Python loop, and inside ``lax.scan`` (where a whole lth_jax level runs).

    python experiments/conv_step.py canonical_vjp      # lth_jax's convolution (model.conv)
    python experiments/conv_step.py xla                # XLA's own gradient convolutions

It shows what ``model.conv`` is for: on XLA:CPU the stock gradient convolutions run ~60x slower
inside a loop than at the top of a program, the canonical-VJP ones do not. One single-threaded
device, as the CLI runs each core (XLA_FLAGS overrides).
"""

import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lth_jax import config as config_lib  # noqa: E402
from lth_jax import lottery, masks  # noqa: E402

STEPS = 5


def main(conv: str) -> None:
    c = config_lib.conv_config("conv2", dropout=False)
    c.dataset.source = "synthetic"
    c.dataset.train_size, c.dataset.validation_size, c.dataset.test_size = 10_000, 256, 256
    c.train.iterations = c.train.eval_every = 20
    c.model.conv = conv
    exp = lottery.setup(c)
    trainer = exp.trainer
    variables = exp.init_variables(lottery.trial_key(0, 0, lottery.INIT))
    mask = masks.ones_like(variables["params"])
    state = trainer.init_state(variables["params"], variables["batch_stats"])
    x, y = exp.data.train_images[:60], exp.data.train_labels[:60]
    key = jax.random.key(0)

    step = jax.jit(lambda s, t: trainer.step(s, mask, x, y, t, key))
    s, loss = step(state, 0)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for t in range(STEPS):
        s, loss = step(s, t)
    jax.block_until_ready(loss)
    loop = STEPS / (time.perf_counter() - t0)

    scanned = jax.jit(lambda s: jax.lax.scan(
        lambda s, t: trainer.step(s, mask, x, y, t, key), s, jnp.arange(STEPS)))
    jax.block_until_ready(scanned(state))
    t0 = time.perf_counter()
    jax.block_until_ready(scanned(state))
    scan = STEPS / (time.perf_counter() - t0)
    print(f"model.conv={conv}: {loop:.2f} steps/s from a Python loop, {scan:.2f} steps/s in lax.scan")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "canonical_vjp")
