"""Where the time of one LeNet-300-100 training step goes (batch 60, one device, 1,000 steps in a scan).

    python benchmarks/cpu_kernels/step_breakdown.py

Prints steps/s for: forward+backward only, plain SGD, plain Adam (optax.adam), lth_jax's masked
Adam step (Trainer.step), and the time of one evaluation pass over 15,000 examples (the 5K
validation + 10K test sets evaluated every 100 iterations). GFLOP/s use 68 MFLOP per step
(forward 2·266,200·60 plus the backward pass without the first layer's input gradient).
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lth_jax import masks, models
from lth_jax import train as train_lib

STEPS, BATCH, STEP_FLOPS = 1000, 60, 68e6


def report(name: str, f, *args) -> None:
    """Print the steps/s of ``f(*args)`` (a scan over STEPS steps), best of 3 calls after one."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    seconds = min(times)
    print(f"{name}: {STEPS / seconds:.0f} steps/s  ({STEPS * STEP_FLOPS / seconds / 1e9:.0f} GFLOP/s)")


def main() -> None:
    model = models.create("lenet300_100")
    params = models.init(model, jax.random.key(0), (28, 28, 1))["params"]
    mask = masks.ones_like(params)
    images = jax.random.normal(jax.random.key(1), (STEPS, BATCH, 28, 28, 1))
    labels = jnp.zeros((STEPS, BATCH), jnp.int32)
    loss = lambda p, x, y: jnp.mean(train_lib.cross_entropy(model.apply({"params": p}, x), y))

    def gradients_only(p):
        def body(total, batch):
            return total + jax.grad(loss)(p, *batch)["Dense_0"]["kernel"][0, 0], None
        return jax.lax.scan(body, 0.0, (images, labels))[0]

    def sgd(p):
        def body(p, batch):
            return jax.tree.map(lambda a, g: a - 0.01 * g, p, jax.grad(loss)(p, *batch)), None
        return jax.lax.scan(body, p, (images, labels))[0]

    adam = optax.adam(1e-3)

    def plain_adam(p):
        def body(carry, batch):
            p, state = carry
            updates, state = adam.update(jax.grad(loss)(p, *batch), state, p)
            return (optax.apply_updates(p, updates), state), None
        return jax.lax.scan(body, (p, adam.init(p)), (images, labels))[0]

    direction = train_lib.make_direction(ml_collections.ConfigDict(
        {"weight_decay": 0.0, "optimizer": "adam", "momentum": 0.9}))
    trainer = train_lib.Trainer(model, direction, lambda step: 1e-3, iterations=1, eval_every=1,
                                batch_size=BATCH, eval_batch_size=1, augment=False)

    def masked(p):
        def body(state, batch):
            return trainer.step(state, mask, *batch, 0, jax.random.key(0))
        return jax.lax.scan(body, trainer.init_state(p, {}), (images, labels))[0]

    report("fwd+bwd only", jax.jit(gradients_only), params)
    report("sgd", jax.jit(sgd), params)
    report("adam", jax.jit(plain_adam), params)
    report("masked trainer.step", jax.jit(masked), params)
    examples = jax.random.normal(jax.random.key(1), (6, 2500, 28, 28, 1))
    evaluate = jax.jit(lambda p: jax.lax.map(lambda x: model.apply({"params": p}, x).sum(), examples))
    jax.block_until_ready(evaluate(params))
    start = time.perf_counter()
    jax.block_until_ready(evaluate(params))
    seconds = time.perf_counter() - start
    print(f"eval 15000: {seconds * 1e3:.1f} ms ({15000 * 2 * 266200 / seconds / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
