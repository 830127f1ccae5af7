"""Batch norm fused with the ReLU and the residual sum after it, with a closed-form backward pass.

``BatchNorm()(y, residual, relu=True)`` is ``relu(nn.BatchNorm()(y) + residual)`` with Flax's
parameters, running statistics and values (the same names: ``scale``, ``bias``; ``mean``, ``var``
in ``'batch_stats'``; the same arithmetic, Flax's "fast variance" ``E[y²] - E[y]²``), written so
that a training step reads and writes each activation as few times as the arithmetic allows.

Why: in a ResNet-20 step on a CPU most of the time not spent in convolutions goes to batch norm
and the element-wise work around it, all of it memory-bound (a 32x32x16 activation of a batch of
128 is 8 MiB, past the core's cache). Differentiated by JAX, ``relu(nn.BatchNorm()(y) + s)``
becomes reductions through the mean and the variance that XLA:CPU computes apart, with several
intermediate tensors of the activation's size written between them. Here the backward pass is
the closed form below: per layer, the ReLU's mask applied to the output's cotangent ``g``, two
per-channel sums (``Σg``, ``Σg·y``) and one element-wise sweep for the input's gradient; the
residual's gradient is the masked ``g`` itself. The forward pass computes ``Σy``, ``Σy²`` and then
the output in one element-wise sweep. Fewer sweeps over these memory-bound activations make
ResNet-20's and VGG-19's training steps shorter (docs/performance.md, "ResNet-20 against the best
PyTorch").

The VJP is the closed form of batch norm's gradient (``y`` through the batch mean and variance
included): with ``x̂ = (y - mean)·inv``, ``inv = 1/sqrt(var + ε)``,
``dy = scale·inv·(g - Σg/n - x̂·Σ(g·x̂)/n)``, ``dscale = Σ(g·x̂)``, ``dbias = Σg``: what JAX
computes through Flax's ops, up to float32 rounding (tested against ``nn.BatchNorm``). The running
averages are updated as Flax does (``momentum·old + (1 - momentum)·batch``, the biased variance),
not during initialisation. In evaluation (``use_running_average``) it is plain JAX.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["BatchNorm", "batch_norm_act"]


def _statistics(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel (last axis) mean and biased variance over the other axes, Flax's fast way:
    ``var = max(E[y²] - E[y]², 0)``, accumulated in at least float32."""
    axes = tuple(range(y.ndim - 1))
    y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    mean = jnp.mean(y, axes)
    mean_of_squares = jnp.mean(lax.square(y), axes)
    return mean, jnp.maximum(0.0, mean_of_squares - lax.square(mean))


def _apply(y, mean, var, scale, bias, residual, relu, epsilon):
    """``(y - mean)·(rsqrt(var + ε)·scale) + bias (+ residual)``, then the ReLU: Flax's order of
    operations, so that the values are Flax's."""
    out = (y - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
    if residual is not None:
        out = out + residual
    return jnp.maximum(out, 0) if relu else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _normalized(y, mean, var, scale, bias, residual, relu, has_residual, epsilon):
    return _apply(y, mean, var, scale, bias, residual if has_residual else None, relu, epsilon)


def _normalized_fwd(y, mean, var, scale, bias, residual, relu, has_residual, epsilon):
    out = _normalized(y, mean, var, scale, bias, residual, relu, has_residual, epsilon)
    return out, (y, mean, var, scale, out if relu else None)


def _normalized_bwd(relu, has_residual, epsilon, saved, g):
    y, mean, var, scale, out = saved
    if relu:
        g = jnp.where(out > 0, g, jnp.zeros_like(g))
    axes = tuple(range(y.ndim - 1))
    n = y.size // y.shape[-1]
    # Σg·(y - mean) as Σg·y - mean·Σg: with y - mean inside the sum, XLA:CPU writes y - mean
    # out in full for the reduction (a sweep of its own). The two terms cancel where a channel's
    # mean is large against its spread; a convolution's outputs are not that far off centre, and
    # the gradients equal Flax's to float32 tolerance (tests/test_models.py).
    sum_g = jnp.sum(g, axes)
    sum_gc = jnp.sum(g * y, axes) - mean * sum_g
    inv = lax.rsqrt(var + epsilon)
    dy = (scale * inv) * (g - sum_g / n - (y - mean) * (inv * inv * sum_gc / n))
    # mean and var are y's own statistics (see batch_norm_act): their influence on the output is
    # in dy already, so they get no cotangent of their own.
    return (dy.astype(y.dtype), jnp.zeros_like(mean), jnp.zeros_like(var),
            (sum_gc * inv).astype(scale.dtype), sum_g.astype(scale.dtype),
            g if has_residual else jnp.zeros((), g.dtype))


_normalized.defvjp(_normalized_fwd, _normalized_bwd)


def batch_norm_act(y: jax.Array, scale: jax.Array, bias: jax.Array,
                   residual: jax.Array | None = None, *, relu: bool = False,
                   epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch norm of ``y`` over all axes but the last, then ``+ residual`` and the
    ReLU (each optional): ``(out, mean, var)`` with ``mean``/``var`` the batch statistics (for
    the running averages; not differentiable). Differentiable in ``y``, ``scale``, ``bias`` and
    ``residual`` by the closed-form VJP of the module docstring. ``scale``/``bias``: ``(C,)``;
    ``residual``: ``y``'s shape."""
    mean, var = (lax.stop_gradient(s) for s in _statistics(y))
    has_residual = residual is not None
    if not has_residual:  # a stand-in the custom VJP can take as an array (its cotangent: zero)
        residual = jnp.zeros((), y.dtype)
    out = _normalized(y, mean, var, scale, bias, residual, relu, has_residual, epsilon)
    return out, mean, var


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over the last axis, then optionally ``+ residual`` and a ReLU.

    ``__call__(y, residual=None, *, relu=False)`` returns ``relu(nn.BatchNorm(...)(y) + residual)``
    (without the ReLU unless ``relu``; without the sum unless ``residual`` is given), with Flax's
    parameters (``scale`` ones, ``bias`` zeros), running statistics (``mean`` zeros, ``var`` ones,
    collection ``'batch_stats'``), auto name (``BatchNorm_0``, ...) and values. In training
    (``use_running_average=False``) it normalises with the batch's statistics and updates the
    running averages (pass ``mutable=['batch_stats']``); its gradient is :func:`batch_norm_act`'s.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, y: jax.Array, residual: jax.Array | None = None, *,
                 relu: bool = False) -> jax.Array:
        features = (y.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                               features)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if self.use_running_average:
            return _apply(y, ra_mean.value, ra_var.value, scale, bias, residual, relu,
                          self.epsilon)
        out, mean, var = batch_norm_act(y, scale, bias, residual, relu=relu,
                                        epsilon=self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return out
