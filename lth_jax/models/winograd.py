"""Winograd's minimal filtering F(2x2, 3x3): a stride-1 3x3 convolution with 2.25x fewer multiplies.

For a 3x3 kernel ``g`` and each 4x4 tile ``d`` of the padded input (tiles start every 2 rows and
columns, so neighbours overlap by 2), the 2x2 output tile of their correlation is (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", CVPR 2016)

    y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A

    Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G  = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]

Summed over input channels, the element-wise product becomes one matrix product per position
``ξ`` of the 4x4 transformed tile: ``M_ξ = V_ξ · U_ξ`` with ``V_ξ`` (tiles, C_in) the transformed
input and ``U_ξ = (G g Gᵀ)_ξ`` (C_in, C_out) the transformed kernel. That is ``16·C_in·C_out``
multiply-adds per four outputs against ``36·C_in·C_out`` directly; the transforms are additions
(and the kernel's halves), linear in the input's size. The results equal the direct correlation up
to float32 rounding (max error ~1e-6 of the output's largest value for the forward pass, up to
~1e-5 for a kernel gradient summed over 60 examples; the coefficients 0, ±1/2, ±1 are exactly
representable, so the error is that of the reassociated sums).

:func:`conv3x3` is the correlation (``lax.conv_general_dilated`` with NHWC/HWIO/NHWC, stride 1, no
dilation) for any non-negative padding, a few examples at a time (a ``lax.map`` over chunks of the
batch, so each chunk's transformed tiles, 4x its input, stay near the core);
:func:`kernel_transform` is ``G g Gᵀ``. This module is only the arithmetic; which layers use it is
decided in :mod:`lth_jax.models.convolution`. Pure functions, usable under ``jit``, ``vmap`` and
``grad`` (their plain JAX derivatives; lth_jax's convolution supplies its own VJP).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["G", "conv3x3", "kernel_gradient3x3", "kernel_transform", "tiles"]

#: The kernel transform ``G`` (4x3) of F(2x2, 3x3).
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def tiles(size: int, pads: tuple[int, int]) -> int:
    """How many 2-wide output tiles cover the ``size + lo + hi - 2`` outputs of one spatial axis."""
    return -(-(size + pads[0] + pads[1] - 2) // 2)


def _input_transform(a: jax.Array, axis: int, count: int) -> jax.Array:
    """``Bᵀ d`` along ``axis`` for ``count`` tiles of 4 starting every 2 entries: a new leading axis
    of 4 (the transformed tile), ``axis`` shortened to ``count``. ``a`` has ``2·count + 2`` entries
    along ``axis``."""
    rows = [lax.slice_in_dim(a, r, r + 2 * count - 1, 2, axis) for r in range(4)]
    d0, d1, d2, d3 = rows
    return jnp.stack([d0 - d2, d1 + d2, d2 - d1, d1 - d3])


def _output_transform(m: jax.Array, axis: int) -> jax.Array:
    """``Aᵀ m`` over ``m``'s leading axis of 4, the two outputs of each tile interleaved into
    ``axis`` (an axis of ``m[0]``, doubled in length)."""
    y0 = m[0] + m[1] + m[2]
    y1 = m[1] - m[2] - m[3]
    stacked = jnp.stack([y0, y1], axis=axis + 1)
    shape = list(y0.shape)
    shape[axis] *= 2
    return stacked.reshape(shape)


def _output_transform_adjoint(d: jax.Array, axis: int) -> jax.Array:
    """``A d`` along ``axis`` (2·T entries: the tiles' output pairs): the adjoint of
    :func:`_output_transform`, a new leading axis of 4, ``axis`` shortened to T."""
    d0 = lax.slice_in_dim(d, 0, d.shape[axis] - 1, 2, axis)
    d1 = lax.slice_in_dim(d, 1, d.shape[axis], 2, axis)
    return jnp.stack([d0, d0 + d1, d0 - d1, -d1])


def _kernel_rows(g: jax.Array) -> jax.Array:
    """``G g`` along ``g``'s leading axis of 3: a leading axis of 4."""
    g0, g1, g2 = g[0], g[1], g[2]
    half = 0.5 * (g0 + g2)
    return jnp.stack([g0, half + 0.5 * g1, half - 0.5 * g1, g2])


def _kernel_rows_adjoint(u: jax.Array) -> jax.Array:
    """``Gᵀ u`` along ``u``'s leading axis of 4: a leading axis of 3 (the adjoint of
    :func:`_kernel_rows`)."""
    u0, u1, u2, u3 = u[0], u[1], u[2], u[3]
    return jnp.stack([u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3])


def kernel_transform(w: jax.Array) -> jax.Array:
    """``U = G g Gᵀ`` for an HWIO kernel ``w`` (3, 3, C_in, C_out): (4, 4, C_in, C_out), indexed
    ``[column ξ, row ξ]`` to match the transformed input of :func:`conv3x3`. Element-wise
    arithmetic (as an einsum, XLA:CPU made it a (C_in·C_out·4, 3) matmul, far slower:
    docs/performance.md, "Winograd's F(2x2, 3x3), layer by layer"), in at least float32."""
    w = w.astype(jnp.promote_types(w.dtype, jnp.float32))
    rows = _kernel_rows(w)  # (4 row ξ, 3 columns, C_in, C_out)
    return _kernel_rows(jnp.swapaxes(rows, 0, 1))  # (4 column ξ, 4 row ξ, C_in, C_out)


def _transformed_input(x: jax.Array, pads) -> jax.Array:
    """``V``: (16, N·T_h·T_w, C_in), the 4x4 tiles of ``x`` padded by ``pads``, transformed
    (``Bᵀ d B``), ordered ``[column ξ, row ξ]`` then (example, tile row, tile column)."""
    n, height, width, c_in = x.shape
    t_h, t_w = tiles(height, pads[0]), tiles(width, pads[1])
    # Pad to exactly the 2·T + 2 entries the tiles read (past `hi` where the outputs are odd).
    edges = [(lo, 2 * t + 2 - size - lo) for size, (lo, _), t in
             zip((height, width), pads, (t_h, t_w))]
    padded = jnp.pad(x, ((0, 0), edges[0], edges[1], (0, 0)))
    v = _input_transform(_input_transform(padded, 1, t_h), 3, t_w)  # (4, 4, N, T_h, T_w, C_in)
    return v.reshape(16, n * t_h * t_w, c_in)


def _conv3x3_chunk(x: jax.Array, u: jax.Array, pads, precision, channels_swapped) -> jax.Array:
    """The correlation of ``x`` (N, H, W, C_in) with the transformed kernel ``u`` ((4, 4, C_in,
    C_out), or (4, 4, C_out, C_in) if ``channels_swapped``), all 2·T outputs per spatial axis
    (the caller crops)."""
    n, height, width, c_in = x.shape
    t_h, t_w = tiles(height, pads[0]), tiles(width, pads[1])
    v = _transformed_input(x, pads)
    accumulator = jnp.promote_types(x.dtype, jnp.float32)
    # Swapped channels are contracted where they lie: XLA:CPU transposed the 16 matrices as
    # fast as it multiplied them in isolation, but in VGG-19's step as a costly copy each.
    u = u.reshape(16, *u.shape[2:]).astype(x.dtype)  # (16, C_in, C_out) or (16, C_out, C_in)
    m = lax.dot_general(v, u, (((2,), (2 if channels_swapped else 1,)), ((0,), (0,))),
                        precision=precision, preferred_element_type=accumulator)
    m = m.reshape(4, 4, n, t_h, t_w, -1)
    rows = _output_transform(jnp.moveaxis(m, 1, 0), 2)  # (4, N, 2·T_h, T_w, C_out)
    return _output_transform(rows, 2).astype(x.dtype)  # (N, 2·T_h, 2·T_w, C_out)


def _check(x_shape, w_shape, pads) -> tuple[tuple[int, int], ...]:
    if len(x_shape) != 4 or tuple(w_shape[:2]) != (3, 3) or w_shape[2] != x_shape[3]:
        raise ValueError(f"Winograd F(2x2, 3x3) takes NHWC input and a 3x3 HWIO kernel; got "
                         f"{tuple(x_shape)}, {tuple(w_shape)}")
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if any(p < 0 for pair in pads for p in pair):
        raise ValueError(f"Winograd F(2x2, 3x3) takes non-negative padding; got {pads}")
    return pads


def _chunks(batch: int, examples_per_chunk: int | None) -> int:
    chunk = batch if examples_per_chunk is None else int(examples_per_chunk)
    if chunk < 1 or batch % chunk:
        raise ValueError(f"examples_per_chunk={chunk} does not divide the batch of {batch}")
    return chunk


def conv3x3(x: jax.Array, w: jax.Array, pads: Sequence[tuple[int, int]], *,
            examples_per_chunk: int | None = None, precision: Any = None,
            flipped: bool = False) -> jax.Array:
    """``lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))``
    by F(2x2, 3x3).

    Args:
        x: (N, H, W, C_in) input.
        w: (3, 3, C_in, C_out) HWIO kernel; with ``flipped``, (3, 3, C_out, C_in) and the
            correlation is with ``swapaxes(w[::-1, ::-1], 2, 3)`` (a layer's input gradient is
            that of ``dy``), without writing that kernel: rotating ``g`` by 180° permutes the
            rows and columns of ``G g Gᵀ`` (0 <-> 3), and the channel swap is a transpose of the
            16 transformed matrices, each (C_out, C_in) -> (C_in, C_out).
        pads: ``((lo, hi), (lo, hi))`` zero padding of H and W, all non-negative.
        examples_per_chunk: examples transformed and multiplied together, a divisor of N (a
            ``lax.map`` over the chunks); None or N: the whole batch at once.
        precision: passed to the matrix products.
    Returns:
        (N, H + lo + hi - 2, W + lo + hi - 2, C_out) in ``x``'s dtype; products accumulate in at
        least float32.
    """
    pads = _check(x.shape, (3, 3, w.shape[3], w.shape[2]) if flipped else w.shape, pads)
    batch, height, width = x.shape[:3]
    out_h, out_w = height + sum(pads[0]) - 2, width + sum(pads[1]) - 2
    u = kernel_transform(w)
    if flipped:
        # Transforming the flipped, channel-swapped kernel instead made XLA fuse the channel
        # transpose into the transform's slow strided writes (docs/performance.md, "Winograd's
        # F(2x2, 3x3), layer by layer").
        swap = lambda a: jnp.stack([a[3], a[1], a[2], a[0]])
        u = jnp.swapaxes(swap(jnp.swapaxes(swap(u), 0, 1)), 0, 1)
    chunk = _chunks(batch, examples_per_chunk)
    if chunk == batch:
        y = _conv3x3_chunk(x, u, pads, precision, flipped)
    else:
        parts = x.reshape(batch // chunk, chunk, *x.shape[1:])
        y = lax.map(lambda part: _conv3x3_chunk(part, u, pads, precision, flipped), parts)
        y = y.reshape(batch, *y.shape[2:])
    return y[:, :out_h, :out_w]


def kernel_gradient3x3(x: jax.Array, dy: jax.Array, pads: Sequence[tuple[int, int]], *,
                       examples_per_chunk: int | None = None, precision: Any = None) -> jax.Array:
    """The kernel gradient of :func:`conv3x3`: ``∂/∂w Σ dy ⊙ conv3x3(x, w, pads)``, by F(2x2, 3x3).

    It is the adjoint of the forward pass's arithmetic: ``dM = A dy Aᵀ`` per 2x2 output tile (dy
    zero-padded to whole tiles), ``dU_ξ = Σ_tiles V_ξᵀ · dM_ξ`` (one (C_in, C_out) matrix product
    per tile position ξ, summed over the batch, chunk by chunk), ``dw = Gᵀ dU G``. The same
    2.25x fewer multiplies as the forward pass.

    Args:
        x: (N, H, W, C_in) the layer's input.
        dy: (N, H + lo + hi - 2, W + lo + hi - 2, C_out) the gradient of its output.
        pads: ``((lo, hi), (lo, hi))`` as for :func:`conv3x3`.
        examples_per_chunk: examples per chunk of the sum, a divisor of N (a ``lax.scan``);
            None or N: the whole batch at once.
        precision: passed to the matrix products.
    Returns:
        (3, 3, C_in, C_out) in ``x``'s dtype; sums accumulate in at least float32.
    """
    pads = _check(x.shape, (3, 3, x.shape[3], dy.shape[3]), pads)
    batch, height, width, c_in = x.shape
    t_h, t_w = tiles(height, pads[0]), tiles(width, pads[1])
    c_out = dy.shape[3]
    if dy.shape[:3] != (batch, height + sum(pads[0]) - 2, width + sum(pads[1]) - 2):
        raise ValueError(f"dy {dy.shape} is not the output of {x.shape} padded by {pads}")
    accumulator = jnp.promote_types(x.dtype, jnp.float32)
    # The forward pass's crop, undone: dy zero-padded to whole tiles.
    dy = jnp.pad(dy, ((0, 0), (0, 2 * t_h - dy.shape[1]), (0, 2 * t_w - dy.shape[2]), (0, 0)))

    def transformed_sum(x_part: jax.Array, dy_part: jax.Array) -> jax.Array:
        """(16, C_in, C_out): Σ over the part's tiles of V_ξᵀ · dM_ξ."""
        v = _transformed_input(x_part, pads)
        dm = _output_transform_adjoint(_output_transform_adjoint(dy_part, 1), 3)
        dm = dm.reshape(16, -1, c_out)  # [column ξ, row ξ] as v
        return lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))), precision=precision,
                               preferred_element_type=accumulator)

    chunk = _chunks(batch, examples_per_chunk)
    if chunk == batch:
        du = transformed_sum(x, dy)
    else:
        split = lambda a: a.reshape(batch // chunk, chunk, *a.shape[1:])
        total = jnp.zeros((16, c_in, c_out), accumulator)
        du = lax.scan(lambda acc, part: (acc + transformed_sum(*part), None), total,
                      (split(x), split(dy)))[0]
    columns = _kernel_rows_adjoint(du.reshape(4, 4, c_in, c_out))  # (3 columns, 4 row ξ, ...)
    dw = _kernel_rows_adjoint(jnp.swapaxes(columns, 0, 1))  # (3 rows, 3 columns, C_in, C_out)
    return dw.astype(x.dtype)
