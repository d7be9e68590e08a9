#include "layers/sigma_reparam.hpp"

#include <cmath>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

constexpr const char* kSigmaReparam = "SigmaReparam";

/// out = W x (transpose = false, W [rows, columns], x [columns]) or Wᵀ x, then normalised;
/// returns the norm before normalising. Accumulates in double: the estimate is what σ divides by.
double multiply_normalised(const real* w, std::size_t rows, std::size_t columns, const real* x, bool transpose,
                           real* out) {
  const std::size_t n = transpose ? columns : rows;
  std::vector<double> sums(n, 0.0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < columns; ++c) {
      const double wrc = w[r * columns + c];
      if (transpose) sums[c] += wrc * x[r];
      else sums[r] += wrc * x[c];
    }
  double norm = 0;
  for (const double s : sums) norm += s * s;
  norm = std::sqrt(norm);
  // A zero product (W x = 0) leaves the vector as it was rather than dividing by zero.
  if (norm > 0)
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<real>(sums[i] / norm);
  return norm;
}

void power_step(const Array& weight, Array& u, Array& v) {
  const std::size_t rows = weight.shape()[0], columns = weight.shape()[1];
  // torch's order (parametrizations.spectral_norm): u first, then v.
  multiply_normalised(weight.data(), rows, columns, v.data(), false, u.data());  // u = Wv / ‖Wv‖
  multiply_normalised(weight.data(), rows, columns, u.data(), true, v.data());   // v = Wᵀu / ‖Wᵀu‖
}

double bilinear(const Array& weight, const Array& u, const Array& v) {
  const std::size_t rows = weight.shape()[0], columns = weight.shape()[1];
  double total = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    double row = 0;
    for (std::size_t c = 0; c < columns; ++c) row += double(weight.data()[r * columns + c]) * v.data()[c];
    total += double(u.data()[r]) * row;
  }
  return total;
}

/// The fixed start: 1 + 0.01 i, normalised (a ramp, so that it is not orthogonal to the top
/// singular vector of a structured matrix by accident).
Array start_vector(std::size_t size) {
  Array x = zeros({size});
  for (std::size_t i = 0; i < size; ++i) x.data()[i] = static_cast<real>(1 + 0.01 * double(i));
  double norm = 0;
  for (std::size_t i = 0; i < size; ++i) norm += double(x.data()[i]) * x.data()[i];
  norm = std::sqrt(norm);
  for (std::size_t i = 0; i < size; ++i) x.data()[i] = static_cast<real>(x.data()[i] / norm);
  return x;
}

}  // namespace

SigmaReparam::SigmaReparam(const Array& weight, std::size_t initial_iterations) {
  const Shape shape = shape_of(weight);
  check_shape(shape.size() == 2 && shape[0] > 0 && shape[1] > 0, kSigmaReparam,
              "the weight must be a non-empty matrix [out, in], got " + to_string(shape));
  rows_ = shape[0], columns_ = shape[1];
  Array u = start_vector(rows_), v = start_vector(columns_);
  for (std::size_t i = 0; i < initial_iterations; ++i) power_step(weight, u, v);
  const double sigma = bilinear(weight, u, v);
  check_arg(std::isfinite(sigma) && sigma > 0, kSigmaReparam,
            "the weight " + to_string(shape) + " has spectral norm estimate " + format_number(sigma) +
                "; σReparam needs a non-zero, finite weight");
  gamma_ = register_parameter("gamma", full({}, static_cast<real>(sigma)));
  u_ = register_buffer("u", std::move(u));
  v_ = register_buffer("v", std::move(v));
}

Variable SigmaReparam::forward(const Variable& weight) const {
  check_shape(weight.shape() == Shape{rows_, columns_}, kSigmaReparam, [&] {
    return "built for a weight [" + std::to_string(rows_) + ", " + std::to_string(columns_) + "], got " +
           to_string(weight.shape());
  });
  if (is_training()) {
    Variable u = u_, v = v_;  // handles: the buffers are updated in place
    power_step(weight.value(), u.mutable_value(), v.mutable_value());
  }
  // σ = uᵀ W v as ops, u and v constants: [1, out] x [out, in] x [in, 1] -> [1, 1].
  const Variable u_row = reshape(Variable(u_.value()), {1, long(rows_)});      // [1, out]
  const Variable v_column = reshape(Variable(v_.value()), {long(columns_), 1});  // [in, 1]
  const Variable sigma = reshape(matmul(matmul(u_row, weight), v_column), {});  // []
  return weight * (gamma_ / sigma);                                              // [out, in]
}

double SigmaReparam::sigma(const Array& weight) const { return bilinear(weight, u_.value(), v_.value()); }

Array SigmaReparam::effective(const Array& weight) const {
  const real factor = static_cast<real>(double(*gamma_.value().data()) / sigma(weight));
  return Array(weight * factor);  // [out, in]
}

double spectral_norm(const Array& matrix, std::size_t iterations) {
  const Shape shape = shape_of(matrix);
  check_shape(shape.size() == 2 && shape[0] > 0 && shape[1] > 0, "spectral_norm",
              "needs a non-empty matrix, got " + to_string(shape));
  Array u = start_vector(shape[0]), v = start_vector(shape[1]);
  for (std::size_t i = 0; i < iterations; ++i) power_step(matrix, u, v);
  return std::abs(bilinear(matrix, u, v));
}

}  // namespace qkv
