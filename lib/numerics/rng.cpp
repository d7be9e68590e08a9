#include "lib/numerics/rng.hpp"

#include "lib/numerics/error.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <numbers>

namespace qkv {

namespace {
std::uint64_t splitmix64(std::uint64_t& x) { return splitmix64_mix(x += splitmix64_increment); }
}  // namespace

Rng::Rng(std::uint64_t seed) {
  for (auto& word : state_) word = splitmix64(seed);
}

double Rng::uniform(double low, double high) { return low + (high - low) * uniform(); }

double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_normal_;
  }
  // 1 - uniform() lies in (0, 1], so the log is finite.
  const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform()));
  const double angle = 2.0 * std::numbers::pi * uniform();
  spare_normal_ = radius * std::sin(angle);
  has_spare_ = true;
  return radius * std::cos(angle);
}

std::uint64_t Rng::below(std::uint64_t bound) {
  // Rejection keeps the draw exactly uniform.
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  std::uint64_t draw;
  do draw = next_u64();
  while (draw >= limit);
  return draw % bound;
}

std::string Rng::save_state() const {
  char text[5 * 17 + 2];
  std::uint64_t spare_bits;
  std::memcpy(&spare_bits, &spare_normal_, sizeof spare_bits);
  std::snprintf(text, sizeof text, "%016llx %016llx %016llx %016llx %016llx %d",
                static_cast<unsigned long long>(state_[0]), static_cast<unsigned long long>(state_[1]),
                static_cast<unsigned long long>(state_[2]), static_cast<unsigned long long>(state_[3]),
                static_cast<unsigned long long>(spare_bits), has_spare_ ? 1 : 0);
  return text;
}

void Rng::load_state(const std::string& state) {
  unsigned long long words[5];
  int has_spare = 0, consumed = 0;
  const int fields = std::sscanf(state.c_str(), "%16llx %16llx %16llx %16llx %16llx %d%n", &words[0], &words[1],
                                 &words[2], &words[3], &words[4], &has_spare, &consumed);
  check_arg(fields == 6 && static_cast<std::size_t>(consumed) == state.size() && (has_spare == 0 || has_spare == 1),
            "Rng::load_state", [&] { return "not a saved generator state: '" + state + "'"; });
  for (int i = 0; i < 4; ++i) state_[i] = words[i];
  std::memcpy(&spare_normal_, &words[4], sizeof spare_normal_);
  has_spare_ = has_spare == 1;
}

Array uniform(const Shape& shape, real low, real high, Rng& rng) {
  Array array = Array::from_shape(shape);
  for (auto& value : array) value = static_cast<real>(rng.uniform(low, high));
  return array;
}

Array normal(const Shape& shape, real mean, real stddev, Rng& rng) {
  Array array = Array::from_shape(shape);
  for (auto& value : array) value = static_cast<real>(mean + stddev * rng.normal());
  return array;
}

}  // namespace qkv
