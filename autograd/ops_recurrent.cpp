// The ops of the recurrent (Bahdanau) model family, each fused over what would otherwise be many
// small ops per time step: additive attention scores, the GRU cell and the attention context.
// Their kernels sit beside them in autograd/recurrent_kernels.hpp.
#include <memory>

#include "autograd/ops.hpp"
#include "autograd/recurrent_kernels.hpp"

namespace qkv {

Variable additive_scores(const Variable& queries, const Variable& keys, const Variable& v) {
  const Shape sq = queries.shape(), sk = keys.shape(), sv = v.shape();
  check_shape(sq.size() == 3 && sk.size() == 3 && sv.size() == 1 && sq[0] == sk[0] && sq[2] == sk[2] && sv[0] == sq[2],
              "additive_scores", [&] {
                return "queries must be [B, Tq, A], keys [B, Tk, A] and v [A], got queries " + to_string(sq) +
                       ", keys " + to_string(sk) + ", v " + to_string(sv);
              });
  const std::size_t batch = sq[0], query_count = sq[1], key_count = sk[1], hidden = sq[2];
  // tanh(q + k) for every pair, kept for the backward: [B, Tq, Tk, A]
  auto features = std::make_shared<Array>(Array::from_shape({batch, query_count, key_count, hidden}));
  Array scores = Array::from_shape({batch, query_count, key_count});  // [B, Tq, Tk]
  kernels::additive_scores_forward(queries.value().data(), keys.value().data(), v.value().data(), batch, query_count,
                                   key_count, hidden, features->data(), scores.data());
  return make_op("additive_scores", std::move(scores), {queries, keys, v},
                 [features, batch, query_count, key_count, hidden](const Array& g, const Array&,
                                                                   std::span<Variable> in) {
    kernels::additive_scores_backward(g.data(), features->data(), in[2].value().data(), batch, query_count, key_count,
                                      hidden, in[0].requires_grad() ? in[0].grad_buffer().data() : nullptr,
                                      in[1].requires_grad() ? in[1].grad_buffer().data() : nullptr,
                                      in[2].requires_grad() ? in[2].grad_buffer().data() : nullptr);
  });
}

Variable gru_cell(const Variable& input_gates, const Variable& hidden_gates, const Variable& h) {
  const Shape si = input_gates.shape(), sg = hidden_gates.shape(), sh = h.shape();
  check_shape(sh.size() == 2 && si == Shape{sh[0], 3 * sh[1]} && sg == si, "gru_cell", [&] {
    return "input_gates and hidden_gates must be [B, 3H] for h [B, H], got input_gates " + to_string(si) +
           ", hidden_gates " + to_string(sg) + ", h " + to_string(sh);
  });
  const std::size_t batch = sh[0], hidden = sh[1];
  auto saved = std::make_shared<Array>(Array::from_shape({batch, 3 * hidden}));  // r, z, n
  Array h_next = Array::from_shape({batch, hidden});  // [B, H]
  kernels::gru_cell_forward(input_gates.value().data(), hidden_gates.value().data(), h.value().data(), batch, hidden,
                            h_next.data(), saved->data());
  return make_op("gru_cell", std::move(h_next), {input_gates, hidden_gates, h},
                 [saved, batch, hidden](const Array& g, const Array&, std::span<Variable> in) {
    // Taken in input order, so that a buffer two inputs share is written fresh before it is added to.
    GradientOut grads[3];
    for (std::size_t i = 0; i < 3; ++i)
      if (in[i].requires_grad()) grads[i] = in[i].gradient_out();
    kernels::gru_cell_backward(g.data(), in[1].value().data(), in[2].value().data(), saved->data(), batch, hidden,
                               grads[0], grads[1], grads[2]);
  });
}

Variable attention_context(const Variable& weights, const Variable& values) {
  const Shape sw = weights.shape(), sv = values.shape();
  check_shape(sw.size() == 3 && sv.size() == 3 && sw[0] == sv[0] && sw[2] == sv[1], "attention_context", [&] {
    return "weights must be [B, Tq, Tk] and values [B, Tk, dv], got weights " + to_string(sw) + ", values " +
           to_string(sv);
  });
  const std::size_t batch = sw[0], query_count = sw[1], key_count = sw[2], value_size = sv[2];
  Array output = Array::from_shape({batch, query_count, value_size});  // [B, Tq, dv]
  kernels::attention_context_forward(weights.value().data(), values.value().data(), batch, query_count, key_count,
                                     value_size, output.data());
  return make_op("attention_context", std::move(output), {weights, values},
                 [batch, query_count, key_count, value_size](const Array& g, const Array&, std::span<Variable> in) {
    kernels::attention_context_backward(g.data(), in[0].value().data(), in[1].value().data(), batch, query_count,
                                        key_count, value_size,
                                        in[0].requires_grad() ? in[0].grad_buffer().data() : nullptr,
                                        in[1].requires_grad() ? in[1].grad_buffer().data() : nullptr);
  });
}

}  // namespace qkv
