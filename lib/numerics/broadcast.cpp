#include "lib/numerics/broadcast.hpp"

namespace qkv {

void add_reduced_to(const Array& gradient, const Shape& target, Array& out) {
  const Shape shape = shape_of(gradient);
  if (shape == target) {
    real* po = out.data();
    const real* pg = gradient.data();
    for (std::size_t i = 0, n = gradient.size(); i < n; ++i) po[i] += pg[i];
    return;
  }
  const Shape strides[2] = {strides_of(shape), broadcast_strides(target, shape)};
  const std::size_t step = strides[1].empty() ? 0 : strides[1].back();
  const real* pg = gradient.data();
  real* po = out.data();
  for_each_row(shape, strides, [&](std::size_t ig, std::size_t io, std::size_t count) {
    if (step == 0) {
      real total = 0;
      for (std::size_t i = 0; i < count; ++i) total += pg[ig + i];
      po[io] += total;
    } else {
      for (std::size_t i = 0; i < count; ++i) po[io + i] += pg[ig + i];
    }
  });
}

void add_broadcast_to(const Array& source, const Shape& shape, Array& out) {
  const Shape strides[2] = {strides_of(shape), broadcast_strides(shape_of(source), shape)};
  const std::size_t step = strides[1].empty() ? 0 : strides[1].back();
  const real* ps = source.data();
  real* po = out.data();
  for_each_row(shape, strides, [&](std::size_t io, std::size_t is, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) po[io + i] += ps[is + i * step];
  });
}

}  // namespace qkv
