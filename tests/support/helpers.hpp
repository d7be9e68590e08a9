#pragma once
// Small helpers shared by the test files.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <string>

#include "autograd/gradcheck.hpp"
#include "autograd/ops.hpp"
#include "layers/module.hpp"
#include "lib/numerics/rng.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv::test {

/// An array of the given shape filled from a list, row-major.
inline Array array_of(const Shape& shape, std::initializer_list<real> values) {
  Array a = Array::from_shape(shape);
  REQUIRE(values.size() == a.size());
  std::copy(values.begin(), values.end(), a.data());
  return a;
}

/// Seeded N(0, 1) values.
inline Array random_array(const Shape& shape, std::uint64_t seed, real stddev = 1) {
  Rng rng(seed);
  return normal(shape, 0, stddev, rng);
}

/// Seeded values in [low, high).
inline Array uniform_array(const Shape& shape, std::uint64_t seed, real low, real high) {
  Rng rng(seed);
  return uniform(shape, low, high, rng);
}

inline Variable leaf(const Array& a) { return Variable(a, true); }

/// Sets every parameter whose name holds "bias" to N(0, stddev²) draws (seeds seed, seed + 1, …
/// in name order): non-zero biases, so that every parameter matters to a gradient check.
inline void randomise_biases(Module& module, std::uint64_t seed, real stddev = 0.5) {
  for (auto& [name, p] : module.named_parameters())
    if (name.find("bias") != std::string::npos) p.mutable_value() = random_array(p.shape(), seed++, stddev);
}

/// An empty directory <temp>/qkv_test_<suite>_<pid>/<name>, made afresh (emptied if it was there).
inline std::filesystem::path fresh_directory(const std::string& suite, const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("qkv_test_" + suite + "_" + std::to_string(::getpid())) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// How many times `needle` occurs in `text`, not overlapping.
inline std::size_t count_occurrences(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

/// Largest |a - b| (shapes must match).
inline double max_abs_diff(const Array& a, const Array& b) {
  REQUIRE(a.shape() == b.shape());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(double(a.data()[i]) - double(b.data()[i])));
  return worst;
}

/// Totals over every gradient check a test process runs, printed when it exits, so the
/// errors quoted in notes are measured, not remembered.
struct GradcheckTally {
  std::size_t checks = 0, values = 0;
  double worst_abs = 0, worst_rel = 0;
  std::string worst_rel_where;
  ~GradcheckTally() {
    if (checks == 0) return;
    std::printf("gradcheck tally: %zu checks, %zu values, worst abs error %.3g, worst rel error %.3g (%s)\n",
                checks, values, worst_abs, worst_rel, worst_rel_where.c_str());
  }
};
inline GradcheckTally gradcheck_tally;

inline void tally(const GradcheckResult& result, const char* file, int line) {
  auto& t = gradcheck_tally;
  ++t.checks;
  t.values += result.checked;
  t.worst_abs = std::max(t.worst_abs, result.max_abs_error);
  if (result.passed && result.worst.rel_error > t.worst_rel) {
    t.worst_rel = result.worst.rel_error;
    t.worst_rel_where = std::string(file) + ":" + std::to_string(line) + " " + result.worst.tensor +
                        ", |numeric| " + std::to_string(std::abs(result.worst.numeric));
  }
}

/// Runs gradcheck and fails the test with its report when it does not pass.
#define QKV_CHECK_GRADIENTS(...)                                   \
  do {                                                             \
    const ::qkv::GradcheckResult qkv_result_ = ::qkv::gradcheck(__VA_ARGS__); \
    ::qkv::test::tally(qkv_result_, __FILE__, __LINE__);           \
    INFO(qkv_result_.report());                                    \
    CHECK(qkv_result_.passed);                                     \
  } while (0)

}  // namespace qkv::test

#include "lib/numerics/safetensors.hpp"

namespace qkv::test {

/// tests/fixtures/<name>.safetensors, written by scripts/fixtures/<name>.py with PyTorch.
inline TensorFile load_fixture(const std::string& name) {
  return read_safetensors(std::string(QKV_SOURCE_DIR) + "/tests/fixtures/" + name + ".safetensors");
}

}  // namespace qkv::test
