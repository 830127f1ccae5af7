"""The gradients of 3x3 convolutions (NHWC/HWIO) written several ways, layer by layer, on one
single-threaded XLA:CPU device inside ``lax.scan`` (``lth_jax.timing``). Four modes:

    taskset -c 0 python benchmarks/cpu_kernels/conv_gradients.py            # the direct forms
    taskset -c 0 python benchmarks/cpu_kernels/conv_gradients.py winograd   # Winograd's (~20 min)
    taskset -c 0 python benchmarks/cpu_kernels/conv_gradients.py resnet20   # ResNet-20's, PyTorch's
    taskset -c 0 python benchmarks/cpu_kernels/conv_gradients.py native     # the native kernel's

The ``native`` mode times the kernel gradient of stride-1 3x3 layers (Conv-2's, VGG-19's 16x16x128,
ResNet-20's, the first layers) with ``model.conv="auto"`` without and with the native kernel
(``lth_jax.models.native``; ``convolution._NATIVE_MAX_CHANNELS`` comes from it), the least process
CPU time of 5 calls of a scan over 4 inputs.

The default mode times stride-1 3x3 SAME layers (Conv-2/4/6's at batch 60, VGG-19's 4x4 and 2x2
stages at 64, ResNet-20's at 128):

* kernel gradient: one patches matmul (``P(x)ᵀ · dy``), nine shifted-window contractions
  ``x[i:, j:]ᵀ · dy`` (no patch matrix), the same summed over per-example products, those products
  as ``dyᵀ · x[i:, j:]`` with ``dy`` transposed once, one such contraction over the whole batch,
  and lth_jax's own (that contraction over chunks of a few examples, a scan; timed at one example
  a chunk, at its rule's size, marked ``*``, at 4x that, and whole);
* input gradient: the patches matmul (``P(dy) · flip(w)ᵀ``), nine shifted-window matmuls, and the
  canonical forward convolution of the padded ``dy`` with the flipped, channel-swapped kernel.

Which input gradient is fastest depends on the CPU (docs/performance.md, "The input gradient as a
forward convolution; dy transposed once").

The ``winograd`` mode times Winograd's F(2x2, 3x3) against the direct forms on the same layers:
the forward pass (= the input gradient, the same correlation with the flipped kernel) as XLA's
convolution (where the map is smaller than the kernel, lth_jax's patches matmul) against
``winograd.conv3x3`` at the chunk ``model.conv="winograd"`` picks (``*``), one example a chunk, and
the whole batch; and the kernel gradient, lth_jax's direct one against
``winograd.kernel_gradient3x3`` at the same chunks. The rules of ``lth_jax.models.convolution``
(``_WINOGRAD_MIN_CHANNELS``, ``_WINOGRAD_ROWS``) come from it (docs/performance.md).

Both scan 8 different inputs (XLA cannot hoist the work out of the loop); median of 3 calls; ms
per layer and, in brackets, the direct convolution's FLOPs over that time (an "effective" rate
for Winograd, which does 2.25x fewer multiplies).

The ``resnet20`` mode times every kind of ResNet-20 layer (batch 128, stride 1 and 2, the 1x1
shortcuts) three ways: lth_jax's forward pass (differentiated, as in a training step), input
gradient and kernel gradient with ``model.conv="auto"``, and, where PyTorch is installed, its
oneDNN convolution and ``convolution_backward`` in channels-last with one thread; each the least
process CPU time of 5 calls (a scan over 4 inputs for lth_jax), so that other work on a shared
machine counts less.
"""

import importlib.util
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from lth_jax.models import convolution, winograd  # noqa: E402
from lth_jax.timing import scanned_ms  # noqa: E402

# (batch, height = width, C_in, C_out): Conv-2/4/6, VGG-19's 4x4 and 2x2 stages, ResNet-20. On
# 2x2 maps XLA folds the pad into the input gradient's convolution, whose input is then smaller
# than its kernel: XLA:CPU's slow path (~1 s), why lth_jax uses the windows there.
LAYERS = [(60, 32, 64, 64), (60, 16, 128, 128), (60, 8, 256, 256), (64, 4, 512, 512),
          (64, 2, 512, 512), (128, 32, 16, 16), (128, 16, 32, 32), (128, 8, 64, 64)]


def layer_data(batch: int, size: int, c_in: int, c_out: int):
    """(x, w, dy, direct FLOPs) of a stride-1 3x3 SAME layer: normal inputs, fixed keys."""
    x = jax.random.normal(jax.random.key(0), (batch, size, size, c_in))
    w = jax.random.normal(jax.random.key(1), (3, 3, c_in, c_out))
    dy = jax.random.normal(jax.random.key(2), (batch, size, size, c_out))
    return x, w, dy, 2 * batch * size * size * 9 * c_in * c_out


def pad1(a):
    return jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))


def main() -> None:
    print(f"jax {jax.__version__}; ms (GFLOP/s) per gradient")
    for batch, size, c_in, c_out in LAYERS:
        x, w, dy, flops = layer_data(batch, size, c_in, c_out)
        flipped = lambda w: jnp.swapaxes(w[::-1, ::-1], 2, 3)  # HWIO with I = C_out, O = C_in
        windows = lambda a: convolution._windows(pad1(a), (3, 3), (1, 1), (size, size))
        # dy as (N, C_out, positions), materialised once (as lth_jax's kernel gradient has it)
        dy_t = lambda dy: lax.optimization_barrier(
            jnp.swapaxes(dy.reshape(batch, -1, c_out), 1, 2))
        cases = {
            "dw patches": (lambda x, dy: jnp.matmul(
                convolution._patches(pad1(x), (3, 3), (1, 1), (size, size)).reshape(-1, 9 * c_in).T,
                dy.reshape(-1, c_out)), x, dy),
            "dw shifted windows": (lambda x, dy: jnp.stack(
                [jnp.einsum("nhwc,nhwo->co", v, dy) for v in windows(x)]), x, dy),
            "dw per-example windows": (lambda x, dy: jnp.stack(
                [jnp.sum(jnp.einsum("nhwc,nhwo->nco", v, dy), 0) for v in windows(x)]), x, dy),
            "dw per-example, dy^T": (lambda x, dy: jnp.stack(
                [jnp.sum(jnp.matmul(dy_t(dy), v.reshape(batch, -1, c_in)), 0)
                 for v in windows(x)]), x, dy),
            "dw dy^T, whole batch": (lambda x, dy: jnp.stack(
                [jnp.matmul(lax.optimization_barrier(dy.reshape(-1, c_out).T),
                            v.reshape(-1, c_in)) for v in windows(x)]), x, dy),
            "dx patches": (lambda dy, w: jnp.matmul(
                convolution._patches(pad1(dy), (3, 3), (1, 1), (size, size)),
                flipped(w).reshape(-1, c_in)), dy, w),
            "dx shifted windows": (lambda dy, w: sum(
                jnp.matmul(v, flipped(w)[k // 3, k % 3]) for k, v in enumerate(windows(dy))), dy, w),
            "dx forward convolution": (lambda dy, w: lax.conv_general_dilated(
                dy, flipped(w), (1, 1), ((1, 1), (1, 1)), dimension_numbers=convolution._NHWC), dy, w),
        }
        print(f"-- batch {batch}, {size}x{size}, {c_in} -> {c_out} ({flops / 1e9:.2f} GFLOP)")
        for name, (f, a, b) in cases.items():
            ms = scanned_ms(f, a, b)
            print(f"   {name:24s} {ms:7.1f} ms ({flops / ms / 1e6:5.0f})", flush=True)
        # lth_jax's kernel gradient (dy^T · windows over chunks of the batch, a scan) at its own
        # chunk size and at others (the module's _CHUNK_BYTES, read when the program is traced).
        lth_jax_dw = lambda x, dy: convolution._conv_bwd((1, 1), ((1, 1), (1, 1)), None, False,
                                                         (x, w), dy)[1]
        example = size * size * max(c_in, c_out) * 4
        default = convolution._CHUNK_BYTES
        for chunk_bytes in sorted({example, default, 4 * default, batch * example}):
            convolution._CHUNK_BYTES = chunk_bytes
            try:
                chunk = convolution._examples_per_chunk(batch, example)
                ms = scanned_ms(lth_jax_dw, x, dy)
            finally:
                convolution._CHUNK_BYTES = default
            label = f"dw lth_jax, {chunk} a chunk" + (" *" if chunk_bytes == default else "")
            print(f"   {label:24s} {ms:7.1f} ms ({flops / ms / 1e6:5.0f})", flush=True)


# (H = W, C_in, C_out, kernel, stride) of every kind of ResNet-20 layer on 32x32 inputs.
RESNET20 = [(32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
            (16, 32, 32, 3, 1), (16, 32, 64, 3, 2), (16, 32, 64, 1, 2), (8, 64, 64, 3, 1)]


def _cpu_ms(f, calls: int = 5) -> float:
    """The least process CPU time of ``calls`` calls of ``f`` (after one), in ms."""
    f()
    times = []
    for _ in range(calls):
        start = time.process_time()
        f()
        times.append(time.process_time() - start)
    return min(times) * 1e3


def resnet20(batch: int = 128) -> None:
    """lth_jax's three products of each ResNet-20 layer against PyTorch's (one core)."""
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch
        torch.set_num_threads(1)
    steps, dims = 4, convolution._NHWC
    conv = convolution.conv_function("auto")
    print(f"jax {jax.__version__}" + (f", torch {torch.__version__}" if torch else "")
          + f"; batch {batch}; CPU ms (GFLOP/s of the direct convolution)")
    print(f"{'layer':>22} {'lth_jax fwd':>14} {'dx':>14} {'dw':>14}"
          + (f" {'PyTorch fwd':>14} {'dx':>14} {'dw':>14}" if torch else ""))
    for size, c_in, c_out, k, s in RESNET20:
        pads = "SAME" if k == 3 else "VALID"
        x = jax.random.normal(jax.random.key(0), (batch, size, size, c_in))
        w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out))
        layer = lambda x, w: conv(x, w, (s, s), pads, dimension_numbers=dims)
        dy = jax.random.normal(jax.random.key(2), layer(x, w).shape)
        flops = 2 * dy.size * k * k * c_in
        xs, dys = (jnp.stack([a * (1 + 0.01 * t) for t in range(steps)]) for a in (x, dy))
        products = {
            "fwd": lambda x, dy: jax.vjp(lambda x: layer(x, w), x)[0],
            "dx": lambda x, dy: jax.vjp(lambda x: layer(x, w), x)[1](dy)[0],
            "dw": lambda x, dy: jax.vjp(lambda w: layer(x, w), w)[1](dy)[0],
        }
        cells = []
        for name, f in products.items():
            if name == "dx" and c_in == 3:  # a first layer's input gradient is never needed
                cells.append("-")
                continue
            run = jax.jit(lambda xs, dys, f=f: lax.scan(
                lambda total, z: (total + jnp.sum(f(*z)), None), 0.0, (xs, dys))[0])
            ms = _cpu_ms(lambda: jax.block_until_ready(run(xs, dys))) / steps
            cells.append(f"{ms:.2f} ({flops / ms / 1e6:.0f})")
        if torch:
            tx = torch.randn(batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
            tw = torch.randn(c_out, c_in, k, k).contiguous(memory_format=torch.channels_last)
            ty = torch.nn.functional.conv2d(tx, tw, None, s, k // 2)
            tg = torch.randn_like(ty).contiguous(memory_format=torch.channels_last)
            backward = lambda mask: torch.ops.aten.convolution_backward(
                tg, tx, tw, None, [s, s], [k // 2, k // 2], [1, 1], False, [0, 0], 1, mask)
            for f in (lambda: torch.nn.functional.conv2d(tx, tw, None, s, k // 2),
                      lambda: backward([True, False, False]),
                      lambda: backward([False, True, False])):
                ms = _cpu_ms(f)
                cells.append(f"{ms:.2f} ({flops / ms / 1e6:.0f})")
        name = f"{size}x{size} {c_in}->{c_out} {k}x{k}/{s}"
        print(f"{name:>22} " + " ".join(f"{c:>14}" for c in cells), flush=True)


SAME = ((1, 1), (1, 1))


def winograd_layers() -> None:
    """Winograd's F(2x2, 3x3) against the direct forms on ``LAYERS`` (the ``winograd`` mode)."""
    print(f"jax {jax.__version__}; ms (direct-equivalent GFLOP/s) per layer")
    for batch, size, c_in, c_out in LAYERS:
        x, w, dy, flops = layer_data(batch, size, c_in, c_out)
        picked = convolution._winograd_chunk(x.shape, SAME)
        chunks = sorted({1, picked, batch})
        cases = {"forward direct": (lambda x, w: convolution._forward(
            x, w, (1, 1), SAME, None, False), x, w)}
        for chunk in chunks:
            cases[f"forward winograd, {chunk}" + (" *" if chunk == picked else "")] = (
                lambda x, w, chunk=chunk: winograd.conv3x3(x, w, SAME, examples_per_chunk=chunk),
                x, w)
        cases["dw direct (lth_jax's)"] = (lambda x, dy: convolution._kernel_gradient(
            x, dy, (3, 3), (1, 1), SAME, None), x, dy)
        for chunk in chunks:
            cases[f"dw winograd, {chunk}" + (" *" if chunk == picked else "")] = (
                lambda x, dy, chunk=chunk: winograd.kernel_gradient3x3(
                    x, dy, SAME, examples_per_chunk=chunk), x, dy)
        print(f"-- batch {batch}, {size}x{size}, {c_in} -> {c_out} ({flops / 1e9:.2f} GFLOP direct)"
              + ("" if convolution._winograd_applies(x.shape, w.shape, (1, 1), SAME)
                 else "  [not Winograd's in lth_jax: narrower than "
                      f"{convolution._WINOGRAD_MIN_CHANNELS} channels]"))
        for name, (f, a, b) in cases.items():
            ms = scanned_ms(f, a, b)
            print(f"   {name:24s} {ms:7.1f} ms ({flops / ms / 1e6:5.0f})", flush=True)


def native_layers() -> None:
    """The kernel gradient with and without the native kernel (the ``native`` mode)."""
    from lth_jax.models import native
    if not native.available():
        sys.exit("the native kernel gradient is not available here (no C++ compiler?)")
    print(f"jax {jax.__version__}; kernel gradient, CPU ms (GFLOP/s of the direct convolution): "
          "model.conv='auto' without the native kernel, then with it")
    steps, limit = 4, convolution._NATIVE_MAX_CHANNELS
    for batch, size, c_in, c_out in [(60, 32, 3, 64), *LAYERS[:2], (128, 32, 3, 16), *LAYERS[5:]]:
        x, w, dy, flops = layer_data(batch, size, c_in, c_out)
        xs, dys = (jnp.stack([a * (1 + 0.01 * t) for t in range(steps)]) for a in (x, dy))
        cells = []
        for most in (0, max(limit, c_in, c_out)):  # the native kernel off, then on
            convolution._NATIVE_MAX_CHANNELS = most
            conv = convolution.conv_function("auto")
            layer = lambda x, w, conv=conv: conv(x, w, (1, 1), SAME,
                                                 dimension_numbers=convolution._NHWC)
            dw = lambda x, dy, layer=layer: jax.vjp(lambda w: layer(x, w), w)[1](dy)[0]
            run = jax.jit(lambda xs, dys, dw=dw: lax.scan(
                lambda total, z: (total + jnp.sum(dw(*z)), None), 0.0, (xs, dys))[0])
            ms = _cpu_ms(lambda: jax.block_until_ready(run(xs, dys))) / steps
            cells.append(f"{ms:.2f} ({flops / ms / 1e6:.0f})")
        convolution._NATIVE_MAX_CHANNELS = limit
        print(f"{batch:>4} x {size}x{size} {c_in}->{c_out}: "
              + "  ".join(f"{c:>14}" for c in cells), flush=True)


if __name__ == "__main__":
    modes = {"": main, "winograd": winograd_layers, "resnet20": resnet20, "native": native_layers}
    mode = " ".join(sys.argv[1:])
    if mode not in modes:
        sys.exit(f"usage: conv_gradients.py [winograd | resnet20 | native], not {mode!r}")
    modes[mode]()
