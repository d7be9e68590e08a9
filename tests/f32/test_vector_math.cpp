// The float32 exp, tanh and sigmoid that training's kernels call (lib/numerics/vector_math.hpp),
// against the float64 standard functions, in ulps of the float32 result. Every 257th float32 bit
// pattern of each range is checked (4.3 million values for tanh); the bounds stated in
// vector_math.hpp were measured over every float32.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "lib/numerics/vector_math.hpp"
#include "support/helpers.hpp"

namespace {

/// |y - exact| in units of the float32 spacing at the exact value.
double ulps_from(float y, double exact) {
  const float rounded = static_cast<float>(exact);
  const float magnitude = std::fabs(rounded);
  const double spacing =
      static_cast<double>(std::nextafter(magnitude, std::numeric_limits<float>::infinity()) - magnitude);
  return std::fabs(static_cast<double>(y) - exact) / spacing;
}

float float_of_bits(std::uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

struct Worst {
  double ulps = 0;
  float at = 0;
  void see(double error, float x) {
    if (error > ulps) ulps = error, at = x;
  }
};

constexpr std::uint32_t stride = 257;
constexpr std::uint32_t sign_bit = 0x80000000u;

}  // namespace

TEST_CASE("float32 tanh: within 6.2 ulps of tanh, odd, never beyond ±1, exact near 0 and at ±inf") {
  Worst worst;
  bool bounded = true, odd = true;
  // Every positive float up to 11 (0x41300000), where tanh is 1 in float32 long since.
  for (std::uint32_t bits = 0; bits < 0x41300000u; bits += stride) {
    const float x = float_of_bits(bits);
    const float y = qkv::vector_math::tanh(x);
    worst.see(ulps_from(y, std::tanh(static_cast<double>(x))), x);
    bounded = bounded && y >= 0.0f && y <= 1.0f;
    odd = odd && qkv::vector_math::tanh(float_of_bits(bits | sign_bit)) == -y;
  }
  INFO("worst ", worst.ulps, " ulps at x = ", worst.at);
  CHECK(worst.ulps < 6.2);
  CHECK(bounded);
  CHECK(odd);
  CHECK(qkv::vector_math::tanh(1e-30f) == 1e-30f);  // tanh(x) = x below float32's resolution
  CHECK(qkv::vector_math::tanh(std::numeric_limits<float>::infinity()) == 1.0f);
  CHECK(qkv::vector_math::tanh(-std::numeric_limits<float>::infinity()) == -1.0f);
  CHECK(qkv::vector_math::tanh(1e30f) == 1.0f);
  CHECK(std::isnan(qkv::vector_math::tanh(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("float32 exp: within 2 ulps of exp from -86.5 to 88.5, 0 far below, finite far above") {
  Worst worst;
  for (std::uint32_t bits = 0; bits < 0x42B10000u; bits += stride) {  // 0 .. 88.5
    const float x = float_of_bits(bits);
    worst.see(ulps_from(qkv::vector_math::exp(x), std::exp(static_cast<double>(x))), x);
  }
  for (std::uint32_t bits = sign_bit; bits < (sign_bit | 0x42AD0000u); bits += stride) {  // -86.5 .. 0
    const float x = float_of_bits(bits);
    worst.see(ulps_from(qkv::vector_math::exp(x), std::exp(static_cast<double>(x))), x);
  }
  INFO("worst ", worst.ulps, " ulps at x = ", worst.at);
  CHECK(worst.ulps < 2.0);
  CHECK(qkv::vector_math::exp(-1000.0f) < 1e-37f);
  CHECK(std::isfinite(qkv::vector_math::exp(1000.0f)));
}

TEST_CASE("float32 sigmoid: within 4 ulps of 1 / (1 + e^-x) for |x| < 80, and in [0, 1] beyond") {
  Worst worst;
  for (std::uint32_t sign : {0u, sign_bit})
    for (std::uint32_t bits = 0; bits < 0x42A00000u; bits += stride) {  // |x| < 80
      const float x = float_of_bits(bits | sign);
      worst.see(ulps_from(qkv::vector_math::sigmoid(x), 1 / (1 + std::exp(-static_cast<double>(x)))), x);
    }
  INFO("worst ", worst.ulps, " ulps at x = ", worst.at);
  CHECK(worst.ulps < 4.0);
  CHECK(qkv::vector_math::sigmoid(1e6f) == 1.0f);
  CHECK(qkv::vector_math::sigmoid(-1e6f) >= 0.0f);
  CHECK(qkv::vector_math::sigmoid(-1e6f) < 1e-37f);
}
