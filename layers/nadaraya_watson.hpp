#pragma once
// Nadaraya-Watson kernel regression, the first attention model in d2l.ai (§11.2): a prediction
// at query x is a weighted average of the values y_i, weighted by a Gaussian kernel of the
// query's distance to each key x_i, with one learnable width w:
//   f(x) = Σ_i softmax_i(-((x - x_i) w)² / 2) y_i
#include <string>

#include "layers/module.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

struct NadarayaWatsonOutput {
  Variable predictions;  // [n_queries]
  Variable attention;    // [n_queries, n_keys], each row sums to 1
};

class NadarayaWatson : public Module {
 public:
  /// The parameter `w` [1] is drawn from U(0, 1), as d2l's torch.rand((1,)).
  explicit NadarayaWatson(Rng& rng);

  /// queries [n_queries]; keys and values either [n_keys] (shared by every query) or
  /// [n_queries, n_keys] (a key set per query, e.g. leave-one-out training), same shape.
  NadarayaWatsonOutput forward(const Variable& queries, const Variable& keys, const Variable& values) const;
  NadarayaWatsonOutput operator()(const Variable& queries, const Variable& keys, const Variable& values) const {
    return forward(queries, keys, values);
  }

  const Variable& w() const { return w_; }

 private:
  Variable w_;  // [1]
};

}  // namespace qkv
