#pragma once
// Loops over broadcast shapes. Elementwise ops and their backward reductions are all one
// pattern: walk the output shape, read each operand through strides that are 0 along its
// broadcast dimensions. The innermost dimension is handed to a callback as a whole row so the
// compiler can vectorise it.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "lib/numerics/parallel.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

/// For the innermost rows [first_row, last_row) of `shape` (rows numbered in row-major order),
/// calls
///   row(offset_0, offset_1, ..., count)
/// where offset_k is the element offset of operand k (read through `strides[k]`) at the row's
/// start; along the row, operand k advances by `strides[k].back()`.
template <std::size_t Operands, class Row>
void for_each_row_in(const Shape& shape, const Shape (&strides)[Operands], std::size_t first_row,
                     std::size_t last_row, Row&& row) {
  const std::size_t rank = shape.size();
  if (numel(shape) == 0 || first_row >= last_row) return;
  if (rank == 0) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { row((I * 0)..., std::size_t{1}); }
    (std::make_index_sequence<Operands>{});
    return;
  }
  const std::size_t count = shape[rank - 1];
  // The odometer starts at first_row's index.
  std::vector<std::size_t> index(rank, 0);
  std::size_t offsets[Operands] = {};
  for (std::size_t d = rank - 1, rest = first_row; d-- > 0;) {
    index[d] = rest % shape[d];
    rest /= shape[d];
    for (std::size_t k = 0; k < Operands; ++k) offsets[k] += index[d] * strides[k][d];
  }
  for (std::size_t r = first_row; r < last_row; ++r) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { row(offsets[I]..., count); }
    (std::make_index_sequence<Operands>{});
    // Odometer over the outer dimensions, keeping the offsets in step.
    for (std::size_t d = rank - 1; d-- > 0;) {
      ++index[d];
      for (std::size_t k = 0; k < Operands; ++k) offsets[k] += strides[k][d];
      if (index[d] < shape[d]) break;
      for (std::size_t k = 0; k < Operands; ++k) offsets[k] -= strides[k][d] * shape[d];
      index[d] = 0;
    }
  }
}

/// Number of innermost rows of `shape` (1 for a scalar).
inline std::size_t row_count(const Shape& shape) {
  std::size_t rows = 1;
  for (std::size_t d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
  return rows;
}

/// for_each_row_in over every row of `shape`.
template <std::size_t Operands, class Row>
void for_each_row(const Shape& shape, const Shape (&strides)[Operands], Row&& row) {
  for_each_row_in(shape, strides, 0, row_count(shape), row);
}

/// for_each_row with the rows shared out among qkv's threads (lib/numerics/parallel.hpp), each chunk
/// holding at least `min_elements` elements. `row` must only write the elements of its own row.
template <std::size_t Operands, class Row>
void parallel_for_each_row(const Shape& shape, const Shape (&strides)[Operands], std::size_t min_elements,
                           const Row& row) {
  const std::size_t rows = row_count(shape);
  const std::size_t row_size = shape.empty() ? 1 : std::max<std::size_t>(shape.back(), 1);
  parallel::for_chunks(rows, (min_elements + row_size - 1) / row_size, [&](std::size_t first, std::size_t last) {
    for_each_row_in(shape, strides, first, last, row);
  });
}

/// out = f(a, b) elementwise with NumPy broadcasting; throws ShapeError naming `op`.
template <class F>
Array broadcast_map(const char* op, const Array& a, const Array& b, F f) {
  if (a.shape() == b.shape()) {
    Array out = Array::from_shape(a.shape());
    const real* pa = a.data();
    const real* pb = b.data();
    real* po = out.data();
    parallel::for_chunks(a.size(), parallel::min_elements_per_chunk, [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) po[i] = f(pa[i], pb[i]);
    });
    return out;
  }
  const Shape out_shape = broadcast_shapes(op, shape_of(a), shape_of(b));
  Array out = Array::from_shape(out_shape);
  const Shape strides[3] = {strides_of(out_shape), broadcast_strides(shape_of(a), out_shape),
                            broadcast_strides(shape_of(b), out_shape)};
  const std::size_t sa = strides[1].empty() ? 0 : strides[1].back();
  const std::size_t sb = strides[2].empty() ? 0 : strides[2].back();
  const real* pa = a.data();
  const real* pb = b.data();
  real* po = out.data();
  parallel_for_each_row(out_shape, strides, parallel::min_elements_per_chunk,
                        [&](std::size_t o, std::size_t ia, std::size_t ib, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) po[o + i] = f(pa[ia + i * sa], pb[ib + i * sb]);
  });
  return out;
}

/// Sums `gradient` (shape S) down to `target` (a shape that broadcasts to S) and adds the
/// result into `out` (shape `target`): the backward of broadcasting, and a sum over axes.
void add_reduced_to(const Array& gradient, const Shape& target, Array& out);

/// `source` broadcast to `shape` and added into `out` (shape `shape`): the backward of a
/// reduction with keepdim.
void add_broadcast_to(const Array& source, const Shape& shape, Array& out);

}  // namespace qkv
