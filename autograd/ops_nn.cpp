// Neural-network ops: embedding (and its padding), softmax / log-softmax / masked softmax,
// fused cross-entropy, layer norm, dropout, where / masked_fill, rotary position embedding. Each
// validates its input (errors name the op and the shapes), calls a fused kernel from
// lib/numerics/kernels.hpp and saves only what its backward needs.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "autograd/ops.hpp"
#include "lib/numerics/broadcast.hpp"
#include "lib/numerics/kernels.hpp"

namespace qkv {

namespace {

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
  check_shape(weight_shape.size() == 2, "embedding",
              [&] { return "weight must be [V, D], got " + to_string(weight_shape); });
  const std::size_t vocab = weight_shape[0], dim = weight_shape[1];
  const Shape index_shape = shape_of(indices);
  const std::int64_t* index = indices.data();
  for (std::size_t i = 0; i < indices.size(); ++i)
    check_arg(index[i] >= 0 && static_cast<std::size_t>(index[i]) < vocab, "embedding", [&] {
      return "index " + std::to_string(index[i]) + " at " + to_string(unravel_index(i, index_shape)) + " of indices " +
             to_string(index_shape) + " is out of range [0, " + std::to_string(vocab) + ") for weight " +
             to_string(weight_shape);
    });

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

Variable embedding_padding(const Variable& rows, const IndexArray& indices, std::int64_t padding_idx) {
  const Shape row_shape = rows.shape(), index_shape = shape_of(indices);
  check_shape(row_shape.size() == index_shape.size() + 1 &&
                  std::equal(index_shape.begin(), index_shape.end(), row_shape.begin()),
              "embedding_padding", [&] {
                return "rows must be [..., D] for indices [...], got rows " + to_string(row_shape) + " and indices " +
                       to_string(index_shape);
              });
  if (!rows.requires_grad()) return rows;
  // This costs one copy of the rows, the price of keeping the embedding op itself generic; it
  // is skipped when no position reads the padding row.
  if (std::find(indices.begin(), indices.end(), padding_idx) == indices.end()) return rows;
  const std::size_t dim = row_shape.back();
  Array value = rows.value();  // [..., D]
  return make_op("embedding_padding", std::move(value), {rows},
                 [indices, padding_idx, dim](const Array& g, const Array&, std::span<Variable> in) {
    real* dx = in[0].grad_buffer().data();
    const real* pg = g.data();
    for (std::size_t i = 0; i < indices.size(); ++i)
      if (indices.data()[i] != padding_idx)
        for (std::size_t j = 0; j < dim; ++j) dx[i * dim + j] += pg[i * dim + j];
  });
}

Variable softmax(const Variable& x, long axis) {
  const Shape shape = x.shape();
  const AxisSplit split = split_at_axis(shape, normalize_axis("softmax", axis, shape));
  Array y = Array::from_shape(shape);
  kernels::softmax_forward(x.value().data(), y.data(), split);
  // The backward needs only the output, which the engine hands back to it.
  return make_op("softmax", std::move(y), {x}, [split](const Array& g, const Array& y, std::span<Variable> in) {
    if (in[0].requires_grad()) kernels::softmax_backward(g.data(), y.data(), in[0].gradient_out(), split);
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

Variable masked_softmax(const Variable& scores, const BoolArray& allowed) {
  const Shape shape = scores.shape();
  const Shape mask_shape = shape_of(allowed);
  check_shape(!shape.empty(), "masked_softmax", "scores must have at least one axis, got []");
  check_shape(broadcasts_to(mask_shape, shape), "masked_softmax", [&] {
    return "allowed mask " + to_string(mask_shape) + " does not broadcast to scores " + to_string(shape);
  });
  Array out = Array::from_shape(shape);  // [..., Tk]
  kernels::masked_softmax_forward(scores.value().data(), allowed.data(), shape, broadcast_strides(mask_shape, shape),
                                  out.data());
  const AxisSplit rows{shape.back() == 0 ? 0 : numel(shape) / shape.back(), shape.back(), 1};  // [rows, Tk]
  return make_op("masked_softmax", std::move(out), {scores},
                 [rows](const Array& g, const Array& y, std::span<Variable> in) {
    // dx = y ⊙ (g - Σ g y) per row. Masked entries have y = 0, so their gradient is exactly
    // 0, and a fully masked row (all y = 0) passes no gradient back.
    if (in[0].requires_grad()) kernels::softmax_backward(g.data(), y.data(), in[0].gradient_out(), rows);
  });
}

Variable masked_softmax(const Variable& scores, const std::optional<BoolArray>& allowed) {
  return allowed ? masked_softmax(scores, *allowed) : softmax(scores, -1);
}

Variable cross_entropy(const Variable& logits, const IndexArray& targets, const CrossEntropyOptions& options) {
  const Shape logits_shape = logits.shape();
  const Shape target_shape = shape_of(targets);
  check_shape(!logits_shape.empty() && target_shape == Shape(logits_shape.begin(), logits_shape.end() - 1),
              "cross_entropy", [&] {
                return "logits " + to_string(logits_shape) + " do not match targets " + to_string(target_shape) +
                       " (expected logits [..., C] and targets [...] with the same leading dims)";
              });
  const std::size_t classes = logits_shape.back();
  check_shape(classes > 0, "cross_entropy", [&] { return "logits " + to_string(logits_shape) + " have no classes"; });
  const real smoothing = options.label_smoothing;
  check_range("cross_entropy", "label_smoothing", smoothing, 0, 1, true);
  const std::int64_t* target = targets.data();
  const std::size_t rows = targets.size();
  for (std::size_t i = 0; i < rows; ++i)
    check_arg(target[i] == options.ignore_index || (target[i] >= 0 && static_cast<std::size_t>(target[i]) < classes),
              "cross_entropy", [&] {
                return "target " + std::to_string(target[i]) + " at " + to_string(unravel_index(i, target_shape)) +
                       " of targets " + to_string(target_shape) + " is out of range [0, " + std::to_string(classes) +
                       ") for logits " + to_string(logits_shape) + " (ignore_index is " +
                       std::to_string(options.ignore_index) + ")";
              });

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

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, real eps) {
  const Shape shape = x.shape();
  check_shape(!shape.empty() && shape.back() > 0, "layer_norm",
              [&] { return "x must have a non-empty last dim to normalise, got " + to_string(shape); });
  const std::size_t dim = shape.back();
  const std::size_t rows = numel(shape) / dim;
  const auto check_param = [&](const Variable& param, const char* name) {
    if (param.defined())
      check_shape(param.shape() == Shape{dim}, "layer_norm", [&] {
        return std::string(name) + " " + to_string(param.shape()) + " does not match the last dim of x " +
               to_string(shape) + " (expected [" + std::to_string(dim) + "])";
      });
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
                   const GradientOut grad_x = in[0].requires_grad() ? in[0].gradient_out() : GradientOut{};
                   kernels::layer_norm_backward(
                       g.data(), in[0].value().data(), weight_slot != no_slot ? in[weight_slot].value().data() : nullptr,
                       saved->mean.data(), saved->rstd.data(), rows, dim, grad_x,
                       weight_slot != no_slot ? gradient_of(weight_slot) : nullptr,
                       bias_slot != no_slot ? gradient_of(bias_slot) : nullptr);
                 });
}

Variable dropout(const Variable& x, real p, bool training, Rng& rng, std::size_t batch_axis) {
  check_range("dropout", "probability p", p, 0, 1, true);  // NaN fails too
  if (!training || p == 0) return x;
  const Shape shape = x.shape();
  // p == 1 drops everything: zeros, and no draws are made (1/(1-p) would be infinite).
  if (p == 1)
    return make_op("dropout", zeros(shape), {x}, [](const Array&, const Array&, std::span<Variable> in) {
      if (in[0].requires_grad()) in[0].grad_buffer();  // a zero gradient
    });
  const std::size_t count = x.numel();
  // 1 kept, 0 dropped; left uninitialised, as the kernel writes every byte.
  const std::shared_ptr<std::uint8_t[]> keep(new std::uint8_t[count]);
  Array y = Array::from_shape(shape);
  if (const kernels::BatchShard* shard = kernels::current_batch_shard()) {
    check_shape(batch_axis < shape.size() && shape[batch_axis] % shard->rows == 0, "dropout", [&] {
      return "under a batch shard of " + std::to_string(shard->rows) + " rows, axis " + std::to_string(batch_axis) +
             " of " + to_string(shape) + " must hold the batch (a multiple of the rows)";
    });
    std::size_t outer = 1;
    for (std::size_t axis = 0; axis < batch_axis; ++axis) outer *= shape[axis];
    const std::size_t row_elements = count / (outer * shard->rows);
    kernels::dropout_forward_shard(x.value().data(), p, rng, *shard, outer, row_elements, keep.get(), y.data());
  } else {
    kernels::dropout_forward(x.value().data(), p, rng, count, keep.get(), y.data());
  }
  return make_op("dropout", std::move(y), {x}, [keep, p](const Array& g, const Array&, std::span<Variable> in) {
    if (in[0].requires_grad()) kernels::dropout_backward(g.data(), keep.get(), p, g.size(), in[0].gradient_out());
  });
}

Variable relu_dropout(const Variable& x, real p, bool training, Rng& rng, std::size_t batch_axis) {
  check_range("relu_dropout", "probability p", p, 0, 1, true);  // NaN fails too
  // The cases the fused kernel does not cover are the two ops themselves: no mask (eval, p 0),
  // all dropped (p 1) or a batch shard's global indices.
  if (!training || p == 0 || p == 1 || kernels::current_batch_shard()) return dropout(relu(x), p, training, rng, batch_axis);
  const std::size_t count = x.numel();
  const std::shared_ptr<std::uint8_t[]> keep(new std::uint8_t[count]);  // 1 kept, 0 dropped; every byte written
  Array y = Array::from_shape(x.shape());
  kernels::relu_dropout_forward(x.value().data(), p, rng, count, keep.get(), y.data());
  return make_op("relu_dropout", std::move(y), {x}, [keep, p](const Array& g, const Array&, std::span<Variable> in) {
    if (in[0].requires_grad())
      kernels::relu_dropout_backward(g.data(), in[0].value().data(), keep.get(), p, g.size(), in[0].gradient_out());
  });
}

Variable add_dropout(const Variable& residual, const Variable& x, real p, bool training, Rng& rng,
                     std::size_t batch_axis) {
  check_range("add_dropout", "probability p", p, 0, 1, true);  // NaN fails too
  // What the fused kernel does not cover is the two ops themselves: no mask, all dropped, a batch
  // shard's global indices, or shapes that broadcast.
  if (!training || p == 0 || p == 1 || kernels::current_batch_shard() || residual.shape() != x.shape())
    return residual + dropout(x, p, training, rng, batch_axis);
  const std::size_t count = x.numel();
  const std::shared_ptr<std::uint8_t[]> keep(new std::uint8_t[count]);  // 1 kept, 0 dropped; every byte written
  Array y = Array::from_shape(x.shape());
  kernels::add_dropout_forward(residual.value().data(), x.value().data(), p, rng, count, keep.get(), y.data());
  return make_op("add_dropout", std::move(y), {residual, x}, [keep, p](const Array& g, const Array&, std::span<Variable> in) {
    if (in[0].requires_grad()) in[0].add_grad(g);  // the sum's gradient: g itself
    if (in[1].requires_grad()) kernels::dropout_backward(g.data(), keep.get(), p, g.size(), in[1].gradient_out());
  });
}

Variable where(const BoolArray& condition, const Variable& a, const Variable& b) {
  return select("where", condition, a, b);
}

Variable masked_fill(const Variable& x, const BoolArray& mask, real value) {
  const Shape shape = x.shape();
  const Shape mask_shape = shape_of(mask);
  check_shape(broadcast_shapes("masked_fill", mask_shape, shape) == shape, "masked_fill",
              [&] { return "mask " + to_string(mask_shape) + " does not broadcast to x " + to_string(shape); });
  // The fill value is a constant: a 0-d variable that needs no gradient.
  return select("masked_fill", mask, Variable(full({}, value)), x);
}

// ---- rotary position embedding (RoPE) -------------------------------------------------

namespace {

/// cos and sin of (start + t) θ_i, θ_i = base^(-2i/d): [T, d/2] each.
struct RotaryAngles {
  std::vector<real> cos, sin;
};

RotaryAngles rotary_angles(std::size_t steps, std::size_t dim, std::size_t start, real base) {
  const std::size_t pairs = dim / 2;
  RotaryAngles angles{std::vector<real>(steps * pairs), std::vector<real>(steps * pairs)};
  for (std::size_t t = 0; t < steps; ++t)
    for (std::size_t i = 0; i < pairs; ++i) {
      const double theta = std::pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / static_cast<double>(dim));
      const double angle = static_cast<double>(start + t) * theta;
      angles.cos[t * pairs + i] = static_cast<real>(std::cos(angle));
      angles.sin[t * pairs + i] = static_cast<real>(std::sin(angle));
    }
  return angles;
}

/// out = R(±angle) x on each pair (x_2i, x_2i+1), for blocks of [T, d]; `direction` -1
/// rotates backwards (the transpose, which is the backward of the forward rotation).
void rotate_pairs(const real* x, real* out, std::size_t size, std::size_t steps, std::size_t dim,
                  const RotaryAngles& angles, real direction, bool accumulate) {
  const std::size_t pairs = dim / 2, block = steps * dim;
  for (std::size_t offset = 0; offset < size; offset += block)
    for (std::size_t t = 0; t < steps; ++t)
      for (std::size_t i = 0; i < pairs; ++i) {
        const real c = angles.cos[t * pairs + i], s = direction * angles.sin[t * pairs + i];
        const std::size_t at = offset + t * dim + 2 * i;
        const real a = x[at], b = x[at + 1];
        const real first = a * c - b * s, second = a * s + b * c;
        if (accumulate) out[at] += first, out[at + 1] += second;
        else out[at] = first, out[at + 1] = second;
      }
}

}  // namespace

Variable rotary_embedding(const Variable& x, std::size_t start, real base) {
  const Shape s = x.shape();
  check_shape(s.size() >= 2 && s.back() % 2 == 0, "rotary_embedding",
              [&] { return "input must be [..., T, d] with d even, got " + to_string(s); });
  const std::size_t steps = s[s.size() - 2], dim = s.back();
  auto angles = std::make_shared<RotaryAngles>(rotary_angles(steps, dim, start, base));
  Array out = Array::from_shape(s);  // [..., T, d]
  rotate_pairs(x.value().data(), out.data(), out.size(), steps, dim, *angles, 1, false);
  return make_op("rotary_embedding", std::move(out), {x},
                 [angles, steps, dim](const Array& g, const Array&, std::span<Variable> in) {
    if (!in[0].requires_grad()) return;
    // A rotation is orthogonal: its backward is the rotation the other way.
    rotate_pairs(g.data(), in[0].grad_buffer().data(), g.size(), steps, dim, *angles, -1, true);
  });
}

}  // namespace qkv
