#include "gated_attention.hpp"

#include <cmath>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace custom {

using qkv::Array;
using qkv::real;
using qkv::Variable;

Variable sigmoid_gate(const Variable& values, const Variable& logits) {
  qkv::check_shape(values.shape() == logits.shape(), "sigmoid_gate",
                   "values " + qkv::to_string(values.shape()) + " and gate logits " +
                       qkv::to_string(logits.shape()) + " must have the same shape");
  Array out = Array::from_shape(values.shape());
  const real* v = values.value().data();
  const real* z = logits.value().data();
  real* y = out.data();
  for (std::size_t i = 0, n = out.size(); i < n; ++i) y[i] = v[i] / (real(1) + std::exp(-z[i]));
  return qkv::make_op("sigmoid_gate", std::move(out), {values, logits},
                      [](const Array& g, const Array&, std::span<Variable> in) {
                        // σ is recomputed from the logits: cheaper than keeping a copy alive.
                        const real* v = in[0].value().data();
                        const real* z = in[1].value().data();
                        const real* dy = g.data();
                        real* dv = in[0].requires_grad() ? in[0].grad_buffer().data() : nullptr;
                        real* dz = in[1].requires_grad() ? in[1].grad_buffer().data() : nullptr;
                        for (std::size_t i = 0, n = g.size(); i < n; ++i) {
                          const real s = real(1) / (real(1) + std::exp(-z[i]));
                          if (dv) dv[i] += dy[i] * s;  // add, never assign
                          if (dz) dz[i] += dy[i] * v[i] * s * (real(1) - s);
                        }
                      });
}

GatedSelfAttention::GatedSelfAttention(std::size_t d_model, qkv::Rng& rng) : d_model_(d_model) {
  query_ = register_module("query", std::make_shared<qkv::Linear>(d_model, d_model, rng));
  key_ = register_module("key", std::make_shared<qkv::Linear>(d_model, d_model, rng));
  value_ = register_module("value", std::make_shared<qkv::Linear>(d_model, d_model, rng));
  gate_ = register_module("gate", std::make_shared<qkv::Linear>(d_model, d_model, rng));
  output_ = register_module("output", std::make_shared<qkv::Linear>(d_model, d_model, rng));
}

Variable GatedSelfAttention::forward(const Variable& x) const {
  qkv::check_shape(x.rank() == 3 && x.dim(-1) == d_model_, "GatedSelfAttention",
                   "expected x [B, T, " + std::to_string(d_model_) + "], got " + qkv::to_string(x.shape()));
  const Variable q = query_->forward(x), k = key_->forward(x), v = value_->forward(x);  // [B, T, D]
  const real scale = real(1) / std::sqrt(static_cast<real>(d_model_));
  const Variable weights = qkv::softmax(qkv::matmul(q, k, qkv::Trans::No, qkv::Trans::Yes) * scale, -1);  // [B, T, T]
  const Variable attended = qkv::matmul(weights, v);                                                      // [B, T, D]
  return output_->forward(sigmoid_gate(attended, gate_->forward(x)));                                     // [B, T, D]
}

}  // namespace custom
