#pragma once
// Seeded random numbers. The generator and the distributions are written out here, not taken
// from <random>, whose distributions differ between standard libraries: the same seed gives
// the same numbers on every build.
#include <cstdint>
#include <string>

#include "lib/numerics/tensor.hpp"

namespace qkv {

/// SplitMix64 (Steele, Lea & Flood 2014): the n-th output is splitmix64_mix(seed + n · increment).
/// Inline: dropout hashes every element with it.
inline constexpr std::uint64_t splitmix64_increment = 0x9e3779b97f4a7c15ULL;
inline std::uint64_t splitmix64_mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// xoshiro256** seeded through splitmix64.
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0);
  // Inline: dropout draws one number per element, and a call per draw cost more than the draw.
  std::uint64_t next_u64() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  /// Uniform in [0, 1), 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  /// Uniform in [low, high).
  double uniform(double low, double high);
  /// Standard normal (Box-Muller; the second value of each pair is kept for the next call).
  double normal();
  /// Uniform integer in [0, bound).
  std::uint64_t below(std::uint64_t bound);

  /// The generator's whole state as text (hex words), for checkpoints: a generator restored
  /// from it continues with exactly the numbers the saved one would have drawn.
  std::string save_state() const;
  /// Restores save_state()'s text; throws Error on anything else.
  void load_state(const std::string& state);

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t state_[4];
  double spare_normal_ = 0;
  bool has_spare_ = false;
};

/// Arrays of i.i.d. draws.
Array uniform(const Shape& shape, real low, real high, Rng& rng);
Array normal(const Shape& shape, real mean, real stddev, Rng& rng);

}  // namespace qkv
