#pragma once
// A layer qkv does not ship: gated self-attention,
//
//   out = W_o ( σ(x W_gᵀ + b_g) ⊙ softmax(q kᵀ / √d) v ),   q, k, v = x W_{q,k,v}ᵀ
//
// (the output gate of "Gated Attention", Qiu et al. 2025): each position decides how much of
// what it attended to passes on. The gate is a new op with its own backward, written with
// qkv::make_op exactly as qkv's built-in ops are; the rest is composed from qkv's ops and
// layers, whose backward comes for free.
#include <memory>

#include "autograd/variable.hpp"
#include "layers/linear.hpp"
#include "layers/module.hpp"
#include "lib/numerics/rng.hpp"

namespace custom {

/// values ⊙ σ(logits), same shapes. Backward: d values = g σ, d logits = g values σ (1 - σ).
qkv::Variable sigmoid_gate(const qkv::Variable& values, const qkv::Variable& logits);

class GatedSelfAttention : public qkv::Module {
 public:
  GatedSelfAttention(std::size_t d_model, qkv::Rng& rng);
  /// x [B, T, D] -> [B, T, D]
  qkv::Variable forward(const qkv::Variable& x) const;

 private:
  std::size_t d_model_;
  std::shared_ptr<qkv::Linear> query_, key_, value_, gate_, output_;
};

}  // namespace custom
