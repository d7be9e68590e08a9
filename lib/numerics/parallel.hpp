#pragma once
// qkv's own threads: one small pool that splits a kernel's rows (or a gemm's output) into as
// many contiguous chunks as there are threads.
//
// Why not OpenBLAS's threads plus OpenMP for the rest? Two thread pools on two cores wait for
// each other: each spins while the other works (PyTorch at 2 threads here runs 2.5× slower than
// at 1 for that reason). So qkv keeps OpenBLAS single-threaded and gives big gemms to this pool
// too (blas::gemm splits them), and the pool's idle threads sleep: a worker spins for up to a
// millisecond after a job — kernels of one step follow each other that closely — then blocks
// on a futex until the next job.
//
// Determinism: chunks are fixed by (count, threads) alone, and every kernel that uses the pool
// writes each output element from exactly one chunk, in the same order as the serial loop. A
// seed gives the same result at the same thread count; the kernels here give the same result
// at any thread count.
#include <cstddef>
#include <type_traits>

namespace qkv::parallel {

/// Threads qkv uses, the caller's included (≥ 1; 1 means everything runs on the caller). Also
/// pins OpenBLAS to one thread: qkv splits gemms itself. Not to be called while a parallel
/// loop runs.
void set_num_threads(int threads);
int num_threads();

/// Elements per chunk below which an elementwise loop is not worth splitting: waking a thread
/// costs about as much as streaming this many floats through one core.
constexpr std::size_t min_elements_per_chunk = 32768;

/// True on a pool worker, or on the caller while it runs its own chunk: nested loops run serially.
bool in_parallel_region();

namespace detail {
using ChunkFunction = void (*)(const void* body, std::size_t begin, std::size_t end);
void run_chunks(std::size_t count, std::size_t chunks, ChunkFunction call, const void* body);
}  // namespace detail

/// How many chunks for_chunks splits `count` items into when each chunk should hold at least
/// `min_chunk` items (below that the wake-up costs more than the work).
std::size_t chunk_count(std::size_t count, std::size_t min_chunk);

/// Calls body(begin, end) for contiguous chunks covering [0, count): chunk i of n is
/// [i·count/n, (i+1)·count/n), n = chunk_count(count, min_chunk). Returns when all are done;
/// the first exception a chunk throws is rethrown here.
template <class Body>
void for_chunks(std::size_t count, std::size_t min_chunk, const Body& body) {
  const std::size_t chunks = chunk_count(count, min_chunk);
  if (chunks <= 1) {
    if (count > 0) body(std::size_t{0}, count);
    return;
  }
  detail::run_chunks(count, chunks,
                     [](const void* erased, std::size_t begin, std::size_t end) {
                       (*static_cast<const Body*>(erased))(begin, end);
                     },
                     &body);
}

}  // namespace qkv::parallel
