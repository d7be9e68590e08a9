#pragma once
// Adam and AdamW — torch.optim.Adam's and torch.optim.AdamW's exact updates (no amsgrad).
// For each parameter p with gradient g, on its t-th update (t counts that parameter's updates):
//   Adam:   g = g + weight_decay · p              (L2 penalty folded into the gradient)
//   AdamW:  p = p · (1 - lr · weight_decay)       (decoupled decay, before the Adam step)
//   m = β1 · m + (1 - β1) · g
//   v = β2 · v + (1 - β2) · g²
//   p = p - (lr / (1 - β1^t)) · m / (sqrt(v) / sqrt(1 - β2^t) + eps)
// In a parameter group (optim/optimizer.hpp), lr and weight_decay are the group's: the
// optimizer's times the group's multipliers — microsoft/mup's MuAdam gives μP's hidden weights
// lr / m and weight_decay · m this way.
#include <utility>

#include "optim/optimizer.hpp"

namespace qkv {

/// torch.optim.Adam's defaults.
struct AdamOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0;
};

/// torch.optim.AdamW's defaults: as Adam's, but weight_decay 1e-2.
struct AdamWOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

class Adam : public Optimizer {
 public:
  /// Throws Error naming Adam and the value for lr < 0, betas outside [0, 1), eps < 0 or
  /// weight_decay < 0.
  explicit Adam(std::vector<NamedVariable> parameters, const AdamOptions& options = {});
  const AdamOptions& options() const { return options_; }

 private:
  void update(std::size_t index, Variable& parameter, std::int64_t updates) override;
  AdamOptions options_;
};

class AdamW : public Optimizer {
 public:
  /// Throws Error naming AdamW and the value, as Adam does.
  explicit AdamW(std::vector<NamedVariable> parameters, const AdamWOptions& options = {});
  const AdamWOptions& options() const { return options_; }

 private:
  void update(std::size_t index, Variable& parameter, std::int64_t updates) override;
  AdamWOptions options_;
};

}  // namespace qkv
