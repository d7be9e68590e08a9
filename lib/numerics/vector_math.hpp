#pragma once
// exp, tanh and sigmoid for float32 arrays, written branch-free so that the compiler vectorises
// the loops that call them (libm's expf/tanhf are calls per element, and the Bahdanau
// decoder's tanh over [B, S, A] every step spent ~40% of a training step in them).
//
// Cephes' single-precision algorithms (S. Moshier): exp by range reduction to [-ln2/2, ln2/2]
// and a degree-6 polynomial, tanh by an odd polynomial below |x| = 0.625 and 1 - 2/(e^{2|x|} + 1)
// above. Both are within a few float32 ulps of the exact values. The float64 build keeps
// std::exp / std::tanh: gradient checks want every digit.
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

/// tanh(x) for float32 within a few ulps.
inline float tanh(float x) {
  const float a = std::fabs(x);
  // Small |x|: odd minimax polynomial, no cancellation.
  const float z = x * x;
  float small = -5.70498872745e-3f;
  small = small * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * x + x;
  // Larger |x|: 1 - 2 / (e^{2|x|} + 1), sign restored.
  const float large = std::copysign(1.0f - 2.0f / (exp(2.0f * a) + 1.0f), x);
  return a < 0.625f ? small : large;
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
