#pragma once
// Shape arithmetic shared by the ops: element counts, strides, broadcasting, axes.
#include <cstddef>

#include "lib/numerics/error.hpp"
#include "lib/numerics/tensor.hpp"

namespace qkv {

std::size_t numel(const Shape& shape);

/// The shape of any xtensor array or expression (Array, IndexArray, BoolArray, a view, ...) as
/// a Shape: the one way to take a shape out of xtensor.
template <class E>
  requires requires(const E& e) { e.shape().begin(); }
Shape shape_of(const E& array) {
  return Shape(array.shape().begin(), array.shape().end());
}

/// The multi-index of row-major element `flat` in `shape` (NumPy's unravel_index).
Shape unravel_index(std::size_t flat, const Shape& shape);

/// Row-major strides in elements.
Shape strides_of(const Shape& shape);

/// NumPy broadcasting of two shapes; throws ShapeError naming `op` and both shapes.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

/// True when `shape` broadcasts to `target` without growing it (a mask over scores, say).
bool broadcasts_to(const Shape& shape, const Shape& target);

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
