#include "layers/quantized.hpp"

#include "layers/attention.hpp"
#include "layers/linear.hpp"
#include "layers/module.hpp"
#include "layers/multihead_attention.hpp"
#include "lib/numerics/error.hpp"

namespace qkv {

Int8Report& Int8Report::operator+=(const Int8Report& other) {
  weights += other.weights;
  float_bytes += other.float_bytes;
  int8_bytes += other.int8_bytes;
  other_bytes += other.other_bytes;
  return *this;
}

Int8Report Int8Weight::quantize(Variable& weight, const std::string& what, const Int8Options& options) {
  check_arg(!active(), what.c_str(), "is already converted to int8");
  check_arg(weight.defined(), what.c_str(), "has no weight to convert to int8");
  auto matrix = std::make_shared<int8::QuantizedMatrix>(int8::quantize_rows(weight.value(), what.c_str()));
  Int8Report report{.weights = 1, .float_bytes = weight.numel() * sizeof(real), .int8_bytes = matrix->bytes()};
  // [0, in]: an empty array the same rank, so that nothing can read the released values by
  // accident while messages still show the input width.
  if (!options.keep_float_weights) weight.mutable_value() = Array::from_shape({0, matrix->cols});
  matrix_ = std::move(matrix);
  return report;
}

Variable Int8Weight::linear(const Variable& x, const Variable& bias, std::size_t row_begin, std::size_t row_end,
                            const char* what) const {
  if (is_grad_enabled())
    throw Error(std::string(what) +
                " is converted to int8 for inference and computes no gradients: run it under NoGradGuard "
                "(decoding does), or load the float checkpoint to train");
  const real* bias_data = bias.defined() ? bias.value().data() : nullptr;
  return Variable(int8::linear(x.value(), *matrix_, row_begin, row_end, bias_data, what));
}

Variable Int8Weight::linear(const Variable& x, const Variable& bias, const char* what) const {
  return linear(x, bias, 0, matrix_->rows, what);
}

Int8Report quantize_for_inference(Module& model, const Int8Options& options) {
  std::size_t total_bytes = 0;
  for (const auto& [name, variable] : model.named_parameters()) total_bytes += variable.numel() * sizeof(real);
  for (const auto& [name, variable] : model.named_buffers()) total_bytes += variable.numel() * sizeof(real);
  Int8Report report;
  for (const auto& [name, module] : model.named_modules()) {
    if (auto* linear = dynamic_cast<Linear*>(module)) report += linear->quantize_int8(options);
    else if (auto* attention = dynamic_cast<MultiheadAttention*>(module)) report += attention->quantize_int8(options);
    else if (auto* additive = dynamic_cast<AdditiveAttention*>(module)) report += additive->quantize_int8(options);
  }
  check_arg(report.weights > 0, "quantize_for_inference",
            "the model holds no Linear, MultiheadAttention or AdditiveAttention to convert to int8");
  report.other_bytes = total_bytes - report.float_bytes;
  return report;
}

}  // namespace qkv
