// Neural-network ops: embedding, softmax / log-softmax, fused cross-entropy, layer norm,
// dropout, where / masked_fill. Each validates its input (errors name the op and the shapes),
// calls a fused kernel from lib/numerics/kernels.hpp and saves only what its backward needs.
#include <memory>
#include <sstream>
#include <vector>

#include "autograd/ops.hpp"
#include "lib/numerics/broadcast.hpp"
#include "lib/numerics/kernels.hpp"

namespace qkv {

namespace {

template <class T>
Shape shape_of_any(const xt::xarray<T, xt::layout_type::row_major>& array) {
  return Shape(array.shape().begin(), array.shape().end());
}

/// The multi-index of row-major element `flat` in `shape`, as "[1, 2]", for error messages.
std::string position_of(std::size_t flat, const Shape& shape) {
  Shape index(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return to_string(index);
}

std::string format_real(real value) {
  std::ostringstream text;
  text << value;
  return text.str();
}

/// condition ? a : b under broadcasting, reported as `op` (where and masked_fill share it).
Variable select(const char* op, const BoolArray& condition, const Variable& a, const Variable& b) {
  Array out = kernels::where_select(op, condition, a.value(), b.value());
  // The backward routes the gradient by the condition alone; a and b's values are not needed.
  auto saved_condition = std::make_shared<const BoolArray>(condition);
  return make_op(op, std::move(out), {a, b},
                 [saved_condition](const Array& g, const Array&, std::span<Variable> in) {
                   for (std::size_t branch = 0; branch < 2; ++branch) {
                     if (!in[branch].requires_grad()) continue;
                     const bool taken_when = branch == 0;
                     add_reduced_to(kernels::where_gradient(*saved_condition, g, taken_when), in[branch].shape(),
                                    in[branch].grad_buffer());
                   }
                 });
}

}  // namespace

Variable embedding(const Variable& weight, const IndexArray& indices) {
  const Shape weight_shape = weight.shape();
  check_shape(weight_shape.size() == 2, "embedding", "weight must be [V, D], got " + to_string(weight_shape));
  const std::size_t vocab = weight_shape[0], dim = weight_shape[1];
  const Shape index_shape = shape_of_any(indices);
  const std::int64_t* index = indices.data();
  for (std::size_t i = 0; i < indices.size(); ++i)
    check_arg(index[i] >= 0 && static_cast<std::size_t>(index[i]) < vocab, "embedding",
              "index " + std::to_string(index[i]) + " at " + position_of(i, index_shape) + " of indices " +
                  to_string(index_shape) + " is out of range [0, " + std::to_string(vocab) + ") for weight " +
                  to_string(weight_shape));

  Shape out_shape = index_shape;
  out_shape.push_back(dim);
  Array out = Array::from_shape(out_shape);  // [..., D]
  kernels::embedding_forward(weight.value().data(), index, indices.size(), dim, out.data());
  auto saved_indices = std::make_shared<const IndexArray>(indices);
  return make_op("embedding", std::move(out), {weight},
                 [saved_indices, dim](const Array& g, const Array&, std::span<Variable> in) {
                   if (!in[0].requires_grad()) return;
                   kernels::embedding_backward(g.data(), saved_indices->data(), saved_indices->size(), dim,
                                               in[0].grad_buffer().data());
                 });
}

Variable softmax(const Variable& x, long axis) {
  const Shape shape = x.shape();
  const AxisSplit split = split_at_axis(shape, normalize_axis("softmax", axis, shape));
  Array y = Array::from_shape(shape);
  kernels::softmax_forward(x.value().data(), y.data(), split);
  // The backward needs only the output, which the engine hands back to it.
  return make_op("softmax", std::move(y), {x}, [split](const Array& g, const Array& y, std::span<Variable> in) {
    if (!in[0].requires_grad()) return;
    bool accumulate = true;
    real* dx = in[0].grad_buffer(accumulate).data();
    kernels::softmax_backward(g.data(), y.data(), dx, split, !accumulate);
  });
}

Variable log_softmax(const Variable& x, long axis) {
  const Shape shape = x.shape();
  const AxisSplit split = split_at_axis(shape, normalize_axis("log_softmax", axis, shape));
  Array y = Array::from_shape(shape);
  kernels::log_softmax_forward(x.value().data(), y.data(), split);
  return make_op("log_softmax", std::move(y), {x}, [split](const Array& g, const Array& y, std::span<Variable> in) {
    if (in[0].requires_grad()) kernels::log_softmax_backward(g.data(), y.data(), in[0].grad_buffer().data(), split);
  });
}

Variable cross_entropy(const Variable& logits, const IndexArray& targets, const CrossEntropyOptions& options) {
  const Shape logits_shape = logits.shape();
  const Shape target_shape = shape_of_any(targets);
  check_shape(!logits_shape.empty() && target_shape == Shape(logits_shape.begin(), logits_shape.end() - 1),
              "cross_entropy",
              "logits " + to_string(logits_shape) + " do not match targets " + to_string(target_shape) +
                  " (expected logits [..., C] and targets [...] with the same leading dims)");
  const std::size_t classes = logits_shape.back();
  check_shape(classes > 0, "cross_entropy", "logits " + to_string(logits_shape) + " have no classes");
  const real smoothing = options.label_smoothing;
  check_arg(smoothing >= 0 && smoothing <= 1, "cross_entropy",
            "label_smoothing must be in [0, 1], got " + format_real(smoothing));
  const std::int64_t* target = targets.data();
  const std::size_t rows = targets.size();
  for (std::size_t i = 0; i < rows; ++i)
    check_arg(target[i] == options.ignore_index || (target[i] >= 0 && static_cast<std::size_t>(target[i]) < classes),
              "cross_entropy",
              "target " + std::to_string(target[i]) + " at " + position_of(i, target_shape) + " of targets " +
                  to_string(target_shape) + " is out of range [0, " + std::to_string(classes) + ") for logits " +
                  to_string(logits_shape) + " (ignore_index is " + std::to_string(options.ignore_index) + ")");

  // Per-row softmax statistics: the backward rebuilds the probabilities from these and the
  // logits (an input, kept alive by the graph anyway) instead of saving a [rows, C] copy.
  struct Saved {
    IndexArray targets;
    std::vector<real> row_max, row_log_total;  // [rows] each
    std::size_t counted = 0;
  };
  auto saved = std::make_shared<Saved>(Saved{targets, std::vector<real>(rows), std::vector<real>(rows), 0});
  const kernels::CrossEntropyForward result =
      kernels::cross_entropy_forward(logits.value().data(), target, rows, classes, options.ignore_index,
                                     smoothing, saved->row_max.data(), saved->row_log_total.data());
  saved->counted = result.counted;
  return make_op("cross_entropy", full({}, result.loss), {logits},
                 [saved, classes, options](const Array& g, const Array&, std::span<Variable> in) {
                   if (!in[0].requires_grad()) return;
                   kernels::cross_entropy_backward(g.data()[0], in[0].value().data(), saved->targets.data(),
                                                   saved->row_max.data(), saved->row_log_total.data(),
                                                   saved->targets.size(), classes, options.ignore_index,
                                                   options.label_smoothing, saved->counted,
                                                   in[0].grad_buffer().data());
                 });
}

Variable additive_scores(const Variable& queries, const Variable& keys, const Variable& v) {
  const Shape sq = queries.shape(), sk = keys.shape(), sv = v.shape();
  check_shape(sq.size() == 3 && sk.size() == 3 && sv.size() == 1 && sq[0] == sk[0] && sq[2] == sk[2] && sv[0] == sq[2],
              "additive_scores",
              "queries must be [B, Tq, A], keys [B, Tk, A] and v [A], got queries " + to_string(sq) + ", keys " +
                  to_string(sk) + ", v " + to_string(sv));
  const std::size_t batch = sq[0], query_count = sq[1], key_count = sk[1], hidden = sq[2];
  auto features = std::make_shared<Array>(Array::from_shape({batch, query_count, key_count, hidden}));
  Array scores = Array::from_shape({batch, query_count, key_count});
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
  check_shape(sh.size() == 2 && si == Shape{sh[0], 3 * sh[1]} && sg == si, "gru_cell",
              "input_gates and hidden_gates must be [B, 3H] for h [B, H], got input_gates " + to_string(si) +
                  ", hidden_gates " + to_string(sg) + ", h " + to_string(sh));
  const std::size_t batch = sh[0], hidden = sh[1];
  auto saved = std::make_shared<Array>(Array::from_shape({batch, 3 * hidden}));  // r, z, n
  Array h_next = Array::from_shape({batch, hidden});
  kernels::gru_cell_forward(input_gates.value().data(), hidden_gates.value().data(), h.value().data(), batch, hidden,
                            h_next.data(), saved->data());
  return make_op("gru_cell", std::move(h_next), {input_gates, hidden_gates, h},
                 [saved, batch, hidden](const Array& g, const Array&, std::span<Variable> in) {
    // Taken in input order, so that a buffer two inputs share is written fresh before it is added to.
    kernels::GradientOut grads[3];
    for (std::size_t i = 0; i < 3; ++i)
      if (in[i].requires_grad()) grads[i].data = in[i].grad_buffer(grads[i].accumulate).data();
    kernels::gru_cell_backward(g.data(), in[1].value().data(), in[2].value().data(), saved->data(), batch, hidden,
                               grads[0], grads[1], grads[2]);
  });
}

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, real eps) {
  const Shape shape = x.shape();
  check_shape(!shape.empty() && shape.back() > 0, "layer_norm",
              "x must have a non-empty last dim to normalise, got " + to_string(shape));
  const std::size_t dim = shape.back();
  const std::size_t rows = numel(shape) / dim;
  const auto check_param = [&](const Variable& param, const char* name) {
    if (param.defined())
      check_shape(param.shape() == Shape{dim}, "layer_norm",
                  std::string(name) + " " + to_string(param.shape()) + " does not match the last dim of x " +
                      to_string(shape) + " (expected [" + std::to_string(dim) + "])");
  };
  check_param(weight, "weight");
  check_param(bias, "bias");

  struct Saved {
    std::vector<real> mean, rstd;  // [rows] each
  };
  auto saved = std::make_shared<Saved>(Saved{std::vector<real>(rows), std::vector<real>(rows)});
  Array y = Array::from_shape(shape);
  kernels::layer_norm_forward(x.value().data(), weight.defined() ? weight.value().data() : nullptr,
                              bias.defined() ? bias.value().data() : nullptr, rows, dim, eps, y.data(),
                              saved->mean.data(), saved->rstd.data());

  // Inputs are x, then weight and bias when given; their slots in `inputs` are fixed here.
  std::vector<Variable> inputs;
  inputs.reserve(3);  // also keeps GCC 12 from a false -Warray-bounds on the growth path
  inputs.push_back(x);
  const std::size_t no_slot = 0;  // slot 0 is x, so 0 means "absent" for weight and bias
  const std::size_t weight_slot = weight.defined() ? inputs.size() : no_slot;
  if (weight.defined()) inputs.push_back(weight);
  const std::size_t bias_slot = bias.defined() ? inputs.size() : no_slot;
  if (bias.defined()) inputs.push_back(bias);

  return make_op("layer_norm", std::move(y), std::move(inputs),
                 [saved, rows, dim, weight_slot, bias_slot](const Array& g, const Array&, std::span<Variable> in) {
                   const auto gradient_of = [&](std::size_t slot) -> real* {
                     return in[slot].requires_grad() ? in[slot].grad_buffer().data() : nullptr;
                   };
                   bool accumulate_x = true;  // false: x's buffer is fresh and is written, not added to
                   real* grad_x = in[0].requires_grad() ? in[0].grad_buffer(accumulate_x).data() : nullptr;
                   kernels::layer_norm_backward(
                       g.data(), in[0].value().data(), weight_slot != no_slot ? in[weight_slot].value().data() : nullptr,
                       saved->mean.data(), saved->rstd.data(), rows, dim, grad_x,
                       weight_slot != no_slot ? gradient_of(weight_slot) : nullptr,
                       bias_slot != no_slot ? gradient_of(bias_slot) : nullptr, !accumulate_x);
                 });
}

Variable dropout(const Variable& x, real p, bool training, Rng& rng) {
  // Written so that NaN fails too.
  check_arg(p >= 0 && p <= 1, "dropout", "probability p must be in [0, 1], got " + format_real(p));
  if (!training || p == 0) return x;
  const Shape shape = x.shape();
  // p == 1 drops everything: zeros, and no draws are made (1/(1-p) would be infinite).
  if (p == 1)
    return make_op("dropout", zeros(shape), {x}, [](const Array&, const Array&, std::span<Variable> in) {
      if (in[0].requires_grad()) in[0].grad_buffer();  // a zero gradient
    });
  const std::size_t count = x.numel();
  auto keep = std::make_shared<std::vector<std::uint8_t>>(count);  // 1 kept, 0 dropped
  Array y = Array::from_shape(shape);
  kernels::dropout_forward(x.value().data(), p, rng, count, keep->data(), y.data());
  return make_op("dropout", std::move(y), {x}, [keep, p](const Array& g, const Array&, std::span<Variable> in) {
    if (!in[0].requires_grad()) return;
    bool accumulate = true;
    real* dx = in[0].grad_buffer(accumulate).data();
    kernels::dropout_backward(g.data(), keep->data(), p, g.size(), dx, !accumulate);
  });
}

Variable where(const BoolArray& condition, const Variable& a, const Variable& b) {
  return select("where", condition, a, b);
}

Variable masked_fill(const Variable& x, const BoolArray& mask, real value) {
  const Shape shape = x.shape();
  const Shape mask_shape = shape_of_any(mask);
  check_shape(broadcast_shapes("masked_fill", mask_shape, shape) == shape, "masked_fill",
              "mask " + to_string(mask_shape) + " does not broadcast to x " + to_string(shape));
  // The fill value is a constant: a 0-d variable that needs no gradient.
  return select("masked_fill", mask, Variable(full({}, value)), x);
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
