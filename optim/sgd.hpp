#pragma once
// Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay —
// torch.optim.SGD's exact update. For each parameter p with gradient g, on its t-th update:
//   d = g + weight_decay · p
//   with momentum μ > 0:  b = d on the first update, else b = μ · b + (1 - dampening) · d
//                         d = d + μ · b (Nesterov)  or  d = b
//   p = p - lr · d
// In a parameter group (optim/optimizer.hpp), lr and weight_decay are the group's: the
// optimizer's times the group's multipliers.
#include <limits>

#include "optim/optimizer.hpp"

namespace qkv {

struct SGDOptions {
  /// PyTorch's SGD has no default learning rate, so neither does this: leaving it unset
  /// (NaN) makes the constructor throw.
  double lr = std::numeric_limits<double>::quiet_NaN();
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  /// Throws Error naming SGD and the value for lr < 0, momentum < 0, dampening outside [0, 1],
  /// weight_decay < 0, or Nesterov without momentum (or with dampening).
  SGD(std::vector<NamedVariable> parameters, const SGDOptions& options);

  const SGDOptions& options() const { return options_; }

 private:
  void update(std::size_t index, Variable& parameter, std::int64_t updates) override;
  SGDOptions options_;
};

}  // namespace qkv
