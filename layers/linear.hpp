#pragma once
// Linear: y = x Wᵀ + b over the last dim, as torch.nn.Linear (same parameter names, layouts
// and initialisation).
#include <cstddef>
#include <string>

#include "layers/module.hpp"
#include "layers/sigma_reparam.hpp"
#include "layers/quantized.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

struct LinearOptions {
  bool bias = true;
  /// σReparam (Zhai et al. 2023) on the weight: submodule "sigma_reparam" (its γ and the
  /// power-iteration vectors u, v; layers/sigma_reparam.hpp). Draws nothing more from the rng.
  bool sigma_reparam = false;
};

class Linear : public Module {
 public:
  /// weight [out, in] and bias [out], both drawn from U(-1/√in, 1/√in): what PyTorch's
  /// kaiming_uniform_(a=√5) and its bias rule come to.
  Linear(std::size_t in_features, std::size_t out_features, Rng& rng, const LinearOptions& options = {});

  /// [..., in] -> [..., out]
  Variable forward(const Variable& x) const;
  Variable operator()(const Variable& x) const { return forward(x); }

  std::size_t in_features() const { return in_features_; }
  std::size_t out_features() const { return out_features_; }
  const Variable& weight() const { return weight_; }
  /// Undefined when built with `bias = false`.
  const Variable& bias() const { return bias_; }
  /// "Linear(5 -> 4)", the prefix of this layer's error messages.
  std::string describe() const;
  /// Int8 inference from now on (layers/quantized.hpp): forward then runs the int8 weight.
  Int8Report quantize_int8(const Int8Options& options = {});
  bool is_int8() const { return int8_weight_.active(); }

 private:
  std::size_t in_features_, out_features_;
  Variable weight_;  // [out, in]
  Variable bias_;    // [out]
  std::shared_ptr<SigmaReparam> sigma_;  // or null
  Int8Weight int8_weight_;  // [out, in] in int8, once quantize_int8 ran
};

}  // namespace qkv
