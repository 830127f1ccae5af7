// The kernel gradient of a 2-D convolution (NHWC input, HWIO kernel, NHWC output), as an XLA FFI
// handler for XLA:CPU: dw[i, j, ci, co] = sum over n, h, w of
//   x[n, h*s_h + i - p_h, w*s_w + j - p_w, ci] * dy[n, h, w, co]
// (zero where the input index falls in the padding). float32, C_out a multiple of 16.
//
// Why: written with XLA's operations this product is a matmul whose contracted axis (every batch
// and output position) is long and whose result (taps x C_in x C_out) is small, which XLA:CPU runs
// far below its matmul rate on narrow layers (docs/performance.md, "A native kernel gradient").
// Here, one tile of output rows of one example at a time (its dy and x rows stay in the core's L1
// cache), for every tap, block of 16 output channels and block of at most 16 input channels, the
// 16-wide sums stay in registers over the tile's positions and are added to a (taps x C_in x
// C_out) float32 total: x and dy are read from memory about once (a tile's edge rows of x twice)
// and the multiply-adds run at the core's vector rate.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// One tile's contribution to one tap, one block of CB (at most 16) input channels and one block
// of 16 output channels: acc[c] += sum over the output positions (h, w) in [h_lo, h_hi) x
// [w_lo, w_hi) of x_at(h, w)[c] * dy_at(h, w)[0 .. 16], where x_at(h, w) = x + h * x_h + w * x_w
// and dy_at(h, w) = dy + h * dy_h + w * dy_w. The 16 sums stay in registers over the whole tile.
template <int CB>
void Plane(const float* x, const float* dy, float* acc, int64_t h_lo, int64_t h_hi, int64_t w_lo,
           int64_t w_hi, int64_t x_h, int64_t x_w, int64_t dy_h, int64_t dy_w) {
  v16 a[CB];
  for (int c = 0; c < CB; ++c) a[c] = load16(acc + 16 * c);
  for (int64_t h = h_lo; h < h_hi; ++h) {
    const float* xp = x + h * x_h + w_lo * x_w;
    const float* dp = dy + h * dy_h + w_lo * dy_w;
    for (int64_t w = w_lo; w < w_hi; ++w, xp += x_w, dp += dy_w) {
      const v16 d = load16(dp);
      for (int c = 0; c < CB; ++c) a[c] += xp[c] * d;
    }
  }
  for (int c = 0; c < CB; ++c) store16(acc + 16 * c, a[c]);
}

using PlaneFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t);

template <int... Cs>
PlaneFn PickPlane(int cb, std::integer_sequence<int, Cs...>) {
  static constexpr PlaneFn fns[] = {nullptr, &Plane<Cs + 1>...};
  return fns[cb];
}

// The output positions [lo, hi) along one axis whose input index o * stride + k - pad lies in
// [0, size).
void ValidRange(int64_t out, int64_t size, int64_t stride, int64_t k, int64_t pad, int64_t* lo,
                int64_t* hi) {
  *lo = 0;
  *hi = out;
  while (*lo < out && *lo * stride + k - pad < 0) ++*lo;
  while (*hi > *lo && (*hi - 1) * stride + k - pad >= size) --*hi;
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride_h, int64_t stride_w,
                          int64_t pad_h, int64_t pad_w) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), dwd = dw->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || dwd.size() != 4)
    return ffi::Error::InvalidArgument("kernel gradient: 4-D operands expected");
  const int64_t n = xd[0], H = xd[1], W = xd[2], ci = xd[3];
  const int64_t ho = dyd[1], wo = dyd[2], co = dyd[3];
  const int64_t kh = dwd[0], kw = dwd[1];
  if (dyd[0] != n || dwd[2] != ci || dwd[3] != co || co % 16 != 0)
    return ffi::Error::InvalidArgument("kernel gradient: mismatched shapes or C_out % 16 != 0");
  const float* xs = x.typed_data();
  const float* dys = dy.typed_data();
  // The sums, laid out (tap, C_out block, C_in, 16): one block's accumulators are contiguous.
  const int64_t oblocks = co / 16;
  std::vector<float> acc(kh * kw * oblocks * ci * 16, 0.0f);
  // Output rows per tile: a tile's dy rows and the x rows they meet take about kTileBytes, so
  // that they stay in the core's L1 cache while every tap sweeps them.
  constexpr int64_t kTileBytes = 32 * 1024;
  const int64_t row_bytes = (wo * co + stride_h * W * ci) * static_cast<int64_t>(sizeof(float));
  const int64_t tile = std::max<int64_t>(1, kTileBytes / row_bytes);
  for (int64_t b = 0; b < n; ++b) {
    const float* x_b = xs + b * H * W * ci;
    const float* dy_b = dys + b * ho * wo * co;
    for (int64_t t0 = 0; t0 < ho; t0 += tile)
    for (int64_t i = 0; i < kh; ++i) {
      int64_t h_lo, h_hi;
      ValidRange(ho, H, stride_h, i, pad_h, &h_lo, &h_hi);
      h_lo = std::max(h_lo, t0);
      h_hi = std::min(h_hi, std::min(ho, t0 + tile));
      for (int64_t j = 0; j < kw; ++j) {
        int64_t w_lo, w_hi;
        ValidRange(wo, W, stride_w, j, pad_w, &w_lo, &w_hi);
        if (h_lo >= h_hi || w_lo >= w_hi) continue;
        // The input pixel that output position (h, w) meets at tap (i, j) is
        // x_tap + h * x_h + w * x_w (never dereferenced outside the valid ranges).
        const float* x_tap = x_b + ((i - pad_h) * W + (j - pad_w)) * ci;
        float* tap_acc = acc.data() + (i * kw + j) * oblocks * ci * 16;
        for (int64_t ob = 0; ob < oblocks; ++ob) {
          for (int64_t c0 = 0; c0 < ci; c0 += 16) {
            const int cb = static_cast<int>(ci - c0 < 16 ? ci - c0 : 16);
            PickPlane(cb, std::make_integer_sequence<int, 16>())(
                x_tap + c0, dy_b + ob * 16, tap_acc + (ob * ci + c0) * 16, h_lo, h_hi, w_lo,
                w_hi, stride_h * W * ci, stride_w * ci, wo * co, co);
          }
        }
      }
    }
  }
  float* out = dw->typed_data();
  for (int64_t t = 0; t < kh * kw; ++t)
    for (int64_t ob = 0; ob < oblocks; ++ob)
      for (int64_t c = 0; c < ci; ++c)
        std::memcpy(out + (t * ci + c) * co + ob * 16,
                    acc.data() + ((t * oblocks + ob) * ci + c) * 16, 16 * sizeof(float));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LthConvKernelGradient, KernelGradient,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w"));
