// Shape ops. Every result is a contiguous copy, so later kernels can read it as plain rows.
//
// Two copy kernels serve them all:
//  - copy_strided walks a shape reading and writing through arbitrary strides: permute's
//    forward (read permuted, write contiguous) and backward (read contiguous, add permuted).
//  - copy_along_axis moves a run of indices along one axis between two arrays that agree on
//    every other axis: slice, concat, stack and split, forward and backward.
#include <algorithm>
#include <memory>
#include <numeric>

#include "autograd/ops.hpp"
#include "lib/numerics/broadcast.hpp"

namespace qkv {

namespace {

enum class Mode { Assign, Add };

/// For every index of `shape`: dst[index · dst_strides] (=|+=) src[index · src_strides].
void copy_strided(const Shape& shape, const real* src, const Shape& src_strides, real* dst,
                  const Shape& dst_strides, Mode mode) {
  const Shape strides[2] = {src_strides, dst_strides};
  const std::size_t src_step = src_strides.empty() ? 0 : src_strides.back();
  const std::size_t dst_step = dst_strides.empty() ? 0 : dst_strides.back();
  parallel_for_each_row(shape, strides, parallel::min_elements_per_chunk,
                        [&](std::size_t is, std::size_t id, std::size_t count) {
    if (mode == Mode::Assign)
      for (std::size_t i = 0; i < count; ++i) dst[id + i * dst_step] = src[is + i * src_step];
    else
      for (std::size_t i = 0; i < count; ++i) dst[id + i * dst_step] += src[is + i * src_step];
  });
}

/// A run of `count` indices along one axis, starting at `start`, in an array laid out as `layout`.
struct AxisRange {
  AxisSplit layout;
  std::size_t start;
};

/// Copies (or adds) `count` indices along the axis from `src` to `dst`. Both arrays must have
/// the same outer and inner extents; within one outer block the run is contiguous, so each
/// block is one flat loop of count * inner elements.
void copy_along_axis(const real* src, AxisRange from, real* dst, AxisRange to, std::size_t count, Mode mode) {
  const std::size_t inner = from.layout.inner;
  const std::size_t run = count * inner;
  for (std::size_t o = 0; o < from.layout.outer; ++o) {
    const real* s = src + (o * from.layout.size + from.start) * inner;
    real* d = dst + (o * to.layout.size + to.start) * inner;
    if (mode == Mode::Assign) std::copy(s, s + run, d);
    else
      for (std::size_t i = 0; i < run; ++i) d[i] += s[i];
  }
}

/// grad += g, element for element, whatever the two shapes (same element count).
void add_flat(const Array& g, real* grad) {
  const real* pg = g.data();
  real* pd = grad;
  for (std::size_t i = 0, n = g.size(); i < n; ++i) pd[i] += pg[i];
}

/// The same elements under a new shape of equal size: reshape, squeeze and unsqueeze.
Variable reshaped(const char* name, const Variable& x, const Shape& shape) {
  Array out = Array::from_shape(shape);
  std::copy(x.value().data(), x.value().data() + x.numel(), out.data());
  return make_op(name, std::move(out), {x}, [](const Array& g, const Array&, std::span<Variable> in) {
    const GradientOut dx = in[0].gradient_out();
    if (dx.accumulate) add_flat(g, dx.data);
    else std::copy(g.data(), g.data() + g.size(), dx.data);
  });
}

/// x's elements read as `in_shape` (same count as x), permuted so that dim i is in_shape's dim
/// order[i], and labelled `result_shape` (same count): a permute with a reshape on either side,
/// for the price of one copy. `order` is already validated.
Variable permuted(const char* name, const Variable& x, const Shape& in_shape, const std::vector<std::size_t>& order,
                  Shape result_shape) {
  const Shape in_strides = strides_of(in_shape);
  Shape out_shape(order.size()), read_strides(order.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    out_shape[i] = in_shape[order[i]];
    read_strides[i] = in_strides[order[i]];  // x read in the output's index order
  }
  const Shape out_strides = strides_of(out_shape);
  Array out = Array::from_shape(result_shape.empty() ? out_shape : result_shape);
  copy_strided(out_shape, x.value().data(), read_strides, out.data(), out_strides, Mode::Assign);
  return make_op(name, std::move(out), {x},
                 [out_shape, out_strides, read_strides](const Array& g, const Array&, std::span<Variable> in) {
                   // The same walk in reverse: read g contiguously, add into x's permuted slots
                   // (or write them: a permutation reaches every slot of a fresh buffer once).
                   const GradientOut dx = in[0].gradient_out();
                   copy_strided(out_shape, g.data(), out_strides, dx.data, read_strides,
                                dx.accumulate ? Mode::Add : Mode::Assign);
                 });
}

/// Axis for an op that inserts a new axis: [-(rank+1), rank] maps to [0, rank].
std::size_t normalize_new_axis(const char* op, long axis, const Shape& shape) {
  const long rank = static_cast<long>(shape.size());
  const long normalized = axis < 0 ? axis + rank + 1 : axis;
  check_shape(normalized >= 0 && normalized <= rank, op, [&] {
    return "axis " + std::to_string(axis) + " is out of range for inserting a dimension into " + to_string(shape);
  });
  return static_cast<std::size_t>(normalized);
}

std::string shapes_of(const std::vector<Variable>& parts) {
  std::string text;
  for (std::size_t i = 0; i < parts.size(); ++i) text += (i ? ", " : "") + to_string(parts[i].shape());
  return text;
}

/// Joins `parts` along `axis` of `out_shape`; part i occupies `extents[i]` indices of that
/// axis (its own extent for concat, 1 for stack, where each part gains the axis).
Variable joined(const char* name, const std::vector<Variable>& parts, const Shape& out_shape, std::size_t axis,
                const std::vector<std::size_t>& extents) {
  const AxisSplit out_layout = split_at_axis(out_shape, axis);
  Array out = Array::from_shape(out_shape);
  std::size_t offset = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const AxisSplit part_layout{out_layout.outer, extents[i], out_layout.inner};
    copy_along_axis(parts[i].value().data(), {part_layout, 0}, out.data(), {out_layout, offset}, extents[i],
                    Mode::Assign);
    offset += extents[i];
  }
  return make_op(name, std::move(out), parts,
                 [out_layout, extents](const Array& g, const Array&, std::span<Variable> in) {
                   std::size_t offset = 0;
                   for (std::size_t i = 0; i < in.size(); ++i) {
                     if (in[i].requires_grad()) {
                       // The part's gradient is one block of g's, covering all of the part.
                       const AxisSplit part_layout{out_layout.outer, extents[i], out_layout.inner};
                       const GradientOut dpart = in[i].gradient_out();
                       copy_along_axis(g.data(), {out_layout, offset}, dpart.data, {part_layout, 0}, extents[i],
                                       dpart.accumulate ? Mode::Add : Mode::Assign);
                     }
                     offset += extents[i];
                   }
                 });
}

}  // namespace

Variable reshape(const Variable& x, const std::vector<long>& shape) {
  const Shape in_shape = x.shape();
  std::string requested = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) requested += (i ? ", " : "") + std::to_string(shape[i]);
  requested += "]";
  const std::string what = "cannot reshape " + to_string(in_shape) + " (" + std::to_string(x.numel()) +
                           " elements) to " + requested;
  Shape out_shape(shape.size());
  std::size_t known = 1;
  std::size_t inferred = shape.size();  // index of the -1, if any
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      check_shape(inferred == shape.size(), "reshape", [&] { return what + ": only one extent may be -1"; });
      inferred = i;
    } else {
      check_shape(shape[i] >= 0, "reshape", [&] { return what + ": extents must be non-negative or -1"; });
      out_shape[i] = static_cast<std::size_t>(shape[i]);
      known *= out_shape[i];
    }
  }
  if (inferred < shape.size()) {
    // With a zero among the given extents, any value fits the -1: refuse to guess.
    check_shape(known != 0, "reshape", [&] { return what + ": the -1 is ambiguous next to an extent of 0"; });
    out_shape[inferred] = x.numel() / known;  // a remainder is caught by the count check below
  }
  check_shape(numel(out_shape) == x.numel(), "reshape", [&] { return what + ": element counts differ"; });
  return reshaped("reshape", x, out_shape);
}

Variable unsqueeze(const Variable& x, long axis) {
  Shape shape = x.shape();
  const std::size_t at = normalize_new_axis("unsqueeze", axis, shape);
  shape.insert(shape.begin() + static_cast<long>(at), 1);
  return reshaped("unsqueeze", x, shape);
}

Variable squeeze(const Variable& x, long axis) {
  Shape shape = x.shape();
  const std::size_t at = normalize_axis("squeeze", axis, shape);
  check_shape(shape[at] == 1, "squeeze", [&] {
    return "axis " + std::to_string(axis) + " of " + to_string(shape) + " has extent " + std::to_string(shape[at]) +
           ", not 1";
  });
  shape.erase(shape.begin() + static_cast<long>(at));
  return reshaped("squeeze", x, shape);
}

Variable expand(const Variable& x, const Shape& shape) {
  const Shape in_shape = x.shape();
  // Unlike broadcast_shapes, the target is fixed: x may only grow its extent-1 dims.
  bool fits = shape.size() >= in_shape.size();
  for (std::size_t i = 0; fits && i < in_shape.size(); ++i) {
    const std::size_t target = shape[shape.size() - in_shape.size() + i];
    fits = in_shape[i] == target || in_shape[i] == 1;
  }
  check_shape(fits, "expand", [&] { return "cannot expand " + to_string(in_shape) + " to " + to_string(shape); });
  Array out = zeros(shape);
  add_broadcast_to(x.value(), shape, out);
  return make_op("expand", std::move(out), {x}, [](const Array& g, const Array&, std::span<Variable> in) {
    add_reduced_to(g, in[0].shape(), in[0].grad_buffer());
  });
}

Variable transpose(const Variable& x, long axis0, long axis1) {
  const Shape shape = x.shape();
  const std::size_t a = normalize_axis("transpose", axis0, shape);
  const std::size_t b = normalize_axis("transpose", axis1, shape);
  std::vector<std::size_t> order(shape.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::swap(order[a], order[b]);
  return permuted("transpose", x, shape, order, {});
}

Variable permute(const Variable& x, const std::vector<std::size_t>& order) {
  const Shape shape = x.shape();
  const std::string listed = to_string(order);
  check_shape(order.size() == shape.size(), "permute", [&] {
    return "order " + listed + " has " + std::to_string(order.size()) + " axes but the input " + to_string(shape) +
           " has " + std::to_string(shape.size());
  });
  std::vector<bool> seen(shape.size(), false);
  for (std::size_t axis : order) {
    check_shape(axis < shape.size(), "permute", [&] {
      return "axis " + std::to_string(axis) + " in order " + listed + " is out of range for " + to_string(shape);
    });
    check_shape(!seen[axis], "permute", [&] {
      return "axis " + std::to_string(axis) + " appears twice in order " + listed + " for " + to_string(shape);
    });
    seen[axis] = true;
  }
  return permuted("permute", x, shape, order, {});
}

namespace {

/// Between rows [B, T, row_stride] (a block of H·d columns from `first_column`) and heads
/// [B, H, T, d]: one run of d floats per (b, h, t). The generic strided walk costs more per
/// run than these short copies do.
struct HeadLayout {
  std::size_t batch, steps, heads, head_dim, row_stride, first_column;
  std::size_t row_offset(std::size_t b, std::size_t t, std::size_t h) const {
    return (b * steps + t) * row_stride + first_column + h * head_dim;
  }
  std::size_t head_offset(std::size_t b, std::size_t t, std::size_t h) const {
    return ((b * heads + h) * steps + t) * head_dim;
  }
};

enum class Towards { Heads, Rows };

/// Copies (or adds) every d-float run from one layout to the other, split over threads by (b, t).
void move_heads(const HeadLayout& l, const real* from, real* to, Towards towards, Mode mode) {
  const std::size_t width = l.heads * l.head_dim;
  parallel::for_chunks(l.batch * l.steps, std::max<std::size_t>(1, parallel::min_elements_per_chunk / width),
                       [&](std::size_t first, std::size_t last) {
    for (std::size_t bt = first; bt < last; ++bt) {
      const std::size_t b = bt / l.steps, t = bt % l.steps;
      for (std::size_t h = 0; h < l.heads; ++h) {
        const std::size_t row = l.row_offset(b, t, h), head = l.head_offset(b, t, h);
        const real* s = from + (towards == Towards::Heads ? row : head);
        real* d = to + (towards == Towards::Heads ? head : row);
        if (mode == Mode::Assign) std::copy_n(s, l.head_dim, d);
        else
          for (std::size_t i = 0; i < l.head_dim; ++i) d[i] += s[i];
      }
    }
  });
}

}  // namespace

Variable split_heads(const Variable& x, std::size_t heads) {
  const Shape shape = x.shape();
  check_shape(shape.size() == 3 && heads > 0 && shape[2] % heads == 0, "split_heads", [&] {
    return "needs [B, T, E] with E divisible by the " + std::to_string(heads) + " heads, got " + to_string(shape);
  });
  return split_heads(x, heads, 0, shape[2]);
}

Variable split_heads(const Variable& x, std::size_t heads, std::size_t first_column, std::size_t columns) {
  const Shape shape = x.shape();
  check_shape(shape.size() == 3 && heads > 0 && columns % heads == 0 && first_column + columns <= shape[2],
              "split_heads", [&] {
    return "needs [B, T, C] with columns [" + std::to_string(first_column) + ", " +
           std::to_string(first_column + columns) + ") inside C and divisible by the " + std::to_string(heads) +
           " heads, got " + to_string(shape);
  });
  const HeadLayout layout{shape[0], shape[1], heads, columns / heads, shape[2], first_column};
  Array out = Array::from_shape({layout.batch, heads, layout.steps, layout.head_dim});  // [B, H, T, d]
  move_heads(layout, x.value().data(), out.data(), Towards::Heads, Mode::Assign);
  const bool whole = first_column == 0 && columns == shape[2];
  return make_op("split_heads", std::move(out), {x}, [layout, whole](const Array& g, const Array&, std::span<Variable> in) {
    if (whole) {  // g reaches every slot of x: a fresh buffer is written, not zeroed first
      const GradientOut dx = in[0].gradient_out();
      move_heads(layout, g.data(), dx.data, Towards::Rows, dx.accumulate ? Mode::Add : Mode::Assign);
    } else {  // only this block's columns: the rest of x's gradient comes from the other blocks
      move_heads(layout, g.data(), in[0].grad_buffer().data(), Towards::Rows, Mode::Add);
    }
  });
}

Variable merge_heads(const Variable& x) {
  const Shape shape = x.shape();
  check_shape(shape.size() == 4, "merge_heads", [&] { return "needs [B, H, T, d], got " + to_string(shape); });
  const HeadLayout layout{shape[0], shape[2], shape[1], shape[3], shape[1] * shape[3], 0};
  Array out = Array::from_shape({layout.batch, layout.steps, layout.row_stride});  // [B, T, H·d]
  move_heads(layout, x.value().data(), out.data(), Towards::Rows, Mode::Assign);
  return make_op("merge_heads", std::move(out), {x}, [layout](const Array& g, const Array&, std::span<Variable> in) {
    const GradientOut dx = in[0].gradient_out();  // every slot of x: written when fresh
    move_heads(layout, g.data(), dx.data, Towards::Heads, dx.accumulate ? Mode::Add : Mode::Assign);
  });
}

Variable slice(const Variable& x, long axis, std::size_t start, std::size_t end) {
  const Shape in_shape = x.shape();
  const std::size_t at = normalize_axis("slice", axis, in_shape);
  check_shape(start <= end && end <= in_shape[at], "slice", [&] {
    return "range [" + std::to_string(start) + ", " + std::to_string(end) + ") is invalid for axis " +
           std::to_string(axis) + " (extent " + std::to_string(in_shape[at]) + ") of " + to_string(in_shape);
  });
  Shape out_shape = in_shape;
  out_shape[at] = end - start;
  const AxisSplit in_layout = split_at_axis(in_shape, at), out_layout = split_at_axis(out_shape, at);
  Array out = Array::from_shape(out_shape);
  copy_along_axis(x.value().data(), {in_layout, start}, out.data(), {out_layout, 0}, end - start, Mode::Assign);
  return make_op("slice", std::move(out), {x},
                 [in_layout, out_layout, start](const Array& g, const Array&, std::span<Variable> in) {
                   copy_along_axis(g.data(), {out_layout, 0}, in[0].grad_buffer().data(), {in_layout, start},
                                   out_layout.size, Mode::Add);
                 });
}

Variable concat(const std::vector<Variable>& parts, long axis) {
  check_shape(!parts.empty(), "concat", "needs at least one part");
  const Shape first = parts[0].shape();
  const std::size_t at = normalize_axis("concat", axis, first);
  Shape out_shape = first;
  out_shape[at] = 0;
  std::vector<std::size_t> extents;
  for (const Variable& part : parts) {
    Shape shape = part.shape();
    bool fits = shape.size() == first.size();
    for (std::size_t d = 0; fits && d < shape.size(); ++d) fits = d == at || shape[d] == first[d];
    check_shape(fits, "concat",
                [&] { return "shapes " + shapes_of(parts) + " differ outside axis " + std::to_string(axis); });
    extents.push_back(shape[at]);
    out_shape[at] += shape[at];
  }
  return joined("concat", parts, out_shape, at, extents);
}

Variable stack(const std::vector<Variable>& parts, long axis) {
  check_shape(!parts.empty(), "stack", "needs at least one part");
  const Shape first = parts[0].shape();
  for (const Variable& part : parts)
    check_shape(part.shape() == first, "stack",
                [&] { return "parts must all have one shape, got " + shapes_of(parts); });
  const std::size_t at = normalize_new_axis("stack", axis, first);
  Shape out_shape = first;
  out_shape.insert(out_shape.begin() + static_cast<long>(at), parts.size());
  return joined("stack", parts, out_shape, at, std::vector<std::size_t>(parts.size(), 1));
}

std::vector<Variable> split(const Variable& x, const std::vector<std::size_t>& sizes, long axis) {
  const Shape shape = x.shape();
  const std::size_t at = normalize_axis("split", axis, shape);
  const std::size_t total = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
  const std::string listed = to_string(sizes);
  check_shape(total == shape[at], "split", [&] {
    return "sizes " + listed + " add up to " + std::to_string(total) + ", but axis " + std::to_string(axis) + " of " +
           to_string(shape) + " has extent " + std::to_string(shape[at]);
  });
  // Each piece is a slice: its own node, so pieces used in different ways each add their
  // share into x's gradient.
  std::vector<Variable> pieces;
  pieces.reserve(sizes.size());
  std::size_t start = 0;
  for (std::size_t size : sizes) {
    pieces.push_back(slice(x, static_cast<long>(at), start, start + size));
    start += size;
  }
  return pieces;
}

}  // namespace qkv
