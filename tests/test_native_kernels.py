"""oneDNN's forward convolution (lth_jax.models.onednn) and the native kernel gradient
(lth_jax.models.native): equal to XLA's own convolution and its gradients under jit, vmap and
grad; chosen where the rules say, and nowhere else; built once and cached; refused cleanly where
they cannot run."""

import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lth_jax import models
from lth_jax.models import convolution, native, onednn

NHWC = ("NHWC", "HWIO", "NHWC")


def _xla(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


def _needs(available, what):
    if not available():
        pytest.skip(f"{what} is not available on this machine")


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * float(jnp.max(jnp.abs(want))))


# (x shape, kernel HWIO, strides, padding): stride 1 and 2, SAME, uneven and explicit padding,
# 3 and 16 channels, a 1x1 kernel.
ONEDNN_CASES = [((2, 8, 8, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1))),
                ((2, 9, 7, 3), (3, 3, 3, 16), (2, 2), ((1, 1), (0, 1))),
                ((3, 6, 5, 4), (3, 2, 4, 5), (1, 2), ((2, 0), (1, 3))),
                ((2, 8, 8, 16), (1, 1, 16, 8), (2, 2), ((0, 0), (0, 0)))]


@pytest.mark.parametrize("case", range(len(ONEDNN_CASES)))
def test_onednn_convolution_equals_xla_under_jit_vmap_and_grad(case):
    _needs(onednn.available, "oneDNN's convolution")
    x_shape, w_shape, strides, pads = ONEDNN_CASES[case]
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)
    conv = jax.jit(onednn.conv, static_argnums=(2, 3))
    _close(conv(x, w, strides, pads), _xla(x, w, strides, pads))
    _close(onednn.conv(x, w, strides, pads), _xla(x, w, strides, pads))  # outside jit too
    # vmap: over the input only (folded into the batch), and over input and kernel (mapped)
    xs = jnp.stack([x, 2 * x])
    ws = jnp.stack([w, -w])
    _close(jax.vmap(lambda x: onednn.conv(x, w, strides, pads))(xs),
           jax.vmap(lambda x: _xla(x, w, strides, pads))(xs))
    _close(jax.vmap(lambda x, w: onednn.conv(x, w, strides, pads))(xs, ws),
           jax.vmap(lambda x, w: _xla(x, w, strides, pads))(xs, ws))
    _close(jax.vmap(lambda w: onednn.conv(x, w, strides, pads))(ws),
           jax.vmap(lambda w: _xla(x, w, strides, pads))(ws))
    # gradients (first and second order) through its tangent rule
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, strides, pads)))
    for got, want in zip(jax.grad(loss(onednn.conv), (0, 1))(x, w),
                         jax.grad(loss(_xla), (0, 1))(x, w), strict=True):
        _close(got, want)
    second = lambda f: jax.grad(lambda w: jnp.sum(jax.grad(loss(f), 0)(x, w) ** 2))(w)
    _close(second(onednn.conv), second(_xla), 1e-4)


def test_onednn_refuses_negative_padding():
    with pytest.raises(ValueError, match="non-negative padding"):
        onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), (1, 1), ((-1, 1), (1, 1)))


# (x shape, dy channels, kernel, strides, padding): stride 1 and 2, SAME, uneven, negative and
# past-the-kernel padding; C_in 3, 16, 20 (not a multiple of 16) and 64; C_out 16, 32 and 64.
NATIVE_CASES = [((2, 8, 8, 16), 16, (3, 3), (1, 1), ((1, 1), (1, 1))),
                ((3, 9, 7, 3), 32, (3, 3), (2, 2), ((1, 1), (0, 1))),
                ((2, 7, 6, 20), 16, (3, 2), (1, 2), ((2, 0), (-1, 3))),
                ((2, 5, 5, 64), 64, (3, 3), (1, 1), ((0, 4), (4, 0))),
                ((2, 4, 4, 16), 32, (1, 1), (2, 2), ((0, 0), (0, 0)))]


def _dy_shape(x_shape, c_out, kernel, strides, pads):
    spatial = [(n + lo + hi - k) // s + 1
               for n, k, s, (lo, hi) in zip(x_shape[1:3], kernel, strides, pads)]
    return (x_shape[0], *spatial, c_out)


@pytest.mark.parametrize("case", range(len(NATIVE_CASES)))
def test_native_kernel_gradient_equals_xla_under_jit_vmap_and_grad(case):
    _needs(native.available, "the native kernel gradient")
    x_shape, c_out, kernel, strides, pads = NATIVE_CASES[case]
    x = jax.random.normal(jax.random.key(0), x_shape)
    dy = jax.random.normal(jax.random.key(1), _dy_shape(x_shape, c_out, kernel, strides, pads))
    want = native._xla_kernel_gradient(x, dy, kernel, strides, pads)
    got = jax.jit(native.kernel_gradient, static_argnums=(2, 3, 4))(x, dy, kernel, strides, pads)
    assert got.shape == (*kernel, x_shape[-1], c_out)
    _close(got, want)
    xs, dys = jnp.stack([x, -x]), jnp.stack([dy, 3 * dy])
    _close(jax.vmap(lambda x, dy: native.kernel_gradient(x, dy, kernel, strides, pads))(xs, dys),
           jax.vmap(lambda x, dy: native._xla_kernel_gradient(x, dy, kernel, strides, pads))(
               xs, dys))
    loss = lambda f: lambda x, dy: jnp.sum(jnp.cos(f(x, dy, kernel, strides, pads)))
    for g, w in zip(jax.grad(loss(native.kernel_gradient), (0, 1))(x, dy),
                    jax.grad(loss(native._xla_kernel_gradient), (0, 1))(x, dy), strict=True):
        _close(g, w, 1e-4)


def test_native_kernel_gradient_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="C_out % 16 == 0"):
        native.kernel_gradient(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 4, 4, 8)), (1, 1), (1, 1),
                               ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="float32"):
        native.kernel_gradient(jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((1, 4, 4, 16)),
                               (1, 1), (1, 1), ((0, 0), (0, 0)))


def test_the_native_library_is_built_once_and_build_failures_are_reported(tmp_path, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    monkeypatch.setenv("LTH_JAX_NATIVE_CACHE", str(tmp_path))
    library = native.build()
    assert library.parent == tmp_path and library.exists()
    assert [p.name for p in tmp_path.iterdir()] == [library.name]  # no partial file left
    # a second build finds it: the compiler does not run again
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("compiled twice"))
    assert native.build() == library
    monkeypatch.undo()
    monkeypatch.setenv("LTH_JAX_NATIVE_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(RuntimeError, match="compiling kernel_gradient.cc failed"):
        native.build()
    assert not any((tmp_path / "other").iterdir())  # nothing half-written is left
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        native.build()


def test_neither_is_available_off_cpus_nor_the_native_kernel_when_turned_off(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV_VAR, "0")
    assert native.available.__wrapped__() is False
    monkeypatch.delenv(native.DISABLE_ENV_VAR)
    monkeypatch.setattr(native, "_register", lambda: (_ for _ in ()).throw(RuntimeError("no")))
    assert native.available.__wrapped__() is False  # a failed build or load
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert native.available.__wrapped__() is False
    assert onednn.available.__wrapped__() is False


def _training_gradient_hlo(x_shape, w_shape, strides=(1, 1)):
    """The optimised HLO of a layer's forward pass and both gradients, ``model.conv="auto"``."""
    conv = convolution.conv_function("auto")
    loss = lambda x, w: jnp.sum(conv(x, w, strides, "SAME", dimension_numbers=NHWC) ** 2)
    return jax.jit(jax.grad(loss, (0, 1))).lower(jnp.ones(x_shape), jnp.ones(w_shape)).as_text()


def test_resnet20_narrow_layers_use_onednn_and_the_native_kernel_gradient_where_chosen(
        monkeypatch):
    _needs(lambda: onednn.available() and native.available(), "oneDNN or the native kernel")
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: True)
    onednn_calls = lambda hlo: hlo.count("custom_call @__onednn$convolution")
    native_calls = lambda hlo: hlo.count(f"custom_call @{native._TARGET}")
    # a 16 -> 16 layer: forward pass and input gradient by oneDNN, kernel gradient native
    hlo = _training_gradient_hlo((2, 8, 8, 16), (3, 3, 16, 16))
    assert (onednn_calls(hlo), native_calls(hlo)) == (2, 1)
    # 32 -> 32: XLA's convolutions (YNNPACK takes them), the native kernel gradient
    hlo = _training_gradient_hlo((2, 8, 8, 32), (3, 3, 32, 32))
    assert (onednn_calls(hlo), native_calls(hlo)) == (0, 1)
    # past the native kernel's channels (Winograd's), a 1x1 shortcut and C_out 24: neither native
    assert native_calls(_training_gradient_hlo((2, 8, 8, 64), (3, 3, 64, 128))) == 0
    assert native_calls(_training_gradient_hlo((2, 8, 8, 16), (1, 1, 16, 32), (2, 2))) == 0
    assert native_calls(_training_gradient_hlo((2, 8, 8, 16), (3, 3, 16, 24))) == 0
    # programs GSPMD splits over devices, and CPUs without AVX-512: XLA's formulations only
    with convolution.convolutions_in_one_piece():
        hlo = _training_gradient_hlo((2, 8, 8, 16), (3, 3, 16, 16))
    assert (onednn_calls(hlo), native_calls(hlo)) == (0, 0)
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: False)
    hlo = _training_gradient_hlo((2, 8, 8, 16), (3, 3, 16, 16))
    assert (onednn_calls(hlo), native_calls(hlo)) == (0, 0)


def test_a_resnet_trains_the_same_with_and_without_the_native_kernels(monkeypatch):
    _needs(lambda: onednn.available() and native.available(), "oneDNN or the native kernel")
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: True)
    x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
    model = models.ResNet(widths=(16, 32), blocks_per_stage=1, conv="winograd")
    variables = models.init(model, jax.random.key(0), (16, 16, 3))

    def gradient():
        loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=True,
                                             mutable=["batch_stats"])[0] ** 2)
        return jax.jit(jax.grad(loss))(variables["params"])

    with_native = gradient()
    monkeypatch.setattr(convolution, "_onednn_applies", lambda *a: False)
    monkeypatch.setattr(convolution, "_native_applies", lambda *a: False)
    without = gradient()
    for got, want in zip(jax.tree.leaves(with_native), jax.tree.leaves(without), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
