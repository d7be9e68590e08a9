#include "lib/numerics/blas.hpp"

#include <cblas.h>
#include <libxsmm.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>
#include <type_traits>
#include <vector>

#include "lib/numerics/error.hpp"
#include "lib/numerics/parallel.hpp"

// OpenBLAS's run-time dispatch (DYNAMIC_ARCH builds, as Debian's): its load-time constructor calls
// gotoblas_dynamic_init(), which reads OPENBLAS_CORETYPE or else picks a core from cpuid. Weak, so
// that an OpenBLAS built for one target (no dispatch) still links; then both are null.
extern "C" void gotoblas_dynamic_init(void) __attribute__((weak));
extern "C" void gotoblas_dynamic_quit(void) __attribute__((weak));

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

// The kernel line of describe(), set by detail::choose_kernel().
std::string& kernel_line() {
  static std::string line;
  return line;
}

// Below this many multiply-adds a gemm takes ~30 µs or less on one core: waking a second
// thread and packing the shared operand twice would eat what splitting saves.
constexpr std::size_t parallel_gemm_work = std::size_t{1} << 20;

// Chunks of C's rows start at multiples of this, so that every row falls at the same place of
// OpenBLAS's micro-kernel tiles as in the unsplit product: a row in a ragged edge tile is summed
// by another code path, with other rounding. 16 fits the SkylakeX / Cooperlake kernels (16-row
// sgemm and dgemm tiles) and the SSE / AVX ones; the Haswell / Zen sgemm tiles are 24 rows, and a
// 16-row split there changed bits in 46% of a sweep of shapes while 48 changed none (bench/README).
std::atomic<std::size_t> split_block{48};
std::size_t split_block_for(std::string_view core) {
  const std::optional<detail::Isa> isa = detail::core_isa(core);
  if (!isa) return 48;
  return *isa == detail::Isa::Avx2 ? 48 : 16;
}

// OpenBLAS 0.3.21 (SkylakeX, Cooperlake) has other kernels for small products, which round
// differently: a "small matrix" kernel up to 100³ multiply-adds, and a "direct" sgemm below
// 28·512² (below 8·512² when N is not a multiple of 4) when neither operand is transposed, alpha
// is 1 and beta 0. Whatever bound the whole product is above, each chunk must be above too; this
// returns the largest such bound.
std::size_t chunk_work_floor(Trans trans_a, Trans trans_b, std::size_t n, real alpha, real beta, std::size_t work) {
  std::size_t floor = std::size_t{100} * 100 * 100;  // the whole is above it: parallel_gemm_work
  if (trans_a == Trans::No && trans_b == Trans::No && alpha == real(1) && beta == real(0)) {
    for (const std::size_t bound : {std::size_t{8} * 512 * 512, std::size_t{28} * 512 * 512})
      if (work >= bound && (n % 4 != 0 || bound == std::size_t{28} * 512 * 512)) floor = std::max(floor, bound - 1);
  }
  return floor;
}

// OpenBLAS 0.3.21 knows CPU models, not features: on a CPU it does not recognise (a new Xeon,
// cpuid model 207) it falls back to its Prescott kernels, SSE3 only, at a fifth of the sgemm rate
// of its SkylakeX kernels on the same core. Setting OPENBLAS_CORETYPE from main is too late (the
// library's constructor has read it), so qkv re-runs OpenBLAS's dispatch once, here, before main
// and before any BLAS call. Measured in bench/README.md.
[[maybe_unused]] const bool kernel_chosen = [] {
  detail::choose_kernel();
  return true;
}();

CBLAS_TRANSPOSE to_cblas(Trans trans) { return trans == Trans::Yes ? CblasTrans : CblasNoTrans; }
blasint to_int(std::size_t value) { return static_cast<blasint>(value); }
// Set before main (by choose_kernel) when OPENBLAS_CORETYPE names kernels this CPU cannot
// execute: every product then throws this message where the kernel would die of SIGILL —
// libxsmm's products too, so that no product size decides whether a program runs.
std::string& unrunnable_core_message() {
  static std::string message;
  return message;
}
std::atomic<bool> core_unrunnable{false};
void refuse_unrunnable_core() {
  if (core_unrunnable.load(std::memory_order_relaxed)) throw Error(unrunnable_core_message());
}

// One name for both precisions, so gemm() compiles whichever `real` is.
template <class... Args>
void gemm_typed(Args... args) requires std::is_same_v<real, float> { cblas_sgemm(args...); }
template <class... Args>
void gemm_typed(Args... args) requires std::is_same_v<real, double> { cblas_dgemm(args...); }
// ---- libxsmm's JIT kernels for the small products -----------------------------------------
//
// OpenBLAS packs both operands into its tile layout before every product; for the products a
// small model runs (1536×64 · 64×192 and the like) the packing is a fifth of the gemm time.
// libxsmm generates, at run time and for this CPU's vector width, a kernel for each (columns,
// rows, depth) that reads the operands where they are. Without packing it does no cache blocking
// either: every 64-row tile of C streams all of op(B), and a transposed A is read down its
// columns. Swept over 390 shapes on an AVX-512 Xeon (bench/README.md, "Which products libxsmm
// runs"), libxsmm was 1.2–1.6× faster where B fits in half of L2 and, for a transposed A, where K
// or A's rows are few; elsewhere OpenBLAS was up to 3× faster. detail::runs_libxsmm holds that rule,
// and the narrower one libxsmm's AVX2 kernels earned on a Zen 3.
//
// Bits: a libxsmm kernel sums every element of C over K in order, one fused multiply-add per
// term, from 0 (beta = 0) or from C (beta = 1), whatever the tile it computes — so C's rows can
// be cut into tiles, and the tiles shared among threads, without changing a bit (tested in
// tests/f32/test_gemm_split.cpp). The results differ from OpenBLAS's in the last bits (OpenBLAS
// blocks K), as any two BLAS kernels do.
namespace jit {

// C's rows per kernel call: libxsmm's n.
constexpr std::size_t tile_rows = 64;

/// QKV_GEMM=openblas sends every product to OpenBLAS (its bits, and a before/after in one build);
/// unset or "auto", products libxsmm does well go to libxsmm. Anything else is an error.
bool wanted() {
  static const bool on = [] {
    const char* choice = std::getenv("QKV_GEMM");
    if (choice == nullptr || std::strcmp(choice, "auto") == 0) return true;
    if (std::strcmp(choice, "openblas") == 0) return false;
    throw Error(std::string("QKV_GEMM=") + choice +
                ": expected 'auto' (libxsmm for the small products, OpenBLAS for the rest) or 'openblas'");
  }();
  return on;
}

// A transposed B ([N, K], read as [K, N]) is copied transposed into a scratch buffer once per
// product: libxsmm 1.17's JIT has no transposed first operand. In 8×8 blocks of AVX registers
// where the CPU has AVX2: 0.1–0.4 ns a float against 1.7–3 ns for the element-by-element loop,
// whose writes stride N (bench/README.md).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QKV_BLAS_AVX_TRANSPOSE 1
/// out[p·ld_out + j] = in[j·ld_in + p] for one 8×8 block.
__attribute__((target("avx2"))) void transpose_8x8(const float* in, std::size_t ld_in, float* out,
                                                   std::size_t ld_out) {
  __m256 row[8], pairs[8], quads[8];
  for (std::size_t r = 0; r < 8; ++r) row[r] = _mm256_loadu_ps(in + r * ld_in);
  for (std::size_t r = 0; r < 8; r += 2) {  // rows r, r+1 interleaved: element pairs
    pairs[r] = _mm256_unpacklo_ps(row[r], row[r + 1]);
    pairs[r + 1] = _mm256_unpackhi_ps(row[r], row[r + 1]);
  }
  for (std::size_t r = 0; r < 8; r += 4) {  // then quadruples, within each 128-bit lane
    quads[r] = _mm256_shuffle_ps(pairs[r], pairs[r + 2], 0x44);
    quads[r + 1] = _mm256_shuffle_ps(pairs[r], pairs[r + 2], 0xEE);
    quads[r + 2] = _mm256_shuffle_ps(pairs[r + 1], pairs[r + 3], 0x44);
    quads[r + 3] = _mm256_shuffle_ps(pairs[r + 1], pairs[r + 3], 0xEE);
  }
  for (std::size_t c = 0; c < 4; ++c) {  // output rows c and c+4: the low and high lanes of rows 0–3 and 4–7
    _mm256_storeu_ps(out + c * ld_out, _mm256_permute2f128_ps(quads[c], quads[c + 4], 0x20));
    _mm256_storeu_ps(out + (c + 4) * ld_out, _mm256_permute2f128_ps(quads[c], quads[c + 4], 0x31));
  }
}
#endif

/// out [K, N] (row stride n) = the transpose of b [N, K] (row stride ldb).
void transpose_b(const float* b, std::size_t ldb, std::size_t n, std::size_t k, float* out) {
  std::size_t n_blocked = 0, k_blocked = 0;
#if defined(QKV_BLAS_AVX_TRANSPOSE)
  static const bool avx2 = detail::cpu_isa() >= detail::Isa::Avx2;
  if (avx2) {
    n_blocked = n / 8 * 8;
    k_blocked = k / 8 * 8;
    constexpr std::size_t panel = 32;  // 32×32 floats read and written stay in L1
    for (std::size_t j0 = 0; j0 < n_blocked; j0 += panel)
      for (std::size_t p0 = 0; p0 < k_blocked; p0 += panel)
        for (std::size_t j = j0; j < std::min(n_blocked, j0 + panel); j += 8)
          for (std::size_t p = p0; p < std::min(k_blocked, p0 + panel); p += 8)
            transpose_8x8(b + j * ldb + p, ldb, out + p * n + j, n);
  }
#endif
  for (std::size_t j = 0; j < n; ++j)  // what the blocks left: B's last N % 8 rows and last K % 8 columns
    for (std::size_t p = j < n_blocked ? k_blocked : 0; p < k; ++p) out[p * n + j] = b[j * ldb + p];
}

/// libxsmm's kernel for one tile of `rows` rows from its registry (generated on first use), or null
/// when libxsmm cannot generate it. Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ:
/// libxsmm's first operand is B (read as stored, [K, N] row-major after any transpose), its second
/// A (transposed in place if asked).
libxsmm_smmfunction kernel(std::size_t n, std::size_t rows, std::size_t k, std::size_t ld_b, Trans trans_a,
                           std::size_t lda, std::size_t ldc, float beta) {
  const libxsmm_blasint m_ = static_cast<libxsmm_blasint>(n), n_ = static_cast<libxsmm_blasint>(rows),
                        k_ = static_cast<libxsmm_blasint>(k), lda_ = static_cast<libxsmm_blasint>(ld_b),
                        ldb_ = static_cast<libxsmm_blasint>(lda), ldc_ = static_cast<libxsmm_blasint>(ldc);
  const float one = 1.0f;
  const int flags = trans_a == Trans::Yes ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
  return libxsmm_smmdispatch(m_, n_, k_, &lda_, &ldb_, &ldc_, &one, &beta, &flags, nullptr);
}

/// Rows [begin, end) of C, in tiles of tile_rows; false (nothing written) if a kernel is missing.
/// With `bias` (beta 1), each tile's rows are set to it just before its kernel adds to them, while
/// they are still in L1.
bool tiles(Trans trans_a, std::size_t begin, std::size_t end, std::size_t n, std::size_t k, float alpha,
           const float* a, std::size_t lda, const float* b_kn, std::size_t ld_b, float beta, const float* bias, float* c,
           std::size_t ldc) {
  const std::size_t full_rows = std::min(tile_rows, end - begin), last_rows = (end - begin) % tile_rows;
  const libxsmm_smmfunction full = kernel(n, full_rows, k, ld_b, trans_a, lda, ldc, beta);
  const libxsmm_smmfunction last = last_rows == 0 || last_rows == full_rows ? full
                                                                              : kernel(n, last_rows, k, ld_b, trans_a, lda, ldc, beta);
  if (full == nullptr || last == nullptr) return false;
  for (std::size_t row = begin; row < end; row += tile_rows) {
    const float* a_rows = trans_a == Trans::Yes ? a + row : a + row * lda;  // op(A)'s rows [row, row + tile)
    float* c_rows = c + row * ldc;
    if (bias != nullptr)
      for (std::size_t i = 0; i < std::min(tile_rows, end - row); ++i) std::copy_n(bias, n, c_rows + i * ldc);
    (end - row >= tile_rows ? full : last)(b_kn, a_rows, c_rows);
    // libxsmm's kernels return with the upper halves of the vector registers dirty (no
    // vzeroupper): until they are cleared, every SSE instruction of the code compiled for
    // baseline x86-64 — this loop's own alpha and bias code, the rest of qkv, libm's exp — pays
    // a state merge on Intel cores. Cleared after every kernel, not after the last only: the
    // scale loop below ran at a fraction of its speed between two tiles. These kernels exist only
    // on CPUs with AVX, so the instruction is there.
#if defined(__x86_64__)
    __asm__ volatile("vzeroupper" ::: "memory");
#endif
    if (alpha != 1.0f)  // beta is 0 here (runs_libxsmm): C = alpha · (the in-order sum), as BLAS defines it
      for (std::size_t i = 0; i < std::min(tile_rows, end - row); ++i)
        for (std::size_t j = 0; j < n; ++j) c_rows[i * ldc + j] *= alpha;
  }
  return true;
}

// Each precision's build calls one of the two overloads: maybe_unused keeps the other quiet.
/// The product through libxsmm when it suits (false: nothing was written, OpenBLAS computes it).
/// `bias` (with beta 1): C's rows start as it, as gemm_plus_bias says.
[[maybe_unused]] bool gemm(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, float alpha,
                           const float* a, std::size_t lda, const float* b, std::size_t ldb, float beta,
                           const float* bias, float* c, std::size_t ldc) {
  if (!wanted() ||
      !detail::runs_libxsmm(trans_a, trans_b, m, n, k, alpha, beta, detail::l2_cache_bytes(), detail::libxsmm_kernels()))
    return false;
  // B as libxsmm reads it: [K, N] row-major; a transposed B is copied into that layout once per product.
  thread_local std::vector<float> transposed_b;
  const float* b_kn = b;
  std::size_t ld_b = ldb;
  if (trans_b == Trans::Yes) {  // b is [N, K] with row stride ldb
    transposed_b.resize(k * n);
    transpose_b(b, ldb, n, k, transposed_b.data());
    b_kn = transposed_b.data();
    ld_b = n;
  }
  const std::size_t tile_count = (m + tile_rows - 1) / tile_rows;
  const bool share = parallel::num_threads() > 1 && !parallel::in_parallel_region() &&
                     m * n * k >= parallel_gemm_work && tile_count >= 2;
  if (!share) {
    if (tiles(trans_a, 0, m, n, k, alpha, a, lda, b_kn, ld_b, beta, bias, c, ldc)) return true;
  } else {
    // Every kernel a chunk needs is generated first, so that no chunk can fail half-way.
    const std::size_t last_rows = m % tile_rows;
    if (kernel(n, tile_rows, k, ld_b, trans_a, lda, ldc, beta) != nullptr &&
        (last_rows == 0 || kernel(n, last_rows, k, ld_b, trans_a, lda, ldc, beta) != nullptr)) {
      parallel::for_chunks(tile_count, 1, [&](std::size_t first, std::size_t last) {
        tiles(trans_a, first * tile_rows, std::min(m, last * tile_rows), n, k, alpha, a, lda, b_kn, ld_b, beta, bias,
              c, ldc);
      });
      return true;
    }
  }
  return false;  // no kernel for this shape
}

/// float64 (gradient checks) stays on OpenBLAS.
[[maybe_unused]] bool gemm(Trans, Trans, std::size_t, std::size_t, std::size_t, double, const double*, std::size_t,
                           const double*, std::size_t, double, const double*, double*, std::size_t) {
  return false;
}

}  // namespace jit

}  // namespace

void gemm(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, real alpha,
          const real* a, std::size_t lda, const real* b, std::size_t ldb, real beta, real* c,
          std::size_t ldc) {
  refuse_unrunnable_core();
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // BLAS leaves C untouched when K is 0 only for beta = 1; make the empty sum explicit.
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = 0; j < n; ++j) c[i * ldc + j] = beta == real(0) ? real(0) : beta * c[i * ldc + j];
    return;
  }
  if (jit::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, nullptr, c, ldc)) return;
  // Each thread computes its own block of C's rows: every element of C is still one dot product
  // over K in OpenBLAS's order, on the same code path and at the same place in its tiles, so the
  // split changes no bits (tested). A product with fewer than two chunks' worth of rows runs on
  // one thread (split by columns, OpenBLAS blocks the K loop differently for a narrower B).
  const std::size_t block = split_block.load(std::memory_order_relaxed);
  const std::size_t blocks = (m + block - 1) / block;
  // Every chunk holds at least min_blocks blocks, all full but the last: more work than the floor.
  const std::size_t min_blocks = chunk_work_floor(trans_a, trans_b, n, alpha, beta, m * n * k) / (block * n * k) + 2;
  const bool split = parallel::num_threads() > 1 && !parallel::in_parallel_region() &&
                     m * n * k >= parallel_gemm_work && blocks >= 2 * min_blocks;
  if (!split) {
    gemm_typed(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_int(m), to_int(n), to_int(k), alpha, a,
               to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
    return;
  }
  parallel::for_chunks(blocks, min_blocks, [&](std::size_t first, std::size_t last) {
    const std::size_t begin = first * block, end = std::min(m, last * block);  // rows [begin, end)
    const real* a_rows = trans_a == Trans::Yes ? a + begin : a + begin * lda;
    gemm_typed(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_int(end - begin), to_int(n), to_int(k), alpha,
               a_rows, to_int(lda), b, to_int(ldb), beta, c + begin * ldc, to_int(ldc));
  });
}

void gemm_plus_bias(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, const real* a,
                    std::size_t lda, const real* b, std::size_t ldb, const real* bias, real* c, std::size_t ldc) {
  refuse_unrunnable_core();
  if (m == 0 || n == 0) return;
  if (k > 0 && jit::gemm(trans_a, trans_b, m, n, k, real(1), a, lda, b, ldb, real(1), bias, c, ldc)) return;
  // Every row starts as the bias; the product adds op(A)·op(B) to it (beta 1).
  parallel::for_chunks(m, std::max<std::size_t>(1, parallel::min_elements_per_chunk / n),
                       [&](std::size_t first, std::size_t last) {
    for (std::size_t r = first; r < last; ++r) std::copy_n(bias, n, c + r * ldc);
  });
  gemm(trans_a, trans_b, m, n, k, real(1), a, lda, b, ldb, real(1), c, ldc);
}

namespace {
[[maybe_unused]] void transpose_typed(std::size_t rows, std::size_t cols, const float* in, std::size_t ld_in, float* out) {
  jit::transpose_b(in, ld_in, rows, cols, out);
}
[[maybe_unused]] void transpose_typed(std::size_t rows, std::size_t cols, const double* in, std::size_t ld_in, double* out) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * ld_in + c];
}
}  // namespace

void transpose(std::size_t rows, std::size_t cols, const real* in, std::size_t ld_in, real* out) {
  transpose_typed(rows, cols, in, ld_in, out);
}

void sgemm(std::size_t m, std::size_t n, std::size_t k, const float* a, const float* b, float* c) {
  refuse_unrunnable_core();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, to_int(m), to_int(n), to_int(k), 1.0f, a,
              to_int(k), b, to_int(n), 0.0f, c, to_int(n));
}

double sgemm_rate(std::size_t n, std::size_t runs) {
  const std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f);
  std::vector<float> c(n * n);
  std::vector<double> seconds;
  for (std::size_t i = 0; i < runs + 2; ++i) {
    const auto start = std::chrono::steady_clock::now();
    sgemm(n, n, n, a.data(), b.data(), c.data());
    if (i >= 2) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const std::size_t half = seconds.size() / 2;
  const double median = seconds.size() % 2 ? seconds[half] : (seconds[half - 1] + seconds[half]) / 2;
  return 2.0 * double(n) * double(n) * double(n) / median / 1e9;
}

void set_openblas_threads(int threads) { openblas_set_num_threads(threads); }

std::string kernel_name() { return openblas_get_corename(); }

std::string describe() {
  if constexpr (std::is_same_v<real, double>) {
    return kernel_line();  // float64 products all run on OpenBLAS
  } else {
    if (!jit::wanted()) return kernel_line() + "; libxsmm off (QKV_GEMM=openblas)";
    // The rule's outline (detail::runs_libxsmm): kernels narrower than AVX-512 take only short sums.
    const std::string outline = detail::libxsmm_kernels() < detail::Isa::Avx512 ? "K at most 128, at most 256 columns"
                                                                                : "at most 512 columns";
    return kernel_line() + "; small products (" + outline + ", B within " +
           std::to_string(detail::l2_cache_bytes() / 2 / 1024) + " KiB, half this core's L2): libxsmm " +
           LIBXSMM_VERSION + " JIT, " + libxsmm_get_target_arch() + " kernels";
  }
}

namespace detail {

bool runs_libxsmm(Trans trans_a, Trans trans_b, std::size_t m, std::size_t n, std::size_t k, float alpha, float beta,
                  std::size_t l2_bytes, Isa kernels) {
  if (!(beta == 0.0f || beta == 1.0f) || (alpha != 1.0f && beta != 0.0f)) return false;  // alpha: applied to C after
  if (n > 512 || k > 4096) return false;
  // Each 64-row tile of C reads all of op(B): beyond half of L2 it comes from L3 every time.
  if (k * n * sizeof(float) > l2_bytes / 2) return false;
  // A transposed B is copied once per product: not worth it below 24 rows of C; and above 384
  // columns OpenBLAS's packed kernel was faster even so.
  if (trans_b == Trans::Yes && (m < 24 || n > 384)) return false;
  // A transposed A is read down its columns, k rows apart by m floats: fine for short columns
  // (K ≤ 256), for few of them (M ≤ 64), or for narrow products on a modest stride.
  if (trans_a == Trans::Yes && !(k <= 256 || m <= 64 || (m <= 384 && n <= 128))) return false;
  if (kernels >= Isa::Avx512) return true;
  // libxsmm's AVX2 (or narrower) kernels hold half as many floats per register, against
  // OpenBLAS's AVX2 kernels (Zen, Haswell), which stay as good: on a Zen 3 (bench/README.md)
  // libxsmm kept its lead only on short sums — from K = 192 OpenBLAS was up to 1.2× faster
  // (1536×64×192), and at K = 128 with 384 columns (64×384×128, the Bahdanau decoder's gates) too.
  if (k > 128) return false;
  if (trans_a == Trans::No && trans_b == Trans::No) return n <= 256;
  // The copy of a transposed B paid off only for the narrowest products (1536×64×64: 1.4–1.6×
  // faster; 1536×192×64: 0.7–0.9×).
  if (trans_b == Trans::Yes && n > 64) return false;
  // A transposed A (weight gradients): where C accumulates (beta 1), OpenBLAS has no pass that
  // zeroes C (its cost at beta 0) and led from 128 × 128 on (384×128×64: 0.88–0.91×); a head's
  // 24 × 16 still gains.
  if (trans_a == Trans::Yes && beta != 0.0f && m * n > 64 * 64) return false;
  return true;
}

Isa libxsmm_kernels() {
  static const Isa isa = [] {
    const int arch = libxsmm_get_target_archid();
    if (arch >= LIBXSMM_X86_AVX512) return Isa::Avx512;
    if (arch >= LIBXSMM_X86_AVX2) return Isa::Avx2;
    return arch >= LIBXSMM_X86_AVX ? Isa::Avx : Isa::Sse;
  }();
  return isa;
}

std::size_t l2_cache_bytes() {
  static const std::size_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? static_cast<std::size_t>(reported) : std::size_t{1} << 20;
  }();
  return bytes;
}

Isa cpu_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the YMM / ZMM registers (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
  if (__builtin_cpu_supports("avx")) return Isa::Avx;
#endif
  return Isa::Sse;
}

std::optional<Isa> core_isa(std::string_view openblas_core) {
  std::string name(openblas_core);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // OpenBLAS 0.3.21's x86-64 core names (openblas_get_corename), by the ISA of their kernels.
  for (const char* core : {"skylakex", "cooperlake", "sapphirerapids"})
    if (name == core) return Isa::Avx512;
  for (const char* core : {"haswell", "zen", "excavator"})
    if (name == core) return Isa::Avx2;
  for (const char* core : {"sandybridge", "bulldozer", "piledriver", "steamroller"})
    if (name == core) return Isa::Avx;
  for (const char* core : {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "nano", "opteron",
                           "opteron(sse3)", "barcelona", "bobcat", "katmai", "coppermine", "northwood", "banias",
                           "athlon"})
    if (name == core) return Isa::Sse;
  return std::nullopt;
}

namespace {
const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Sse: return "SSE";
    case Isa::Avx: return "AVX";
    case Isa::Avx2: return "AVX2";
    case Isa::Avx512: return "AVX-512";
  }
  return "?";
}
const char* core_for(Isa isa) {
  switch (isa) {
    case Isa::Sse: return "Prescott";
    case Isa::Avx: return "Sandybridge";
    case Isa::Avx2: return "Haswell or Zen";
    case Isa::Avx512: return "SkylakeX";
  }
  return "?";
}
bool same_name(std::string_view x, std::string_view y) {
  return std::equal(x.begin(), x.end(), y.begin(), y.end(), [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  });
}
}  // namespace

std::optional<std::string> better_core(std::string_view openblas_core, Isa cpu) {
  const std::optional<Isa> current = core_isa(openblas_core);
  if (!current) return std::nullopt;  // a core newer than qkv knows: OpenBLAS knows best
  if (cpu == Isa::Avx512 && *current < Isa::Avx512) return "SkylakeX";
  if (cpu >= Isa::Avx2 && *current < Isa::Avx2) return "Haswell";
  return std::nullopt;
}

std::optional<std::string> forced_core_note(std::string_view openblas_core, Isa cpu) {
  const std::optional<std::string> better = better_core(openblas_core, cpu);
  if (!better) return std::nullopt;
  // A note, not a switch: the environment's choice stands, but a user who set it for another
  // machine (or inherited it) learns that this CPU can run wider kernels.
  return std::string("this CPU has ") + isa_name(cpu) + ", whose " + *better +
         " kernel may be faster: unset OPENBLAS_CORETYPE to let qkv choose";
}

std::optional<std::string> unrunnable_core_error(std::string_view forced, std::string_view openblas_core, Isa cpu) {
  const std::optional<Isa> needs = core_isa(openblas_core);
  if (!needs || *needs <= cpu) return std::nullopt;
  return "OPENBLAS_CORETYPE=" + std::string(forced) + " makes OpenBLAS run its " + std::string(openblas_core) +
         " kernels, which need " + isa_name(*needs) + "; this CPU has " + isa_name(cpu) +
         ", so the first matrix product would stop the program with an illegal instruction. Unset "
         "OPENBLAS_CORETYPE to let qkv choose, or name a core this CPU runs (" + core_for(cpu) + ")";
}

std::string forced_core_why(std::string_view forced, std::string_view openblas_core, Isa cpu) {
  std::string why = "set by OPENBLAS_CORETYPE=" + std::string(forced);
  // OpenBLAS matches the name without case; any other value it reports as "Core not found" and
  // replaces with its own pick, which the line must not pass off as the user's.
  if (!same_name(forced, openblas_core))
    why += std::string(forced.empty() ? " (empty)" : "") + ", not a core name OpenBLAS knows: it fell back to " +
           std::string(openblas_core);
  if (const std::optional<std::string> note = forced_core_note(openblas_core, cpu)) why += "; " + *note;
  return why;
}

bool select_openblas_core(const char* core) {
  if (gotoblas_dynamic_init == nullptr || gotoblas_dynamic_quit == nullptr) return false;
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  const std::optional<std::string> previous = set ? std::optional<std::string>(set) : std::nullopt;
  // OpenBLAS parses the name itself; the environment is put back as it was at once.
  setenv("OPENBLAS_CORETYPE", core, 1);
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  if (previous) setenv("OPENBLAS_CORETYPE", previous->c_str(), 1);
  else unsetenv("OPENBLAS_CORETYPE");
  return true;
}

std::string choose_kernel() {
  std::istringstream config(openblas_get_config());  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."
  std::string library, version;
  config >> library >> version;
  const std::string picked = kernel_name();
  std::string why;
  bool refused = false;
  if (const char* forced = std::getenv("OPENBLAS_CORETYPE")) {
    why = forced_core_why(forced, picked, cpu_isa());  // the user's choice is never overridden
    // ... nor run where it cannot: refused by name at the first product instead of SIGILL.
    if (const std::optional<std::string> error = unrunnable_core_error(forced, picked, cpu_isa())) {
      unrunnable_core_message() = *error;
      refused = true;
      why += "; refused: this CPU has " + std::string(isa_name(cpu_isa()));
    }
  } else if (const std::optional<std::string> better = better_core(picked, cpu_isa());
             better && select_openblas_core(better->c_str())) {
    why = "chosen by qkv: OpenBLAS picked " + picked + " for this CPU, which has " +
          isa_name(cpu_isa());
  } else {
    why = "chosen by OpenBLAS";
  }
  core_unrunnable.store(refused, std::memory_order_relaxed);
  split_block.store(split_block_for(kernel_name()), std::memory_order_relaxed);
  kernel_line() = library + " " + version + ", " + kernel_name() + " kernel (" + why + ")";
  return kernel_line();
}

}  // namespace detail

}  // namespace qkv::blas
