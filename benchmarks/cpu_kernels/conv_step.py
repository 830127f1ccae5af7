"""One training step of a conv network (its config's optimizer and batch, synthetic data of its
dataset's shape) on one XLA:CPU device: called from a Python loop, and inside ``lax.scan`` (where a
whole lth_jax level runs).

    python benchmarks/cpu_kernels/conv_step.py canonical_vjp          # lth_jax's convolution (model.conv)
    python benchmarks/cpu_kernels/conv_step.py xla                    # XLA's own gradient convolutions
    python benchmarks/cpu_kernels/conv_step.py canonical_vjp vgg19 [off]   # another config; off: no augmentation

It shows what ``model.conv`` is for: on XLA:CPU the stock gradient convolutions run ~60x slower
inside a loop than at the top of a program, the canonical-VJP ones do not. One single-threaded
device, as the CLI runs each core (XLA_FLAGS overrides).
"""

import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lth_jax import data as data_lib  # noqa: E402
from lth_jax import lottery, masks  # noqa: E402

STEPS = 5


def main(conv: str, name: str = "conv2", augment: str = "") -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "cfg", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.dataset.source = "synthetic"
    if augment:
        c.dataset.augment = augment
    c.dataset.train_size, c.dataset.validation_size, c.dataset.test_size = 10_000, 256, 256
    c.train.iterations = c.train.eval_every = 20
    c.train.warmup_iterations, c.train.lr_drops = 0, ()
    c.model.conv = conv
    exp = lottery.setup(c)
    trainer = exp.trainer
    variables = exp.init_variables(lottery.trial_key(0, 0, lottery.INIT))
    mask = masks.ones_like(variables["params"])
    state = trainer.init_state(variables["params"], variables["batch_stats"])
    batch = int(c.train.batch_size)
    x, y = exp.data.train_images[:batch], exp.data.train_labels[:batch]
    key = jax.random.key(0)

    def one(s, t):  # as lth_jax's training loop does it: augmentation (if on), then the step
        images = data_lib.augment(jax.random.fold_in(key, t), x) if trainer.augment else x
        return trainer.step(s, mask, images, y, t, key)

    step = jax.jit(one)
    s, loss = step(state, 0)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for t in range(STEPS):
        s, loss = step(s, t)
    jax.block_until_ready(loss)
    loop = STEPS / (time.perf_counter() - t0)

    scanned = jax.jit(lambda s: jax.lax.scan(one, s, jnp.arange(STEPS)))
    jax.block_until_ready(scanned(state))
    t0 = time.perf_counter()
    jax.block_until_ready(scanned(state))
    scan = STEPS / (time.perf_counter() - t0)
    print(f"{name}, model.conv={conv}, augment={exp.trainer.augment}: {loop:.2f} steps/s from a "
          f"Python loop, {scan:.2f} steps/s in lax.scan")


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["canonical_vjp"]))
