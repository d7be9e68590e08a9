#pragma once
// Seeded random numbers. The generator and the distributions are written out here, not taken
// from <random>, whose distributions differ between standard libraries: the same seed gives
// the same numbers on every build.
#include <cstdint>
#include <string>

#include "lib/tensor.hpp"

namespace qkv {

/// xoshiro256** seeded through splitmix64.
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0);
  std::uint64_t next_u64();
  /// Uniform in [0, 1), 53 random bits.
  double uniform();
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
  std::uint64_t state_[4];
  double spare_normal_ = 0;
  bool has_spare_ = false;
};

/// Arrays of i.i.d. draws.
Array uniform(const Shape& shape, real low, real high, Rng& rng);
Array normal(const Shape& shape, real mean, real stddev, Rng& rng);

}  // namespace qkv
