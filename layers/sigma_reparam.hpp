#pragma once
// σReparam (Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
// Collapse"): a weight W [out, in] is used as W_eff = γ / σ(W) · W, with σ(W) its spectral
// norm estimated by power iteration and γ a learned scalar. Bounding ‖W_eff‖₂ = γ bounds the
// attention logits (‖W_q W_kᵀ‖₂ ≤ γ_q γ_k), which is what keeps attention entropy from
// collapsing.
//
// The power iteration follows torch.nn.utils.parametrizations.spectral_norm (checked against
// it: tests/fixtures/sigma_reparam.safetensors): buffers u [out] and v [in], unit vectors never
// trained, here from a fixed start rather than a random one (so that turning σReparam on draws
// nothing and leaves every other weight as it was). Each forward in training mode first takes
// one step u ← Wv/‖Wv‖, v ← Wᵀu/‖Wᵀu‖ (torch's order; no gradient through it), then
// σ = uᵀ W v with the gradient flowing through W alone (∂σ/∂W = u vᵀ). In eval mode u and v
// stay as they are, so an evaluation or a gradient check sees a fixed function of W.
//
// γ ("gamma", a parameter []) starts at σ(W_init) — the estimate after the initial power
// iterations — so that W_eff equals W at initialisation and a model with σReparam starts from
// the same function as one without: a comparison with and without σReparam then differs in
// the training dynamics only, not in the starting point.
#include <cstddef>

#include "layers/module.hpp"

namespace qkv {

class SigmaReparam : public Module {
 public:
  /// For a weight of `weight`'s shape [out, in] and value: u from the fixed start (all ones plus
  /// a small ramp, normalised), then `initial_iterations` power-iteration steps on it (torch's
  /// default is 15); γ = the resulting σ. Throws Error for a weight that is not a matrix or is
  /// zero (σ would be 0).
  explicit SigmaReparam(const Array& weight, std::size_t initial_iterations = 15);

  /// weight [out, in] (the parameter this reparametrises) -> γ / σ(W) · W [out, in]. In
  /// training mode one power-iteration step updates u and v first.
  Variable forward(const Variable& weight) const;

  /// σ = uᵀ W v for the current u, v (no gradient): what the last forward divided by.
  double sigma(const Array& weight) const;
  /// γ / σ(W) · W for the current u, v, with no graph and no power step: what eval mode's forward
  /// multiplies by (int8 inference quantizes it).
  Array effective(const Array& weight) const;
  const Variable& gamma() const { return gamma_; }

 private:
  std::size_t rows_, columns_;
  Variable gamma_;  // []
  Variable u_;      // [out], buffer
  Variable v_;      // [in], buffer
};

/// ‖W‖₂ of a matrix [rows, columns] by `iterations` power-iteration steps from the same fixed
/// start: for reports and tests, not for training.
double spectral_norm(const Array& matrix, std::size_t iterations = 200);

}  // namespace qkv
