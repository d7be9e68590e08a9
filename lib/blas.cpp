#include "lib/blas.hpp"

#include <cblas.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <type_traits>

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
  gemm_typed(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_int(m), to_int(n), to_int(k), alpha, a,
             to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
}

void sgemm(std::size_t m, std::size_t n, std::size_t k, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, to_int(m), to_int(n), to_int(k), 1.0f, a,
              to_int(k), b, to_int(n), 0.0f, c, to_int(n));
}

void set_num_threads(int threads) { openblas_set_num_threads(threads); }
int num_threads() { return openblas_get_num_threads(); }

}  // namespace qkv::blas
