#include "layers/normalization.hpp"

#include <cmath>
#include <sstream>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"

namespace qkv {

LayerNorm::LayerNorm(std::size_t normalized_shape, const LayerNormOptions& options)
    : normalized_shape_(normalized_shape), eps_(options.eps) {
  check_arg(normalized_shape > 0, "LayerNorm", "normalized_shape must be positive, got 0");
  check_arg(options.eps > 0 && std::isfinite(options.eps), describe().c_str(),
            "eps must be positive and finite, got " + std::to_string(options.eps));
  if (options.elementwise_affine) {
    weight_ = register_parameter("weight", full({normalized_shape_}, 1));
    bias_ = register_parameter("bias", zeros({normalized_shape_}));
  }
}

std::string LayerNorm::describe() const { return "LayerNorm(" + std::to_string(normalized_shape_) + ")"; }

Variable LayerNorm::forward(const Variable& x) const {
  const Shape shape = x.shape();
  check_shape(!shape.empty() && shape.back() == normalized_shape_, describe().c_str(),
              "input " + to_string(shape) + " must end in " + std::to_string(normalized_shape_) + " features");
  return layer_norm(x, weight_, bias_, eps_);
}

Dropout::Dropout(real p, Rng stream) : p_(p), rng_(stream) {
  register_random_stream("dropout_rng", rng_);
  // p = 1 would scale the kept elements by 1/0; nobody trains with it.
  check_range("Dropout", "p", p, 0, 1);
}

std::string Dropout::describe() const {
  std::ostringstream text;
  text << "Dropout(p=" << p_ << ")";
  return text.str();
}

Variable Dropout::forward(const Variable& x, std::size_t batch_axis) {
  return dropout(x, p_, is_training(), rng_, batch_axis);
}

Variable Dropout::forward_relu(const Variable& x, std::size_t batch_axis) {
  return relu_dropout(x, p_, is_training(), rng_, batch_axis);
}

Variable Dropout::forward_add(const Variable& residual, const Variable& x, std::size_t batch_axis) {
  return add_dropout(residual, x, p_, is_training(), rng_, batch_axis);
}

Variable Dropout::forward_attend(const Variable& weights, const HeadView& v) {
  return attend_values(weights, v, p_, is_training(), rng_);
}

}  // namespace qkv
