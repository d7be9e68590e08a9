// Which gemm kernel runs (lib/numerics/blas.hpp): qkv reports it, picks one that fits the CPU
// when OpenBLAS falls back to a generic one, never overrides OPENBLAS_CORETYPE, and gemm's
// values do not depend on the kernel beyond rounding nor on the thread count at all.
// Not a timing test: the speed is measured by `qkv-bench --sgemm` (bench/README.md).
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "lib/numerics/blas.hpp"
#include "lib/numerics/parallel.hpp"

using namespace qkv;
using blas::detail::Isa;

namespace {

// C = A B for A [m, k] and B [k, n] filled with small exact values, by qkv's gemm at `threads`.
std::vector<real> product(std::size_t m, std::size_t n, std::size_t k, int threads) {
  std::vector<real> a(m * k), b(k * n), c(m * n, real(-1));
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = real(int(i * 7 % 13) - 6) / 8;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = real(int(i * 5 % 11) - 5) / 16;
  parallel::set_num_threads(threads);
  blas::gemm(blas::Trans::No, blas::Trans::No, m, n, k, real(1), a.data(), k, b.data(), n, real(0), c.data(), n);
  parallel::set_num_threads(1);
  // The values are multiples of 1/128 with short sums: exact in any order, so any kernel gives them.
  for (std::size_t i = 0; i < m; i += 37)
    for (std::size_t j = 0; j < n; j += 29) {
      double expected = 0;
      for (std::size_t p = 0; p < k; ++p) expected += double(a[i * k + p]) * double(b[p * n + j]);
      REQUIRE(double(c[i * n + j]) == expected);
    }
  return c;
}

bool coretype_set() { return std::getenv("OPENBLAS_CORETYPE") != nullptr; }

}  // namespace

TEST_CASE("blas::describe names the kernel that runs and who chose it") {
  const std::string kernel = blas::kernel_name();
  CHECK(!kernel.empty());
  const std::string line = blas::describe();
  CAPTURE(line);
  CHECK(line.find("OpenBLAS") == 0);
  CHECK(line.find(kernel + " kernel") != std::string::npos);
  if (coretype_set()) CHECK(line.find("set by OPENBLAS_CORETYPE=") != std::string::npos);
  else CHECK(line.find("chosen by") != std::string::npos);
  // A forced core narrower than the CPU is kept, and the line says so.
  const bool narrower = blas::detail::better_core(kernel, blas::detail::cpu_isa()).has_value();
  CHECK((line.find("may be faster: unset OPENBLAS_CORETYPE") != std::string::npos) == (coretype_set() && narrower));
}

TEST_CASE("forced_core_note names the wider kernel a forced core leaves unused, and nothing otherwise") {
  using blas::detail::forced_core_note;
  CHECK(forced_core_note("Haswell", Isa::Avx512) ==
        "this CPU has AVX-512, whose SkylakeX kernel may be faster: unset OPENBLAS_CORETYPE to let qkv choose");
  CHECK(forced_core_note("Prescott", Isa::Avx2) ==
        "this CPU has AVX2, whose Haswell kernel may be faster: unset OPENBLAS_CORETYPE to let qkv choose");
  CHECK(!forced_core_note("Cooperlake", Isa::Avx512).has_value());
  CHECK(!forced_core_note("Haswell", Isa::Avx2).has_value());
  CHECK(!forced_core_note("SomeFutureCore", Isa::Avx512).has_value());  // unknown: OpenBLAS knows best
}

TEST_CASE("forced_core_why keeps the user's core, and says when OpenBLAS did not know the name") {
  using blas::detail::forced_core_why;
  CHECK(forced_core_why("Zen", "Zen", Isa::Avx2) == "set by OPENBLAS_CORETYPE=Zen");
  CHECK(forced_core_why("haswell", "Haswell", Isa::Avx2) == "set by OPENBLAS_CORETYPE=haswell");  // no case
  // OpenBLAS prints "Core not found" and runs its own pick: the line names what runs.
  CHECK(forced_core_why("", "Haswell", Isa::Avx2) ==
        "set by OPENBLAS_CORETYPE= (empty), not a core name OpenBLAS knows: it fell back to Haswell");
  CHECK(forced_core_why("Skylake", "Prescott", Isa::Avx512) ==
        "set by OPENBLAS_CORETYPE=Skylake, not a core name OpenBLAS knows: it fell back to Prescott; this CPU has "
        "AVX-512, whose SkylakeX kernel may be faster: unset OPENBLAS_CORETYPE to let qkv choose");
}

TEST_CASE("unrunnable_core_error refuses kernels wider than the CPU, and nothing else") {
  using blas::detail::unrunnable_core_error;
  CHECK(unrunnable_core_error("SkylakeX", "SkylakeX", Isa::Avx2) ==
        "OPENBLAS_CORETYPE=SkylakeX makes OpenBLAS run its SkylakeX kernels, which need AVX-512; this CPU has AVX2, "
        "so the first matrix product would stop the program with an illegal instruction. Unset OPENBLAS_CORETYPE "
        "to let qkv choose, or name a core this CPU runs (Haswell or Zen)");
  CHECK(unrunnable_core_error("zen", "Zen", Isa::Avx)->find("need AVX2; this CPU has AVX") != std::string::npos);
  CHECK(!unrunnable_core_error("Cooperlake", "Cooperlake", Isa::Avx512));
  CHECK(!unrunnable_core_error("Haswell", "Haswell", Isa::Avx512));  // narrower: runs (and gets a note)
  CHECK(!unrunnable_core_error("Prescott", "Prescott", Isa::Sse));
  CHECK(!unrunnable_core_error("SomeFutureCore", "SomeFutureCore", Isa::Sse));  // unknown: OpenBLAS knows best
}

TEST_CASE("a forced core this CPU cannot run is refused by name at the first product, not by SIGILL") {
  const blas::detail::Isa cpu = blas::detail::cpu_isa();
  if (cpu == Isa::Avx512) {
    MESSAGE("skipped: this CPU runs every OpenBLAS 0.3.21 x86-64 kernel (the refusal is checked on AVX2 hosts)");
    return;
  }
  const std::string original = blas::kernel_name();
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  const std::optional<std::string> previous = set ? std::optional<std::string>(set) : std::nullopt;
  // As if the environment had said SkylakeX at load: OpenBLAS installs kernels this CPU lacks.
  REQUIRE(blas::detail::select_openblas_core("SkylakeX"));
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  const std::string line = blas::detail::choose_kernel();
  CAPTURE(line);
  CHECK(line.find("SkylakeX kernel (set by OPENBLAS_CORETYPE=SkylakeX; refused: this CPU has") != std::string::npos);
  std::vector<real> a(64 * 64, real(1)), c(64 * 64);
  // Small (libxsmm's) and large (OpenBLAS's) products alike: no size decides whether it runs.
  for (const std::size_t n : {std::size_t{8}, std::size_t{64}})
    CHECK_THROWS_WITH(blas::gemm(blas::Trans::No, blas::Trans::No, n, n, n, real(1), a.data(), n, a.data(), n, real(0),
                                 c.data(), n),
                      doctest::Contains("OPENBLAS_CORETYPE=SkylakeX makes OpenBLAS run its SkylakeX kernels"));
  CHECK_THROWS_WITH(blas::sgemm_rate(64, 1), doctest::Contains("illegal instruction"));

  REQUIRE(blas::detail::select_openblas_core(original.c_str()));
  if (previous) setenv("OPENBLAS_CORETYPE", previous->c_str(), 1);
  else unsetenv("OPENBLAS_CORETYPE");
  blas::detail::choose_kernel();
  CHECK(blas::kernel_name() == original);
  CHECK(product(96, 80, 72, 1).size() == 96 * 80);  // runs again
}

TEST_CASE("the kernel chosen at start-up uses what the CPU has, unless OPENBLAS_CORETYPE says otherwise") {
  if (coretype_set()) return;  // the environment's choice stands (checked above)
  CAPTURE(blas::describe());
  // Nothing left to upgrade: OpenBLAS's own pick fits, or qkv has replaced it.
  CHECK(!blas::detail::better_core(blas::kernel_name(), blas::detail::cpu_isa()).has_value());
}

TEST_CASE("better_core upgrades a generic fallback to the CPU's ISA and leaves fitting or unknown cores") {
  using blas::detail::better_core;
  CHECK(better_core("Prescott", Isa::Avx512) == "SkylakeX");  // OpenBLAS 0.3.21 on an unknown Xeon
  CHECK(better_core("Prescott", Isa::Avx2) == "Haswell");
  CHECK(better_core("Sandybridge", Isa::Avx2) == "Haswell");
  CHECK(better_core("Haswell", Isa::Avx512) == "SkylakeX");
  CHECK(!better_core("Prescott", Isa::Sse));
  CHECK(!better_core("Prescott", Isa::Avx));  // no AVX kernel is a sure gain over SSE3's
  CHECK(!better_core("Cooperlake", Isa::Avx512));
  CHECK(!better_core("SKYLAKEX", Isa::Avx512));
  CHECK(!better_core("Zen", Isa::Avx2));
  CHECK(!better_core("SomeFutureCore", Isa::Avx512));
  CHECK(blas::detail::core_isa("Opteron(SSE3)") == Isa::Sse);
}

TEST_CASE("after a fallback to Prescott, choose_kernel switches OpenBLAS to the CPU's kernel and gemm values hold") {
  if (coretype_set()) return;  // select_openblas_core would not override it at start-up either
  const std::string original = blas::kernel_name();
  const std::vector<real> before = product(96, 80, 72, 1);

  // What OpenBLAS 0.3.21 does on a CPU it does not know.
  REQUIRE(blas::detail::select_openblas_core("Prescott"));
  CHECK(blas::kernel_name() == "Prescott");
  CHECK(std::getenv("OPENBLAS_CORETYPE") == nullptr);  // the environment is left as it came
  const std::vector<real> prescott = product(96, 80, 72, 1);

  const std::string line = blas::detail::choose_kernel();
  CAPTURE(line);
  const auto better = blas::detail::better_core("Prescott", blas::detail::cpu_isa());
  CHECK(blas::kernel_name() == better.value_or("Prescott"));
  if (better) CHECK(line.find("chosen by qkv: OpenBLAS picked Prescott") != std::string::npos);
  CHECK(std::getenv("OPENBLAS_CORETYPE") == nullptr);
  const std::vector<real> chosen = product(96, 80, 72, 1);
  CHECK(prescott == before);
  CHECK(chosen == before);

  REQUIRE(blas::detail::select_openblas_core(original.c_str()));
  blas::detail::choose_kernel();
  CHECK(blas::kernel_name() == original);
}

TEST_CASE("gemm on the chosen kernel gives the same bits on 1 and 2 threads") {
  // Rounded sums this time (values that are not exact): only the row split's guarantee holds.
  const std::size_t m = 160, n = 96, k = 300;
  std::vector<real> a(m * k), b(k * n), one(m * n), two(m * n);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = real(0.1) * real(i % 17) - real(0.7);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = real(0.3) / real(1 + i % 23);
  for (auto [threads, c] : {std::pair{1, &one}, std::pair{2, &two}}) {
    parallel::set_num_threads(threads);
    blas::gemm(blas::Trans::No, blas::Trans::Yes, m, n, k, real(1), a.data(), k, b.data(), k, real(0), c->data(), n);
  }
  parallel::set_num_threads(1);
  CHECK(one == two);
}
