"""The canonical-VJP convolution: same values and gradients as nn.Conv, canonical HLO inside loops,
the model option, and synthetic data of the configured dataset's shape."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lth_jax import config as config_lib
from lth_jax import data, masks, models, pruning
from lth_jax.models import convolution

# (input HWC, features, kernel, strides, padding, bias): every kind of convolution the networks use,
# and the edge cases of the padding arithmetic (odd sizes, explicit and asymmetric padding).
CASES = {
    "3x3 s1 SAME bias": ((8, 8, 3), 5, (3, 3), (1, 1), "SAME", True),
    "3x3 s1 SAME nobias": ((8, 8, 3), 5, (3, 3), (1, 1), "SAME", False),
    "3x3 s2 SAME odd": ((9, 7, 4), 6, (3, 3), (2, 2), "SAME", False),
    "3x3 s1 VALID": ((7, 7, 2), 3, (3, 3), (1, 1), "VALID", True),
    "3x3 s2 VALID": ((9, 10, 2), 3, (3, 3), (2, 2), "VALID", True),
    "3x3 s2 explicit": ((8, 8, 2), 3, (3, 3), (2, 2), ((1, 2), (0, 1)), True),
    "3x3 s1 explicit wide": ((6, 6, 2), 3, (3, 3), (1, 1), ((3, 0), (2, 2)), False),
    "1x1 s1": ((8, 8, 4), 6, (1, 1), (1, 1), "SAME", True),
    "1x1 s2 resnet shortcut": ((8, 8, 16), 32, (1, 1), (2, 2), "SAME", False),
    "3x3 s3 non-square": ((10, 11, 3), 4, (3, 2), (3, 2), "SAME", True),
    # a first layer: the 9 windows (27 channels) are smaller than dy (32), the kernel gradient
    # transposes them instead of dy (so do "1x1 s1" and the ResNet shortcut)
    "3x3 s1 SAME first layer": ((8, 8, 3), 32, (3, 3), (1, 1), "SAME", True),
    # the same with fewer output positions than channels: one contraction, no per-example sums
    "3x3 s1 SAME first layer few positions": ((2, 2, 1), 16, (3, 3), (1, 1), "SAME", False),
    # padding past the kernel (the input gradient crops dy's padded edge), at strides 1 and 2
    "3x3 s1 explicit pad past the kernel": ((6, 6, 2), 3, (3, 3), (1, 1), ((0, 4), (4, 0)), True),
    "3x3 s2 explicit pad past the kernel": ((7, 7, 2), 3, (3, 3), (2, 2), ((0, 4), (3, 1)), False),
    # negative padding (crops the input), an input exactly the kernel's size, and one smaller
    # than the kernel along one axis only
    "3x3 s1 negative padding": ((8, 8, 2), 3, (3, 3), (1, 1), ((-1, 1), (1, -2)), True),
    "3x3 s1 VALID on 3x3": ((3, 3, 2), 4, (3, 3), (1, 1), "VALID", True),
    "3x3 s1 SAME on 5x2": ((5, 2, 3), 4, (3, 3), (1, 1), "SAME", False),
    # inputs smaller than the kernel: the forward pass is a patches matmul too (VGG-19's last stage)
    "3x3 s1 SAME on 2x2": ((2, 2, 8), 4, (3, 3), (1, 1), "SAME", True),
    "3x3 s1 SAME on 1x1": ((1, 1, 8), 4, (3, 3), (1, 1), "SAME", False),
    "3x3 s2 SAME on 2x1": ((2, 1, 4), 3, (3, 3), (2, 2), "SAME", True),
    "5x5 s1 explicit on 3x4": ((3, 4, 2), 3, (5, 5), (1, 1), ((1, 2), (3, 0)), True),
    # few output positions for many channels (4·2·2 < 24): the kernel gradient is not summed per
    # example first (VGG-19's last stages)
    "3x3 s1 SAME few positions": ((2, 2, 4), 24, (3, 3), (1, 1), "SAME", False),
    "3x3 s2 SAME few positions": ((4, 4, 3), 20, (3, 3), (2, 2), "SAME", True),
}


def _layers(features, kernel, strides, padding, bias, conv="canonical_vjp"):
    kw = dict(features=features, kernel_size=kernel, strides=strides, padding=padding,
              use_bias=bias)
    return nn.Conv(**kw), convolution.Conv(**kw, conv_general_dilated=convolution.conv_function(
        conv))


def _xla_formulations_only(monkeypatch):
    """Neither oneDNN's forward convolution nor the native kernel gradient, where this machine
    would use them: the formulations made of XLA's operations."""
    monkeypatch.setattr(convolution, "_onednn_applies", lambda *a: False)
    monkeypatch.setattr(convolution, "_native_applies", lambda *a: False)


@pytest.fixture
def xla_formulations_only(monkeypatch):
    _xla_formulations_only(monkeypatch)


@pytest.fixture(params=["convolution", "xla's convolution", "windows",
                        "convolution, kernel gradient in chunks", "winograd", "winograd in chunks"])
def input_gradient(request, monkeypatch):
    """Each way of computing the input gradient, whatever this machine's CPU would pick; the
    first with oneDNN's forward convolution and the native kernel gradient where this machine
    has them (narrow layers; C_out a multiple of 16), the second without; the fourth also
    computes the kernel gradient one example at a time (a scan over the batch). The "winograd"
    ones use ``model.conv="winograd"`` with Winograd's F(2x2, 3x3) on every stride-1 3x3 layer,
    however narrow (the test layers are; the networks' threshold is 64 channels), the second one
    example at a time."""
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast",
                        lambda: request.param != "windows")
    if request.param != "convolution":
        _xla_formulations_only(monkeypatch)
    if request.param.startswith("winograd"):
        monkeypatch.setattr(convolution, "_WINOGRAD_MIN_CHANNELS", 1)
    if request.param.endswith("chunks"):
        monkeypatch.setattr(convolution, "_CHUNK_BYTES", 1)
        monkeypatch.setattr(convolution, "_WINOGRAD_ROWS", 1)
        monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # chunks are for CPUs
    return request.param


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_equal_nn_conv(case, input_gradient):
    shape, features, kernel, strides, padding, bias = CASES[case]
    conv = "winograd" if input_gradient.startswith("winograd") else "canonical_vjp"
    stock, ours = _layers(features, kernel, strides, padding, bias, conv)
    x = jax.random.normal(jax.random.key(1), (3, *shape), jnp.float32)
    params = stock.init(jax.random.key(0), x)
    # The same parameter tree (names, shapes): a drop-in for nn.Conv.
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(params)
    target = jax.random.normal(jax.random.key(2), stock.apply(params, x).shape)

    def loss(layer):  # a non-linear loss, so every entry of the output gradient differs
        return lambda p, x: jnp.sum(jnp.tanh(layer.apply(p, x)) * target)

    # Jitted: one compilation per function instead of one per eager op (the suite's time).
    np.testing.assert_allclose(jax.jit(ours.apply)(params, x), jax.jit(stock.apply)(params, x),
                               rtol=0, atol=1e-5)
    want = jax.jit(jax.grad(loss(stock), argnums=(0, 1)))(params, x)
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, convolutions", [(2, 0), (3, 1)])
def test_an_input_smaller_than_the_kernel_is_a_matmul(size, convolutions):
    # The regression this guards: XLA:CPU's convolution of a 2x2 map by a 3x3 kernel is ~100x slower
    # than the matmul (VGG-19's last stage); a 3x3 map keeps XLA's convolution.
    x = jnp.ones((2, size, size, 4))
    w = jnp.ones((3, 3, 4, 5))
    conv = lambda x, w: convolution.canonical_conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hlo = jax.jit(conv).lower(x, w).as_text()
    assert hlo.count("stablehlo.convolution") == convolutions
    np.testing.assert_allclose(jax.jit(conv)(x, w), lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), rtol=1e-6)


def _backward_convolutions(x_shape, w_shape, strides=(1, 1)):
    """How many convolutions the HLO of the gradient (input and kernel) of one layer holds."""
    conv = lambda x, w: jnp.sum(convolution.canonical_conv_general_dilated(
        x, w, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
    hlo = jax.jit(jax.grad(conv, (0, 1))).lower(jnp.ones(x_shape), jnp.ones(w_shape)).as_text()
    return hlo.count("stablehlo.convolution")


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.usefixtures("xla_formulations_only")
def test_the_input_gradient_is_a_forward_convolution_only_where_chosen(strides, monkeypatch):
    # Forward pass + input gradient as convolutions; the kernel gradient is matmuls either way.
    for fast, convolutions in ((True, 2), (False, 1)):
        monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: fast)
        assert _backward_convolutions((2, 6, 6, 3), (3, 3, 3, 4), strides) == convolutions
    # An input smaller than the kernel: windows even where the convolution is chosen (XLA:CPU's
    # slow path), and a patches matmul forward.
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: True)
    assert _backward_convolutions((2, 2, 2, 3), (3, 3, 3, 4), strides) == 0


def test_chunks_are_the_most_examples_that_divide_the_batch_and_fit(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    kib = 1024
    assert convolution._CHUNK_BYTES == 512 * kib
    chunk = convolution._examples_per_chunk
    assert chunk(60, 256 * kib) == 2    # Conv-2's 32x32x64 layer
    assert chunk(60, 64 * kib) == 6     # 8 fit, 6 is the largest divisor of 60 up to 8
    assert chunk(128, 64 * kib) == 8    # ResNet-20's first stage
    assert chunk(7, 100 * kib) == 1     # a prime batch: one example at a time
    assert chunk(60, 600 * kib) == 1    # an example larger than a chunk
    assert chunk(64, 8 * kib) == 64     # everything fits: no scan
    assert chunk(0, 8 * kib) == 0       # an empty batch
    with convolution.convolutions_in_one_piece():
        assert chunk(60, 256 * kib) == 60
    assert chunk(60, 256 * kib) == 2    # the setting ends with the block
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert chunk(60, 256 * kib) == 60   # one matmul over the batch off CPUs


def _kernel_gradient(x_shape, w_shape):
    """The lowered kernel gradient of one stride-1 SAME layer."""
    conv = lambda w, x: jnp.sum(convolution.canonical_conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
    return jax.jit(jax.grad(conv)).lower(jnp.ones(w_shape), jnp.ones(x_shape))


def _kernel_gradient_loops(x_shape, w_shape):
    """How many loops the HLO of one layer's kernel gradient holds."""
    return _kernel_gradient(x_shape, w_shape).as_text().count("stablehlo.while")


@pytest.mark.usefixtures("xla_formulations_only")
def test_the_kernel_gradient_scans_over_chunks_only_where_the_batch_does_not_fit(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    # Conv-2's second layer: 2 examples a chunk, 30 chunks; the last stage of VGG-19: one matmul.
    assert _kernel_gradient_loops((60, 32, 32, 64), (3, 3, 64, 64)) == 1
    assert _kernel_gradient_loops((64, 2, 2, 512), (3, 3, 512, 512)) == 0
    # a first layer (9 x 3 channels against 64) takes its windows' transposes, whole
    assert _kernel_gradient_loops((60, 32, 32, 3), (3, 3, 3, 64)) == 0


@pytest.mark.usefixtures("xla_formulations_only")
def test_in_one_piece_the_kernel_gradient_has_no_loop_and_its_whole_flop_count(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    shapes = (8, 16, 16, 32), (3, 3, 32, 32)   # 64 KiB an example: 8 chunks of 1
    monkeypatch.setattr(convolution, "_CHUNK_BYTES", 16 * 16 * 32 * 4)
    flops = lambda lowered: lowered.cost_analysis()["flops"]
    chunked = _kernel_gradient(*shapes)
    with convolution.convolutions_in_one_piece():
        whole = _kernel_gradient(*shapes)
    assert "stablehlo.while" in chunked.as_text() and "stablehlo.while" not in whole.as_text()
    # XLA counts the loop's body once: one example's products instead of eight (both programs
    # also hold the forward pass and the input gradient, which are the same)
    products = 2 * 8 * 16 * 16 * 9 * 32 * 32
    assert abs(flops(whole) - flops(chunked) - products * 7 / 8) < 0.01 * products


@pytest.mark.parametrize("data_parallel", [False, True])
def test_data_parallel_programs_take_each_convolution_in_one_piece(data_parallel, monkeypatch):
    # In chunks, the kernel gradient and the Winograd products would loop over an axis that GSPMD
    # splits over the devices.
    from helpers import conv2_on_8x8

    from lth_jax import lottery
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    c = conv2_on_8x8(iterations=2)
    exp = lottery.setup(c)
    runner = lottery.Runner(exp, 1, "map", data_parallel=data_parallel, slice_iterations=2)
    key = jnp.stack([lottery.trial_key(0, 0, lottery.INIT)])
    v = jax.jit(jax.vmap(exp.init_variables))(key)
    # From here on: what the runner traces (the initialisation's forward pass is not its program).
    seen = []
    whole_batch = convolution._whole_batch  # decides for the kernel gradients and Winograd's
    monkeypatch.setattr(convolution, "_whole_batch",
                        lambda *a: seen.append(convolution._one_piece) or whole_batch(*a))
    runner(v["params"], v["batch_stats"], jax.vmap(masks.ones_like)(v["params"]), key, key,
           start=0, capture=-1)
    assert seen and all(one_piece == data_parallel for one_piece in seen)
    assert not convolution._one_piece  # the setting ends with the compilation


@pytest.mark.parametrize("case", ["3x3 s1 SAME nobias", "3x3 s2 SAME odd", "3x3 s2 explicit",
                                  "3x3 s1 negative padding"])
def test_kernel_gradient_in_chunks_of_two_equals_nn_conv(case, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    shape, features, kernel, strides, padding, bias = CASES[case]
    stock, ours = _layers(features, kernel, strides, padding, bias)
    x = jax.random.normal(jax.random.key(3), (4, *shape), jnp.float32)
    params = stock.init(jax.random.key(0), x)
    out_positions = int(np.prod(stock.apply(params, x).shape[1:3]))
    example = out_positions * max(shape[-1], features) * 4
    monkeypatch.setattr(convolution, "_CHUNK_BYTES", 2 * example)  # 2 chunks of 2 examples
    assert convolution._examples_per_chunk(4, example) == 2
    loss = lambda layer: lambda p: jnp.sum(jnp.sin(layer.apply(p, x)))
    want = jax.grad(loss(stock))(params)["params"]["kernel"]
    got = jax.jit(jax.grad(loss(ours)))(params)["params"]["kernel"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ResNet-20's layers at their sizes (input HWC, features, kernel, strides; SAME for 3x3, VALID for
# 1x1): its 16-, 32- and 64-channel layers at stride 1 and 2 and its 1x1 shortcuts.
RESNET20_LAYERS = {
    "stem 3->16": ((32, 32, 3), 16, (3, 3), (1, 1)),
    "16->16": ((32, 32, 16), 16, (3, 3), (1, 1)),
    "16->32 stride 2": ((32, 32, 16), 32, (3, 3), (2, 2)),
    "16->32 1x1 shortcut": ((32, 32, 16), 32, (1, 1), (2, 2)),
    "32->32": ((16, 16, 32), 32, (3, 3), (1, 1)),
    "32->64 stride 2": ((16, 16, 32), 64, (3, 3), (2, 2)),
    "32->64 1x1 shortcut": ((16, 16, 32), 64, (1, 1), (2, 2)),
    "64->64": ((8, 8, 64), 64, (3, 3), (1, 1)),
}


def _resnet20_layer(layer):
    shape, features, kernel, strides = RESNET20_LAYERS[layer]
    x = jax.random.normal(jax.random.key(1), (2, *shape), jnp.float32)
    w = jax.random.normal(jax.random.key(2), (*kernel, shape[-1], features), jnp.float32)
    w = w / np.sqrt(kernel[0] * kernel[1] * shape[-1])
    conv = lambda fn: lambda x, w: fn(x, w, strides, "SAME" if kernel == (3, 3) else "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return x, w, conv


@pytest.mark.parametrize("layer", list(RESNET20_LAYERS))
def test_resnet20_layers_values_and_gradients_equal_xla(layer, monkeypatch):
    # model.conv="auto" on a CPU (winograd) with the formulations of AVX-512 CPUs whatever this
    # CPU is: the first layer's column pairs, the narrow layers' patches kernel gradient, the
    # 16-channel downsampling layers' phases, Winograd on the 64-channel layer, chunks of the batch.
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    x, w, conv = _resnet20_layer(layer)
    ours, stock = conv(convolution.winograd_conv_general_dilated), conv(lax.conv_general_dilated)
    target = jax.random.normal(jax.random.key(3), stock(x, w).shape)
    loss = lambda f: lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * target)
    # differentiated, so the forward pass is the training step's (Winograd's where it applies)
    got_y = jax.jit(lambda x, w: jax.vjp(ours, x, w)[0])(x, w)
    np.testing.assert_allclose(got_y, stock(x, w), rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(got_y))))
    want = jax.jit(jax.grad(loss(stock), (0, 1)))(x, w)
    got = jax.jit(jax.grad(loss(ours), (0, 1)))(x, w)
    for g, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w_, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w_))))


@pytest.mark.parametrize("layer, phases", [("16->32 stride 2", True), ("16->32 1x1 shortcut", True),
                                           ("32->64 stride 2", False),
                                           ("32->64 1x1 shortcut", False)])
def test_narrow_strided_layers_take_the_input_gradient_by_phases(layer, phases, monkeypatch):
    # The regression this guards: XLA:CPU runs the input-dilated convolution of a strided layer
    # onto 16 channels in Eigen (ResNet-20's 32x32x16 -> 16x16x32 layer, ~2x slower); by phases
    # the input gradient has no dilation. Wider inputs keep the input-dilated convolution.
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: True)
    x, w, conv = _resnet20_layer(layer)
    f = conv(convolution.canonical_conv_general_dilated)
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(f(x, w) ** 2))).lower(x).compile().as_text()
    assert ("lhs_dilate" not in hlo) == phases


@pytest.mark.parametrize("x_shape, w_shape, strides, pads", [
    ((2, 32, 32, 16), (3, 3, 16, 32), (2, 2), ((0, 1), (0, 1))),   # ResNet-20's SAME at stride 2
    ((2, 9, 7, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (0, 1))),        # odd sizes
    ((2, 9, 7, 3), (3, 3, 3, 5), (2, 3), ((1, 2), (0, 1))),        # different strides per axis
    ((2, 10, 11, 4), (5, 4, 4, 6), (3, 2), ((2, 1), (1, 3))),      # kernels wider than 2 strides
    ((1, 8, 8, 2), (2, 2, 2, 3), (2, 2), ((0, 0), (0, 0))),        # kernel = stride
    ((1, 7, 7, 2), (3, 3, 2, 3), (3, 3), ((0, 0), (2, 2))),        # pad past the last window
    ((1, 6, 6, 2), (1, 1, 2, 2), (3, 3), ((1, 1), (0, 0))),        # 1x1: phases without taps
    ((2, 5, 5, 2), (3, 3, 2, 2), (2, 2), ((3, 0), (0, 3))),        # pad past the kernel
    ((2, 8, 9, 2), (3, 3, 2, 3), (2, 2), ((-1, 1), (1, -2))),      # negative padding
])
def test_strided_input_gradient_by_phases_equals_lax(x_shape, w_shape, strides, pads):
    x = jax.random.normal(jax.random.key(1), x_shape)
    w = jax.random.normal(jax.random.key(2), w_shape)
    y, vjp = jax.vjp(lambda x: lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
    dy = jax.random.normal(jax.random.key(3), y.shape)
    got = jax.jit(convolution._strided_input_gradient, static_argnums=(2, 3, 4, 5))(
        dy, w, strides, pads, x_shape[1:3], None)
    np.testing.assert_allclose(got, vjp(dy)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_shape, pairs", [
    ((3, 3, 3, 16), True),     # a first layer on images (ResNet-20's)
    ((3, 3, 16, 16), False),   # narrow, not widening: paired it made ResNet-20's step slower
    ((3, 3, 16, 32), False),   # 32 output channels: YNNPACK's already
    ((1, 1, 3, 16), False),    # 1x1: paired it would do twice the multiplies
])
def test_column_pairs_only_for_narrow_first_layers(w_shape, pairs, monkeypatch):
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: True)
    calls = []
    paired = convolution._paired
    monkeypatch.setattr(convolution, "_paired", lambda *a: calls.append(a) or paired(*a))
    x = jax.random.normal(jax.random.key(1), (2, 9, 7, w_shape[2]))   # odd width: a half pair
    w = jax.random.normal(jax.random.key(2), w_shape)
    got = jax.jit(lambda x, w: convolution.canonical_conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w)
    assert bool(calls) == pairs
    np.testing.assert_allclose(got, lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(convolution, "_forward_convolution_is_fast", lambda: False)
    calls.clear()
    jax.jit(lambda x, w: convolution.canonical_conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(x, w)
    assert not calls  # measured on AVX-512 CPUs only: XLA's own convolution elsewhere


def test_avx512_is_read_from_the_cpu_flags():
    flags = "processor\t: 0\nflags\t\t: fpu sse avx2 {}fma\nbugs\t\t: avx512_bug\n"
    assert convolution._has_avx512(flags.format("avx512f avx512dq "))
    assert not convolution._has_avx512(flags.format(""))          # AVX2 only
    assert not convolution._has_avx512(flags.format("avx512_bf16 "))  # no Foundation
    assert not convolution._has_avx512("")                          # no flags line (ARM, macOS)


def test_the_choice_reads_the_cpuinfo_file(tmp_path):
    for flags, fast in (("fpu avx2 avx512f", True), ("fpu avx2", False)):
        path = tmp_path / f"cpuinfo_{fast}"
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert convolution._forward_convolution_is_fast(str(path)) is fast
    assert convolution._forward_convolution_is_fast(str(tmp_path / "missing")) is False


def test_uncovered_cases_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(0), (2, 3, 9, 9), jnp.float32)   # NCHW
    w = jax.random.normal(jax.random.key(1), (4, 3, 3, 3), jnp.float32)   # OIHW
    f = lambda fn: lambda x, w: jnp.sum(fn(x, w, (1, 1), "SAME", rhs_dilation=(2, 2)) ** 2)
    ours = jax.jit(jax.grad(f(convolution.canonical_conv_general_dilated), (0, 1)))(x, w)
    stock = jax.jit(jax.grad(f(lax.conv_general_dilated), (0, 1)))(x, w)
    for a, b in zip(ours, stock):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def _conv_labels(model, input_shape, batch=4):
    """dim_labels of every convolution in the optimised HLO of 2 masked SGD steps in a lax.scan."""
    variables = models.init(model, jax.random.key(0), input_shape)
    x = jnp.ones((batch, *input_shape))
    has_stats = "batch_stats" in variables

    def step(params, _):
        def loss(p):
            if has_stats:
                out, _ = model.apply({**variables, "params": p}, x, train=True,
                                     mutable=["batch_stats"])
            else:
                out = model.apply({"params": p}, x, train=True)
            return jnp.sum(out ** 2)
        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), None

    hlo = jax.jit(lambda p: lax.scan(step, p, None, length=2)[0]).lower(
        variables["params"]).compile().as_text()
    return re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)


@pytest.mark.parametrize("name,build", [
    ("conv2", lambda conv: models.create("conv2", conv=conv)),
    ("vgg (2 stages)", lambda conv: models.VGG(stages=((8, 1), (8, 1)), conv=conv)),
    ("resnet (2 stages)", lambda conv: models.ResNet(widths=(8, 16), blocks_per_stage=1, conv=conv)),
])
def test_every_convolution_in_a_training_loop_is_canonical(name, build):
    # The regression this guards: XLA:CPU runs non-canonical convolutions inside loops ~85x slower.
    labels = _conv_labels(build("auto"), (8, 8, 3))  # "auto" is winograd on a CPU
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels


def test_the_stock_gradient_in_a_loop_is_not_canonical():
    # What the canonical check above would see without the custom VJP (so it can fail).
    stock = _conv_labels(models.create("conv2", conv="xla"), (8, 8, 3))
    assert set(stock) - {"b01f_01io->b01f"}, stock


def test_resolve_picks_by_platform_and_refuses_unknown_names():
    assert convolution.resolve("auto", "cpu") == "winograd"
    assert convolution.resolve("auto", "gpu") == "xla"
    assert convolution.resolve("auto", "tpu") == "xla"
    assert convolution.resolve("xla", "cpu") == "xla"
    assert convolution.resolve("canonical_vjp", "gpu") == "canonical_vjp"
    assert convolution.resolve("winograd", "gpu") == "winograd"
    assert convolution.conv_function("auto", "cpu") is convolution.winograd_conv_general_dilated
    assert convolution.conv_function("canonical_vjp") is convolution.canonical_conv_general_dilated
    assert convolution.conv_function("auto", "gpu") is lax.conv_general_dilated
    with pytest.raises(ValueError, match="cudnn"):
        convolution.resolve("cudnn")
    assert config_lib.CONVOLUTIONS == convolution.IMPLEMENTATIONS


@pytest.mark.parametrize("name", ["conv2", "vgg19", "resnet20"])
def test_implementations_share_params_and_pruning(name):
    shapes = {}
    for conv in ("xla", "canonical_vjp", "winograd"):
        model = models.create(name, conv=conv)
        params = jax.eval_shape(lambda k: models.init(model, k, (32, 32, 3)),
                                jax.random.key(0))["params"]
        rates = pruning.rates_by_rule(params, models.spec(name).rules)
        shapes[conv] = (jax.tree.map(lambda p: p.shape, params), rates, pruning.prunable(params))
    assert shapes["xla"] == shapes["canonical_vjp"] == shapes["winograd"]


def test_same_logits_and_gradients_for_a_whole_network():
    x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
    stock, ours = (models.ResNet(widths=(8, 16), blocks_per_stage=1, conv=c)
                   for c in ("xla", "canonical_vjp"))
    variables = models.init(stock, jax.random.key(0), (16, 16, 3))

    def loss(model):
        return lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=True,
                                             mutable=["batch_stats"])[0] ** 2)

    want, got = (jax.jit(jax.grad(loss(m)))(variables["params"]) for m in (stock, ours))
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4)


def test_winograd_gives_a_whole_network_the_same_logits_and_gradients():
    # Conv-4's widths (64, 128): three of its four layers are Winograd's (the first has 3 inputs).
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    stock, ours = (models.create("conv4", conv=c) for c in ("xla", "winograd"))
    variables = models.init(stock, jax.random.key(0), (8, 8, 3))

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, x, train=False) ** 2)

    # Under jax.vjp the forward pass is differentiated, so Winograd's (a plain apply is direct).
    logits = [jax.jit(lambda v: jax.vjp(lambda p: m.apply({"params": p}, x, train=False),
                                        v["params"])[0])(variables) for m in (ours, stock)]
    np.testing.assert_allclose(*logits, rtol=1e-4, atol=1e-5)
    want, got = (jax.jit(jax.grad(loss(m)))(variables["params"]) for m in (stock, ours))
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * scale)


def test_model_conv_field_is_validated():
    c = config_lib.base_config()
    c.model.conv = "fast"
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.conv: unknown value 'fast'"):
        config_lib.validate(c)


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("fashion_mnist", (28, 28, 1)),
                                        ("toy", (28, 28, 1))])
def test_synthetic_data_takes_the_named_datasets_shape(name, shape):
    ds = data.load({"name": name, "source": "synthetic", "train_size": 40, "test_size": 10,
                    "validation_size": 10})
    assert ds.info.image_shape == shape and ds.train_images.shape == (30, *shape)


def test_a_cifar_config_runs_on_synthetic_data_out_of_the_box():
    from lth_jax import lottery
    c = config_lib.conv_config("conv2", dropout=False)
    c.dataset.source = "synthetic"
    c.train.iterations = 300
    exp = lottery.setup(c)  # the default validation size fits the default synthetic set
    assert exp.input_shape == (32, 32, 3)
    assert exp.data.train_images.shape[1:] == (32, 32, 3)
    assert exp.model.conv == "auto"
