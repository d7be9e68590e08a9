#include "lib/numerics/shape.hpp"

#include <algorithm>

namespace qkv {

std::size_t numel(const Shape& shape) {
  std::size_t count = 1;
  for (std::size_t extent : shape) count *= extent;
  return count;
}

Shape unravel_index(std::size_t flat, const Shape& shape) {
  Shape index(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return index;
}

Shape strides_of(const Shape& shape) {
  Shape strides(shape.size());
  std::size_t stride = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const std::size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (std::size_t i = 0; i < rank; ++i) {
    // Align from the right, as NumPy does; missing leading dims count as 1.
    const std::size_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const std::size_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    check_shape(da == db || da == 1 || db == 1, op, [&] {
      return "cannot broadcast " + to_string(a) + " with " + to_string(b) + " (dimension " + std::to_string(i) + ": " +
             std::to_string(da) + " vs " + std::to_string(db) + ")";
    });
    out[i] = da == 1 ? db : da;
  }
  return out;
}

bool broadcasts_to(const Shape& shape, const Shape& target) {
  if (shape.size() > target.size()) return false;
  const std::size_t offset = target.size() - shape.size();
  for (std::size_t i = 0; i < shape.size(); ++i)
    if (shape[i] != 1 && shape[i] != target[offset + i]) return false;
  return true;
}

Shape broadcast_strides(const Shape& input, const Shape& output_shape) {
  const std::size_t offset = output_shape.size() - input.size();
  const Shape own = strides_of(input);
  Shape strides(output_shape.size(), 0);
  for (std::size_t i = 0; i < input.size(); ++i)
    strides[offset + i] = input[i] == 1 && output_shape[offset + i] != 1 ? 0 : own[i];
  return strides;
}

std::size_t normalize_axis(const char* op, long axis, const Shape& shape) {
  const long rank = static_cast<long>(shape.size());
  const long normalized = axis < 0 ? axis + rank : axis;
  check_shape(normalized >= 0 && normalized < rank, op,
              [&] { return "axis " + std::to_string(axis) + " is out of range for shape " + to_string(shape); });
  return static_cast<std::size_t>(normalized);
}

AxisSplit split_at_axis(const Shape& shape, std::size_t axis) {
  AxisSplit split{1, shape[axis], 1};
  for (std::size_t i = 0; i < axis; ++i) split.outer *= shape[i];
  for (std::size_t i = axis + 1; i < shape.size(); ++i) split.inner *= shape[i];
  return split;
}

Array zeros(const Shape& shape) { return full(shape, real(0)); }

Array full(const Shape& shape, real value) {
  Array array = Array::from_shape(shape);
  std::fill(array.data(), array.data() + array.size(), value);
  return array;
}

}  // namespace qkv
