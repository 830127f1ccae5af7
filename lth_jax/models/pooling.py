"""Max-pooling whose backward pass is cheap on XLA:CPU.

Why: ``flax.linen.max_pool`` is a ``reduce_window``, whose gradient XLA lowers to a
``select_and_scatter``, which XLA:CPU runs slowly: Conv-2's pool (60 × 32×32×64 inputs), forward
and backward inside a scan, takes 40 ms on one core, a fifth of the whole training step. The
networks here only pool with non-overlapping windows (stride = window), and such a pool is a
reshape and a ``max`` over two axes, whose gradient is element-wise (compare, select, multiply):
5.6 ms for the same pool, 7-17x faster for the pools of Conv-2/4/6 and VGG-19
(``experiments/pool_backward.py``; BUILD_NOTES.md).

For ``x`` of shape ``(..., H, W, C)`` and window ``k``, with ``H' = ⌊H/k⌋``, ``W' = ⌊W/k⌋``::

    y[..., i, j, c] = max_{0 <= a, b < k} x[..., k·i + a, k·j + b, c]

the rows and columns past ``k·H'`` and ``k·W'`` dropped, as ``nn.max_pool(x, (k, k), strides=(k, k))``
(padding VALID) drops them. The values are those of ``nn.max_pool``, bit for bit. The gradient is
too wherever a window has one maximum; a window with tied maxima shares ``∂L/∂y`` equally among
them, where ``select_and_scatter`` gives all of it to the first. Both are subgradients of the max.
In the networks here every pool follows a ReLU, so ties have probability zero except at 0, where the
ReLU's own gradient is 0 and the two agree again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["max_pool"]


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping ``window × window`` max-pool with stride ``window`` over axes -3 and -2.

    ``x``: ``(..., H, W, C)`` (NHWC with any leading axes), any float dtype; returns
    ``(..., H // window, W // window, C)`` of the same dtype, the values of
    ``nn.max_pool(x, (window, window), strides=(window, window))``. Pure; works under ``jit``,
    ``vmap`` and ``grad``. Raises ``ValueError`` when a spatial axis is shorter than ``window``.
    """
    if x.ndim < 3:
        raise ValueError(f"max_pool: expected (..., H, W, C), got shape {x.shape}")
    *lead, h, w, c = x.shape
    rows, cols = h // window, w // window
    if window < 1 or rows == 0 or cols == 0:
        raise ValueError(f"max_pool: window {window} does not fit the spatial shape {(h, w)}")
    x = x[..., :rows * window, :cols * window, :]
    blocks = x.reshape(*lead, rows, window, cols, window, c)
    return jnp.max(blocks, axis=(-4, -2))
