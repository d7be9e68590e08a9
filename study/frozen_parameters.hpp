#pragma once
// Parameters made constants for a while: gradients with respect to activations or inputs only,
// with no weight-gradient gemms and no gradients left in the model.
#include <vector>

#include "layers/module.hpp"

namespace qkv::study {

/// Turns the module's parameters into constants for its lifetime and puts each one's
/// requires_grad back as it was afterwards.
class FrozenParameters {
 public:
  explicit FrozenParameters(const Module& module) : parameters_(module.parameters()) {
    for (Variable& parameter : parameters_) {
      was_trainable_.push_back(parameter.requires_grad());
      parameter.set_requires_grad(false);
    }
  }
  ~FrozenParameters() {
    for (std::size_t i = 0; i < parameters_.size(); ++i) parameters_[i].set_requires_grad(was_trainable_[i]);
  }
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;

 private:
  std::vector<Variable> parameters_;
  std::vector<bool> was_trainable_;
};

}  // namespace qkv::study
