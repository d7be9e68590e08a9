#pragma once
// qkv's only door to BLAS. `cblas.h` is included in blas.cpp alone: xtensor-blas bundles its
// own cblas declarations, and the two clash when they meet in one translation unit.
#include <cstddef>

#include "lib/numerics/tensor.hpp"

namespace qkv::blas {

enum class Trans : bool { No = false, Yes = true };

/// C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C, row-major, where op transposes
/// when asked: a transposed operand is read in place, never copied. `lda`, `ldb`, `ldc` are
/// the row strides of A, B and C as stored. Big products are split over qkv's threads
/// (parallel::set_num_threads) by blocks of C's rows, which leaves every element's value
/// unchanged; only products of fewer than 32 rows are split by columns, which may not.
void gemm(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, real alpha,
          const real* a, std::size_t lda, const real* b, std::size_t ldb, real beta, real* c,
          std::size_t ldc);

/// Single-precision gemm whatever `real` is; the benchmarks measure BLAS's peak with it.
void sgemm(std::size_t m, std::size_t n, std::size_t k, const float* a, const float* b, float* c);

/// Threads OpenBLAS itself may use. qkv keeps it at 1 and splits big gemms over its own pool
/// (parallel::set_num_threads); only the sgemm benchmark, which measures OpenBLAS alone, sets it.
void set_openblas_threads(int threads);

}  // namespace qkv::blas
