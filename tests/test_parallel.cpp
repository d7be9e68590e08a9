// qkv's thread pool (lib/numerics/parallel.hpp): chunks cover the range exactly once, errors come back
// to the caller, nested loops run serially, and results of the parallel kernels do not depend
// on the thread count.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <numeric>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "lib/numerics/blas.hpp"
#include "lib/numerics/parallel.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// Sets the pool size for one test and restores a single thread after it.
struct ThreadsForTest {
  explicit ThreadsForTest(int threads) { parallel::set_num_threads(threads); }
  ~ThreadsForTest() { parallel::set_num_threads(1); }
  ThreadsForTest(const ThreadsForTest&) = delete;
  ThreadsForTest& operator=(const ThreadsForTest&) = delete;
};

}  // namespace

TEST_CASE("parallel::for_chunks covers every index once, in fixed contiguous chunks") {
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    ThreadsForTest pool(threads);
    CHECK(parallel::num_threads() == threads);
    for (std::size_t count : {0u, 1u, 2u, 7u, 1000u}) {
      CAPTURE(count);
      std::vector<int> hits(count, 0);
      std::mutex mutex;
      std::set<std::pair<std::size_t, std::size_t>> chunks;
      parallel::for_chunks(count, 1, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) ++hits[i];  // disjoint chunks: no race
        std::lock_guard lock(mutex);
        chunks.emplace(begin, end);
      });
      CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
      const std::size_t expected = count == 0 ? 0 : std::min<std::size_t>(count, threads);
      CHECK(chunks.size() == expected);
      if (!chunks.empty()) CHECK(chunks.begin()->first == 0);  // chunk i is [i·n/k, (i+1)·n/k)
    }
  }
}

TEST_CASE("parallel::for_chunks runs chunks on more than one thread and respects min_chunk") {
  ThreadsForTest pool(2);
  std::mutex mutex;
  std::set<std::thread::id> seen;
  // Each chunk waits until both have started, which only two threads can satisfy.
  std::atomic<int> started{0};
  parallel::for_chunks(2, 1, [&](std::size_t, std::size_t) {
    ++started;
    while (started.load() < 2) std::this_thread::yield();
    std::lock_guard lock(mutex);
    seen.insert(std::this_thread::get_id());
  });
  CHECK(seen.size() == 2);
  CHECK(parallel::chunk_count(100, 60) == 1);  // too little work for two chunks
  CHECK(parallel::chunk_count(100, 50) == 2);
}

TEST_CASE("parallel::for_chunks rethrows a chunk's exception and the pool stays usable") {
  ThreadsForTest pool(2);
  CHECK_THROWS_WITH_AS(parallel::for_chunks(10, 1,
                                            [](std::size_t begin, std::size_t) {
                                              if (begin > 0) throw std::runtime_error("chunk failed");
                                            }),
                       "chunk failed", std::runtime_error);
  std::atomic<std::size_t> total{0};
  parallel::for_chunks(10, 1, [&](std::size_t begin, std::size_t end) { total += end - begin; });
  CHECK(total == 10);
}

TEST_CASE("parallel loops nested in a chunk run serially on that thread") {
  ThreadsForTest pool(2);
  std::atomic<int> inner_chunks{0};
  parallel::for_chunks(2, 1, [&](std::size_t, std::size_t) {
    CHECK(parallel::in_parallel_region());
    parallel::for_chunks(100, 1, [&](std::size_t begin, std::size_t end) {
      CHECK(begin == 0);
      CHECK(end == 100);
      ++inner_chunks;
    });
  });
  CHECK(inner_chunks == 2);
  CHECK_FALSE(parallel::in_parallel_region());
}

TEST_CASE("parallel::set_num_threads rejects nonsense and resizing from inside a loop") {
  CHECK_THROWS_WITH_AS(parallel::set_num_threads(0), doctest::Contains("set_num_threads: needs at least 1 thread, got 0"),
                       Error);
  ThreadsForTest pool(2);
  CHECK_THROWS_WITH_AS(parallel::for_chunks(2, 1, [](std::size_t, std::size_t) { parallel::set_num_threads(3); }),
                       doctest::Contains("cannot resize the pool from inside a parallel loop"), Error);
}

TEST_CASE("two user threads may run parallel loops at once") {
  ThreadsForTest pool(2);
  std::atomic<std::size_t> total{0};
  auto work = [&] {
    for (int repeat = 0; repeat < 200; ++repeat)
      parallel::for_chunks(64, 1, [&](std::size_t begin, std::size_t end) { total += end - begin; });
  };
  std::thread other(work);
  work();
  other.join();
  CHECK(total == 2 * 200 * 64);
}

TEST_CASE("a gemm split over threads by rows gives the single-threaded result bit for bit") {
  // Big enough to be split (over 2^20 multiply-adds), with ragged edges, every transpose; a
  // product with fewer than 32 rows is split by columns instead, which keeps the value to
  // rounding but not necessarily to the bit.
  const std::size_t k = 131;
  for (const auto& transposes : {std::pair{blas::Trans::No, blas::Trans::No}, std::pair{blas::Trans::Yes, blas::Trans::No},
                                 std::pair{blas::Trans::No, blas::Trans::Yes}, std::pair{blas::Trans::Yes, blas::Trans::Yes}}) {
    const blas::Trans ta = transposes.first, tb = transposes.second;
    for (const auto& size : {std::pair{std::size_t{203}, std::size_t{97}}, std::pair{std::size_t{97}, std::size_t{203}},
                             std::pair{std::size_t{20}, std::size_t{1000}}}) {
      const std::size_t rows = size.first, columns = size.second;
      CAPTURE(rows);
      CAPTURE(int(ta));
      CAPTURE(int(tb));
      const Array a = random_array({rows * k}, 1), b = random_array({k * columns}, 2);
      const Array c0 = random_array({rows * columns}, 3);
      const std::size_t lda = ta == blas::Trans::Yes ? rows : k, ldb = tb == blas::Trans::Yes ? k : columns;
      Array serial = c0, split = c0;
      blas::gemm(ta, tb, rows, columns, k, 0.5, a.data(), lda, b.data(), ldb, 1, serial.data(), columns);
      {
        ThreadsForTest pool(2);
        blas::gemm(ta, tb, rows, columns, k, 0.5, a.data(), lda, b.data(), ldb, 1, split.data(), columns);
      }
      if (rows >= 32) CHECK(max_abs_diff(serial, split) == 0);
      else CHECK(max_abs_diff(serial, split) < 1e-12);
      CHECK(max_abs_diff(serial, c0) > 1);  // the product did land in C
    }
  }
}
