"""Timing of compiled work inside ``lax.scan``, as a training run has it.

A training run executes its step inside a loop over batches that differ from step to step, so a
micro-benchmark of one piece of the step (a convolution's gradient, a pool) is honest only under
the same conditions: inside a scan whose inputs differ at every step, so that XLA can neither drop
the work nor hoist it out of the loop. ``benchmarks/cpu_kernels/`` times every kernel this way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def per_step_ms(body: Callable, xs, calls: int = 3) -> float:
    """Median milliseconds per step of ``lax.scan(body, 0.0, xs)`` over ``calls`` calls, after one
    that compiles.

    ``body(total, x) -> (total, None)`` adds something of its result to the float ``total``;
    ``xs`` is a PyTree whose leaves share a leading axis of the steps and differ along it.
    """
    run = jax.jit(lambda xs: lax.scan(body, 0.0, xs)[0])
    jax.block_until_ready(run(xs))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(run(xs))
        times.append(time.perf_counter() - start)
    steps = jax.tree.leaves(xs)[0].shape[0]
    return statistics.median(times) / steps * 1e3


def scanned_ms(f: Callable, *arrays: jax.Array, steps: int = 8, calls: int = 3) -> float:
    """Median milliseconds of one call ``f(*arrays_t)`` inside a scan over ``steps`` scaled copies
    ``a_t = a · (1 + 0.01 t)`` of each array, t = 0 .. steps - 1 (:func:`per_step_ms`); the scan
    sums ``f``'s result, so every element of it is computed."""
    xs = tuple(jnp.stack([a * (1 + 0.01 * t) for t in range(steps)]) for a in arrays)
    return per_step_ms(lambda total, z: (total + jnp.sum(f(*z)), None), xs, calls)
