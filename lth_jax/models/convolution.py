"""Convolutions whose backward pass runs fast inside loops on XLA:CPU.

Why: ``jax.grad`` of an NHWC/HWIO convolution emits two convolutions in non-standard layouts (the
input gradient with ``b01f_01oi->b01f``, the kernel gradient with ``f01b_i01o->01bf``). XLA:CPU
rewrites such convolutions into its fast standard layout only in a program's entry computation; inside
a while loop (``lax.scan``, ``lax.map``) they stay and run through its naive convolution code, 85×
slower for Conv-2 (docs/performance.md, "Convolutions inside loops on XLA:CPU"). A whole training
run here is one scanned
program, so every gradient convolution sits in a loop.

:func:`canonical_conv_general_dilated` is ``lax.conv_general_dilated`` with a custom VJP made of
matrix products of strided windows (one per kernel tap) and forward convolutions, plus pads,
flips and reshapes, which XLA:CPU runs in its fast code wherever they sit; the forward pass stays a
canonical convolution (NHWC input, HWIO kernel, NHWC output), which XLA:CPU also runs fast in
loops, except where the input is smaller than the kernel (a 2x2 map under a 3x3 kernel: XLA:CPU's
slow path, ~100x a matmul), where it is the matmul of the input's patches (``P`` below). For
``y = x ⋆ w`` with strides ``s``, padding ``(p_lo, p_hi)`` and kernel size ``k`` per spatial
axis, ``W_t(a, s)`` the window of ``a`` that kernel tap ``t = (i, j)`` meets at stride ``s``
(``(N, H_out, W_out, C)``) and ``P(a, s)`` all of them concatenated (im2col, rows ordered as the
HWIO kernel's ``(k_h, k_w, C)``):

* input gradient: ``dx = Σ_t W_t(pad(dilate_s(dy), (k-1-p_lo, H+p_lo-(H_out-1)·s-1)), 1) ·
  flip(w)ᵀ[t]`` where ``dilate_s`` puts ``s-1`` zeros between the elements of ``dy`` (interior
  padding), ``flip`` reverses the spatial axes and ``ᵀ`` swaps the kernel's in and out channels.
  That sum is the canonical forward convolution of the padded ``dy`` with ``flip(w)ᵀ``; on CPUs
  with AVX-512 it is computed as one (XLA:CPU runs it in YNNPACK, ~2x the matmuls of windows),
  elsewhere as the sum of matmuls (on the AVX2 CPU measured, XLA's convolution ran at about half
  the matmuls' rate), and everywhere as the sum where the input is smaller than the kernel;
* kernel gradient: ``dw[t] = (dyᵀ · W_t(pad(x, (p_lo, k+(H_out-1)·s-H-p_lo)), s))ᵀ`` over all
  batch and output positions, with ``dy`` transposed once for all taps, computed a few examples
  at a time (a ``lax.fori_loop`` over chunks of the batch, each chunk's operands about half of a
  1 MiB L2 cache; the whole batch at once off CPUs); where the windows together hold fewer
  channels than ``dy`` (a first layer's 9 × 3 against 64) each window is transposed instead, over
  the whole batch; in layers of at most ``_PATCHES_MAX_CHANNELS`` (32) channels, one matmul
  ``dyᵀ · P(x)`` a chunk instead of one a tap.

Three more formulations for ResNet-20's narrow layers, which XLA:CPU would otherwise leave to its
slower Eigen code (its fast YNNPACK convolutions refuse layers of at most 16 channels), each
measured on whole steps (docs/performance.md, "ResNet-20 against the best PyTorch"): a strided
layer onto at most 16 channels takes its input gradient by phases
(:func:`_strided_input_gradient`: one forward convolution of ``dy`` with ``s_h·s_w·C_in``
outputs, depth to space, no dilation zeros); a narrow first layer (3 -> 16) computes its forward
pass on pairs of columns (:func:`_paired`); and batch norm, ReLU and the residual sum around the
convolutions are one module with its own VJP (:mod:`lth_jax.models.batch_norm`).

Two more leave XLA's operations where this CPU allows (AVX-512, on CPUs only, never inside
:func:`convolutions_in_one_piece`): the narrow layers' forward pass and input gradient run in
oneDNN's convolution, which XLA:CPU carries as a custom call (:mod:`lth_jax.models.onednn`), and
layers of at most 64 channels take their kernel gradient from a native kernel compiled on first
use (:mod:`lth_jax.models.native`); each is checked against XLA's own once per process and, where
it is missing or differs, the formulations here are used instead (docs/performance.md, "oneDNN
for the narrow layers" and "A native kernel gradient").

Why not a convolution for the kernel gradient too: written as one (batch and channel roles
swapped, a 32×32 "kernel" for Conv-2) it ran an order of magnitude slower than the patches
product on this project's first CPU (docs/performance.md, "Convolutions inside loops on
XLA:CPU"), and slower than the windows on an AVX-512 CPU (docs/performance.md, "The input
gradient as a forward convolution; dy transposed once"). Windows rather than the concatenated
patches in wide layers: no tensor ``k_h·k_w`` times an activation's size is written, and steps
are shorter than with patches over the whole batch (docs/performance.md, "Gradients as matmuls
of windows"). Both gradients equal ``jax.grad`` of ``lax.conv_general_dilated`` up to float32
reassociation (tested, either way of computing the input gradient). A strided layer's input
gradient as windows pays for the zeros of the dilated ``dy`` (``s²`` times its FLOPs); as a
convolution XLA folds the dilation into it (an input-dilated convolution, which XLA:CPU runs in
Eigen rather than YNNPACK, still several times faster than the windows for ResNet-20's
downsampling layers: docs/performance.md, "The input gradient as a forward convolution; dy
transposed once"), or, onto narrow inputs, by phases (above). Only ResNet-20's two downsampling
blocks (and their 1×1 shortcuts) have strides.

With ``use_winograd`` (:func:`winograd_conv_general_dilated`, ``conv="winograd"``), the stride-1
3x3 layers at least ``_WINOGRAD_MIN_CHANNELS`` (64) channels wide compute all three products of a
training step by Winograd's F(2x2, 3x3) (:mod:`lth_jax.models.winograd`, 2.25x fewer
multiplies): the forward pass ``winograd.conv3x3(x, w)`` (when differentiated: evaluation and
inference keep XLA's direct convolution, which XLA:CPU fuses with the layers after it), the
input gradient ``winograd.conv3x3(dy, flip(w)ᵀ)`` (the same correlation as above, padded by
``(k-1-p_lo, ...)``), and the kernel gradient
``winograd.kernel_gradient3x3(x, dy)``, each over chunks of about ``_WINOGRAD_ROWS`` tiles. Each
of the three products of Conv-2's 32x32x64 layer is faster so, and Conv-2/4/6 and VGG-19 train
faster (benchmarks/cpu_kernels/conv_gradients.py winograd, benchmarks/benchmark.py;
docs/performance.md, "Winograd's F(2x2, 3x3), layer by layer" and "Speed of every network"). The
values differ from the direct ones by float32 rounding only (tested against ``nn.Conv``).

The implementation is chosen per model with ``conv = "auto" | "xla" | "canonical_vjp" |
"winograd"`` (see :func:`resolve`): "auto" is "winograd" on CPUs and "xla" (cuDNN's own kernels,
no custom VJP) on GPUs and TPUs, where XLA's gradient convolutions are not slowed by loops.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lth_jax.models import native, onednn, winograd

__all__ = ["IMPLEMENTATIONS", "Conv", "canonical_conv_general_dilated", "conv_function",
           "convolutions_in_one_piece", "resolve", "winograd_conv_general_dilated"]

IMPLEMENTATIONS = ("auto", "xla", "canonical_vjp", "winograd")
_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve(conv: str, platform: str | None = None) -> str:
    """The concrete implementation for ``conv`` on ``platform`` (default: JAX's default backend).

    ``"auto"`` is ``"winograd"`` on ``"cpu"`` and ``"xla"`` elsewhere: measured on XLA:CPU the
    canonical VJP is far faster inside a scan than XLA's gradient convolutions
    (docs/performance.md, "Convolutions inside loops on XLA:CPU"), and Winograd's F(2x2, 3x3) on
    the wide stride-1 layers makes Conv-2's step shorter again (docs/performance.md, "Speed of
    every network"); on GPU/TPU XLA's own convolutions go to cuDNN / the TPU's convolution units
    in any layout (cuDNN picks Winograd itself where it pays), and a custom VJP could only hide
    the pattern from XLA's fusions. Raises ``ValueError`` for an unknown name.
    """
    if conv not in IMPLEMENTATIONS:
        raise ValueError(f"unknown convolution {conv!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if conv != "auto":
        return conv
    platform = platform or jax.default_backend()
    return "winograd" if platform == "cpu" else "xla"


def conv_function(conv: str, platform: str | None = None) -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` function for ``nn.Conv(conv_general_dilated=...)``."""
    return {"canonical_vjp": canonical_conv_general_dilated, "xla": lax.conv_general_dilated,
            "winograd": winograd_conv_general_dilated}[resolve(conv, platform)]


def _is_canonical(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> bool:
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    if dimension_numbers is None:  # lax's default is NCHW/OIHW/NCHW
        return False
    wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return given == wanted


def canonical_conv_general_dilated(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
    feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
    preferred_element_type: Any = None, *, use_winograd: bool = False) -> jax.Array:
    """``lax.conv_general_dilated`` whose gradients are canonical forward convolutions.

    Same signature and result as ``lax.conv_general_dilated``. The custom VJP covers the case every
    network here uses: 2-D, NHWC input, HWIO kernel, NHWC output, any strides and padding (SAME,
    VALID or explicit pairs), no input/kernel dilation, one feature and batch group. Any other case
    is passed to ``lax.conv_general_dilated`` unchanged (correct, but slow inside loops on XLA:CPU).
    With ``use_winograd``, the layers :func:`_winograd_applies` picks (stride-1 3x3 layers at least
    ``_WINOGRAD_MIN_CHANNELS`` wide) compute their output (when differentiated), input gradient
    and kernel gradient by Winograd's F(2x2, 3x3) (:mod:`lth_jax.models.winograd`): the same
    values up to float32 rounding.
    Pure; works under ``jit``, ``vmap``, ``grad`` (first order; the VJP itself is differentiable too).
    """
    plain = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
    undilated = all(d == 1 for d in (lhs_dilation or (1, 1))) and \
        all(d == 1 for d in (rhs_dilation or (1, 1)))
    if (not _is_canonical(lhs, rhs, dimension_numbers) or not undilated
            or feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type is not None):
        return plain()
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return _conv(lhs, rhs, strides, pads, precision, bool(use_winograd))


def winograd_conv_general_dilated(*args: Any, **kwargs: Any) -> jax.Array:
    """:func:`canonical_conv_general_dilated` with ``use_winograd=True`` (``conv="winograd"``)."""
    return canonical_conv_general_dilated(*args, **kwargs, use_winograd=True)


#: Winograd's F(2x2, 3x3) only for layers whose in and out channels are both at least this many:
#: narrower ones do too little arithmetic per transformed value: on ResNet-20's 16- and
#: 32-channel layers Winograd was no faster than the direct forms, or slower, while 64 channels
#: and wider gained in every product (benchmarks/cpu_kernels/conv_gradients.py winograd;
#: docs/performance.md, "Winograd's F(2x2, 3x3), layer by layer").
_WINOGRAD_MIN_CHANNELS = 64
#: Tile rows (examples × tiles per example) per chunk of a Winograd product: the smallest chunk
#: of the batch with at least this many. Fewer rows read the chunk's transformed kernel
#: (16·C_in·C_out values) for too little work, many more leave the core's cache. On an AMD Zen 4
#: (1 MiB L2) 512 ran close to the best chunk on the paper's layers, where the whole batch at
#: once or one example a chunk were much slower (benchmarks/cpu_kernels/conv_gradients.py
#: winograd; docs/performance.md, "Winograd's F(2x2, 3x3), layer by layer"); on the Intel Xeon
#: every network's whole step ran faster with 256, and 128, faster still for the narrow networks,
#: slowed VGG-19 (docs/performance.md, "ResNet-20 against the best PyTorch").
_WINOGRAD_ROWS = 256


def _winograd_applies(x_shape, w_shape, strides, pads) -> bool:
    """Whether a layer (input ``x_shape``, HWIO kernel ``w_shape``) is computed by Winograd."""
    return (tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
            and all(p >= 0 for pair in pads for p in pair)
            and min(w_shape[2], w_shape[3]) >= _WINOGRAD_MIN_CHANNELS
            and x_shape[0] >= 1  # an empty batch or output: lax's own handles those
            and all(n + lo + hi - 2 >= 1 for n, (lo, hi) in zip(x_shape[1:3], pads)))


def _winograd_chunk(x_shape, pads) -> int:
    """Examples per chunk of a Winograd product over input ``x_shape`` (see ``_WINOGRAD_ROWS``)."""
    tiles = winograd.tiles(x_shape[1], pads[0]) * winograd.tiles(x_shape[2], pads[1])
    batch = x_shape[0]
    if _whole_batch(batch):
        return batch
    return min(d for d in range(1, batch + 1) if batch % d == 0
               and (d * tiles >= _WINOGRAD_ROWS or d == batch))


def _winograd(x, w, pads, precision, flipped=False) -> jax.Array:
    """:func:`winograd.conv3x3` over chunks of ``_WINOGRAD_ROWS`` tile rows."""
    return winograd.conv3x3(x, w, pads, examples_per_chunk=_winograd_chunk(x.shape, pads),
                            precision=precision, flipped=flipped)


def _forward(x, w, strides, pads, precision, use_winograd):
    spatial_in, kernel = x.shape[1:3], w.shape[:2]
    if use_winograd and _winograd_applies(x.shape, w.shape, strides, pads):
        return _winograd(x, w, pads, precision)
    if all(n >= k for n, k in zip(spatial_in, kernel)):
        return _direct(x, w, strides, pads, precision)
    # An input smaller than the kernel (VGG-19's last stage: 2x2 maps, 3x3 kernels) sends XLA:CPU's
    # convolution down a path far slower than a matmul (benchmarks/cpu_kernels/conv_forward.py;
    # docs/performance.md, "A forward pass on an input smaller than the kernel"); there the
    # patches are tiny, so the forward pass is their matmul too.
    out = tuple((n + lo + hi - k) // s + 1
                for n, k, (lo, hi), s in zip(spatial_in, kernel, pads, strides))
    patches = _input_patches(x, kernel, strides, pads, out)
    return jnp.matmul(patches, w.reshape(-1, w.shape[-1]), precision=precision)


#: Layers whose channels are all at most this many are "narrow": XLA:CPU leaves their canonical
#: convolutions to Eigen (YNNPACK refuses them): ResNet-20's 32x32x16 layer takes more than twice
#: as long as its 16x16x32 one, which has as many multiplies (docs/performance.md, "ResNet-20
#: against the best PyTorch").
_NARROW_CHANNELS = 16


def _pairs(w_shape, strides) -> bool:
    """Whether a layer's canonical convolution is computed by :func:`_paired`: stride 1, narrow
    (:data:`_NARROW_CHANNELS`) and widening (fewer input than output channels: a first layer on
    images), a kernel at least 3 wide (narrower ones would do at least twice the multiplies), on
    a CPU whose YNNPACK convolution is fast (AVX-512, see :func:`_forward_convolution_is_fast`;
    measured only there). Not ResNet-20's 16 -> 16 layers: a little faster paired on their own,
    they made the step slower (the pad of their input, a sweep of its own; docs/performance.md,
    "ResNet-20 against the best PyTorch")."""
    return (tuple(strides) == (1, 1) and max(w_shape[2], w_shape[3]) <= _NARROW_CHANNELS
            and w_shape[2] < w_shape[3] and w_shape[1] >= 3
            and jax.default_backend() == "cpu" and _forward_convolution_is_fast())


def _onednn_applies(x, w, pads) -> bool:
    """Whether a canonical convolution runs in oneDNN (:mod:`lth_jax.models.onednn`): a narrow
    layer (:data:`_NARROW_CHANNELS`, which XLA:CPU leaves to Eigen) of float32 values with
    non-negative padding, in a program GSPMD does not split over devices (not inside
    :func:`convolutions_in_one_piece`: GSPMD cannot partition the custom call, and XLA's cost
    analysis does not count it), on a CPU with AVX-512 (:func:`_forward_convolution_is_fast`;
    measured only there) where :func:`onednn.available`. ResNet-20's 32x32x16 layers take about
    half the time so, forward and input gradient alike (docs/performance.md, "oneDNN for the
    narrow layers")."""
    return (max(w.shape[2], w.shape[3]) <= _NARROW_CHANNELS and not _one_piece
            and x.dtype == jnp.float32 and w.dtype == jnp.float32
            and all(p >= 0 for pair in pads for p in pair)
            and jax.default_backend() == "cpu" and _forward_convolution_is_fast()
            and onednn.available())


def _direct(x, w, strides, pads, precision) -> jax.Array:
    """The canonical forward convolution (NHWC, HWIO): :func:`_paired` where :func:`_pairs`,
    oneDNN's where :func:`_onednn_applies`, else XLA's own."""
    if _pairs(w.shape, strides):
        return _paired(x, w, pads, precision)
    if _onednn_applies(x, w, pads):
        return onednn.conv(x, w, strides, pads)
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                    precision=precision)


def _paired_kernel(w: jax.Array) -> jax.Array:
    """The kernel of :func:`_paired`: ``(k_h, b, 2·C_in, 2·C_out)`` with ``b = ceil((k_w + 1) /
    2)``, ``K[i, c, (p, ci), (q, co)] = w[i, 2c + p - q, ci, co]`` (zero outside the kernel)."""
    k_h, k_w, c_in, c_out = w.shape
    columns = -(-(k_w + 1) // 2)
    padded = jnp.pad(w, ((0, 0), (1, 2 * columns - k_w), (0, 0), (0, 0)))  # w[:, j] at j + 1
    taps = [[[padded[:, 2 * c + p - q + 1] for q in range(2)] for p in range(2)]
            for c in range(columns)]                      # [c][p][q]: (k_h, C_in, C_out)
    k = jnp.stack([jnp.stack([jnp.stack(by_q, axis=2) for by_q in by_p], axis=1)
                   for by_p in taps], axis=1)             # (k_h, b, 2 p, C_in, 2 q, C_out)
    return k.reshape(k_h, columns, 2 * c_in, 2 * c_out)


def _paired(x: jax.Array, w: jax.Array, pads, precision) -> jax.Array:
    """A stride-1 convolution with pairs of adjacent columns as one pixel of twice the channels.

    ``x`` padded along W is reshaped (for free, NHWC) to ``(N, H, W'/2, 2·C_in)``; output columns
    ``2c`` and ``2c + 1`` read input columns ``2c .. 2c + k_w`` (padded), i.e. the pairs ``c .. c +
    b - 1``: a VALID convolution along W with the ``b``-wide kernel of :func:`_paired_kernel` and
    ``2·C_out`` output channels, reshaped back (for free). A 3x3 layer does 4/3 of the direct
    multiplies, with twice the channels, which XLA:CPU runs in YNNPACK where it runs a layer
    with at most 16 channels in Eigen: ResNet-20's first layer (3 -> 16 channels) runs several
    times faster so (docs/performance.md, "ResNet-20 against the best PyTorch"). Where the input
    is padded (H by the convolution, W by a pad of its own), negative padding crops first."""
    n, height, width, c_in = x.shape
    k_h, k_w, _, c_out = w.shape
    (lo_h, hi_h), (lo_w, hi_w) = pads
    out_w = width + lo_w + hi_w - k_w + 1
    kernel = _paired_kernel(w)
    columns = kernel.shape[1]
    pairs = -(-out_w // 2)
    padded_w = 2 * (pairs + columns - 1)
    # H's padding goes to the convolution, but a crop (negative padding): XLA:CPU's YNNPACK
    # convolution returns wrong values for negative padding.
    crop_h = (min(lo_h, 0), min(hi_h, 0))
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*crop_h, 0),
                                            (lo_w, padded_w - width - lo_w, 0), (0, 0, 0)])
    y = lax.conv_general_dilated(x.reshape(n, x.shape[1], padded_w // 2, 2 * c_in),
                                 kernel.astype(x.dtype), (1, 1),
                                 ((max(lo_h, 0), max(hi_h, 0)), (0, 0)),
                                 dimension_numbers=_NHWC, precision=precision)
    return y.reshape(n, y.shape[1], 2 * pairs, c_out)[:, :, :out_w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, precision, use_winograd):
    # Not differentiated (evaluation, inference): the direct forward pass even with
    # `use_winograd`. There XLA:CPU fuses the convolution with the bias, ReLU, pool and dense
    # layers after it, while Winograd's chunk loop writes its output to a buffer of its own; with
    # the CLI's evaluation batches (2,500 examples) and two devices sharing memory bandwidth,
    # Conv-2's evaluations took longer with Winograd than direct, more than its faster training
    # gained (docs/performance.md, "Winograd's F(2x2, 3x3), layer by layer"). Winograd's values
    # differ from these by float32 rounding only.
    del use_winograd
    return _forward(x, w, strides, pads, precision, False)


def _conv_fwd(x, w, strides, pads, precision, use_winograd):
    return _forward(x, w, strides, pads, precision, use_winograd), (x, w)


def _has_avx512(cpuinfo: str) -> bool:
    """Whether a ``/proc/cpuinfo`` text lists the ``avx512f`` flag (AVX-512 Foundation)."""
    return any(line.startswith("flags") and "avx512f" in line.split(":", 1)[-1].split()
               for line in cpuinfo.splitlines())


@functools.cache
def _forward_convolution_is_fast(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the input gradient is computed as XLA's forward convolution here: on CPUs with
    AVX-512, where XLA:CPU's convolution (YNNPACK) outruns the matmuls of windows ~2x; elsewhere
    (AVX2, ARM, no ``/proc/cpuinfo``) the windows, measured faster on an AVX2 CPU. Read once per
    process; a resumed run on the same machine computes the same gradients as the run it resumes.
    """
    try:
        with open(cpuinfo) as f:
            return _has_avx512(f.read())
    except OSError:
        return False


def _dilate_and_pad(a: jax.Array, strides, edges) -> jax.Array:
    """Insert ``s-1`` zeros between the elements of ``a``'s spatial axes (1 and 2) and pad (or crop,
    for negative amounts) their edges by ``edges[i] = (lo, hi)``; one ``lax.pad``."""
    config = [(0, 0, 0)] + [(lo, hi, s - 1) for (lo, hi), s in zip(edges, strides)] + [(0, 0, 0)]
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def _windows(a: jax.Array, kernel, strides, out) -> list[jax.Array]:
    """The ``k_h·k_w`` strided windows of the padded ``a`` (``(N, H, W, C)``), each
    ``(N, H_out, W_out, C)``: window ``(i, j)`` is what kernel tap ``(i, j)`` meets at every output
    position. Listed in an HWIO kernel's ``(k_h, k_w)`` order."""
    (k_h, k_w), (s_h, s_w), (o_h, o_w) = kernel, strides, out
    return [a[:, i:i + (o_h - 1) * s_h + 1:s_h, j:j + (o_w - 1) * s_w + 1:s_w, :]
            for i in range(k_h) for j in range(k_w)]


def _patches(a: jax.Array, kernel, strides, out) -> jax.Array:
    """im2col: ``(N, H_out, W_out, k_h·k_w·C)``, the windows concatenated, ordered as an HWIO
    kernel's ``(k_h, k_w, C)`` rows."""
    return jnp.concatenate(_windows(a, kernel, strides, out), axis=-1)


def _padded_input(x: jax.Array, kernel, strides, pads, out) -> jax.Array:
    """``x`` padded (or cropped) by ``pads`` to exactly what the kernel meets for the ``out``
    output positions at ``strides``."""
    dilated = [(o - 1) * s + 1 for o, s in zip(out, strides)]
    edges = [(lo, k + d - 1 - n - lo) for n, k, (lo, _), d in zip(x.shape[1:3], kernel, pads, dilated)]
    return _dilate_and_pad(x, (1, 1), edges)


def _input_patches(x: jax.Array, kernel, strides, pads, out) -> jax.Array:
    """``(N, H_out, W_out, k_h·k_w·C_in)``: the patches of ``x`` padded by ``pads``."""
    return _patches(_padded_input(x, kernel, strides, pads, out), kernel, strides, out)


#: Bytes of one chunk of the kernel gradient's operands (examples × output positions × the wider
#: channel count; a strided layer's padded input chunk is larger): half of a 1 MiB L2 cache, AMD
#: Zen 4's. On Conv-2/4/6's, VGG-19's and ResNet-20's layers chunks of this size ran fastest or
#: nearly so; the whole batch in one contraction was much slower on large maps, one example at a
#: time on small ones (benchmarks/cpu_kernels/conv_gradients.py; docs/performance.md, "The kernel
#: gradient a few examples at a time").
_CHUNK_BYTES = 512 * 1024
_one_piece = False  # set by convolutions_in_one_piece


@contextlib.contextmanager
def convolutions_in_one_piece() -> Iterator[None]:
    """Within it, :func:`canonical_conv_general_dilated` traces its kernel gradient and its
    Winograd products over the whole batch at once instead of as loops over chunks of it: the same
    matmuls, transforms and window copies without the loops. For FLOP counts (XLA's cost analysis
    counts a loop's body once, so a program traced outside it shows only one chunk of each) and
    for programs whose batch GSPMD splits over devices. A module-wide setting, read when a program
    is traced (not thread-safe)."""
    global _one_piece
    saved, _one_piece = _one_piece, True
    try:
        yield
    finally:
        _one_piece = saved


def _whole_batch(batch: int) -> bool:
    """Whether a batch is computed at once rather than in chunks: off CPUs, whose caches the chunks
    are about (a GPU wants one large matmul), inside :func:`convolutions_in_one_piece`, and for an
    empty batch."""
    return jax.default_backend() != "cpu" or _one_piece or batch < 1


def _examples_per_chunk(batch: int, bytes_per_example: int) -> int:
    """The most examples that divide ``batch`` and fit ``_CHUNK_BYTES`` (at least 1); the whole
    batch where :func:`_whole_batch`."""
    if _whole_batch(batch):
        return batch
    most = max(1, _CHUNK_BYTES // bytes_per_example)
    return max(d for d in range(1, min(batch, most) + 1) if batch % d == 0)


def _conv_bwd(strides, pads, precision, use_winograd, residuals, dy):
    x, w = residuals
    spatial_in, kernel, spatial_out = x.shape[1:3], w.shape[:2], dy.shape[1:3]
    c_in, c_out = w.shape[2:]
    # Length of dy once dilated by the strides: (H_out - 1)·s + 1 per spatial axis.
    dilated = [(o - 1) * s + 1 for o, s in zip(spatial_out, strides)]

    # Input gradient: full correlation of the dilated output gradient with the flipped kernel,
    # channels swapped (HWIO with I = C_out, O = C_in), cropped/padded to the input's size.
    edges = [(k - 1 - lo, n + lo - d) for n, k, (lo, _), d in zip(spatial_in, kernel, pads, dilated)]
    w_flipped = jnp.swapaxes(w[::-1, ::-1], 2, 3)
    dy_padded = _dilate_and_pad(dy, strides, edges)  # unused by Winograd's branch (traced, dropped)
    if use_winograd and _winograd_applies(dy.shape, w_flipped.shape, strides, edges):
        # A stride-1 3x3 layer's input gradient is itself a stride-1 3x3 correlation (of dy,
        # padded by `edges`, with the flipped kernel): Winograd's as the forward pass's, which
        # pads dy itself and transforms w unflipped.
        dx = _winograd(dy, w, edges, precision, flipped=True)
    elif (_forward_convolution_is_fast() and any(s > 1 for s in strides)
          and c_in <= _PHASES_MAX_CHANNELS
          and all(o >= -(-k // s) for o, k, s in zip(spatial_out, kernel, strides))):
        # A strided layer onto a narrow input: the phases of dx, one forward convolution of dy
        # with s_h·s_w·C_in output channels, which XLA:CPU runs in YNNPACK, where the
        # input-dilated convolution below has C_in output channels, which it runs in Eigen.
        # Not where dy is smaller than the phases' kernel: XLA folds the pad into that
        # convolution, whose input is then smaller than its kernel (XLA:CPU's slow path).
        dx = _strided_input_gradient(dy, w, strides, pads, spatial_in, precision)
    elif _forward_convolution_is_fast() and all(n >= k for n, k in zip(spatial_in, kernel)):
        # That correlation is a forward convolution, which XLA:CPU runs in YNNPACK on AVX-512
        # CPUs, inside loops too: for Conv-2's 32x32x64 layer in about half the time of the
        # windows below (slice copies, matmuls, their sum). Not where the input is smaller than
        # the kernel: XLA folds the pad into the convolution, whose input is then smaller than its
        # kernel, which YNNPACK refuses, far slower on VGG-19's 2x2x512 maps
        # (benchmarks/cpu_kernels/conv_gradients.py; docs/performance.md, "The input gradient as
        # a forward convolution; dy transposed once").
        if _pairs(w_flipped.shape, strides):
            dx = _paired(dy, w_flipped, edges, precision)
        elif all(s == 1 for s in strides) and _onednn_applies(dy, w_flipped, edges):
            dx = onednn.conv(dy, w_flipped, (1, 1), edges)  # it pads dy itself
        else:
            dx = lax.conv_general_dilated(dy_padded, w_flipped, (1, 1), "VALID",
                                          dimension_numbers=_NHWC, precision=precision)
    else:
        # Sums over the k_h·k_w kernel taps of matmuls of one strided window each: on AVX2 CPUs
        # the matmuls run faster than XLA's convolution (docs/performance.md, "The input gradient
        # as a forward convolution; dy transposed once").
        # Windows, not one concatenated patch matrix: nothing k_h·k_w times an activation's size
        # is written, which makes ResNet-20's 16-channel layers faster (docs/performance.md,
        # "Gradients as matmuls of windows").
        products = [jnp.matmul(window, w_tap, precision=precision)
                    for window, w_tap in zip(_windows(dy_padded, kernel, (1, 1), spatial_in),
                                             w_flipped.reshape(-1, c_out, c_in))]
        dx = sum(products[1:], products[0])

    if _native_applies(x, dy, kernel):
        dw = native.kernel_gradient(x, dy, kernel, strides, pads)
    elif use_winograd and _winograd_applies(x.shape, w.shape, strides, pads):
        dw = winograd.kernel_gradient3x3(x, dy, pads, examples_per_chunk=_winograd_chunk(
            x.shape, pads), precision=precision)
    else:
        dw = _kernel_gradient(x, dy, kernel, strides, pads, precision)
    return dx.astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


#: Layers whose channels are all at most this many take their kernel gradient from the native
#: kernel (:mod:`lth_jax.models.native`) where it is available: on ResNet-20's layers it took
#: about half the time of XLA's formulations, Winograd's on its 64-channel layers included
#: (docs/performance.md, "A native kernel gradient").
_NATIVE_MAX_CHANNELS = 64


def _native_applies(x, dy, kernel) -> bool:
    """Whether a layer's kernel gradient is :func:`native.kernel_gradient`'s: a kernel of more
    than one tap (1x1 shortcuts ran slower so), at most :data:`_NATIVE_MAX_CHANNELS` channels,
    C_out a multiple of 16, float32, not inside :func:`convolutions_in_one_piece` (GSPMD cannot
    split the call, XLA's cost analysis does not count it), on a CPU with AVX-512 (measured only
    there) where :func:`native.available`."""
    return (kernel[0] * kernel[1] > 1 and max(x.shape[-1], dy.shape[-1]) <= _NATIVE_MAX_CHANNELS
            and dy.shape[-1] % 16 == 0 and not _one_piece
            and x.dtype == jnp.float32 and dy.dtype == jnp.float32
            and jax.default_backend() == "cpu" and _forward_convolution_is_fast()
            and native.available())


#: The strided layers whose input gradient is computed by phases
#: (:func:`_strided_input_gradient`): those whose input has at most this many channels.
#: XLA:CPU's input-dilated convolution (the other way) writes C_in output channels, and at 16 or
#: fewer it runs in Eigen rather than YNNPACK: ResNet-20's 32x32x16 -> 16x16x32 layer's input
#: gradient is faster by phases, its 16x16x32 -> 8x8x64 layer's slower (docs/performance.md,
#: "ResNet-20 against the best PyTorch").
_PHASES_MAX_CHANNELS = 16


def _strided_input_gradient(dy: jax.Array, w: jax.Array, strides, pads, spatial_in,
                            precision) -> jax.Array:
    """The input gradient of a strided layer (``strides`` > 1 on some axis) without the zeros of
    the dilated ``dy``: its ``s_h·s_w`` phases (the input positions ``q`` with the same
    ``(q + p_lo) mod s`` per axis) are each a stride-1 correlation of ``dy`` with the kernel taps
    of that phase, and all of them together one canonical forward convolution of ``dy`` (padded)
    with a ``T_h x T_w`` kernel (``T = ceil(k / s)``) and ``s_h·s_w·C_in`` output channels, whose
    channels are then interleaved into the spatial axes (depth to space).

    Per axis, with ``Q = q + p_lo = s·m + r`` (``0 <= r < s``): ``dx[q] = Σ_t dy[m - t] ·
    w[r + s·t]ᵀ`` over ``t < T`` (taps past the kernel are zero), a correlation over ``m`` of ``dy``
    padded by ``T - 1`` with the kernel ``Wb[u, r] = w[r + s·(T - 1 - u)]``. Phases ``r >= k``
    (a 1x1 shortcut at stride 2) have no taps: they are not computed, only zero-filled.
    ``(N, H, W, C_in)``, ``spatial_in = (H, W)``."""
    k_h, k_w, c_in, c_out = w.shape
    kernel, spatial_out = (k_h, k_w), dy.shape[1:3]
    taps = [-(-k // s) for k, s in zip(kernel, strides)]            # T per axis
    phases = [min(k, s) for k, s in zip(kernel, strides)]          # phases with taps
    first = [lo // s for (lo, _), s in zip(pads, strides)]         # first block m
    last = [(lo + n - 1) // s for (lo, _), n, s in zip(pads, spatial_in, strides)]
    blocks = [b - a + 1 for a, b in zip(first, last)]
    # dy padded (or cropped) to the positions m - (T - 1) .. last that the blocks read.
    edges = [(t - 1 - a, b - (o - 1)) for t, a, b, o in zip(taps, first, last, spatial_out)]
    dy_padded = _dilate_and_pad(dy, (1, 1), edges)
    # Wb[u_h, u_w, C_out, (r_h, r_w, C_in)] = w[r_h + s_h·(T_h-1-u_h), r_w + s_w·(T_w-1-u_w)]ᵀ:
    # the tap index k = s·t + r as a (T, s) pair, t reversed.
    w_padded = jnp.pad(w, [(0, s * t - k) for k, s, t in zip(kernel, strides, taps)]
                       + [(0, 0), (0, 0)])
    w_phases = w_padded.reshape(taps[0], strides[0], taps[1], strides[1], c_in, c_out)
    w_phases = w_phases[::-1, :phases[0], ::-1, :phases[1]].transpose(0, 2, 5, 1, 3, 4)
    w_phases = w_phases.reshape(taps[0], taps[1], c_out, phases[0] * phases[1] * c_in)
    out = _forward(dy_padded, w_phases, (1, 1), ((0, 0), (0, 0)), precision, False)
    batch = dy.shape[0]
    out = out.reshape(batch, blocks[0], blocks[1], phases[0], phases[1], c_in)
    if phases != list(strides):  # phases without taps: zeros
        out = lax.pad(out, jnp.zeros((), out.dtype), [(0, 0, 0)] * 3 + [
            (0, s - p, 0) for p, s in zip(phases, strides)] + [(0, 0, 0)])
    dx = out.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, blocks[0] * strides[0], blocks[1] * strides[1], c_in)
    # Block `first` starts at Q = s·first, i.e. at q = s·first - p_lo = -(p_lo mod s).
    start = [lo % s for (lo, _), s in zip(pads, strides)]
    return dx[:, start[0]:start[0] + spatial_in[0], start[1]:start[1] + spatial_in[1]]


#: Layers whose channels are all at most this many compute their kernel gradient as one matmul
#: with the patches (the windows side by side: ``dyᵀ · P``, ``(C_out, k_h·k_w·C_in)``) per chunk
#: instead of one matmul per tap, whose ``(C_out, C_in)`` products are too small for the matmul's
#: kernels: ResNet-20's 32x32x16 layers are faster so, and its step shorter with the 16-channel
#: layers' and again with the 32-channel ones'; with the 64-channel ones' too it was no shorter
#: (docs/performance.md, "ResNet-20 against the best PyTorch").
_PATCHES_MAX_CHANNELS = 32


def _kernel_gradient(x, dy, kernel, strides, pads, precision) -> jax.Array:
    """``(k_h·k_w, C_in, C_out)``: the kernel gradient's taps, HWIO order, for input ``x``
    ``(N, H, W, C_in)`` and output gradient ``dy`` ``(N, H_out, W_out, C_out)``."""
    batch, c_in = x.shape[0], x.shape[-1]
    spatial_out, c_out = dy.shape[1:3], dy.shape[-1]
    # Tap (i, j) is Σ over batch and output positions of dyᵀ · (input window),
    # a (C_out, C_in) matmul, transposed at the end. XLA:CPU's fast matmul (YNNPACK) wants the
    # contracted axis minor in its left operand and major in its right one. An NHWC window
    # (positions, C_in) is a right operand as it is; dy becomes a left one by one transpose to
    # (C_out, positions), shared by the k_h·k_w taps. The other way round (the window on the
    # left) XLA transposes every window, nearly as costly as the matmuls, which pays only where
    # the windows together are smaller than dy (a first layer: 9 x 3 channels against 64;
    # ResNet-20's 1x1 shortcuts: 16 against 32). The barrier keeps XLA from folding the transpose
    # of dy back into each matmul, which then runs in XLA's slower general-layout code
    # (docs/performance.md, "The input gradient as a forward convolution; dy transposed once").
    if kernel[0] * kernel[1] * c_in < c_out:  # windowᵀ · dy: (C_in, C_out) a tap
        positions = spatial_out[0] * spatial_out[1]
        # Per example and summed where an example has at least C_out positions, one contraction
        # otherwise: the rule every layer had before the chunks below (per example faster on
        # large maps, far slower on small ones such as 4x4x512: docs/performance.md, "Gradients
        # as matmuls of windows").
        spec = "nhwc,nhwo->nco" if positions >= c_out else "nhwc,nhwo->co"
        taps = [jnp.einsum(spec, window, dy, precision=precision)
                for window in _windows(_padded_input(x, kernel, strides, pads, spatial_out),
                                       kernel, strides, spatial_out)]
        return jnp.stack([jnp.sum(t, axis=0) for t in taps] if positions >= c_out else taps)

    accumulator = jnp.promote_types(x.dtype, jnp.float32)

    taps = kernel[0] * kernel[1]
    patches = taps > 1 and max(c_in, c_out) <= _PATCHES_MAX_CHANNELS

    def kernel_gradient(x_part: jax.Array, dy_part: jax.Array) -> jax.Array:
        """(k_h·k_w, C_out, C_in): the taps over the examples of ``x_part`` and ``dy_part``."""
        rows = x_part.shape[0] * spatial_out[0] * spatial_out[1]
        dy_t = lax.optimization_barrier(dy_part.reshape(rows, c_out).T)
        windows = _windows(_padded_input(x_part, kernel, strides, pads, spatial_out), kernel,
                           strides, spatial_out)
        if patches:
            product = jnp.matmul(dy_t, jnp.concatenate(windows, -1).reshape(rows, taps * c_in),
                                 precision=precision, preferred_element_type=accumulator)
            return jnp.swapaxes(product.reshape(c_out, taps, c_in), 0, 1)
        return jnp.stack([jnp.matmul(dy_t, window.reshape(rows, c_in), precision=precision,
                                     preferred_element_type=accumulator)
                          for window in windows])

    # A few examples at a time (a loop over chunks of the batch): each chunk's window copies
    # and dy transpose then stay in the core's cache for the matmuls that read them, where the
    # form used before (per-example products over the whole batch) spent a good part of its
    # time on window copies and the transpose: Conv-2's 32x32x64 layer and, more, ResNet-20's
    # 32x32x16 one are faster so (benchmarks/cpu_kernels/conv_gradients.py; docs/performance.md,
    # "The kernel gradient a few examples at a time"). Sums accumulate in at least float32 either
    # way.
    chunk = _examples_per_chunk(batch, spatial_out[0] * spatial_out[1] * (
        taps * c_in if patches else max(c_in, c_out)) * x.dtype.itemsize)
    if chunk == batch:
        dw = kernel_gradient(x, dy)
    else:
        # A fori_loop slicing x and dy where they lie, not a scan over them reshaped into
        # chunks: XLA:CPU materialised the reshaped operands, computing the element-wise work
        # that produced x and dy (batch norm, ReLU) a second time to write them, which made
        # ResNet-20's step longer (docs/performance.md, "ResNet-20 against the best PyTorch").
        def accumulate(i, total):
            part = [lax.dynamic_slice_in_dim(a, i * chunk, chunk, 0) for a in (x, dy)]
            return total + kernel_gradient(*part)

        total = jnp.zeros((kernel[0] * kernel[1], c_out, c_in), accumulator)
        dw = lax.fori_loop(0, batch // chunk, accumulate, total)
    return jnp.transpose(dw, (0, 2, 1))


_conv.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Conv):
    """``flax.linen.Conv`` with the canonical-VJP convolution by default.

    A drop-in: same fields, same parameters (``kernel`` HWIO, ``bias``) and, since Flax names
    submodules by class name, the same auto names (``Conv_0``, ...). Pass
    ``conv_general_dilated=lax.conv_general_dilated`` to get XLA's own convolution back.
    """

    conv_general_dilated: Callable[..., jax.Array] | None = canonical_conv_general_dilated
