"""XLA:CPU's own oneDNN convolution, reached from JAX as a primitive.

Why: XLA:CPU runs a canonical convolution (NHWC input, HWIO kernel) in YNNPACK, which refuses
layers of at most 16 channels and leaves them to Eigen's far slower code: ResNet-20's 32x32x16
layers ran at about half the rate of its 16x16x32 ones, which have as many multiplies
(docs/performance.md, "ResNet-20 against the best PyTorch"). XLA:CPU also carries oneDNN, the
library PyTorch runs its CPU convolutions in, as the custom call ``__onednn$convolution`` (a
forward-inference convolution) that its ``OneDnnOpThunk`` executes. :func:`conv` emits that
custom call for a canonical forward convolution; nothing is compiled or installed besides jaxlib.

The custom call is XLA's internal interface, not a JAX API: its configuration format may change
between jaxlib releases. So :func:`available` compiles a small convolution through it once per
process and compares it with ``lax.conv_general_dilated``; callers use it only where that check
passed (:mod:`lth_jax.models.convolution`).

The primitive is differentiable (its tangent is XLA's own convolution, linear in the tangents),
batchable (a vmapped input is folded into the batch; a vmapped kernel maps over it) and lowers on
CPU only.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import ad, batching, mlir

__all__ = ["available", "conv"]

_NHWC = ("NHWC", "HWIO", "NHWC")
_TARGET = "__onednn$convolution"


def _output_shape(x_shape, w_shape, strides, pads) -> tuple[int, ...]:
    spatial = tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi)
                    in zip(x_shape[1:3], w_shape[:2], strides, pads))
    return (x_shape[0], *spatial, w_shape[3])


def _abstract(x, w, *, strides, pads):
    return jax.core.ShapedArray(_output_shape(x.shape, w.shape, strides, pads), x.dtype)


def _config(strides, pads) -> str:
    """The ``BackendConfig`` JSON of a canonical convolution: zero-based dimension indices of the
    NHWC input and output and the HWIO kernel; strides and paddings as they are; the kernel
    dilation stored plus one (XLA's oneDNN runtime subtracts one: oneDNN counts the gaps)."""
    data = {"batch_dim": 0, "feature_dim": 3, "spatial_dims": [1, 2]}
    return json.dumps({"onednn_conv_config": {
        "dims": 4,
        "input": {"dims": 4, "data": data},
        "kernel": {"dims": 4, "filter": {"input_feature_dim": 2, "output_feature_dim": 3,
                                         "spatial_dims": [0, 1]}},
        "output": {"dims": 4, "data": data},
        "window": {"strides": list(strides), "pad_left": [lo for lo, _ in pads],
                   "pad_right": [hi for _, hi in pads], "window_dilations": [1, 1]},
        "feature_groups": 1}})


def _lowering(ctx, x, w, *, strides, pads):
    out, = ctx.avals_out
    op = stablehlo.CustomCallOp([mlir.aval_to_ir_type(ctx.module_context, out)], [x, w], _TARGET,
                                backend_config=mlir.ir.StringAttr.get(_config(strides, pads)),
                                api_version=mlir.i32_attr(1))
    return op.results


def _xla(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def _jvp(primals, tangents, *, strides, pads):
    x, w = primals
    tx, tw = tangents
    out = _conv_p.bind(x, w, strides=strides, pads=pads)
    # The product is bilinear: its tangent is linear in (tx, tw); XLA's own convolution carries
    # it, so transposition (reverse mode) and higher orders use XLA's rules.
    parts = []
    if not isinstance(tx, ad.Zero):
        parts.append(_xla(tx, w, strides, pads))
    if not isinstance(tw, ad.Zero):
        parts.append(_xla(x, tw, strides, pads))
    if not parts:
        return out, ad.Zero.from_primal_value(out)
    return out, functools.reduce(jnp.add, parts)


def _batch(args, dims, *, strides, pads):
    x, w = args
    x_dim, w_dim = dims
    if w_dim is None:  # fold the mapped axis into the convolution's batch
        x = jnp.moveaxis(x, x_dim, 0)
        maps, batch = x.shape[:2]
        out = _conv_p.bind(x.reshape(maps * batch, *x.shape[2:]), w, strides=strides, pads=pads)
        return out.reshape(maps, batch, *out.shape[1:]), 0
    w = jnp.moveaxis(w, w_dim, 0)
    if x_dim is None:
        x = jnp.broadcast_to(x, (w.shape[0], *x.shape))
    else:
        x = jnp.moveaxis(x, x_dim, 0)
    return lax.map(lambda xw: _conv_p.bind(*xw, strides=strides, pads=pads), (x, w)), 0


_conv_p = Primitive("onednn_conv")
_conv_p.def_abstract_eval(_abstract)
_conv_p.def_impl(lambda x, w, **params: jax.jit(
    lambda x, w: _conv_p.bind(x, w, **params))(x, w))
mlir.register_lowering(_conv_p, _lowering, platform="cpu")
ad.primitive_jvps[_conv_p] = _jvp
batching.primitive_batchers[_conv_p] = _batch


def conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
         pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """``lax.conv_general_dilated(x, w, strides, pads)`` for an NHWC ``x`` and HWIO ``w`` (float32,
    non-negative padding, no dilation, one group), computed by oneDNN inside XLA:CPU.

    Returns ``(N, H_out, W_out, C_out)``. Pure; jit, vmap and grad work; CPU only: use it where
    :func:`available` is true.
    """
    strides = tuple(int(s) for s in strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if any(p < 0 for pair in pads for p in pair):
        raise ValueError(f"oneDNN convolution needs non-negative padding, got {pads}")
    return _conv_p.bind(x, w, strides=strides, pads=pads)


@functools.cache
def available() -> bool:
    """Whether :func:`conv` compiles and computes ``lax.conv_general_dilated``'s values here (to
    float32 rounding) on a stride-1 and a stride-2 probe layer; false off CPUs, on a jaxlib
    without the custom call, or where its configuration format differs. Checked once per process.
    """
    if jax.default_backend() != "cpu":
        return False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
    try:
        for strides, pads in (((1, 1), ((1, 1), (0, 2))), ((2, 1), ((0, 1), (1, 1)))):
            # Compiled explicitly: the first caller is usually tracing a program, into which a
            # plain jit call would be staged rather than run.
            got, want = (np.asarray(jax.jit(f, static_argnums=(2, 3)).lower(
                x, w, strides, pads).compile()(x, w)) for f in (conv, _xla))
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                return False
    except Exception:  # noqa: BLE001 - any failure to compile or run means: not here
        return False
    return True
