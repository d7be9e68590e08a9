// The ops of the recurrent (Bahdanau) model family, each fused over what would otherwise be many
// small ops per time step: additive attention scores, the GRU cell and the attention context.
// Their kernels sit beside them in autograd/recurrent_kernels.hpp.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.hpp"
#include "autograd/recurrent_kernels.hpp"

namespace qkv {

namespace {

/// Throws unless `rows` (when given) is [B] with every entry in [0, count).
void check_rows(const IndexArray* rows, std::size_t batch, std::size_t count, const char* op, const char* what) {
  if (!rows) return;
  const Shape shape = shape_of(*rows);
  check_shape(shape == Shape{batch}, op, [&] {
    return std::string(what) + " rows must be [" + std::to_string(batch) + "], one per batch row, got " +
           to_string(shape);
  });
  for (std::size_t b = 0; b < batch; ++b)
    check_arg((*rows)(b) >= 0 && static_cast<std::size_t>((*rows)(b)) < count, op, [&] {
      return std::string(what) + " row " + std::to_string((*rows)(b)) + " (batch row " + std::to_string(b) +
             ") is outside [0, " + std::to_string(count) + ")";
    });
}

Variable additive_scores_impl(const Variable& queries, const Variable& keys, const IndexArray* key_rows,
                              const Variable& v) {
  const Shape sq = queries.shape(), sk = keys.shape(), sv = v.shape();
  check_shape(sq.size() == 3 && sk.size() == 3 && sv.size() == 1 && (key_rows || sq[0] == sk[0]) && sq[2] == sk[2] &&
                  sv[0] == sq[2],
              "additive_scores", [&] {
                return std::string("queries must be [B, Tq, A], keys [") + (key_rows ? "N" : "B") +
                       ", Tk, A] and v [A], got queries " + to_string(sq) + ", keys " + to_string(sk) + ", v " +
                       to_string(sv);
              });
  const std::size_t batch = sq[0], query_count = sq[1], key_count = sk[1], hidden = sq[2];
  check_rows(key_rows, batch, sk[0], "additive_scores", "key");
  // A copy, kept alive by the backward, which reads the rows again.
  auto saved_rows = key_rows ? std::make_shared<IndexArray>(*key_rows) : nullptr;
  const std::int64_t* rows = saved_rows ? saved_rows->data() : nullptr;
  // tanh(q + k) for every pair, kept for the backward: [B, Tq, Tk, A]. Not when no backward
  // can run (no grad mode, or no input needs one): a decoding step would write and drop it.
  const bool backward_can_run =
      is_grad_enabled() && (queries.requires_grad() || keys.requires_grad() || v.requires_grad());
  auto features = backward_can_run
                      ? std::make_shared<Array>(Array::from_shape({batch, query_count, key_count, hidden}))
                      : nullptr;
  Array scores = Array::from_shape({batch, query_count, key_count});  // [B, Tq, Tk]
  kernels::additive_scores_forward(queries.value().data(), keys.value().data(), rows, v.value().data(), batch,
                                   query_count, key_count, hidden, features ? features->data() : nullptr,
                                   scores.data());
  return make_op("additive_scores", std::move(scores), {queries, keys, v},
                 [features, saved_rows, batch, query_count, key_count, hidden](const Array& g, const Array&,
                                                                               std::span<Variable> in) {
    kernels::additive_scores_backward(g.data(), features->data(), saved_rows ? saved_rows->data() : nullptr,
                                      in[2].value().data(), batch, query_count, key_count, hidden,
                                      in[0].requires_grad() ? in[0].grad_buffer().data() : nullptr,
                                      in[1].requires_grad() ? in[1].grad_buffer().data() : nullptr,
                                      in[2].requires_grad() ? in[2].grad_buffer().data() : nullptr);
  });
}

Variable attention_context_impl(const Variable& weights, const Variable& values, const IndexArray* value_rows) {
  const Shape sw = weights.shape(), sv = values.shape();
  check_shape(sw.size() == 3 && sv.size() == 3 && (value_rows || sw[0] == sv[0]) && sw[2] == sv[1],
              "attention_context", [&] {
    return std::string("weights must be [B, Tq, Tk] and values [") + (value_rows ? "N" : "B") +
           ", Tk, dv], got weights " + to_string(sw) + ", values " + to_string(sv);
  });
  const std::size_t batch = sw[0], query_count = sw[1], key_count = sw[2], value_size = sv[2];
  check_rows(value_rows, batch, sv[0], "attention_context", "value");
  auto saved_rows = value_rows ? std::make_shared<IndexArray>(*value_rows) : nullptr;
  Array output = Array::from_shape({batch, query_count, value_size});  // [B, Tq, dv]
  kernels::attention_context_forward(weights.value().data(), values.value().data(),
                                     saved_rows ? saved_rows->data() : nullptr, batch, query_count, key_count,
                                     value_size, output.data());
  return make_op("attention_context", std::move(output), {weights, values},
                 [saved_rows, batch, query_count, key_count, value_size](const Array& g, const Array&,
                                                                         std::span<Variable> in) {
    kernels::attention_context_backward(g.data(), in[0].value().data(), in[1].value().data(),
                                        saved_rows ? saved_rows->data() : nullptr, batch, query_count, key_count,
                                        value_size, in[0].requires_grad() ? in[0].grad_buffer().data() : nullptr,
                                        in[1].requires_grad() ? in[1].grad_buffer().data() : nullptr);
  });
}

}  // namespace

Variable additive_scores(const Variable& queries, const Variable& keys, const Variable& v) {
  return additive_scores_impl(queries, keys, nullptr, v);
}

Variable additive_scores(const Variable& queries, const Variable& keys, const IndexArray& key_rows, const Variable& v) {
  return additive_scores_impl(queries, keys, &key_rows, v);
}

Variable attention_context(const Variable& weights, const Variable& values) {
  return attention_context_impl(weights, values, nullptr);
}

Variable attention_context(const Variable& weights, const Variable& values, const IndexArray& value_rows) {
  return attention_context_impl(weights, values, &value_rows);
}

namespace {

/// gru_cell and gru_cell_rows: this step's input gates are rows [first_row, first_row + B) of
/// `input_gates` [R, 3H] (R = B, first_row 0 for gru_cell), plus `extra_input_gates` if defined.
Variable gru_cell_impl(const Variable& input_gates, std::size_t first_row, const Variable& extra_input_gates,
                       const Variable& hidden_gates, const Variable& h, const char* op) {
  const Shape si = input_gates.shape(), sg = hidden_gates.shape(), sh = h.shape();
  const bool has_extra = extra_input_gates.defined();
  const bool fits = sh.size() == 2 && sg == Shape{sh[0], 3 * sh[1]} && si.size() == 2 && si[1] == sg[1] &&
                    first_row + sh[0] <= si[0] && (!has_extra || extra_input_gates.shape() == sg);
  check_shape(fits, op, [&] {
    return "hidden_gates (and extra_input_gates) must be [B, 3H] for h [B, H] and input_gates [R, 3H] with rows [" +
           std::to_string(first_row) + ", " + std::to_string(first_row) + " + B) inside R, got input_gates " +
           to_string(si) + ", extra_input_gates " + (has_extra ? to_string(extra_input_gates.shape()) : "none") +
           ", hidden_gates " + to_string(sg) + ", h " + to_string(sh);
  });
  const std::size_t batch = sh[0], hidden = sh[1];
  // A step that reads every row of input_gates writes its gradient whole (fresh or added);
  // one that reads a block of it adds into the shared, zero-filled buffer.
  const bool whole = first_row == 0 && si[0] == batch;
  const std::size_t offset = first_row * 3 * hidden;
  auto saved = std::make_shared<Array>(Array::from_shape({batch, 3 * hidden}));  // r, z, n
  Array h_next = Array::from_shape({batch, hidden});  // [B, H]
  kernels::gru_cell_forward(input_gates.value().data() + offset,
                            has_extra ? extra_input_gates.value().data() : nullptr, hidden_gates.value().data(),
                            h.value().data(), batch, hidden, h_next.data(), saved->data());
  std::vector<Variable> inputs{input_gates, hidden_gates, h};
  if (has_extra) inputs.push_back(extra_input_gates);
  return make_op(op, std::move(h_next), std::move(inputs),
                 [saved, batch, hidden, whole, offset, has_extra](const Array& g, const Array&, std::span<Variable> in) {
    // Taken in the order the kernel puts them (input gates, extra gates, hidden gates, h), so that
    // a buffer two inputs share is written fresh before it is added to.
    GradientOut grads[4];
    for (std::size_t i : {0, 3, 1, 2}) {
      if (i >= in.size() || !in[i].requires_grad()) continue;
      if (i == 0 && !whole) grads[0] = GradientOut{in[0].grad_buffer().data() + offset, true};
      else grads[i] = in[i].gradient_out();
    }
    kernels::gru_cell_backward(g.data(), in[1].value().data(), in[2].value().data(), saved->data(), batch, hidden,
                               grads[0], has_extra ? grads[3] : GradientOut{}, grads[1], grads[2]);
  });
}

}  // namespace

Variable gru_cell(const Variable& input_gates, const Variable& hidden_gates, const Variable& h) {
  const Shape si = input_gates.shape(), sg = hidden_gates.shape(), sh = h.shape();
  check_shape(sh.size() == 2 && si == Shape{sh[0], 3 * sh[1]} && sg == si, "gru_cell", [&] {
    return "input_gates and hidden_gates must be [B, 3H] for h [B, H], got input_gates " + to_string(si) +
           ", hidden_gates " + to_string(sg) + ", h " + to_string(sh);
  });
  return gru_cell_impl(input_gates, 0, Variable(), hidden_gates, h, "gru_cell");
}

Variable gru_cell_rows(const Variable& input_gates, std::size_t first_row, const Variable& extra_input_gates,
                       const Variable& hidden_gates, const Variable& h) {
  return gru_cell_impl(input_gates, first_row, extra_input_gates, hidden_gates, h, "gru_cell_rows");
}

}  // namespace qkv
