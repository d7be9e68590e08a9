#pragma once
// Where a backward puts one input's gradient: the one spelling of "write or add".
//
// A gradient buffer either already holds a gradient (another consumer of the input wrote it
// first), and the backward must add into it, or it is fresh and uninitialised, and the backward
// must write over all of it — which saves zero-filling it and reading the zeros back. The
// engine decides (Variable::gradient_out()); every backward kernel that can do either takes a
// GradientOut and honours `accumulate`. Kernels that can only add take a plain `real*`.
#include "lib/numerics/tensor.hpp"

namespace qkv {

struct GradientOut {
  /// The buffer, the input's shape; null when the input needs no gradient.
  real* data = nullptr;
  /// True: add into `data`. False: `data` is uninitialised and must be written in full.
  bool accumulate = true;

  /// gemm's beta for this buffer: 1 adds the product, 0 writes it.
  real beta() const { return accumulate ? real(1) : real(0); }
};

}  // namespace qkv
