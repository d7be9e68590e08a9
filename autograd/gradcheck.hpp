#pragma once
// gradcheck: compares the gradients your backward computes with central differences.
//
// The function's output y is reduced to one number s = Σ y ⊙ R with a fixed random R, so any
// output shape works: the analytic side is one backward pass seeded with R, the numeric side
// perturbs one input element at a time by ±eps and re-evaluates s. An element passes when
//   |analytic - numeric| <= atol + rtol * |numeric|
// (PyTorch's rule and defaults). Use it in a float64 build (the `_f64` targets): in float32,
// rounding swamps eps = 1e-6.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.hpp"

namespace qkv {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
  /// Tensors with more elements than this are checked on a seeded random sample of this
  /// many elements instead of all of them.
  std::size_t max_elements_per_tensor = 1000;
  /// Check one random direction per tensor (two evaluations each) instead of every element:
  /// the directional derivative against the gradient's projection on that direction.
  bool fast_mode = false;
  std::uint64_t seed = 0;
};

/// One compared value.
struct GradcheckEntry {
  std::string tensor;  // "input[0]", a parameter's name, or "<name> · random direction"
  Shape index;         // empty in fast mode
  double analytic = 0;
  double numeric = 0;
  double abs_error = 0;
  double rel_error = 0;  // abs_error / max(|numeric|, |analytic|, atol)
  bool passed = true;
};

struct GradcheckTensorSummary {
  std::string name;
  Shape shape;
  std::size_t checked = 0;
  std::size_t failed = 0;
  double worst_rel_error = 0;
};

struct GradcheckResult {
  bool passed = true;
  std::size_t checked = 0;
  std::size_t failed = 0;
  GradcheckEntry worst;                       // the entry with the largest rel_error
  double max_abs_error = 0;                   // the largest abs_error of any entry
  std::vector<GradcheckEntry> failures;       // the first few failures, in order found
  std::vector<GradcheckTensorSummary> tensors;
  GradcheckOptions options;

  explicit operator bool() const { return passed; }
  /// A few lines a person can read: verdict, worst entry, first failures, per-tensor summary.
  std::string report() const;
};

/// What gradcheck differentiates: your computation, from its inputs to any output.
using GradcheckFunction = std::function<Variable(const std::vector<Variable>& inputs)>;
/// A tensor the function reaches by itself (a layer's weight), checked under its name.
using NamedVariable = std::pair<std::string, Variable>;

/// Checks d(output)/d(input) for every input (marked requires_grad for the check).
GradcheckResult gradcheck(const GradcheckFunction& function, std::vector<Variable> inputs,
                          const GradcheckOptions& options = {});
/// Also checks the parameters the function uses without taking them as inputs.
GradcheckResult gradcheck(const GradcheckFunction& function, std::vector<Variable> inputs,
                          std::vector<NamedVariable> parameters, const GradcheckOptions& options = {});

}  // namespace qkv
