// Reductions over axes. Each is planned once as "x seen with the reduced axes at extent 1"
// (the keepdim shape); sums then are the backward of broadcasting (add_reduced_to) and their
// backward is a broadcast (add_broadcast_to).
//
// An empty axis list is refused rather than guessed at: PyTorch reads it as "every axis" and
// NumPy as "no axis", so either reading would surprise someone. sum(x) / mean(x) reduce all.
#include <cmath>
#include <limits>
#include <memory>

#include "autograd/ops.hpp"
#include "lib/numerics/broadcast.hpp"

namespace qkv {

namespace {

struct Reduction {
  Shape kept;         // x's shape with every reduced axis at extent 1
  Shape out;          // `kept`, or `kept` without the reduced axes when keepdim is off
  std::size_t group;  // elements of x per output element
};

Reduction plan_reduction(const Shape& shape, const std::vector<bool>& reduced, bool keepdim) {
  Reduction plan{shape, {}, 1};
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (reduced[d]) {
      plan.group *= shape[d];
      plan.kept[d] = 1;
      if (keepdim) plan.out.push_back(1);
    } else {
      plan.out.push_back(shape[d]);
    }
  }
  return plan;
}

/// Validates `axes` against `shape` (negatives count from the end; no repeats, not empty).
Reduction plan_reduction(const char* op, const Shape& shape, const std::vector<long>& axes, bool keepdim) {
  std::string listed = "(";
  for (std::size_t i = 0; i < axes.size(); ++i) listed += (i ? ", " : "") + std::to_string(axes[i]);
  listed += ")";
  check_shape(!axes.empty(), op,
              [&] { return "no axes given for " + to_string(shape) + "; pass every axis to reduce them all"; });
  std::vector<bool> reduced(shape.size(), false);
  for (long axis : axes) {
    const std::size_t at = normalize_axis(op, axis, shape);
    check_shape(!reduced[at], op, [&] {
      return "axis " + std::to_string(at) + " appears twice in axes " + listed + " for shape " + to_string(shape);
    });
    reduced[at] = true;
  }
  return plan_reduction(shape, reduced, keepdim);
}

Reduction plan_full_reduction(const Shape& shape) {
  return plan_reduction(shape, std::vector<bool>(shape.size(), true), false);
}

/// scale * (sum over the planned axes): sum and mean.
Variable scaled_sum(const char* name, const Variable& x, const Reduction& plan, real scale) {
  Array kept = zeros(plan.kept);
  add_reduced_to(x.value(), plan.kept, kept);
  Array out = Array::from_shape(plan.out);
  const real* pk = kept.data();
  real* po = out.data();
  for (std::size_t i = 0, n = out.size(); i < n; ++i) po[i] = pk[i] * scale;
  return make_op(name, std::move(out), {x},
                 [kept_shape = plan.kept, scale](const Array& g, const Array&, std::span<Variable> in) {
                   // g seen with the reduced axes at extent 1, then broadcast back over x.
                   Array g_kept = Array::from_shape(kept_shape);
                   const real* pg = g.data();
                   real* pk = g_kept.data();
                   for (std::size_t i = 0, n = g.size(); i < n; ++i) pk[i] = pg[i] * scale;
                   add_broadcast_to(g_kept, in[0].shape(), in[0].grad_buffer());
                 });
}

real mean_scale(const Reduction& plan) {
  // An empty group gives 0 * inf = NaN, as PyTorch's mean of nothing does.
  return plan.group == 0 ? std::numeric_limits<real>::infinity() : real(1) / static_cast<real>(plan.group);
}

}  // namespace

Variable sum(const Variable& x) { return scaled_sum("sum", x, plan_full_reduction(x.shape()), 1); }

Variable sum(const Variable& x, const std::vector<long>& axes, bool keepdim) {
  return scaled_sum("sum", x, plan_reduction("sum", x.shape(), axes, keepdim), 1);
}

Variable mean(const Variable& x) {
  const Reduction plan = plan_full_reduction(x.shape());
  return scaled_sum("mean", x, plan, mean_scale(plan));
}

Variable mean(const Variable& x, const std::vector<long>& axes, bool keepdim) {
  const Reduction plan = plan_reduction("mean", x.shape(), axes, keepdim);
  return scaled_sum("mean", x, plan, mean_scale(plan));
}

Variable max(const Variable& x, const std::vector<long>& axes, bool keepdim) {
  const Shape shape = x.shape();
  const Reduction plan = plan_reduction("max", shape, axes, keepdim);
  const std::size_t outputs = numel(plan.out);
  check_shape(plan.group > 0 || outputs == 0, "max", [&] {
    return "cannot take the maximum of an empty group: " + to_string(shape) + " has extent 0 along a reduced axis";
  });
  Array out = Array::from_shape(plan.out);
  // winner[j] is the flat index in x of output j's maximum.
  constexpr std::size_t unset = std::numeric_limits<std::size_t>::max();
  auto winner = std::make_shared<std::vector<std::size_t>>(outputs, unset);
  const Shape strides[2] = {strides_of(shape), broadcast_strides(plan.kept, shape)};
  const std::size_t out_step = strides[1].empty() ? 0 : strides[1].back();
  const real* px = x.value().data();
  real* po = out.data();
  std::size_t* pw = winner->data();
  // x is walked in row-major order, so a strict comparison keeps the first maximum of each
  // group. NaN wins over any number, as in PyTorch.
  for_each_row(shape, strides, [&](std::size_t ix, std::size_t io, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      const real v = px[ix + i];
      const std::size_t j = io + i * out_step;
      const bool better = pw[j] == unset || v > po[j] || (std::isnan(v) && !std::isnan(po[j]));
      if (better) {
        po[j] = v;
        pw[j] = ix + i;
      }
    }
  });
  return make_op("max", std::move(out), {x}, [winner](const Array& g, const Array&, std::span<Variable> in) {
    real* pd = in[0].grad_buffer().data();
    const real* pg = g.data();
    const std::vector<std::size_t>& w = *winner;
    for (std::size_t j = 0; j < w.size(); ++j) pd[w[j]] += pg[j];
  });
}

}  // namespace qkv
