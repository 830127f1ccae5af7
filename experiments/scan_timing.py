"""Timing of work inside ``lax.scan``, as lth_jax's training runs have it (for the experiments'
micro-benchmarks)."""

import statistics
import time
from collections.abc import Callable

import jax
from jax import lax


def per_step_ms(body: Callable, xs, calls: int = 3) -> float:
    """Median milliseconds per step of ``lax.scan(body, 0.0, xs)`` over ``calls`` calls (after one
    that compiles). ``body(total, x) -> (total, None)`` should add something of its result to the
    float ``total``, and ``xs`` should differ from step to step, so that XLA can neither drop nor
    hoist the work out of the loop."""
    run = jax.jit(lambda xs: lax.scan(body, 0.0, xs)[0])
    jax.block_until_ready(run(xs))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(run(xs))
        times.append(time.perf_counter() - start)
    steps = jax.tree.leaves(xs)[0].shape[0]
    return statistics.median(times) / steps * 1e3
