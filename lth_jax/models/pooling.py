"""Max-pooling whose backward pass is cheap on XLA:CPU.

Why: ``flax.linen.max_pool`` is a ``reduce_window``, whose gradient XLA lowers to a
``select_and_scatter``, which XLA:CPU runs slowly: Conv-2's pool (60 × 32×32×64 inputs), forward
and backward inside a scan, took a fifth of the whole training step (docs/performance.md,
"Max-pooling without select_and_scatter"). The networks here only pool with non-overlapping
windows (stride = window), and such a pool is a reshape and a ``max`` over two axes, whose
gradient (a ``jax.custom_vjp``) is element-wise: each window's ``∂L/∂y`` goes to the first of its
maxima in row-major order, chosen by k² chained compares and selects that XLA fuses into one
loop, about 30 times faster for Conv-2's pool (``benchmarks/cpu_kernels/pool_backward.py``).

For ``x`` of shape ``(..., H, W, C)`` and window ``k``, with ``H' = ⌊H/k⌋``, ``W' = ⌊W/k⌋``::

    y[..., i, j, c] = max_{0 <= a, b < k} x[..., k·i + a, k·j + b, c]

the rows and columns past ``k·H'`` and ``k·W'`` dropped, as ``nn.max_pool(x, (k, k), strides=(k, k))``
(padding VALID) drops them. The values are those of ``nn.max_pool``, bit for bit, and so is the
gradient, tied maxima included: ``select_and_scatter`` also gives the whole of ``∂L/∂y`` to the
first maximum of the window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["max_pool"]


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping ``window × window`` max-pool with stride ``window`` over axes -3 and -2.

    ``x``: ``(..., H, W, C)`` (NHWC with any leading axes), any float dtype; returns
    ``(..., H // window, W // window, C)`` of the same dtype, the values and gradient of
    ``nn.max_pool(x, (window, window), strides=(window, window))``. Pure; works under ``jit``,
    ``vmap``, ``grad`` and forward-over-reverse (``jax.jvp`` of a gradient), not under ``jax.jvp``
    of the pool itself (a ``jax.custom_vjp``). Raises ``ValueError`` when a spatial axis is shorter
    than ``window``.
    """
    if x.ndim < 3:
        raise ValueError(f"max_pool: expected (..., H, W, C), got shape {x.shape}")
    *lead, h, w, c = x.shape
    rows, cols = h // window, w // window
    if window < 1 or rows == 0 or cols == 0:
        raise ValueError(f"max_pool: window {window} does not fit the spatial shape {(h, w)}")
    x = x[..., :rows * window, :cols * window, :]
    return _max_over_windows(x.reshape(*lead, rows, window, cols, window, c))


@jax.custom_vjp
def _max_over_windows(blocks: jax.Array) -> jax.Array:
    """``(..., H', k, W', k, C) -> (..., H', W', C)``: the max over axes -4 and -2."""
    return jnp.max(blocks, axis=(-4, -2))


def _max_over_windows_fwd(blocks):
    pooled = jnp.max(blocks, axis=(-4, -2))
    return pooled, (blocks, pooled)


def _max_over_windows_bwd(residuals, cotangent):
    # ∂L/∂y goes to the first maximum of its window in row-major order, as XLA's
    # select_and_scatter (nn.max_pool's gradient) gives it. Written as k² element-wise selects
    # chained by "taken", it is one loop fusion; JAX's own gradient of a max shares ∂L/∂y among
    # tied maxima and needs a count per window, a reduction that XLA:CPU ran slowly: Conv-2's
    # pool forward and backward several times slower that way, the reduction alone a few % of
    # its step (benchmarks/cpu_kernels/pool_backward.py, benchmarks/cpu_kernels/step_profile.py
    # conv2; docs/performance.md, "Max-pooling without select_and_scatter").
    blocks, pooled = residuals
    window = blocks.shape[-2]
    taken = jnp.zeros(pooled.shape, dtype=bool)
    rows = []
    for a in range(window):
        row = []
        for b in range(window):
            at_max = blocks[..., a, :, b, :] == pooled
            row.append(jnp.where(at_max & ~taken, cotangent, jnp.zeros_like(cotangent)))
            taken = taken | at_max
        rows.append(jnp.stack(row, axis=-2))  # (..., H', W', k, C)
    return (jnp.stack(rows, axis=-4),)  # (..., H', k, W', k, C)


_max_over_windows.defvjp(_max_over_windows_fwd, _max_over_windows_bwd)
