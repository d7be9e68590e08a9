// qkv's gemm gives the same bits on 1, 2 and 3 threads over a sweep of shapes, transposes and
// alpha/beta (lib/numerics/blas.cpp): row chunks aligned to OpenBLAS's tiles and above its
// small-product paths. In float32, where OpenBLAS's sgemm has the most code paths. The sweep was
// run under every OPENBLAS_CORETYPE qkv may choose (bench/README.md); here it runs on whichever
// kernel was chosen.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "lib/numerics/blas.hpp"
#include "lib/numerics/parallel.hpp"
#include "support/helpers.hpp"

using namespace qkv;

TEST_CASE("float32: gemm is bit-identical on 1, 2 and 3 threads across shapes, transposes and alpha/beta") {
  Rng rng(11);
  int products = 0;
  for (std::size_t m : {40u, 64u, 100u, 160u, 200u, 768u})
    for (std::size_t n : {4u, 16u, 30u, 64u, 256u})
      for (std::size_t k : {64u, 512u, 2000u})
        for (int transposes = 0; transposes < 4; ++transposes)
          for (auto [alpha, beta] : {std::pair{1.0f, 0.0f}, std::pair{0.5f, 1.0f}}) {
            const auto trans_a = transposes & 1 ? blas::Trans::Yes : blas::Trans::No;
            const auto trans_b = transposes & 2 ? blas::Trans::Yes : blas::Trans::No;
            std::vector<real> a(m * k), b(k * n), start(m * n);
            for (auto* v : {&a, &b, &start})
              for (real& x : *v) x = real(rng.uniform()) - real(0.5);
            const std::size_t lda = trans_a == blas::Trans::Yes ? m : k, ldb = trans_b == blas::Trans::Yes ? k : n;
            std::vector<real> serial;
            for (int threads : {1, 2, 3}) {
              std::vector<real> c = start;
              parallel::set_num_threads(threads);
              blas::gemm(trans_a, trans_b, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), n);
              if (threads == 1) serial = c;
              else if (std::memcmp(serial.data(), c.data(), c.size() * sizeof(real)) != 0)
                FAIL_CHECK("m=" << m << " n=" << n << " k=" << k << " transposes=" << transposes << " alpha=" << alpha
                                << " threads=" << threads << " kernel=" << blas::kernel_name());
            }
            ++products;
          }
  parallel::set_num_threads(1);
  CHECK(products == 720);
}

namespace {

struct GemmCase {
  std::size_t m, n, k;
  blas::Trans trans_a, trans_b;
  real alpha, beta;
};

/// A, B and a starting C with entries in [-0.5, 0.5), stored as `c` says (row strides m or k, k or n, n).
struct GemmOperands {
  std::vector<real> a, b, start;
  std::size_t lda, ldb;
  GemmOperands(const GemmCase& c, Rng& rng)
      : a(c.m * c.k), b(c.k * c.n), start(c.m * c.n),
        lda(c.trans_a == blas::Trans::Yes ? c.m : c.k), ldb(c.trans_b == blas::Trans::Yes ? c.k : c.n) {
    for (auto* v : {&a, &b, &start})
      for (real& x : *v) x = real(rng.uniform()) - real(0.5);
  }
  /// op(A)[i, p] and op(B)[p, j] as stored.
  real a_at(const GemmCase& c, std::size_t i, std::size_t p) const {
    return c.trans_a == blas::Trans::Yes ? a[p * lda + i] : a[i * lda + p];
  }
  real b_at(const GemmCase& c, std::size_t p, std::size_t j) const {
    return c.trans_b == blas::Trans::Yes ? b[j * ldb + p] : b[p * ldb + j];
  }
};

std::vector<GemmCase> small_product_cases() {
  std::vector<GemmCase> cases;
  for (std::size_t m : {16u, 100u, 150u})
    for (std::size_t n : {1u, 24u, 64u, 200u, 512u, 600u})
      for (std::size_t k : {1u, 16u, 300u})
        for (int transposes = 0; transposes < 4; ++transposes)
          for (auto [alpha, beta] : {std::pair{1.0f, 0.0f}, std::pair{1.0f, 1.0f}, std::pair{0.125f, 0.0f}})
            cases.push_back({m, n, k, transposes & 1 ? blas::Trans::Yes : blas::Trans::No,
                             transposes & 2 ? blas::Trans::Yes : blas::Trans::No, alpha, beta});
  return cases;
}

/// QKV_GEMM=openblas (a ctest case runs this file so): says why a libxsmm-only test is skipped.
bool libxsmm_turned_off(const char* why) {
  const char* choice = std::getenv("QKV_GEMM");
  if (choice == nullptr || std::string(choice) != "openblas") return false;
  MESSAGE("skipped: QKV_GEMM=openblas (" << std::string(why) << ")");
  return true;
}

}  // namespace

TEST_CASE("float32: gemm agrees with a float64 sum on every path (libxsmm's small products and OpenBLAS's)") {
  Rng rng(12);
  for (const GemmCase& g : small_product_cases()) {
    const GemmOperands x(g, rng);
    std::vector<real> c = x.start;
    blas::gemm(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, x.a.data(), x.lda, x.b.data(), x.ldb, g.beta, c.data(), g.n);
    double worst = 0;
    for (std::size_t i = 0; i < g.m; ++i)
      for (std::size_t j = 0; j < g.n; ++j) {
        double sum = 0;
        for (std::size_t p = 0; p < g.k; ++p) sum += double(x.a_at(g, i, p)) * double(x.b_at(g, p, j));
        const double expected = double(g.alpha) * sum + double(g.beta) * double(x.start[i * g.n + j]);
        worst = std::max(worst, std::abs(double(c[i * g.n + j]) - expected));
      }
    // Terms below 0.25 each: float32's rounding over k of them stays far below 1e-5 · (k + 1).
    CHECK_MESSAGE(worst < 1e-5 * double(g.k + 1), "m=" << g.m << " n=" << g.n << " k=" << g.k << " trans_a="
                                                         << int(g.trans_a) << " trans_b=" << int(g.trans_b) << " alpha="
                                                         << g.alpha << " beta=" << g.beta << " worst=" << worst);
  }
}

TEST_CASE("float32: C's rows cut at 64-row tile boundaries have the same bits as in the whole product") {
  // What lets gemm share libxsmm's 64-row tiles among threads: each tile is computed by the same
  // kernel whatever else is computed. (Not any cut: libxsmm generates another kernel for another
  // tile height, and a 16-row product's rows can differ in the last bit from the same rows of a
  // 64-row tile — seen at 200 columns.)
  if (libxsmm_turned_off("OpenBLAS's small-product paths make no such promise")) return;
  Rng rng(13);
  int compared = 0, whole_products = 0;
  for (const GemmCase& g : small_product_cases()) {
    // The products libxsmm runs whole; below, the parts it runs too (OpenBLAS makes no such promise).
    const auto on_libxsmm = [&](std::size_t rows) {
      return blas::detail::runs_libxsmm(g.trans_a, g.trans_b, rows, g.n, g.k, g.alpha, g.beta,
                                        blas::detail::l2_cache_bytes(), blas::detail::libxsmm_kernels());
    };
    if (g.m != 150 || !on_libxsmm(g.m)) continue;
    ++whole_products;
    const GemmOperands x(g, rng);
    std::vector<real> whole = x.start;
    blas::gemm(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, x.a.data(), x.lda, x.b.data(), x.ldb, g.beta, whole.data(),
               g.n);
    for (const auto& part_rows : {std::pair{std::size_t{0}, std::size_t{64}}, std::pair{std::size_t{64}, std::size_t{86}},
                                  std::pair{std::size_t{128}, std::size_t{22}}, std::pair{std::size_t{0}, std::size_t{128}}}) {
      const std::size_t first = part_rows.first, rows = part_rows.second;
      if (!on_libxsmm(rows)) continue;
      std::vector<real> part(x.start.begin() + std::ptrdiff_t(first * g.n),
                             x.start.begin() + std::ptrdiff_t((first + rows) * g.n));
      const real* a_rows = g.trans_a == blas::Trans::Yes ? x.a.data() + first : x.a.data() + first * x.lda;
      blas::gemm(g.trans_a, g.trans_b, rows, g.n, g.k, g.alpha, a_rows, x.lda, x.b.data(), x.ldb, g.beta, part.data(), g.n);
      CHECK_MESSAGE(std::memcmp(part.data(), whole.data() + first * g.n, part.size() * sizeof(real)) == 0,
                    "rows " << first << "+" << rows << " of m=" << g.m << " n=" << g.n << " k=" << g.k
                            << " trans_a=" << int(g.trans_a) << " trans_b=" << int(g.trans_b) << " alpha=" << g.alpha
                            << " beta=" << g.beta);
      ++compared;
    }
  }
  // Of the 180 150-row cases (6 widths × 3 depths × 4 transposes × 3 alpha/beta), 82 run libxsmm
  // with its AVX2 kernels (K ≤ 128 only) and more with AVX-512 ones; so do most of their parts (a
  // transposed B's 22-row part does not).
  CHECK(whole_products >= 80);
  CHECK(compared >= 3 * whole_products);
}

TEST_CASE("float32: which products run libxsmm (the rule measured in bench/README.md)") {
  using blas::Trans;
  using blas::detail::Isa;
  const std::size_t l2 = std::size_t{2} << 20;  // the AVX-512 Xeon the rule was measured on: 2 MiB
  const auto runs = [&](Trans ta, Trans tb, std::size_t m, std::size_t n, std::size_t k) {
    return blas::detail::runs_libxsmm(ta, tb, m, n, k, 1.0f, 0.0f, l2, Isa::Avx512);
  };
  // transformer-tiny's products: x · Wᵀ, dY · W, and the weight gradients dYᵀ · X (K = 1536 rows)
  CHECK(runs(Trans::No, Trans::Yes, 1536, 192, 64));
  CHECK(runs(Trans::No, Trans::No, 1536, 64, 256));
  CHECK(runs(Trans::Yes, Trans::No, 192, 64, 1536));
  CHECK(runs(Trans::Yes, Trans::No, 64, 64, 1536));
  // one head's scores and weights · V
  CHECK(runs(Trans::No, Trans::Yes, 24, 24, 16));
  CHECK(runs(Trans::No, Trans::No, 24, 16, 24));
  // OpenBLAS: more than 512 columns; B beyond half of L2 (512 × 1024 floats = 2 MiB)
  CHECK_FALSE(runs(Trans::No, Trans::No, 1024, 768, 256));
  CHECK_FALSE(runs(Trans::No, Trans::No, 1024, 512, 1024));
  CHECK(runs(Trans::No, Trans::No, 1024, 256, 1024));  // 1 MiB: just within
  CHECK_FALSE(blas::detail::runs_libxsmm(Trans::No, Trans::No, 1024, 256, 1024, 1.0f, 0.0f, std::size_t{1} << 20,
                                         Isa::Avx512));
  // a transposed B: not for fewer than 24 rows, nor above 384 columns (transformer-small's vocabulary product)
  CHECK_FALSE(runs(Trans::No, Trans::Yes, 16, 64, 64));
  CHECK_FALSE(runs(Trans::No, Trans::Yes, 1024, 512, 256));
  CHECK(runs(Trans::No, Trans::Yes, 64, 384, 128));
  // a transposed A: transformer-small's weight gradients (K = 1024, 256 columns) stay on OpenBLAS
  CHECK_FALSE(runs(Trans::Yes, Trans::No, 1024, 256, 1024));
  CHECK_FALSE(runs(Trans::Yes, Trans::No, 256, 256, 1024));
  CHECK(runs(Trans::Yes, Trans::No, 1024, 256, 256));  // short columns
  CHECK(runs(Trans::Yes, Trans::No, 64, 256, 1024));   // few of them
  // alpha and beta libxsmm's kernels cannot take
  CHECK_FALSE(blas::detail::runs_libxsmm(Trans::No, Trans::No, 64, 64, 64, 0.5f, 1.0f, l2, Isa::Avx512));
  CHECK_FALSE(blas::detail::runs_libxsmm(Trans::No, Trans::No, 64, 64, 64, 1.0f, 0.5f, l2, Isa::Avx512));
  CHECK(blas::detail::runs_libxsmm(Trans::No, Trans::No, 64, 64, 64, 0.5f, 0.0f, l2, Isa::Avx512));
}

TEST_CASE("float32: which products run libxsmm's AVX2 kernels (the narrower rule measured on a Zen 3)") {
  using blas::Trans;
  using blas::detail::Isa;
  const std::size_t l2 = std::size_t{512} << 10;  // the Zen 3 the rule was measured on: 512 KiB
  struct Case {
    Trans ta, tb;
    std::size_t m, n, k;
    float beta;
    bool libxsmm;
  };
  const Case cases[] = {
      // Short sums, up to 256 columns: transformer-tiny's 1536×64×64 and 1536×256×64, a head's 24×16×24
      {Trans::No, Trans::No, 1536, 64, 64, 0.0f, true},
      {Trans::No, Trans::No, 1536, 256, 64, 0.0f, true},
      {Trans::No, Trans::No, 24, 16, 24, 1.0f, true},
      {Trans::No, Trans::No, 64, 128, 128, 0.0f, true},
      // OpenBLAS from K = 192 (where AVX-512 kernels still run libxsmm, below), and beyond 256 columns
      {Trans::No, Trans::No, 1536, 64, 192, 1.0f, false},
      {Trans::No, Trans::No, 64, 384, 128, 1.0f, false},  // the Bahdanau decoder's gates
      // A transposed B: the narrowest only
      {Trans::No, Trans::Yes, 1536, 64, 64, 1.0f, true},
      {Trans::No, Trans::Yes, 24, 24, 16, 0.0f, true},
      {Trans::No, Trans::Yes, 1536, 192, 64, 1.0f, false},
      {Trans::No, Trans::Yes, 1536, 64, 256, 1.0f, false},
      // A transposed A: beta 0, or a small C when it accumulates
      {Trans::Yes, Trans::No, 384, 128, 64, 0.0f, true},
      {Trans::Yes, Trans::No, 384, 128, 64, 1.0f, false},
      {Trans::Yes, Trans::No, 24, 16, 24, 1.0f, true},
      {Trans::Yes, Trans::No, 64, 64, 1536, 0.0f, false},
  };
  for (const Case& c : cases)
    CHECK_MESSAGE(blas::detail::runs_libxsmm(c.ta, c.tb, c.m, c.n, c.k, 1.0f, c.beta, l2, Isa::Avx2) == c.libxsmm,
                  "trans_a=" << int(c.ta) << " trans_b=" << int(c.tb) << " " << c.m << "×" << c.n << "×" << c.k
                             << " beta=" << c.beta);
  CHECK(blas::detail::runs_libxsmm(Trans::No, Trans::No, 1536, 64, 192, 1.0f, 1.0f, l2, Isa::Avx512));
  // Narrower kernels than AVX2 (an AVX-only CPU) keep the narrower rule.
  CHECK_FALSE(blas::detail::runs_libxsmm(Trans::No, Trans::No, 1536, 64, 192, 1.0f, 1.0f, l2, Isa::Avx));
  CHECK(blas::detail::runs_libxsmm(Trans::No, Trans::No, 1536, 64, 64, 1.0f, 1.0f, l2, Isa::Avx));
}

TEST_CASE("float32: a transposed B is copied exactly, on every edge of the 8×8 blocks") {
  // The copy into libxsmm's layout must not change a bit: the product with a transposed B equals
  // the product with the same B stored transposed, for widths and depths on and off multiples of 8.
  if (libxsmm_turned_off("OpenBLAS reads a transposed B in place, with other bits")) return;
  Rng rng(14);
  int compared = 0;
  // Widths and depths within the AVX2 kernels' rule too (at most 64 columns, K ≤ 128), across
  // the copy's 32 × 32 panels.
  for (std::size_t n : {8u, 13u, 40u, 57u, 64u})
    for (std::size_t k : {7u, 8u, 33u, 64u, 123u}) {
      const std::size_t m = 32;
      if (!blas::detail::runs_libxsmm(blas::Trans::No, blas::Trans::Yes, m, n, k, 1.0f, 0.0f,
                                      blas::detail::l2_cache_bytes(), blas::detail::libxsmm_kernels()))
        continue;
      std::vector<real> a(m * k), b_nk(n * k), b_kn(k * n), c_t(m * n), c_n(m * n);
      for (real& x : a) x = real(rng.uniform()) - real(0.5);
      for (real& x : b_nk) x = real(rng.uniform()) - real(0.5);
      for (std::size_t j = 0; j < n; ++j)
        for (std::size_t p = 0; p < k; ++p) b_kn[p * n + j] = b_nk[j * k + p];
      blas::gemm(blas::Trans::No, blas::Trans::Yes, m, n, k, 1.0f, a.data(), k, b_nk.data(), k, 0.0f, c_t.data(), n);
      blas::gemm(blas::Trans::No, blas::Trans::No, m, n, k, 1.0f, a.data(), k, b_kn.data(), n, 0.0f, c_n.data(), n);
      CHECK_MESSAGE(std::memcmp(c_t.data(), c_n.data(), c_t.size() * sizeof(real)) == 0, "n=" << n << " k=" << k);
      ++compared;
    }
  CHECK(compared == 25);
}

TEST_CASE("float32: the kernel line says what runs the small products") {
  const std::string line = blas::describe();
  CAPTURE(line);
  CHECK(line.find("OpenBLAS") == 0);
  const char* choice = std::getenv("QKV_GEMM");
  if (choice != nullptr && std::string(choice) == "openblas")
    CHECK(line.find("; libxsmm off (QKV_GEMM=openblas)") != std::string::npos);
  else {
    CHECK(line.find("; small products (") != std::string::npos);
    CHECK(line.find(" columns, B within ") != std::string::npos);
    CHECK(line.find(" KiB, half this core's L2): libxsmm 1.") != std::string::npos);
  }
}

TEST_CASE("float32: gemm_plus_bias has the bits of rows set to the bias and gemm with beta 1") {
  // Linear's forward: on libxsmm's path the bias is written tile by tile, on OpenBLAS's in one pass.
  Rng rng(15);
  int compared = 0;
  for (std::size_t m : {1u, 64u, 150u, 1536u})
    for (std::size_t n : {24u, 192u, 600u})
      for (std::size_t k : {16u, 64u, 300u}) {
        std::vector<real> a(m * k), b(n * k), bias(n);
        for (auto* v : {&a, &b, &bias})
          for (real& x : *v) x = real(rng.uniform()) - real(0.5);
        std::vector<real> fused(m * n), reference(m * n);
        blas::gemm_plus_bias(blas::Trans::No, blas::Trans::Yes, m, n, k, a.data(), k, b.data(), k, bias.data(),
                             fused.data(), n);
        for (std::size_t r = 0; r < m; ++r) std::copy(bias.begin(), bias.end(), reference.begin() + std::ptrdiff_t(r * n));
        blas::gemm(blas::Trans::No, blas::Trans::Yes, m, n, k, 1.0f, a.data(), k, b.data(), k, 1.0f, reference.data(), n);
        CHECK_MESSAGE(std::memcmp(fused.data(), reference.data(), fused.size() * sizeof(real)) == 0,
                      "m=" << m << " n=" << n << " k=" << k);
        ++compared;
      }
  CHECK(compared == 36);
}

TEST_CASE("float32: blas::transpose copies every element, on and off the 8×8 blocks, with a row stride") {
  Rng rng(16);
  for (std::size_t rows : {1u, 8u, 13u, 64u, 384u})
    for (std::size_t cols : {1u, 7u, 8u, 33u, 128u}) {
      const std::size_t ld = cols + 3;  // a wider stored row than the copied one
      std::vector<real> in(rows * ld), out(cols * rows, real(-1));
      for (real& x : in) x = real(rng.uniform());
      blas::transpose(rows, cols, in.data(), ld, out.data());
      bool exact = true;
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) exact = exact && out[c * rows + r] == in[r * ld + c];
      CHECK_MESSAGE(exact, "rows=" << rows << " cols=" << cols);
    }
}

TEST_CASE("float32: linear over a prepared weight has the bits of linear where libxsmm runs both products") {
  // A recurrent step's shapes: the prepared weight only skips the copy gemm makes of Wᵀ.
  if (libxsmm_turned_off("OpenBLAS reads a transposed W in place, with other bits")) return;
  Rng rng(17);
  int compared = 0;
  for (std::size_t rows : {24u, 64u, 100u})
    for (std::size_t out_features : {64u, 128u, 384u}) {
      const std::size_t in_features = 128;
      if (!blas::detail::runs_libxsmm(blas::Trans::No, blas::Trans::Yes, rows, out_features, in_features, 1.0f, 1.0f,
                                      blas::detail::l2_cache_bytes(), blas::detail::libxsmm_kernels()))
        continue;
      const Variable x(uniform({rows, in_features}, -1, 1, rng));
      const Variable w(uniform({out_features, in_features}, -1, 1, rng));
      const Variable b(uniform({out_features}, -1, 1, rng));
      const Array plain = linear(x, w, b).value();
      const Array prepared = linear(x, prepare_weight(w), b).value();
      CHECK_MESSAGE(std::memcmp(plain.data(), prepared.data(), plain.size() * sizeof(real)) == 0,
                    "rows=" << rows << " out=" << out_features);
      ++compared;
    }
  CHECK(compared >= 3);  // 64 outputs run libxsmm with either kernels' rule; AVX-512's takes all 9
}

#if defined(__x86_64__)
namespace {
/// Bit 2 of XINUSE (XGETBV with ECX = 1): the AVX state — the upper halves of ymm0–15 — is not
/// in its initial, zeroed configuration. nullopt where the CPU cannot report it.
std::optional<bool> upper_halves_dirty() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(0xd, 1, &eax, &ebx, &ecx, &edx) || (eax & (1u << 2)) == 0) return std::nullopt;
  unsigned low = 0, high = 0;
  __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(1));
  return (low & (1u << 2)) != 0;
}
}  // namespace

TEST_CASE("float32: a product on libxsmm's kernels returns with the vector registers' upper halves clean") {
  // Left dirty, every SSE instruction after it (baseline-compiled code, libm's exp) pays a state
  // transition or a merge on Intel cores: beam decoding ran 2.7x slower (bench/README.md).
  if (libxsmm_turned_off("no libxsmm kernel runs")) return;
  const std::size_t m = 64, n = 128, k = 128;
  if (!blas::detail::runs_libxsmm(blas::Trans::No, blas::Trans::No, m, n, k, 1.0f, 0.0f,
                                  blas::detail::l2_cache_bytes(), blas::detail::libxsmm_kernels())) {
    MESSAGE("skipped: this CPU runs no libxsmm kernels");
    return;
  }
  if (!upper_halves_dirty().has_value()) {
    MESSAGE("skipped: this CPU does not report XINUSE (XGETBV 1)");
    return;
  }
  std::vector<real> a(m * k, 0.5f), b(k * n, 0.25f), c(m * n);
  parallel::set_num_threads(1);
  blas::gemm(blas::Trans::No, blas::Trans::No, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
  const bool dirty = *upper_halves_dirty();
  CHECK(c[0] == 0.5f * 0.25f * real(k));
  CHECK_FALSE(dirty);
}
#endif
