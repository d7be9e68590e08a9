#pragma once
// The array types every qkv layer stands on.
//
// `real` is chosen once, at build time: float32 for training (the default targets) and
// float64 for gradient checks (the `_f64` targets, built from the same sources).
#include <cstddef>
#include <cstdint>
#include <vector>

#include <xtensor/xarray.hpp>

namespace qkv {

#if defined(QKV_DOUBLE) && QKV_DOUBLE
using real = double;
inline constexpr const char* real_name = "float64";
#else
using real = float;
inline constexpr const char* real_name = "float32";
#endif

/// A dense row-major n-d array of `real`: the value and gradient of every variable.
using Array = xt::xarray<real, xt::layout_type::row_major>;
/// Integer indices: token ids, class targets, valid lengths.
using IndexArray = xt::xarray<std::int64_t, xt::layout_type::row_major>;
/// Boolean masks. Their meaning (keep or drop) is named by each API that takes one.
using BoolArray = xt::xarray<bool, xt::layout_type::row_major>;
/// A shape, outermost dimension first.
using Shape = std::vector<std::size_t>;

}  // namespace qkv
