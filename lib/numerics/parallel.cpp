#include "lib/numerics/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "lib/numerics/error.hpp"

namespace qkv::parallel {

namespace {

thread_local bool inside_parallel_region = false;

/// Marks the current thread as running a chunk for as long as it lives.
class RegionGuard {
 public:
  RegionGuard() : was_inside_(inside_parallel_region) { inside_parallel_region = true; }
  ~RegionGuard() { inside_parallel_region = was_inside_; }
  RegionGuard(const RegionGuard&) = delete;
  RegionGuard& operator=(const RegionGuard&) = delete;

 private:
  bool was_inside_;
};

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// How long a waiting thread spins before it sleeps. A training step runs its kernels back to
// back, each a few to a few hundred microseconds apart, and waking a sleeping thread through a
// futex costs tens of microseconds on this kind of (virtual) machine: with a 30 µs spin the
// second thread made transformer-small only 1.44× faster, with 1 ms 1.58× (measured, quiet
// machine). Spinning is safe here because qkv has no second pool to spin against (OpenBLAS is
// kept to one thread), and it is bounded: between steps, or when the caller works alone for
// longer, the worker sleeps. libgomp's default spin before sleeping is of the same order.
constexpr std::chrono::microseconds spin_limit{1000};

/// Waits until `value` no longer holds `old`: spins briefly, then blocks (futex).
void wait_for_change(const std::atomic<std::uint32_t>& value, std::uint32_t old) {
  const auto start = std::chrono::steady_clock::now();
  for (unsigned i = 1;; ++i) {
    if (value.load(std::memory_order_acquire) != old) return;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > spin_limit) break;
  }
  while (value.load(std::memory_order_acquire) == old) value.wait(old, std::memory_order_acquire);
}

class Pool {
 public:
  ~Pool() { stop_workers(); }

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int threads) {
    std::lock_guard lock(dispatch_);
    stop_workers();
    stopping_ = false;
    // A new worker waits for the next job, not for one the generation counter has seen already.
    const std::uint32_t current = generation_.load(std::memory_order_relaxed);
    for (int index = 1; index < threads; ++index)
      workers_.emplace_back([this, index, current] { work(static_cast<std::size_t>(index), current); });
  }

  void run(std::size_t count, std::size_t chunks, detail::ChunkFunction call, const void* body) {
    // One job at a time. A second caller (another user thread) runs its loop serially rather
    // than wait: the result is the same, the chunks are only a way to share the work.
    std::unique_lock lock(dispatch_, std::try_to_lock);
    if (!lock.owns_lock()) {
      RegionGuard region;
      call(body, 0, count);
      return;
    }
    count_ = count;
    chunks_ = chunks;
    call_ = call;
    body_ = body;
    error_ = nullptr;
    pending_.store(static_cast<std::uint32_t>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);  // publishes the job
    generation_.notify_all();
    {
      RegionGuard region;
      run_chunk(0);
    }
    for (std::uint32_t left = pending_.load(std::memory_order_acquire); left != 0;
         left = pending_.load(std::memory_order_acquire))
      wait_for_change(pending_, left);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_chunk(std::size_t chunk) {
    if (chunk >= chunks_) return;
    const std::size_t begin = chunk * count_ / chunks_, end = (chunk + 1) * count_ / chunks_;
    try {
      call_(body_, begin, end);
    } catch (...) {
      std::lock_guard lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void work(std::size_t index, std::uint32_t seen) {
    inside_parallel_region = true;  // a worker only ever runs chunks
    for (;;) {
      wait_for_change(generation_, seen);
      seen = generation_.load(std::memory_order_acquire);
      if (stopping_) return;
      run_chunk(index);
      // Every worker reports, whether it had a chunk or not, so that the job's fields stay
      // untouched until no worker can still be reading them.
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
  }

  void stop_workers() {
    if (workers_.empty()) return;
    stopping_ = true;
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
  }

  std::mutex dispatch_;
  std::vector<std::thread> workers_;
  std::atomic<std::uint32_t> generation_{0};
  std::atomic<std::uint32_t> pending_{0};
  // The job. Written by the dispatching thread before generation_ moves (release) and read by
  // workers after they see it move (acquire).
  std::size_t count_ = 0, chunks_ = 0;
  detail::ChunkFunction call_ = nullptr;
  const void* body_ = nullptr;
  bool stopping_ = false;
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool instance;
  return instance;
}

}  // namespace

void set_num_threads(int threads) {
  check_arg(threads >= 1, "set_num_threads", [&] { return "needs at least 1 thread, got " + std::to_string(threads); });
  check_arg(!inside_parallel_region, "set_num_threads", "cannot resize the pool from inside a parallel loop");
  if (threads != pool().threads()) pool().resize(threads);
}

int num_threads() { return pool().threads(); }

bool in_parallel_region() { return inside_parallel_region; }

std::size_t chunk_count(std::size_t count, std::size_t min_chunk) {
  const auto threads = static_cast<std::size_t>(num_threads());
  if (threads == 1 || inside_parallel_region) return 1;
  return std::clamp<std::size_t>(count / std::max<std::size_t>(min_chunk, 1), 1, threads);
}

namespace detail {
void run_chunks(std::size_t count, std::size_t chunks, ChunkFunction call, const void* body) {
  pool().run(count, chunks, call, body);
}
}  // namespace detail

}  // namespace qkv::parallel
