#pragma once
// qkv's only door to BLAS. `cblas.h` is included in blas.cpp alone: xtensor-blas bundles its
// own cblas declarations, and the two clash when they meet in one translation unit.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "lib/numerics/tensor.hpp"

namespace qkv::blas {

enum class Trans : bool { No = false, Yes = true };

/// C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C, row-major, where op transposes
/// when asked. `lda`, `ldb`, `ldc` are the row strides of A, B and C as stored. In float32, the
/// small products detail::runs_libxsmm picks run libxsmm's run-time generated kernels, tiles of
/// 64 rows of C, a transposed B copied once; the rest, and every float64 product, run OpenBLAS,
/// transposed operands read in place. QKV_GEMM=openblas sends
/// every product to OpenBLAS. Big products are split over qkv's threads
/// (parallel::set_num_threads) by blocks of C's rows — whole libxsmm tiles, or blocks aligned to
/// OpenBLAS's tiles — which leaves every element's value unchanged: the same bits at any thread
/// count. Products too short to share that way run on one thread.
void gemm(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, real alpha,
          const real* a, std::size_t lda, const real* b, std::size_t ldb, real beta, real* c,
          std::size_t ldc);

/// C[M, N] = op(A) · op(B) + bias[N] added to every row: a linear layer's forward. The same bits
/// as setting C's rows to the bias and calling gemm with beta 1; on libxsmm's path each tile's
/// rows are set just before its kernel runs, while they are in L1, not in one pass before.
void gemm_plus_bias(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, const real* a,
                    std::size_t lda, const real* b, std::size_t ldb, const real* bias, real* c, std::size_t ldc);

/// out [cols, rows] (row stride rows) = the transpose of `in` [rows, cols] (row stride ld_in): the
/// copy gemm makes of a transposed operand for libxsmm, in 8×8 AVX2 register blocks where the
/// CPU has them (float32), element by element otherwise.
void transpose(std::size_t rows, std::size_t cols, const real* in, std::size_t ld_in, real* out);

/// Single-precision gemm whatever `real` is; the benchmarks measure BLAS's peak with it.
void sgemm(std::size_t m, std::size_t n, std::size_t k, const float* a, const float* b, float* c);

/// OpenBLAS's sgemm rate on n×n matrices, in GFLOP/s: the median of `runs` timed products
/// after two untimed ones, at the OpenBLAS thread count set (1 unless set_openblas_threads).
/// qkv-bench --sgemm reports it at n = 1024; qkv-train's first log line at n = 512 (~20 ms).
double sgemm_rate(std::size_t n, std::size_t runs);

/// Threads OpenBLAS itself may use. qkv keeps it at 1 and splits big gemms over its own pool
/// (parallel::set_num_threads); only the sgemm benchmark, which measures OpenBLAS alone, sets it.
void set_openblas_threads(int threads);

/// The OpenBLAS core whose kernels run ("SkylakeX", "Haswell", "Prescott", ...).
std::string kernel_name();

/// One line for logs: the library, the kernel and who chose it, and (float32) what runs the small
/// products, e.g. "OpenBLAS 0.3.21, SkylakeX kernel (chosen by qkv: OpenBLAS picked Prescott for
/// this CPU, which has AVX-512); small products (at most 512 columns, B within 1024 KiB, half this
/// core's L2): libxsmm 1.17 JIT, skx kernels".
/// Throws qkv::Error naming QKV_GEMM when it holds neither "auto" nor "openblas".
std::string describe();

namespace detail {

/// The widest vector instructions a CPU (and its OS) lets a kernel use.
enum class Isa { Sse, Avx, Avx2, Avx512 };

/// Whether a float32 product runs libxsmm's kernels (unless QKV_GEMM=openblas), on a core with
/// `l2_bytes` of L2 where libxsmm generates `kernels` code: beta 0 or 1 (alpha 1 unless beta is
/// 0), at most 512 columns and K ≤ 4096, op(B) within half of L2; a transposed B with at least 24
/// rows of C and at most 384 columns; a transposed A when K ≤ 256, M ≤ 64, or M ≤ 384 with at
/// most 128 columns (measured over 390 shapes on AVX-512, bench/README.md, "Which products libxsmm
/// runs"). With AVX2 kernels (half the vector width), also K ≤ 128, and: at most 256 columns; a
/// transposed B at most 64; a transposed A with beta 0 or C within 64 × 64 (measured on a Zen 3,
/// bench/README.md, "libxsmm's AVX2 kernels").
bool runs_libxsmm(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, float alpha, float beta,
                  std::size_t l2_bytes, Isa kernels);

/// The ISA of the kernels libxsmm generates here, from libxsmm_get_target_archid (any of its
/// AVX-512 targets counts as AVX-512; LIBXSMM_TARGET can lower it).
Isa libxsmm_kernels();

/// This core's L2 cache size as the C library reports it (1 MiB when it cannot tell).
std::size_t l2_cache_bytes();

/// This CPU's: AVX-512 means F, CD, DQ, BW and VL, which OpenBLAS's SkylakeX kernels use.
Isa cpu_isa();

/// The ISA an OpenBLAS core's kernels are written for; nullopt for a name qkv does not know.
std::optional<Isa> core_isa(std::string_view openblas_core);

/// The core qkv switches OpenBLAS to when OpenBLAS's own choice uses less of the CPU than it
/// has (OpenBLAS 0.3.21 falls back to Prescott, SSE3 only, on CPUs it does not recognise):
/// SkylakeX on AVX-512, Haswell on AVX2. nullopt when the choice already fits or is unknown.
std::optional<std::string> better_core(std::string_view openblas_core, Isa cpu);

/// When OPENBLAS_CORETYPE forces `openblas_core` on a CPU with a wider ISA than its kernels use
/// (better_core has an answer), the note describe() appends, e.g. "this CPU has AVX-512, whose
/// SkylakeX kernel may be faster: unset OPENBLAS_CORETYPE to let qkv choose"; else nullopt.
std::optional<std::string> forced_core_note(std::string_view openblas_core, Isa cpu);

/// The describe() reason for a core the environment forced: "set by OPENBLAS_CORETYPE=<forced>",
/// saying so when OpenBLAS did not know the name and fell back to `openblas_core`, and adding
/// forced_core_note's note.
std::string forced_core_why(std::string_view forced, std::string_view openblas_core, Isa cpu);

/// When a forced core's kernels need a wider ISA than this CPU has (SkylakeX on an AVX2 CPU),
/// the error every OpenBLAS product then throws instead of dying of an illegal instruction;
/// nullopt when the CPU runs them or qkv does not know the core.
std::optional<std::string> unrunnable_core_error(std::string_view forced, std::string_view openblas_core, Isa cpu);

/// Re-runs OpenBLAS's dispatch (DYNAMIC_ARCH) as if OPENBLAS_CORETYPE=`core` had been set at
/// load, without leaving the variable set. Only while no BLAS call is running. False when this
/// OpenBLAS has no run-time dispatch; then nothing changes.
bool select_openblas_core(const char* core);

/// What qkv does at start-up (before main): unless OPENBLAS_CORETYPE is set, switch to
/// better_core(...) if there is one. Returns the describe() line. Tests call it again.
std::string choose_kernel();

}  // namespace detail

}  // namespace qkv::blas
