#include "lib/numerics/blas.hpp"

#include <cblas.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <type_traits>

#include "lib/numerics/parallel.hpp"

namespace qkv::blas {

namespace {

// Every op returns a fresh array, and a training step allocates and frees the same few hundred
// sizes over and over. glibc serves blocks above its mmap threshold (128 KB at first) with a
// fresh mmap and returns them with munmap, and trims the heap top as soon as it is free, so
// each such array cost page faults on first touch: a fifth of a small transformer's step.
// Keeping them on the heap lets freed blocks be reused by the next step; peak memory is
// unchanged (the heap's top is kept, not grown). Set here, the one file every qkv program links.
[[maybe_unused]] const bool heap_tuned = [] {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed value
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  return true;
}();

// qkv splits big gemms over its own pool (lib/numerics/parallel.hpp), so OpenBLAS must not start
// threads of its own that would spin against ours. OpenBLAS is initialised (its constructor
// reads OPENBLAS_NUM_THREADS) before this runs.
[[maybe_unused]] const bool openblas_single_threaded = [] {
  openblas_set_num_threads(1);
  return true;
}();

// Below this many multiply-adds a gemm takes ~30 µs or less on one core: waking a second
// thread and packing the shared operand twice would eat what splitting saves.
constexpr std::size_t parallel_gemm_work = std::size_t{1} << 20;
// Chunks of rows (or columns) are multiples of this, so that no chunk but the last ends in a
// ragged tile of OpenBLAS's micro-kernel (16 rows × 4 columns for Skylake sgemm).
constexpr std::size_t split_block = 16;

CBLAS_TRANSPOSE to_cblas(Trans trans) { return trans == Trans::Yes ? CblasTrans : CblasNoTrans; }
blasint to_int(std::size_t value) { return static_cast<blasint>(value); }
// One name for both precisions, so gemm() compiles whichever `real` is.
template <class... Args>
void gemm_typed(Args... args) requires std::is_same_v<real, float> { cblas_sgemm(args...); }
template <class... Args>
void gemm_typed(Args... args) requires std::is_same_v<real, double> { cblas_dgemm(args...); }
}  // namespace

void gemm(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, real alpha,
          const real* a, std::size_t lda, const real* b, std::size_t ldb, real beta, real* c,
          std::size_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // BLAS leaves C untouched when K is 0 only for beta = 1; make the empty sum explicit.
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = 0; j < n; ++j) c[i * ldc + j] = beta == real(0) ? real(0) : beta * c[i * ldc + j];
    return;
  }
  const bool split = parallel::num_threads() > 1 && !parallel::in_parallel_region() && m * n * k >= parallel_gemm_work;
  if (!split) {
    gemm_typed(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_int(m), to_int(n), to_int(k), alpha, a,
               to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
    return;
  }
  // Each thread computes its own block of C's rows: every element of C is still one dot product
  // over K in OpenBLAS's order, so the split changes no bits (tested). A product too short to
  // share by rows is shared by columns; there OpenBLAS blocks the K loop differently for a
  // narrower B, and the last bits of C may differ from a single thread's.
  const bool by_rows = m >= 2 * split_block;
  const std::size_t extent = by_rows ? m : n;
  parallel::for_chunks((extent + split_block - 1) / split_block, 1, [&](std::size_t first, std::size_t last) {
    const std::size_t begin = first * split_block, end = std::min(extent, last * split_block);
    if (by_rows) {  // rows [begin, end) of op(A) and C
      const real* a_rows = trans_a == Trans::Yes ? a + begin : a + begin * lda;
      gemm_typed(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_int(end - begin), to_int(n), to_int(k),
                 alpha, a_rows, to_int(lda), b, to_int(ldb), beta, c + begin * ldc, to_int(ldc));
    } else {  // columns [begin, end) of op(B) and C
      const real* b_columns = trans_b == Trans::Yes ? b + begin * ldb : b + begin;
      gemm_typed(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_int(m), to_int(end - begin), to_int(k),
                 alpha, a, to_int(lda), b_columns, to_int(ldb), beta, c + begin, to_int(ldc));
    }
  });
}

void sgemm(std::size_t m, std::size_t n, std::size_t k, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, to_int(m), to_int(n), to_int(k), 1.0f, a,
              to_int(k), b, to_int(n), 0.0f, c, to_int(n));
}

void set_openblas_threads(int threads) { openblas_set_num_threads(threads); }

}  // namespace qkv::blas
