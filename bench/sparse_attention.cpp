// qkv-sparse-bench: block-sparse attention (the fused kernel, block_sparse_attention) against
// dense attention with the same mask (matmul, masked_softmax, matmul: what DotProductAttention
// composes), forward and backward, over sequence lengths. Prints a Markdown table; see
// bench/README.md and docs/variants.md.
//
// Each (length, path) point runs in a child process of its own (fork), twice: once forward
// only, once forward + backward, so each child's peak resident set (getrusage ru_maxrss) is that
// pass's peak. The table gives it minus the child's resident set before it made its inputs:
// the inputs, the attention's saved state and its temporaries. Times are medians over
// --repeats after one warm-up.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "autograd/ops.hpp"
#include "layers/block_sparse.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/rng.hpp"

namespace {

using namespace qkv;
using Clock = std::chrono::steady_clock;

struct Settings {
  std::size_t batch = 1, heads = 4, head_dim = 64;
  BlockSparsePattern pattern{.block_size = 64, .global_tokens = 64, .window_blocks = 1, .random_blocks = 2};
  bool causal = false;
  int repeats = 3;
  int threads = 1;
};

struct Measurement {
  double forward_ms = 0, backward_ms = 0, peak_mb = 0;
};

double max_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // Linux reports kilobytes
}

/// The resident set now (VmRSS), for the baseline a child starts from.
double current_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      double kb = 0;
      status >> kb;
      return kb / 1024.0;
    }
    std::getline(status, key);
  }
  return 0;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

/// One point, in this (child) process: `sparse` picks the kernel, `backward` adds the backward.
Measurement measure(const Settings& s, std::size_t length, bool sparse, bool backward) {
  parallel::set_num_threads(s.threads);
  const double baseline = current_rss_mb();
  Rng rng(1);
  const Shape shape{s.batch, s.heads, length, s.head_dim};
  Variable q(normal(shape, 0, 1, rng), true), k(normal(shape, 0, 1, rng), true),
      v(normal(shape, 0, 1, rng), true);                       // [B, H, T, d]
  const Array grad_out = normal(shape, 0, 1, rng);             // [B, H, T, d]
  const real scale = real(1) / std::sqrt(real(s.head_dim));
  const BlockSparseLayout layout = block_sparse_layout(s.pattern, length, length, 0, s.causal);
  const BoolArray allowed = layout_allowed(layout);  // [T, T], for the dense path only
  std::vector<double> forward_ms, backward_ms;
  for (int r = 0; r <= s.repeats; ++r) {  // r = 0 warms up
    q.zero_grad(), k.zero_grad(), v.zero_grad();
    const auto start = Clock::now();
    Variable out = sparse ? block_sparse_attention(q, k, v, layout, std::nullopt, scale)
                          : matmul(masked_softmax(matmul(q, k, Trans::No, Trans::Yes, scale), allowed), v);
    const double f = ms_since(start);
    double b = 0;
    if (backward) {
      const auto back = Clock::now();
      out.backward(grad_out);
      b = ms_since(back);
    }
    if (r > 0) forward_ms.push_back(f), backward_ms.push_back(b);
  }
  return {median(forward_ms), median(backward_ms), max_rss_mb() - baseline};
}

/// The largest |a - b| over every element, relative to the largest |b|.
double relative_max_diff(const Array& a, const Array& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::abs(a.data()[i] - b.data()[i])));
    scale = std::max(scale, double(std::abs(b.data()[i])));
  }
  return scale == 0 ? diff : diff / scale;
}

/// --check: the kernel against the dense path on the same inputs, in this build's precision.
/// Returns max |sparse - dense| / max |dense| of the output and of the q, k, v gradients.
std::vector<double> check_point(const Settings& s, std::size_t length) {
  parallel::set_num_threads(s.threads);
  Rng rng(1);
  const Shape shape{s.batch, s.heads, length, s.head_dim};
  const Array qa = normal(shape, 0, 1, rng), ka = normal(shape, 0, 1, rng), va = normal(shape, 0, 1, rng);
  const Array grad_out = normal(shape, 0, 1, rng);  // [B, H, T, d]
  const real scale = real(1) / std::sqrt(real(s.head_dim));
  const BlockSparseLayout layout = block_sparse_layout(s.pattern, length, length, 0, s.causal);
  Variable q1(qa, true), k1(ka, true), v1(va, true), q2(qa, true), k2(ka, true), v2(va, true);
  Variable sparse = block_sparse_attention(q1, k1, v1, layout, std::nullopt, scale);
  sparse.backward(grad_out);
  Variable dense = matmul(masked_softmax(matmul(q2, k2, Trans::No, Trans::Yes, scale), layout_allowed(layout)), v2);
  dense.backward(grad_out);
  return {relative_max_diff(sparse.value(), dense.value()), relative_max_diff(q1.grad(), q2.grad()),
          relative_max_diff(k1.grad(), k2.grad()), relative_max_diff(v1.grad(), v2.grad())};
}

/// measure() in a child process, so that the peak resident set is this point's alone.
Measurement in_child(const Settings& s, std::size_t length, bool sparse, bool backward) {
  int fds[2];
  if (pipe(fds) != 0) throw Error("qkv-sparse-bench: pipe failed");
  const pid_t pid = fork();
  if (pid < 0) throw Error("qkv-sparse-bench: fork failed");
  if (pid == 0) {
    close(fds[0]);
    Measurement m{};
    int status = 0;
    try {
      m = measure(s, length, sparse, backward);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "qkv-sparse-bench: %s\n", e.what());
      status = 1;
    }
    const ssize_t written = write(fds[1], &m, sizeof m);
    _exit(written == static_cast<ssize_t>(sizeof m) ? status : 1);
  }
  close(fds[1]);
  Measurement m{};
  const ssize_t got = read(fds[0], &m, sizeof m);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got != static_cast<ssize_t>(sizeof m) || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw Error("qkv-sparse-bench: the child measuring T = " + std::to_string(length) + " failed");
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qkv-sparse-bench: block-sparse attention kernel vs dense masked attention"};
  Settings s;
  std::vector<std::size_t> lengths{256, 512, 1024, 2048, 4096};
  app.add_option("--lengths", lengths, "sequence lengths T");
  app.add_option("--batch", s.batch, "batch B");
  app.add_option("--heads", s.heads, "heads H");
  app.add_option("--head-dim", s.head_dim, "head size d");
  app.add_option("--block-size", s.pattern.block_size, "block size");
  app.add_option("--global-tokens", s.pattern.global_tokens, "global tokens");
  app.add_option("--window-blocks", s.pattern.window_blocks, "window, in blocks each side");
  app.add_option("--random-blocks", s.pattern.random_blocks, "random blocks per query block");
  app.add_option("--seed", s.pattern.seed, "seed of the random blocks");
  app.add_flag("--causal", s.causal, "causal pattern");
  app.add_option("--repeats", s.repeats, "timed repeats per point (medians), after one warm-up")->check(CLI::PositiveNumber);
  app.add_option("--threads", s.threads, "qkv threads")->check(CLI::PositiveNumber);
  bool check = false;
  app.add_flag("--check", check, "instead of timing: the kernel's output and gradients against the dense path's");
  CLI11_PARSE(app, argc, argv);
  try {
    s.pattern.validate();
    if (check) {
      std::printf("B %zu, H %zu, d %zu, %s%s, %zu-byte reals: max |sparse - dense| / max |dense|\n\n", s.batch,
                  s.heads, s.head_dim, s.pattern.describe().c_str(), s.causal ? ", causal" : "", sizeof(real));
      std::printf("| T | output | dq | dk | dv |\n|---:|---:|---:|---:|---:|\n");
      for (const std::size_t t : lengths) {
        const std::vector<double> d = check_point(s, t);
        std::printf("| %zu | %.2g | %.2g | %.2g | %.2g |\n", t, d[0], d[1], d[2], d[3]);
        std::fflush(stdout);
      }
      return 0;
    }
    std::printf("B %zu, H %zu, d %zu, %s%s, %d thread(s), median of %d\n\n", s.batch, s.heads, s.head_dim,
                s.pattern.describe().c_str(), s.causal ? ", causal" : "", s.threads, s.repeats);
    std::printf("| T | allowed | dense fwd ms | sparse fwd ms | dense fwd+bwd ms | sparse fwd+bwd ms | speed-up fwd+bwd | "
                "dense peak fwd / fwd+bwd MB | sparse peak fwd / fwd+bwd MB |\n");
    std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const std::size_t t : lengths) {
      const double allowed = double(block_sparse_layout(s.pattern, t, t, 0, s.causal).allowed_pairs()) / double(t * t);
      const Measurement dense_f = in_child(s, t, false, false), dense_b = in_child(s, t, false, true);
      const Measurement sparse_f = in_child(s, t, true, false), sparse_b = in_child(s, t, true, true);
      const double dense_total = dense_b.forward_ms + dense_b.backward_ms;
      const double sparse_total = sparse_b.forward_ms + sparse_b.backward_ms;
      std::printf("| %zu | %.1f %% | %.2f | %.2f | %.2f | %.2f | %.2fx | %.0f / %.0f | %.0f / %.0f |\n", t, 100 * allowed,
                  dense_f.forward_ms, sparse_f.forward_ms, dense_total, sparse_total, dense_total / sparse_total,
                  dense_f.peak_mb, dense_b.peak_mb, sparse_f.peak_mb, sparse_b.peak_mb);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv-sparse-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
