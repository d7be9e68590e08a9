// qkv's gemm gives the same bits on 1, 2 and 3 threads over a sweep of shapes, transposes and
// alpha/beta (lib/numerics/blas.cpp): row chunks aligned to OpenBLAS's tiles and above its
// small-product paths. In float32, where OpenBLAS's sgemm has the most code paths. The sweep was
// run under every OPENBLAS_CORETYPE qkv may choose (bench/README.md); here it runs on whichever
// kernel was chosen.
#include <cstring>
#include <vector>

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
