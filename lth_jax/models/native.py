"""A convolution's kernel gradient in native code, compiled on first use, called through XLA's FFI.

Why: written with XLA's operations, the kernel gradient of a narrow layer is a matmul whose
contracted axis (every batch and output position) is long and whose result (taps x C_in x C_out)
is small, plus copies of the input's windows; XLA:CPU runs those far below its matmul rate, and
neither XLA's convolutions nor its built-in oneDNN calls compute a kernel gradient
(docs/performance.md, "A native kernel gradient"). ``kernel_gradient.cc`` (beside this file)
computes it directly: one example at a time, with the sums of a tap's block of 16 output
channels in vector registers over the example's positions.

The source is compiled once per machine with the C++ compiler found (``$CXX``, else ``c++``,
``g++`` or ``clang++``; ``-O3 -march=native``) against jaxlib's FFI headers, into
``$LTH_JAX_NATIVE_CACHE`` (default ``$XDG_CACHE_HOME/lth_jax/native``, else
``~/.cache/lth_jax/native``) under a name that digests the source, the command, jaxlib's version
and the CPU's model and flags; a second process finds it there (the file appears whole, by
rename). :func:`available` is false where there is no compiler, the build or load fails, the
result differs from XLA's on a probe layer, the backend is not a CPU, or ``LTH_JAX_NATIVE=0``;
callers then keep XLA's formulation (:mod:`lth_jax.models.convolution`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["DISABLE_ENV_VAR", "available", "build", "kernel_gradient"]

#: ``LTH_JAX_NATIVE=0`` turns the native kernel off (XLA's formulation everywhere).
DISABLE_ENV_VAR = "LTH_JAX_NATIVE"
_CACHE_ENV_VAR = "LTH_JAX_NATIVE_CACHE"
_SOURCE = Path(__file__).with_name("kernel_gradient.cc")
_TARGET = "lth_jax_conv_kernel_gradient"
_NHWC = ("NHWC", "HWIO", "NHWC")


def _cache_dir() -> Path:
    env = os.environ.get(_CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "lth_jax" / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_identity() -> str:
    """The CPU's model name and flags (``-march=native`` code runs on this CPU only)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f.read().splitlines()
                     if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def build() -> Path:
    """The compiled library: from the cache, else compiled now (a few seconds). Raises
    ``RuntimeError`` (with the compiler's message) where no compiler is found or it fails."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
             "-I", jax.ffi.include_dir()]
    source = _SOURCE.read_bytes()
    parts = [source, " ".join([compiler, *flags]), importlib.metadata.version("jaxlib"),
             platform.machine(), _cpu_identity()]
    key = hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode()
                                     for p in parts)).hexdigest()[:16]
    library = _cache_dir() / f"kernel_gradient-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=library.parent, suffix=".so.partial")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, str(_SOURCE), "-o", partial],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {_SOURCE.name} failed: {done.stderr.strip()[-2000:]}")
        os.replace(partial, library)  # whole or not at all, for a process beside this one
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return library


@functools.cache
def _register() -> None:
    library = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(library.LthConvKernelGradient),
                                platform="cpu")


def _xla_kernel_gradient(x, dy, kernel, strides, pads):
    """XLA's own kernel gradient of the same layer (the reference, and the tangent rule)."""
    w = jnp.zeros((*kernel, x.shape[-1], dy.shape[-1]), x.dtype)
    return jax.vjp(lambda w: lax.conv_general_dilated(x, w, strides, pads,
                                                      dimension_numbers=_NHWC), w)[1](dy)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _native(x, dy, kernel, strides, pads):
    shape = jax.ShapeDtypeStruct((*kernel, x.shape[-1], dy.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(_TARGET, shape, vmap_method="sequential")(
        x, dy, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
        pad_h=np.int64(pads[0][0]), pad_w=np.int64(pads[1][0]))


@_native.defjvp
def _native_jvp(kernel, strides, pads, primals, tangents):
    # Bilinear in (x, dy): the tangent is linear in the tangents; XLA's formulation carries it, so
    # that transposition and higher orders use XLA's rules.
    x, dy = primals
    tx, tdy = tangents
    out = _native(x, dy, kernel, strides, pads)
    return out, (_xla_kernel_gradient(tx, dy, kernel, strides, pads)
                 + _xla_kernel_gradient(x, tdy, kernel, strides, pads))


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel: tuple[int, int],
                    strides: tuple[int, int],
                    pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The HWIO kernel gradient ``(k_h, k_w, C_in, C_out)`` of the NHWC convolution of ``x``
    ``(N, H, W, C_in)`` with output gradient ``dy`` ``(N, H_out, W_out, C_out)``: ``dw[i, j, ci,
    co] = Σ_{n,h,w} x[n, h·s_h + i - p_h, w·s_w + j - p_w, ci] · dy[n, h, w, co]`` (zero outside
    ``x``), where ``p`` is the low padding; float32 with ``C_out`` a multiple of 16; sums in
    float32, one example after another. Pure; jit, vmap (one call per mapped element) and grad
    work; CPU only: use it where :func:`available` is true.
    """
    if x.dtype != jnp.float32 or dy.dtype != jnp.float32 or dy.shape[-1] % 16:
        raise ValueError("the native kernel gradient takes float32 operands with C_out % 16 == 0, "
                         f"got {x.dtype}, {dy.dtype}, C_out = {dy.shape[-1]}")
    kernel = tuple(int(k) for k in kernel)
    strides = tuple(int(s) for s in strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return _native(x, dy, kernel, strides, pads)


@functools.cache
def available() -> bool:
    """Whether :func:`kernel_gradient` builds, loads and equals XLA's kernel gradient (to float32
    rounding) on probe layers (stride 1 and 2, SAME and uneven padding) here; false off CPUs and
    with ``LTH_JAX_NATIVE=0``. Checked once per process."""
    if os.environ.get(DISABLE_ENV_VAR, "1") == "0" or jax.default_backend() != "cpu":
        return False
    rng = np.random.default_rng(0)
    try:
        _register()
        for strides, pads in (((1, 1), ((1, 1), (1, 1))), ((2, 1), ((0, 1), (2, 0)))):
            x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
            out = [(n + lo + hi - 3) // s + 1 for n, s, (lo, hi) in zip((7, 6), strides, pads)]
            dy = rng.standard_normal((2, *out, 16)).astype(np.float32)
            # Compiled explicitly: the first caller is usually tracing a program, into which a
            # plain jit call would be staged rather than run.
            got, want = (np.asarray(jax.jit(f, static_argnums=(2, 3, 4)).lower(
                x, dy, (3, 3), strides, pads).compile()(x, dy))
                for f in (kernel_gradient, _xla_kernel_gradient))
            if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                return False
    except Exception:  # noqa: BLE001 - no compiler, a failed build or load: not here
        return False
    return True
