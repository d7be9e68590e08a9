#pragma once
// LayerNorm and Dropout, as torch.nn.LayerNorm (over the last dim) and torch.nn.Dropout.
#include <cstddef>
#include <string>

#include "autograd/ops.hpp"
#include "layers/module.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

struct LayerNormOptions {
  real eps = real(1e-5);
  /// Learnable per-feature scale `weight` (ones) and shift `bias` (zeros).
  bool elementwise_affine = true;
};

/// Normalises over the last dim, of size `normalized_shape` (PyTorch's name; qkv normalises
/// over one dim only, so it is a size).
class LayerNorm : public Module {
 public:
  explicit LayerNorm(std::size_t normalized_shape, const LayerNormOptions& options = {});

  /// [..., D] -> [..., D]
  Variable forward(const Variable& x) const;
  Variable operator()(const Variable& x) const { return forward(x); }

  std::size_t normalized_shape() const { return normalized_shape_; }
  real eps() const { return eps_; }
  /// Undefined without elementwise_affine.
  const Variable& weight() const { return weight_; }
  const Variable& bias() const { return bias_; }
  /// "LayerNorm(6)", the prefix of this layer's error messages.
  std::string describe() const;

 private:
  std::size_t normalized_shape_;
  real eps_;
  Variable weight_;  // [D]
  Variable bias_;    // [D]
};

/// In training mode, zeroes each element with probability p and scales the rest by 1/(1-p);
/// in eval mode (and for p = 0), the identity. The one dropout of qkv's layers: every layer
/// that drops something holds one of these.
class Dropout : public Module {
 public:
  /// Keeps `stream` as its own random stream "dropout_rng" (a stream keeper, see module.hpp),
  /// so it never refers to a generator that may be gone by the time forward runs, and
  /// checkpoints save and restore it by name. Pass Rng(rng.next_u64()) to draw it from a
  /// model's generator.
  Dropout(real p, Rng stream);

  /// Draws a new mask on each call in training mode, hence not const.
  /// `batch_axis`: the axis holding the batch (autograd dropout; 1 for time-major inputs).
  Variable forward(const Variable& x, std::size_t batch_axis = 0);
  Variable operator()(const Variable& x) { return forward(x); }
  /// forward(relu(x)) as one fused op (relu_dropout): the same mask, values and gradients.
  Variable forward_relu(const Variable& x, std::size_t batch_axis = 0);
  /// merge_heads(matmul(forward(weights), v)) as one fused op (attend_values): the same mask,
  /// values and gradients, for attention weights [B, H, Tq, Tk] and values v read where they lie.
  Variable forward_attend(const Variable& weights, const HeadView& v);
  /// residual + forward(x) as one fused op (add_dropout): the same mask, values and gradients.
  Variable forward_add(const Variable& residual, const Variable& x, std::size_t batch_axis = 0);

  real p() const { return p_; }
  /// "Dropout(p=0.1)", the prefix of this layer's error messages.
  std::string describe() const;

 private:
  real p_;
  Rng rng_;
};

}  // namespace qkv
