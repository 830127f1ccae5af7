"""Winograd's F(2x2, 3x3) against the direct forms, layer by layer (Conv-2/4/6's layers at batch 60,
VGG-19's 4x4 and 2x2 stages at 64, ResNet-20's at 128; stride 1, 3x3, SAME), on one
single-threaded XLA:CPU device inside ``lax.scan``:

* forward (= input gradient, the same correlation with the flipped kernel): XLA's convolution
  (where the map is smaller than the kernel, lth_jax's patches matmul) against
  ``winograd.conv3x3`` at the chunk ``model.conv="winograd"`` picks (``*``), one example a chunk,
  and the whole batch;
* kernel gradient: lth_jax's direct one (``dyᵀ`` · windows over chunks) against
  ``winograd.kernel_gradient3x3`` at the picked chunk, one example, and the whole batch.

    taskset -c 0 python experiments/winograd_layers.py

Each scans 8 different inputs; median of 3 calls. ms per layer and, in brackets, the direct
convolution's FLOPs over that time (an "effective" rate: Winograd does 2.25x fewer multiplies).
The rules of ``lth_jax.models.convolution`` (``_WINOGRAD_MIN_CHANNELS``, ``_WINOGRAD_ROWS``) came
from this (docs/performance.md).
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from conv_gradients import LAYERS, layer_data, milliseconds  # noqa: E402
from lth_jax.models import convolution, winograd  # noqa: E402

SAME = ((1, 1), (1, 1))


def main() -> None:
    jax.config.update("jax_platforms", "cpu")
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
            ms = milliseconds(f, a, b)
            print(f"   {name:24s} {ms:7.1f} ms ({flops / ms / 1e6:5.0f})", flush=True)


if __name__ == "__main__":
    main()
