"""Winograd's F(2x2, 3x3): equal to the direct convolution and its kernel gradient, with 2.25x
fewer multiplies; and which layers of lth_jax's convolution it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lth_jax.models import convolution, winograd

NHWC = ("NHWC", "HWIO", "NHWC")

# (input NHWC, C_out, padding): SAME on even and odd maps, VALID, asymmetric and wide padding, a
# map smaller than the kernel, one example.
CASES = {
    "SAME 8x8": ((4, 8, 8, 3), 5, ((1, 1), (1, 1))),
    "SAME odd 7x5": ((3, 7, 5, 4), 6, ((1, 1), (1, 1))),
    "VALID 6x9": ((2, 6, 9, 3), 2, ((0, 0), (0, 0))),
    "asymmetric": ((2, 5, 8, 3), 2, ((2, 1), (0, 3))),
    "SAME 2x2": ((4, 2, 2, 5), 5, ((1, 1), (1, 1))),
    "SAME 1x1": ((2, 1, 1, 3), 4, ((1, 1), (1, 1))),
    "one example": ((1, 4, 4, 2), 3, ((1, 1), (1, 1))),
}


def _data(shape, c_out, pads):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], c_out))
    y_shape = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC).shape
    return x, w, jax.random.normal(jax.random.key(2), y_shape)


def _chunk_sizes(batch):
    return [None] + [d for d in (1, 2) if batch % d == 0 and d < batch]


@pytest.mark.parametrize("case", list(CASES))
def test_conv3x3_equals_the_direct_convolution(case):
    shape, c_out, pads = CASES[case]
    x, w, _ = _data(shape, c_out, pads)
    want = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC)
    for chunk in _chunk_sizes(shape[0]):
        got = jax.jit(lambda x, w: winograd.conv3x3(x, w, pads, examples_per_chunk=chunk))(x, w)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_gradient3x3_equals_the_direct_kernel_gradient(case):
    shape, c_out, pads = CASES[case]
    x, w, dy = _data(shape, c_out, pads)
    want = jax.grad(lambda w: jnp.sum(dy * lax.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=NHWC)))(w)
    for chunk in _chunk_sizes(shape[0]):
        got = jax.jit(lambda x, dy: winograd.kernel_gradient3x3(
            x, dy, pads, examples_per_chunk=chunk))(x, dy)
        assert got.shape == w.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(want))))


def test_the_kernel_transform_is_g_w_gt():
    w = jax.random.normal(jax.random.key(0), (3, 3, 2, 3))
    u = np.asarray(winograd.kernel_transform(w))
    g = winograd.G.astype(np.float64)
    for c in range(2):
        for o in range(3):
            # indexed [column ξ, row ξ]: the transpose of G g Gᵀ
            want = g @ np.asarray(w, np.float64)[:, :, c, o] @ g.T
            np.testing.assert_allclose(u[:, :, c, o].T, want, rtol=0, atol=1e-6)


def _flops(f, *args):
    cost = jax.jit(f).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_the_products_do_a_fraction_of_the_direct_convolution_s_multiplies():
    # 16 products of (tiles, C_in) x (C_in, C_out) for 4 outputs against 36 per 4 directly
    # (2.25x fewer); with the transforms, XLA's count stays under 55% of the direct convolution's
    # (which XLA counts without the padded border's zeros: 8% under 2·N·H·W·9·C_in·C_out here).
    x = jnp.ones((4, 16, 16, 64))
    w = jnp.ones((3, 3, 64, 64))
    pads = ((1, 1), (1, 1))
    direct = _flops(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pads,
                                                          dimension_numbers=NHWC), x, w)
    products = 2 * 16 * (4 * 8 * 8) * 64 * 64
    assert products / direct > 0.44
    ours = _flops(lambda x, w: winograd.conv3x3(x, w, pads), x, w)
    assert products <= ours < 0.55 * direct
    ours = _flops(lambda x, dy: winograd.kernel_gradient3x3(x, dy, pads), x, x)
    assert products <= ours < 0.55 * direct


def test_bad_arguments_are_refused():
    x, w = jnp.ones((4, 6, 6, 2)), jnp.ones((3, 3, 2, 3))
    with pytest.raises(ValueError, match="3x3 HWIO kernel"):
        winograd.conv3x3(x, jnp.ones((5, 5, 2, 3)), ((2, 2), (2, 2)))
    with pytest.raises(ValueError, match="non-negative padding"):
        winograd.conv3x3(x, w, ((-1, 1), (1, 1)))
    with pytest.raises(ValueError, match="does not divide"):
        winograd.conv3x3(x, w, ((1, 1), (1, 1)), examples_per_chunk=3)
    with pytest.raises(ValueError, match="is not the output"):
        winograd.kernel_gradient3x3(x, jnp.ones((4, 5, 6, 3)), ((1, 1), (1, 1)))


def _winograd_calls(monkeypatch, x_shape, w_shape, strides=(1, 1), padding="SAME"):
    """Which of the forward pass, input gradient and kernel gradient of one
    ``conv="winograd"`` layer Winograd computed, the native kernel gradient (which takes layers
    of at most 64 channels before Winograd where this machine has it) off."""
    monkeypatch.setattr(convolution, "_native_applies", lambda *a: False)
    calls = []
    conv3x3, kernel_gradient3x3 = winograd.conv3x3, winograd.kernel_gradient3x3
    monkeypatch.setattr(winograd, "conv3x3",
                        lambda *a, **k: calls.append("conv") or conv3x3(*a, **k))
    monkeypatch.setattr(winograd, "kernel_gradient3x3",
                        lambda *a, **k: calls.append("dw") or kernel_gradient3x3(*a, **k))
    loss = lambda x, w: jnp.sum(convolution.winograd_conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC) ** 2)
    jax.jit(jax.grad(loss, (0, 1))).lower(jnp.ones(x_shape), jnp.ones(w_shape))
    # forward and input gradient both call conv3x3
    return {"forward and input gradient": calls.count("conv"), "kernel gradient": calls.count("dw")}


@pytest.mark.parametrize("x_shape, w_shape, strides, padding, conv, dw", [
    ((2, 8, 8, 64), (3, 3, 64, 64), (1, 1), "SAME", 2, 1),      # Conv-2's second layer
    ((2, 8, 8, 64), (3, 3, 64, 128), (1, 1), "VALID", 2, 1),    # VALID, widening
    ((2, 2, 2, 64), (3, 3, 64, 64), (1, 1), "SAME", 2, 1),      # VGG-19's 2x2 maps
    ((2, 8, 8, 32), (3, 3, 32, 64), (1, 1), "SAME", 0, 0),      # narrower than 64
    ((2, 8, 8, 3), (3, 3, 3, 64), (1, 1), "SAME", 0, 0),        # a first layer
    ((2, 8, 8, 64), (3, 3, 64, 64), (2, 2), "SAME", 0, 0),      # strided
    ((2, 8, 8, 64), (1, 1, 64, 64), (1, 1), "SAME", 0, 0),      # 1x1
    # negative padding: the forward pass and kernel gradient are direct; the input gradient is a
    # correlation padded by (2 - lo, ...) = (3, ...), non-negative, so Winograd's
    ((2, 8, 8, 64), (3, 3, 64, 64), (1, 1), ((-1, 1), (1, 1)), 1, 0),
    # padding past 2: the forward pass and kernel gradient are Winograd's, the input gradient's
    # edges (2 - lo, ...) are negative, so it is the direct one
    ((2, 8, 8, 64), (3, 3, 64, 64), (1, 1), ((3, 0), (1, 1)), 1, 1),
    ((0, 8, 8, 64), (3, 3, 64, 64), (1, 1), "SAME", 0, 0),      # an empty batch
])
def test_winograd_computes_the_wide_stride_1_3x3_layers(x_shape, w_shape, strides, padding, conv,
                                                       dw, monkeypatch):
    assert _winograd_calls(monkeypatch, x_shape, w_shape, strides, padding) == {
        "forward and input gradient": conv, "kernel gradient": dw}


def test_winograd_chunks_hold_enough_tile_rows(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    same = ((1, 1), (1, 1))
    # the smallest divisor of the batch with at least _WINOGRAD_ROWS (256) tile rows
    assert convolution._WINOGRAD_ROWS == 256
    assert convolution._winograd_chunk((60, 32, 32, 64), same) == 1      # 256 tiles an example
    assert convolution._winograd_chunk((60, 16, 16, 128), same) == 4     # 64
    assert convolution._winograd_chunk((60, 8, 8, 256), same) == 20      # 16: 16 -> 20
    assert convolution._winograd_chunk((128, 8, 8, 64), same) == 16      # ResNet-20's last stage
    assert convolution._winograd_chunk((7, 2, 2, 512), same) == 7
    with convolution.convolutions_in_one_piece():
        assert convolution._winograd_chunk((60, 32, 32, 64), same) == 60
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert convolution._winograd_chunk((60, 32, 32, 64), same) == 60


@pytest.mark.parametrize("case", ["SAME odd 7x5", "asymmetric"])
def test_a_flipped_kernel_is_the_input_gradient_s_correlation(case):
    shape, c_out, pads = CASES[case]
    # w is (3, 3, C_out, C_in): the kernel of a layer whose input gradient this is
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, c_out, shape[-1]))
    want = lax.conv_general_dilated(x, jnp.swapaxes(w[::-1, ::-1], 2, 3), (1, 1), pads,
                                    dimension_numbers=NHWC)
    for chunk in _chunk_sizes(shape[0]):
        got = winograd.conv3x3(x, w, pads, examples_per_chunk=chunk, flipped=True)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(want))))


def test_without_gradients_the_forward_pass_is_direct(monkeypatch):
    # Evaluation and inference take XLA's convolution, which XLA:CPU fuses with what follows it;
    # only a differentiated forward pass (training) is Winograd's.
    x, w = jnp.ones((2, 8, 8, 64)), jnp.ones((3, 3, 64, 64))
    conv = lambda x, w: convolution.winograd_conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    hlo = jax.jit(conv).lower(x, w).as_text()
    assert hlo.count("stablehlo.convolution") == 1 and "stablehlo.dot_general" not in hlo
    assert _winograd_calls(monkeypatch, x.shape, w.shape) == {
        "forward and input gradient": 2, "kernel gradient": 1}
    np.testing.assert_allclose(jax.jit(conv)(x, w), lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=NHWC), rtol=1e-6)


def test_a_winograd_run_continues_bit_for_bit_across_slices(monkeypatch):
    # What resume relies on: a run cut into slices (each a call of the compiled chunk program,
    # the state carried between them, as a stopped and resumed run is; slices of one step are a
    # program without the loop) gives the same bits as one slice, with Winograd's chunk loops
    # inside every step (Conv-2's 64-channel layer, 16 tiles an example, two examples a chunk).
    # Compiled with XLA's fusion emitters, as every bit-for-bit comparison of programs of other
    # loop shapes in this suite is (helpers.FUSION_EMITTERS).
    from helpers import conv2_on_8x8, fusion_emitters

    from lth_jax import lottery, masks

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(convolution, "_WINOGRAD_ROWS", 32)
    assert convolution._winograd_chunk((4, 8, 8, 64), ((1, 1), (1, 1))) == 2
    c = conv2_on_8x8(iterations=4)
    c.model.conv = "winograd"
    with fusion_emitters():
        exp = lottery.setup(c)
        key = jnp.stack([lottery.trial_key(0, 0, lottery.INIT)])
        v = jax.jit(jax.vmap(exp.init_variables))(key)
        mask = jax.vmap(masks.ones_like)(v["params"])
        results = [lottery.Runner(exp, 1, "map", slice_iterations=s)(
            v["params"], v["batch_stats"], mask, key, key, start=0, capture=-1)
            for s in (4, 1, 2)]
    for other in results[1:]:
        for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other), strict=True):
            np.testing.assert_array_equal(a, b)
