#pragma once
// Shape arithmetic shared by the ops: element counts, strides, broadcasting, axes.
#include <cstddef>

#include "lib/numerics/error.hpp"
#include "lib/numerics/tensor.hpp"

namespace qkv {

std::size_t numel(const Shape& shape);
Shape shape_of(const Array& array);

/// Row-major strides in elements.
Shape strides_of(const Shape& shape);

/// NumPy broadcasting of two shapes; throws ShapeError naming `op` and both shapes.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

/// Strides of `input` when read as `output_shape` under broadcasting: 0 along broadcast dims.
/// `input` must broadcast to `output_shape`.
Shape broadcast_strides(const Shape& input, const Shape& output_shape);

/// Maps a possibly negative axis into [0, rank); throws naming `op`, the axis and the shape.
std::size_t normalize_axis(const char* op, long axis, const Shape& shape);

/// A shape seen around one axis: `outer` blocks of `size` x `inner` elements.
struct AxisSplit {
  std::size_t outer;
  std::size_t size;
  std::size_t inner;
};
AxisSplit split_at_axis(const Shape& shape, std::size_t axis);

/// A new zero-filled array of the given shape.
Array zeros(const Shape& shape);
/// A new array of the given shape filled with `value`.
Array full(const Shape& shape, real value);

}  // namespace qkv
