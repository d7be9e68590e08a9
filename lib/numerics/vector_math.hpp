#pragma once
// exp, tanh and sigmoid for float32 arrays, written branch-free so that the compiler vectorises
// the loops that call them (libm's expf/tanhf are calls per element, and the Bahdanau
// decoder's tanh over [B, S, A] every step spent ~40% of a training step in them).
//
// exp: Cephes' single-precision algorithm (S. Moshier), range reduction to [-ln2/2, ln2/2] and a
// degree-6 polynomial, within 2 ulps. tanh: one rational function x·P(x²)/Q(x²), degree 4 over 4
// in x², on |x| clamped to 9 (where tanh rounds to 1 in float32); its coefficients
// come from scripts/fit_tanh.py. One division and ten multiply-adds, where the exp-based tanh
// (Cephes') needed the exp, a division and a second polynomial for small |x|: the Bahdanau
// attention-score kernel took 1.75x fewer profile samples and a Bahdanau training step ran 1.09x
// faster (2026-12-02, bench/README.md). Over every float32 it is within 6.12 ulps of the exact
// value (5.31 with FMA), against Cephes' 1.33; tests/f32/test_vector_math.cpp checks a sample.
// A float32 training run cannot tell. The float64 build keeps std::exp / std::tanh: gradient
// checks want every digit.
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "lib/numerics/tensor.hpp"

namespace qkv::vector_math {

/// e^x for float32 within ~2 ulps; about 0 below -87 (true values under 1e-38) and saturating
/// at e^88.7 above.
inline float exp(float x) {
  // Ternaries, not fmin/fmax: those keep NaN rules that stop the loop from vectorising.
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  // n = round(x / ln2) with the 1.5·2^23 trick (no floor call, so it vectorises on SSE2).
  constexpr float shifter = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + shifter;
  const float n = shifted - shifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // x - n·ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from the exponent bits. For n = 128 (x near 88.7) split it as 2^(n-1) · 2.
  const std::int32_t exponent = static_cast<std::int32_t>(n) + 126;
  return p * std::bit_cast<float>(exponent << 23) * 2.0f;
}

/// tanh(x) for float32 within 6.2 ulps, and |tanh(x)| <= 1 (both measured over every float32).
inline float tanh(float x) {
  // The odd function on |x|, sign restored at the end: one-sided clamps, and bit operations for
  // the sign. tanh(9) is 1 in float32. Ternaries, not fmin, as in exp.
  float a = std::fabs(x);
  a = a > 9.0f ? 9.0f : a;
  const float z = a * a;
  // P(0) = Q(0) = 1: tanh(x) = x to the last bit near 0, with no cancellation.
  float p = 1.341988463e-08f;
  p = p * z + 2.066130755e-05f;
  p = p * z + 3.498998798e-03f;
  p = p * z + 1.338398256e-01f;
  p = p * z + 1.0f;
  float q = 7.804754963e-07f;
  q = q * z + 3.291042832e-04f;
  q = q * z + 2.589021671e-02f;
  q = q * z + 4.671730404e-01f;
  q = q * z + 1.0f;
  // The rational function overshoots 1 by an ulp near |x| = 8.1; tanh never does.
  float y = a * p / q;
  y = y > 1.0f ? 1.0f : y;
  return std::copysign(y, x);
}

/// 1 / (1 + e^-x): e^-x saturates instead of overflowing, so one formula serves every x.
inline float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }

// ---- in the build's precision --------------------------------------------------------------
// What the kernels and ops call: the float32 functions above in training builds, the standard
// ones in float64.

inline real exp_of(real x) {
  if constexpr (std::is_same_v<real, float>) return exp(x);
  else return std::exp(x);
}

inline real tanh_of(real x) {
  if constexpr (std::is_same_v<real, float>) return tanh(x);
  else return std::tanh(x);
}

inline real sigmoid_of(real x) {
  if constexpr (std::is_same_v<real, float>) return sigmoid(x);
  // Two branches keep std::exp from overflowing for large |x|.
  if (x >= 0) return real(1) / (real(1) + std::exp(-x));
  const real e = std::exp(x);
  return e / (real(1) + e);
}

}  // namespace qkv::vector_math
