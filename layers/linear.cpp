#include "layers/linear.hpp"

#include <cmath>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"

namespace qkv {

Linear::Linear(std::size_t in_features, std::size_t out_features, Rng& rng, const LinearOptions& options)
    : in_features_(in_features), out_features_(out_features) {
  check_arg(in_features > 0 && out_features > 0, "Linear",
            "in_features and out_features must be positive, got " + std::to_string(in_features) + " and " +
                std::to_string(out_features));
  const real bound = real(1) / std::sqrt(real(in_features));
  weight_ = register_parameter("weight", uniform({out_features, in_features}, -bound, bound, rng));
  if (options.bias) bias_ = register_parameter("bias", uniform({out_features}, -bound, bound, rng));
  if (options.sigma_reparam) sigma_ = register_module("sigma_reparam", std::make_shared<SigmaReparam>(weight_.value()));
}

std::string Linear::describe() const {
  return "Linear(" + std::to_string(in_features_) + " -> " + std::to_string(out_features_) + ")";
}

Variable Linear::forward(const Variable& x) const {
  const Shape shape = x.shape();
  // describe() and the message are built only on failure: attention calls this at every
  // decoding step.
  if (shape.empty() || shape.back() != in_features_)
    check_shape(false, describe().c_str(), [&] {
      return "input " + to_string(shape) + " must end in " + std::to_string(in_features_) + " features";
    });
  if (int8_weight_.active()) return int8_weight_.linear(x, bias_, "Linear (int8)");
  return linear(x, sigma_ ? sigma_->forward(weight_) : weight_, bias_);
}

Int8Report Linear::quantize_int8(const Int8Options& options) {
  if (!sigma_) return int8_weight_.quantize(weight_, describe(), options);
  // σReparam: what multiplies is γ/σ(W)·W (eval mode's u and v), so that is what is quantized.
  Variable effective(sigma_->effective(weight_.value()));  // [out, in]
  Int8Report report = int8_weight_.quantize(effective, describe(), options);
  if (!options.keep_float_weights) weight_.mutable_value() = Array::from_shape({0, weight_.dim(1)});
  return report;
}

}  // namespace qkv
