#pragma once
// PyTorch parity for layers: scripts/fixtures/<name>.py stores each layer's parameters as
// `<key>.<parameter name>` and the gradients of sum(output ⊙ R) as `<key>.grad.<name>`.
#include <string>

#include "layers/module.hpp"
#include "support/helpers.hpp"

namespace qkv::test {

/// Loads `<key>.<name>` for every parameter of `module` through load_state_dict (by name).
inline void load_layer(Module& module, const TensorFile& fixture, const std::string& key) {
  std::map<std::string, Array> state;
  for (const auto& named : module.named_parameters()) {
    const std::string& name = named.first;
    const auto found = fixture.reals.find(key + "." + name);
    REQUIRE_MESSAGE(found != fixture.reals.end(), "fixture has no " << key << "." << name);
    state.emplace(name, found->second);
  }
  module.load_state_dict(state);
}

/// |actual - expected| for `<key>.<what>` in the fixture, checked below 1e-5 (double, so a
/// doctest run with -s shows the difference).
inline double check_close(const Array& actual, const TensorFile& fixture, const std::string& name) {
  const auto found = fixture.reals.find(name);
  REQUIRE_MESSAGE(found != fixture.reals.end(), "fixture has no " << name);
  const double difference = max_abs_diff(actual, found->second);
  INFO(name);
  CHECK(difference < 1e-5);
  return difference;
}

/// Compares every parameter's gradient with `<key>.grad.<name>`; returns the largest difference.
inline double check_parameter_grads(const Module& module, const TensorFile& fixture, const std::string& key) {
  double worst = 0;
  for (const auto& [name, variable] : module.named_parameters())
    worst = std::max(worst, check_close(variable.grad(), fixture, key + ".grad." + name));
  return worst;
}

}  // namespace qkv::test
