#pragma once
// Int8 inference arithmetic: symmetric per-row quantization and an int8 x int8 -> int32 gemm.
//
// A weight W [out, in] is stored as int8 values q [out, in] and one float scale per output
// channel (row), s_r = max_k |W[r, k]| / 127, with q[r, k] = round(W[r, k] / s_r) in [-127, 127]
// (symmetric: no zero point, and -128 is never used, so negation is exact). Activations are
// quantized the same way at run time, one scale per row (token). Then
//   y[i, r] = s_x[i] · s_r · Σ_k qx[i, k] · q[r, k]  (+ bias[r])
// with the sum taken exactly in int32: |Σ| ≤ K · 127² fits int32 for K < 133,000.
//
// Rounding error: every element is off by at most half its scale (|x - s·q| ≤ s/2), so
//   |y_float - y_int8| ≤ (s_r / 2) · ‖x_i‖₁ + (s_x[i] / 2) · ‖ŵ_r‖₁   (ŵ = s_r · q, dequantized)
// up to float rounding; tests/test_int8.cpp checks exactly this bound.
//
// Two kernels, both plain C++ loops that the compiler vectorises, chosen at run time: on a CPU
// with AVX-512 VNNI, unsigned x signed bytes summed four at a time into int32 (vpdpbusd; the
// activations shifted by +128 and the shift taken back with each weight row's precomputed sum);
// elsewhere int8 sign-extended and multiplied in vector lanes (GCC 12 vectorises it, without
// pmaddwd), compiled for x86-64-v3 and the baseline (QKV_SIMD_CLONES). Integer arithmetic:
// every kernel gives the same integers.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lib/numerics/tensor.hpp"

namespace qkv::int8 {

/// A matrix [rows, cols] quantized row by row (see above).
struct QuantizedMatrix {
  std::size_t rows = 0, cols = 0;
  std::vector<std::int8_t> values;  // [rows, cols], row-major
  std::vector<float> scales;        // [rows]; a row of zeros has scale 0
  std::vector<std::int32_t> row_sums;  // [rows]: Σ of each row's values (the VNNI kernel's correction)
  /// Bytes held by values and scales: what replaces rows · cols · sizeof(real).
  std::size_t bytes() const {
    return values.size() * sizeof(std::int8_t) + scales.size() * sizeof(float) + row_sums.size() * sizeof(std::int32_t);
  }
};

/// Quantizes `matrix` [rows, cols] row by row. Throws Error naming `what` for a matrix that is
/// not 2-D or holds a NaN or an infinity.
QuantizedMatrix quantize_rows(const Array& matrix, const char* what);
/// The float matrix the quantized one stands for, values · scales: [rows, cols].
Array dequantize(const QuantizedMatrix& matrix);

/// Quantizes one row of n values into `out`; returns its scale (0 for an all-zero row). Throws
/// Error naming `what` when the row holds a NaN or an infinity.
float quantize_row(const real* row, std::size_t n, std::int8_t* out, const char* what);

/// Which int8 kernel: the fastest this CPU runs, or one named (tests compare them).
enum class Int8Kernel { automatic, portable, vnni };
/// Whether this CPU and build run the AVX-512 VNNI kernel.
bool vnni_available();

/// c[i, j] = Σ_k a[i, k] · b[j, k] exactly: a [m, k] int8, b [n, k] int8 (both row-major, so b
/// is a weight [out, in] as stored), c [m, n] int32; b_row_sums [n] (Σ_k b[j, k], as
/// QuantizedMatrix keeps them) or null to have them computed. Splits the rows of b over qkv's
/// threads (parallel.hpp) when the work is large; every c element is one chunk's, so any
/// thread count and either kernel give the same integers. Throws Error when `kernel` is vnni
/// and vnni_available() is false.
void gemm_s8s8s32(const std::int8_t* a, const std::int8_t* b, const std::int32_t* b_row_sums, std::int32_t* c,
                  std::size_t m, std::size_t n, std::size_t k, Int8Kernel kernel = Int8Kernel::automatic);

/// The int8 linear layer: x [..., cols] -> [..., row_end - row_begin], using the rows
/// [row_begin, row_end) of `weight` (a block of a stacked projection) and, when `bias` is not
/// null, bias[row_begin .. row_end). Throws ShapeError naming `what` when x does not end in
/// weight.cols or the row range is not inside the matrix.
Array linear(const Array& x, const QuantizedMatrix& weight, std::size_t row_begin, std::size_t row_end,
             const real* bias, const char* what);

}  // namespace qkv::int8
