#include "lib/numerics/kernels.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "lib/numerics/broadcast.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/simd.hpp"
#include "lib/numerics/vector_math.hpp"

namespace qkv::kernels {

// A kernel here is written as a serial "chunk" function over a range of rows, marked
// QKV_SIMD_CLONES (lib/numerics/simd.hpp) so that its loops get an AVX2 build, and a public function
// that shares the rows out among qkv's threads (lib/numerics/parallel.hpp). Each output element is
// written by one chunk, in the serial loop's order: results do not depend on the thread count.
// The exceptions, each for its reason: embedding_forward shares out rows but only copies them
// (nothing to vectorise); embedding_backward is serial, because repeated indices add into the
// same row; where_select and where_gradient are serial walks of broadcast rows (for_each_row)
// that only select.

namespace {

/// e^x: the vectorisable float32 version in training builds, std::exp in float64 (gradient
/// checks want every digit).
using vector_math::exp_of;

/// Rows per chunk so that a chunk holds at least parallel::min_elements_per_chunk elements.
std::size_t rows_per_chunk(std::size_t row_size) {
  return (parallel::min_elements_per_chunk + row_size - 1) / std::max<std::size_t>(row_size, 1);
}

/// Runs chunk(first, part) over consecutive runs of `split.outer` blocks, `part` being the
/// split of that run: an axis kernel processes its outer blocks independently.
template <class Chunk>
void for_outer_chunks(AxisSplit split, const Chunk& chunk) {
  parallel::for_chunks(split.outer, rows_per_chunk(split.size * split.inner),
                       [&](std::size_t first, std::size_t last) { chunk(first, AxisSplit{last - first, split.size, split.inner}); });
}

// A "fibre" is the `size` elements along the axis at one (outer, inner) position; element s of
// fibre (o, j) sits at offset (o · size + s) · inner + j and the fibre's number is o · inner + j.

/// The maximum of every fibre, into `maxes` ([outer · inner]).
QKV_SIMD_CLONES void fibre_max(const real* x, AxisSplit split, real* maxes) {
  const auto [outer, size, inner] = split;
  if (size == 0) return;  // an empty axis has no max, and no element will need one
  for (std::size_t o = 0; o < outer; ++o) {
    const real* block = x + o * size * inner;  // [size, inner]
    real* block_max = maxes + o * inner;       // [inner]
    std::copy(block, block + inner, block_max);
    for (std::size_t s = 1; s < size; ++s)
      for (std::size_t j = 0; j < inner; ++j) block_max[j] = std::max(block_max[j], block[s * inner + j]);
  }
}

/// For every fibre: total = Σ_s term(offset, fibre) in double, value = finish(fibre, total),
/// then update(offset, fibre, value) for each of its elements. The last axis (inner == 1)
/// walks contiguous rows; other axes walk [size, inner] blocks row by row so that the inner
/// loop stays contiguous too, with one running total per inner position. Offsets and fibre
/// numbers count from the start of `split`'s first block.
template <class Term, class Finish, class Update>
void sum_then_update(AxisSplit split, Term term, Finish finish, Update update) {
  const auto [outer, size, inner] = split;
  if (inner == 1) {
    for (std::size_t o = 0; o < outer; ++o) {
      const std::size_t base = o * size;
      double total = 0;
      for (std::size_t s = 0; s < size; ++s) total += term(base + s, o);
      const real value = finish(o, total);
      for (std::size_t s = 0; s < size; ++s) update(base + s, o, value);
    }
    return;
  }
  std::vector<double> totals(inner);
  std::vector<real> values(inner);
  for (std::size_t o = 0; o < outer; ++o) {
    const std::size_t base = o * size * inner;
    const std::size_t first_fibre = o * inner;
    std::fill(totals.begin(), totals.end(), 0.0);
    for (std::size_t s = 0; s < size; ++s)
      for (std::size_t j = 0; j < inner; ++j) totals[j] += term(base + s * inner + j, first_fibre + j);
    for (std::size_t j = 0; j < inner; ++j) values[j] = finish(first_fibre + j, totals[j]);
    for (std::size_t s = 0; s < size; ++s)
      for (std::size_t j = 0; j < inner; ++j) update(base + s * inner + j, first_fibre + j, values[j]);
  }
}

// ---- serial chunks of the softmax family --------------------------------------------------

QKV_SIMD_CLONES void softmax_chunk(const real* x, real* y, AxisSplit split) {
  // Subtracting each fibre's max keeps every exp() in (0, 1]: no overflow for any logits.
  std::vector<real> maxes(split.outer * split.inner);
  fibre_max(x, split, maxes.data());
  sum_then_update(
      split,
      [&](std::size_t i, std::size_t f) {
        y[i] = exp_of(x[i] - maxes[f]);
        return double(y[i]);
      },
      [](std::size_t, double total) { return real(1.0 / total); },
      [&](std::size_t i, std::size_t, real inverse_total) { y[i] *= inverse_total; });
}

QKV_SIMD_CLONES void log_softmax_chunk(const real* x, real* y, AxisSplit split) {
  std::vector<real> maxes(split.outer * split.inner);
  fibre_max(x, split, maxes.data());
  // log softmax = (x - max) - log Σ exp(x - max): the sum is >= 1, so its log is finite, and
  // x - max is formed before anything large is added (max + log Σ would round away the small
  // part for logits around 1e4 in float32).
  sum_then_update(
      split, [&](std::size_t i, std::size_t f) { return double(exp_of(x[i] - maxes[f])); },
      [](std::size_t, double total) { return real(std::log(total)); },
      [&](std::size_t i, std::size_t f, real log_total) { y[i] = (x[i] - maxes[f]) - log_total; });
}

QKV_SIMD_CLONES void softmax_backward_chunk(const real* grad_y, const real* y, real* grad_x, AxisSplit split,
                                            bool accumulate) {
  const auto dot_of = [&](std::size_t i, std::size_t) { return double(grad_y[i]) * double(y[i]); };
  const auto finish = [](std::size_t, double total) { return real(total); };
  if (accumulate)
    sum_then_update(split, dot_of, finish, [&](std::size_t i, std::size_t, real dot) { grad_x[i] += y[i] * (grad_y[i] - dot); });
  else
    sum_then_update(split, dot_of, finish, [&](std::size_t i, std::size_t, real dot) { grad_x[i] = y[i] * (grad_y[i] - dot); });
}

QKV_SIMD_CLONES void log_softmax_backward_chunk(const real* grad_y, const real* y, real* grad_x, AxisSplit split) {
  sum_then_update(
      split, [&](std::size_t i, std::size_t) { return double(grad_y[i]); },
      [](std::size_t, double total) { return real(total); },
      [&](std::size_t i, std::size_t, real grad_total) { grad_x[i] += grad_y[i] - exp_of(y[i]) * grad_total; });
}

/// One row of masked softmax: `keep` is read with stride `keep_step`. The exps are formed in
/// a loop of their own (it vectorises) and summed in a second one, in order and in double: a
/// single loop doing both ran the exps one at a time, behind the serial sum. Every value is the
/// one the fused loop gave.
}  // namespace

QKV_SIMD_CLONES void masked_softmax_row(const real* x, const bool* allowed, std::size_t keep_step, std::size_t count,
                                        real* y) {
  // The mask read as bytes: GCC does not vectorise loads of bool.
  const auto* keep = reinterpret_cast<const unsigned char*>(allowed);
  // Four running maxima: the max of the kept scores does not depend on the order (a NaN score
  // is skipped by std::max in either order, and of +0 and -0, which is kept changes no x - max).
  constexpr real lowest = -std::numeric_limits<real>::infinity();
  real partial[4] = {lowest, lowest, lowest, lowest};
  std::size_t j = 0;
  if (keep_step == 1) {
    for (; j + 4 <= count; j += 4)
      for (std::size_t lane = 0; lane < 4; ++lane)
        partial[lane] = std::max(partial[lane], keep[j + lane] != 0 ? x[j + lane] : lowest);
  }
  for (; j < count; ++j)
    if (keep[j * keep_step] != 0) partial[0] = std::max(partial[0], x[j]);
  const real largest = std::max(std::max(partial[0], partial[1]), std::max(partial[2], partial[3]));
  // No allowed key: the row attends to nothing, so it gets no weight at all.
  if (largest == lowest) {
    std::fill(y, y + count, real(0));
    return;
  }
  // exp of a masked score is computed and dropped (the select vectorises; a branch would not).
  // vector_math::exp saturates instead of overflowing, so no inf appears even then. The exps
  // get a loop of floats alone: with the mask's bytes in it GCC vectorised 16 at a time and
  // left a row of 24 keys (transformer-tiny) 8 scalar exps.
  for (std::size_t i = 0; i < count; ++i) y[i] = exp_of(x[i] - largest);
  if (keep_step == 1)
    for (std::size_t i = 0; i < count; ++i) y[i] = keep[i] != 0 ? y[i] : real(0);
  else
    for (std::size_t i = 0; i < count; ++i) y[i] = keep[i * keep_step] != 0 ? y[i] : real(0);
  double total = 0;
  for (std::size_t i = 0; i < count; ++i) total += double(y[i]);
  const real inverse_total = real(1.0 / total);
  for (std::size_t i = 0; i < count; ++i) y[i] *= inverse_total;
}

void softmax_rows(const real* x, real* y, std::size_t rows, std::size_t count) {
  softmax_chunk(x, y, AxisSplit{rows, count, 1});
}

void softmax_backward_row(const real* grad_y, const real* y, std::size_t count, GradientOut grad_x) {
  softmax_backward_chunk(grad_y, y, grad_x.data, AxisSplit{1, count, 1}, grad_x.accumulate);
}

// ---- softmax ------------------------------------------------------------------------------

void softmax_forward(const real* x, real* y, AxisSplit split) {
  const std::size_t block = split.size * split.inner;
  for_outer_chunks(split, [&](std::size_t first, AxisSplit part) { softmax_chunk(x + first * block, y + first * block, part); });
}

void log_softmax_forward(const real* x, real* y, AxisSplit split) {
  const std::size_t block = split.size * split.inner;
  for_outer_chunks(split,
                   [&](std::size_t first, AxisSplit part) { log_softmax_chunk(x + first * block, y + first * block, part); });
}

void softmax_backward(const real* grad_y, const real* y, GradientOut grad_x, AxisSplit split) {
  const std::size_t block = split.size * split.inner;
  for_outer_chunks(split, [&](std::size_t first, AxisSplit part) {
    const std::size_t offset = first * block;
    softmax_backward_chunk(grad_y + offset, y + offset, grad_x.data + offset, part, grad_x.accumulate);
  });
}

void log_softmax_backward(const real* grad_y, const real* y, real* grad_x, AxisSplit split) {
  const std::size_t block = split.size * split.inner;
  for_outer_chunks(split, [&](std::size_t first, AxisSplit part) {
    const std::size_t offset = first * block;
    log_softmax_backward_chunk(grad_y + offset, y + offset, grad_x + offset, part);
  });
}

void masked_softmax_forward(const real* x, const bool* allowed, const Shape& shape, const Shape& mask_strides, real* y) {
  const Shape strides[2] = {strides_of(shape), mask_strides};
  const std::size_t keep_step = mask_strides.empty() ? 0 : mask_strides.back();
  parallel_for_each_row(shape, strides, parallel::min_elements_per_chunk, [&](std::size_t o, std::size_t m, std::size_t count) {
    masked_softmax_row(x + o, allowed + m, keep_step, count, y + o);
  });
}

// ---- cross-entropy ----------------------------------------------------------------------------

namespace {

/// Row maxima, log Σ exp and each counted row's loss for rows [0, rows) of a chunk.
QKV_SIMD_CLONES void cross_entropy_chunk(const real* logits, const std::int64_t* targets, std::size_t rows,
                                         std::size_t classes, std::int64_t ignore_index, double smoothing,
                                         real* row_max, real* row_log_total, double* row_loss) {
  const AxisSplit split{rows, classes, 1};  // [rows, C], softmax over C
  fibre_max(logits, split, row_max);
  sum_then_update(
      split, [&](std::size_t i, std::size_t row) { return double(exp_of(logits[i] - row_max[row])); },
      [&](std::size_t row, double total) {
        row_log_total[row] = real(std::log(total));
        return real(0);
      },
      [](std::size_t, std::size_t, real) {});
  for (std::size_t row = 0; row < rows; ++row) {
    row_loss[row] = 0;
    if (targets[row] == ignore_index) continue;
    const real* z = logits + row * classes;  // [C]
    const double max = row_max[row], log_total = row_log_total[row];
    // -log p_c = (max - z_c) + log_total, so mean_c(-log p_c) = max - mean_c(z_c) + log_total.
    const double target_nll = (max - double(z[targets[row]])) + log_total;
    double uniform_nll = 0;
    if (smoothing != 0) {
      double shifted_total = 0;
      for (std::size_t c = 0; c < classes; ++c) shifted_total += max - double(z[c]);
      uniform_nll = shifted_total / double(classes) + log_total;
    }
    row_loss[row] = (1 - smoothing) * target_nll + smoothing * uniform_nll;
  }
}

QKV_SIMD_CLONES void cross_entropy_backward_chunk(real scale, const real* logits, const std::int64_t* targets,
                                                  const real* row_max, const real* row_log_total, std::size_t rows,
                                                  std::size_t classes, std::int64_t ignore_index, real uniform_share,
                                                  real target_share, real* grad_logits) {
  for (std::size_t row = 0; row < rows; ++row) {
    if (targets[row] == ignore_index) continue;
    const real* z = logits + row * classes;  // [C]
    real* dz = grad_logits + row * classes;  // [C]
    const real max = row_max[row], log_total = row_log_total[row];
    // d loss_row / dz = softmax(z) - (smoothed target distribution).
    for (std::size_t c = 0; c < classes; ++c) dz[c] += scale * (exp_of((z[c] - max) - log_total) - uniform_share);
    dz[targets[row]] -= scale * target_share;
  }
}

}  // namespace

CrossEntropyForward cross_entropy_forward(const real* logits, const std::int64_t* targets,
                                          std::size_t rows, std::size_t classes,
                                          std::int64_t ignore_index, real label_smoothing,
                                          real* row_max, real* row_log_total) {
  std::vector<double> row_loss(rows);
  parallel::for_chunks(rows, rows_per_chunk(classes), [&](std::size_t first, std::size_t last) {
    cross_entropy_chunk(logits + first * classes, targets + first, last - first, classes, ignore_index,
                        label_smoothing, row_max + first, row_log_total + first, row_loss.data() + first);
  });
  // Summed in row order on one thread, so the loss does not depend on the thread count.
  double loss_total = 0;
  CrossEntropyForward result;
  for (std::size_t row = 0; row < rows; ++row) {
    if (targets[row] == ignore_index) continue;
    ++result.counted;
    loss_total += row_loss[row];
  }
  // Nothing counted: the loss is 0 rather than PyTorch's 0/0 = NaN.
  if (result.counted > 0) result.loss = real(loss_total / double(result.counted));
  return result;
}

void cross_entropy_backward(real grad_loss, const real* logits, const std::int64_t* targets,
                            const real* row_max, const real* row_log_total, std::size_t rows, std::size_t classes,
                            std::int64_t ignore_index, real label_smoothing, std::size_t counted,
                            real* grad_logits) {
  if (counted == 0) return;
  const real scale = grad_loss / real(counted);
  const real uniform_share = label_smoothing / real(classes);
  const real target_share = real(1) - label_smoothing;
  parallel::for_chunks(rows, rows_per_chunk(classes), [&](std::size_t first, std::size_t last) {
    cross_entropy_backward_chunk(scale, logits + first * classes, targets + first, row_max + first,
                                 row_log_total + first, last - first, classes, ignore_index, uniform_share,
                                 target_share, grad_logits + first * classes);
  });
}

// ---- layer norm ---------------------------------------------------------------------------

namespace {

// The row sums of layer norm run in double and in order, each a chain of dependent adds: the
// kernels below walk `Rows` rows side by side so that their chains overlap, every row's sum
// still taken in its own order (the same values as one row at a time).

/// Each row's mean and sum of squared deviations from it, for `Rows` rows of x [Rows, D].
template <std::size_t Rows>
[[gnu::always_inline]] inline void layer_norm_moments(const real* x, std::size_t dim, double* means, double* squares) {
  double totals[Rows] = {};
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t r = 0; r < Rows; ++r) totals[r] += x[r * dim + i];
  for (std::size_t r = 0; r < Rows; ++r) {
    means[r] = totals[r] / double(dim);
    squares[r] = 0;
  }
  // Two passes (mean, then squared deviations) instead of E[x²] - E[x]²: no cancellation.
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t r = 0; r < Rows; ++r) {
      const double deviation = x[r * dim + i] - means[r];
      squares[r] += deviation * deviation;
    }
}

/// Each row's Σ ĝ and Σ ĝ · x̂ (ĝ = grad_y ⊙ weight, x̂ the normalised input), for `Rows` rows.
template <std::size_t Rows>
[[gnu::always_inline]] inline void layer_norm_grad_sums(const real* grad_y, const real* x, const real* weight,
                                                        const real* mean, const real* rstd, std::size_t dim,
                                                        double* grad_totals, double* grad_dots) {
  for (std::size_t r = 0; r < Rows; ++r) grad_totals[r] = 0, grad_dots[r] = 0;
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t r = 0; r < Rows; ++r) {
      const double g = double(grad_y[r * dim + i]) * (weight ? double(weight[i]) : 1.0);
      grad_totals[r] += g;
      grad_dots[r] += g * double(x[r * dim + i] - mean[r]) * double(rstd[r]);
    }
}

constexpr std::size_t layer_norm_row_group = 4;

QKV_SIMD_CLONES void layer_norm_chunk(const real* x, const real* weight, const real* bias, std::size_t rows,
                                      std::size_t dim, real eps, real* y, real* mean, real* rstd) {
  constexpr std::size_t group = layer_norm_row_group;
  for (std::size_t first = 0; first < rows; first += group) {
    const std::size_t count = std::min(group, rows - first);
    double means[group], squares[group];
    if (count == group) layer_norm_moments<group>(x + first * dim, dim, means, squares);
    else
      for (std::size_t r = 0; r < count; ++r) layer_norm_moments<1>(x + (first + r) * dim, dim, means + r, squares + r);
    for (std::size_t r = 0; r < count; ++r) {
      const std::size_t row = first + r;
      const real* xr = x + row * dim;  // [D]
      real* yr = y + row * dim;        // [D]
      const real row_rstd = real(1.0 / std::sqrt(squares[r] / double(dim) + double(eps)));
      mean[row] = real(means[r]);
      rstd[row] = row_rstd;
      const real shift = mean[row];
      if (weight && bias)
        for (std::size_t i = 0; i < dim; ++i) yr[i] = (xr[i] - shift) * row_rstd * weight[i] + bias[i];
      else
        for (std::size_t i = 0; i < dim; ++i) {
          const real normalized = (xr[i] - shift) * row_rstd;
          yr[i] = normalized * (weight ? weight[i] : real(1)) + (bias ? bias[i] : real(0));
        }
    }
  }
}

QKV_SIMD_CLONES void layer_norm_grad_x_chunk(const real* grad_y, const real* x, const real* weight, const real* mean,
                                             const real* rstd, std::size_t rows, std::size_t dim, real* grad_x,
                                             bool accumulate) {
  constexpr std::size_t group = layer_norm_row_group;
  for (std::size_t first = 0; first < rows; first += group) {
    const std::size_t count = std::min(group, rows - first);
    // ĝ = grad_y ⊙ weight; the two means are the projections that normalisation removes.
    double grad_totals[group], grad_dots[group];
    if (count == group)
      layer_norm_grad_sums<group>(grad_y + first * dim, x + first * dim, weight, mean + first, rstd + first, dim,
                                  grad_totals, grad_dots);
    else
      for (std::size_t r = 0; r < count; ++r)
        layer_norm_grad_sums<1>(grad_y + (first + r) * dim, x + (first + r) * dim, weight, mean + first + r,
                                rstd + first + r, dim, grad_totals + r, grad_dots + r);
    for (std::size_t r = 0; r < count; ++r) {
      const std::size_t row = first + r;
      const real* gr = grad_y + row * dim;  // [D]
      const real* xr = x + row * dim;       // [D]
      const real row_mean = mean[row], row_rstd = rstd[row];
      const real grad_mean = real(grad_totals[r] / double(dim));
      const real grad_dot_mean = real(grad_dots[r] / double(dim));
      real* dxr = grad_x + row * dim;  // [D]
      for (std::size_t i = 0; i < dim; ++i) {
        const real g = gr[i] * (weight ? weight[i] : real(1));
        const real normalized = (xr[i] - row_mean) * row_rstd;
        dxr[i] = (accumulate ? dxr[i] : real(0)) + row_rstd * (g - grad_mean - normalized * grad_dot_mean);
      }
    }
  }
}

/// grad_weight and grad_bias for columns [first, last): every row, in row order.
QKV_SIMD_CLONES void layer_norm_grad_params_chunk(const real* grad_y, const real* x, const real* mean,
                                                  const real* rstd, std::size_t rows, std::size_t dim,
                                                  std::size_t first, std::size_t last, real* grad_weight,
                                                  real* grad_bias) {
  for (std::size_t row = 0; row < rows; ++row) {
    const real* gr = grad_y + row * dim;  // [D]
    const real* xr = x + row * dim;       // [D]
    const real row_mean = mean[row], row_rstd = rstd[row];
    if (grad_weight)
      for (std::size_t i = first; i < last; ++i) grad_weight[i] += gr[i] * (xr[i] - row_mean) * row_rstd;
    if (grad_bias)
      for (std::size_t i = first; i < last; ++i) grad_bias[i] += gr[i];
  }
}

}  // namespace

void layer_norm_forward(const real* x, const real* weight, const real* bias, std::size_t rows,
                        std::size_t dim, real eps, real* y, real* mean, real* rstd) {
  parallel::for_chunks(rows, rows_per_chunk(dim), [&](std::size_t first, std::size_t last) {
    layer_norm_chunk(x + first * dim, weight, bias, last - first, dim, eps, y + first * dim, mean + first, rstd + first);
  });
}

void layer_norm_backward(const real* grad_y, const real* x, const real* weight, const real* mean,
                         const real* rstd, std::size_t rows, std::size_t dim, GradientOut grad_x,
                         real* grad_weight, real* grad_bias) {
  if (grad_x.data)
    parallel::for_chunks(rows, rows_per_chunk(dim), [&](std::size_t first, std::size_t last) {
      layer_norm_grad_x_chunk(grad_y + first * dim, x + first * dim, weight, mean + first, rstd + first, last - first,
                              dim, grad_x.data + first * dim, grad_x.accumulate);
    });
  // The parameters' gradients sum over rows: threads take columns instead, so that each sum
  // still runs over the rows in order. Columns are shared in blocks of 16 floats (a cache line).
  if (grad_weight || grad_bias) {
    constexpr std::size_t column_block = 16;
    const std::size_t blocks = (dim + column_block - 1) / column_block;
    parallel::for_chunks(blocks, std::max<std::size_t>(1, rows_per_chunk(rows) / column_block),
                         [&](std::size_t first, std::size_t last) {
      layer_norm_grad_params_chunk(grad_y, x, mean, rstd, rows, dim, first * column_block,
                                   std::min(dim, last * column_block), grad_weight, grad_bias);
    });
  }
}

// ---- reductions over rows ------------------------------------------------------------------

namespace {

QKV_SIMD_CLONES void add_column_sums_chunk(const real* x, std::size_t rows, std::size_t cols, std::size_t first,
                                           std::size_t last, real* out) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = first; c < last; ++c) out[c] += x[r * cols + c];
}

constexpr std::size_t square_block = 4096;

QKV_SIMD_CLONES double sum_of_squares_block(const real* x, std::size_t count) {
  // Four running sums let the loop vectorise without reassociating across blocks.
  double partial[4] = {0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 4 <= count; i += 4)
    for (std::size_t lane = 0; lane < 4; ++lane) partial[lane] += double(x[i + lane]) * double(x[i + lane]);
  for (; i < count; ++i) partial[0] += double(x[i]) * double(x[i]);
  return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

}  // namespace

void add_column_sums(const real* x, std::size_t rows, std::size_t cols, real* out) {
  constexpr std::size_t column_block = 16;  // a cache line of floats per thread boundary
  const std::size_t blocks = (cols + column_block - 1) / column_block;
  parallel::for_chunks(blocks, std::max<std::size_t>(1, rows_per_chunk(rows) / column_block),
                       [&](std::size_t first, std::size_t last) {
    add_column_sums_chunk(x, rows, cols, first * column_block, std::min(cols, last * column_block), out);
  });
}

double sum_of_squares(const real* x, std::size_t count) {
  const std::size_t blocks = (count + square_block - 1) / square_block;
  std::vector<double> partial(blocks);
  parallel::for_chunks(blocks, parallel::min_elements_per_chunk / square_block, [&](std::size_t first, std::size_t last) {
    for (std::size_t b = first; b < last; ++b) {
      const std::size_t begin = b * square_block;
      partial[b] = sum_of_squares_block(x + begin, std::min(square_block, count - begin));
    }
  });
  double total = 0;
  for (double value : partial) total += value;
  return total;
}

// ---- embedding ------------------------------------------------------------------------------

void embedding_forward(const real* weight, const std::int64_t* indices, std::size_t count,
                       std::size_t dim, real* out) {
  parallel::for_chunks(count, rows_per_chunk(dim), [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) {
      const real* row = weight + static_cast<std::size_t>(indices[i]) * dim;  // [D]
      std::copy(row, row + dim, out + i * dim);
    }
  });
}

void embedding_backward(const real* grad_out, const std::int64_t* indices, std::size_t count,
                        std::size_t dim, real* grad_weight) {
  // Serial: repeated indices add into the same row.
  for (std::size_t i = 0; i < count; ++i) {
    real* row = grad_weight + static_cast<std::size_t>(indices[i]) * dim;  // [D]
    const real* g = grad_out + i * dim;                                     // [D]
    for (std::size_t k = 0; k < dim; ++k) row[k] += g[k];
  }
}

// ---- dropout --------------------------------------------------------------------------------

namespace {

/// Elements [first, last) (first even) of a dropout mask drawn from `key`: element i keeps
/// when its 32-bit uniform is at or above `threshold`, the uniforms of elements 2j and 2j + 1
/// being the two halves of SplitMix64's output j for the seed `key` (a counter-based stream).
/// With `relu_first`, relu(x) is what gets dropped out (relu_dropout_forward); with `residual`,
/// y = residual + the dropped-out x (add_dropout_forward).
/// No contraction here: residual + x · scale must round the product and then the sum, as the
/// dropout op and the add op do, not fuse them into one multiply-add.
__attribute__((optimize("fp-contract=off")))
QKV_SIMD_CLONES_AVX512 void dropout_chunk(const real* x, real keep_scale, std::uint64_t key, std::uint64_t threshold,
                                   std::size_t first, std::size_t last, std::uint8_t* keep, real* y,
                                   bool relu_first = false, const real* residual = nullptr) {
  const auto bits_of_pair = [&](std::size_t i) { return splitmix64_mix(key + (i / 2) * splitmix64_increment); };
  const std::size_t pairs_end = first + (last - first) / 2 * 2;
  // Counted in pairs from a 64-bit counter: the loop then vectorises (AVX2 emulates the 64-bit
  // multiplies with 32-bit ones, AVX-512 has them).
  const std::uint64_t first_pair = first / 2, pair_count = (pairs_end - first) / 2;
  std::uint8_t* keep_pairs = keep + first;
  if constexpr (std::endian::native == std::endian::little) {
    // A block of hashes, then their 32-bit halves compared as 32-bit lanes, low half first: the
    // same decisions as taking each half apart, without widening every comparison to 64 bits
    // and packing the results back into bytes (which cost as much as the hash).
    constexpr std::size_t block = 32;
    std::uint64_t hashes[block];
    std::uint32_t halves[2 * block];
    const bool drop_all = threshold > 0xffffffffULL;  // p within 2^-32 of 1
    const auto low_threshold = static_cast<std::uint32_t>(drop_all ? 0 : threshold);
    for (std::uint64_t start = 0; start < pair_count; start += block) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(block, pair_count - start));
      for (std::size_t p = 0; p < n; ++p) hashes[p] = splitmix64_mix(key + (first_pair + start + p) * splitmix64_increment);
      std::memcpy(halves, hashes, n * sizeof(std::uint64_t));
      std::uint8_t* to = keep_pairs + 2 * start;
      for (std::size_t e = 0; e < 2 * n; ++e) to[e] = static_cast<std::uint8_t>(!drop_all && halves[e] >= low_threshold);
    }
  } else {
    for (std::uint64_t p = 0; p < pair_count; ++p) {
      const std::uint64_t bits = splitmix64_mix(key + (first_pair + p) * splitmix64_increment);
      keep_pairs[2 * p] = static_cast<std::uint8_t>((bits & 0xffffffffULL) >= threshold);
      keep_pairs[2 * p + 1] = static_cast<std::uint8_t>((bits >> 32) >= threshold);
    }
  }
  if (pairs_end < last) keep[pairs_end] = static_cast<std::uint8_t>((bits_of_pair(pairs_end) & 0xffffffffULL) >= threshold);
  if (y == nullptr) return;  // the mask only (dropout_mask)
  if (relu_first)  // relu's value, v > 0 ? v : 0, then the dropout's product, as the two ops form them
    for (std::size_t i = first; i < last; ++i) y[i] = (x[i] > 0 ? x[i] : real(0)) * (keep_scale * static_cast<real>(keep[i]));
  else if (residual)  // the dropout's product, then the sum, as the two ops form them
    for (std::size_t i = first; i < last; ++i) y[i] = residual[i] + x[i] * (keep_scale * static_cast<real>(keep[i]));
  else
    for (std::size_t i = first; i < last; ++i) y[i] = x[i] * (keep_scale * static_cast<real>(keep[i]));
}

/// relu_dropout_backward's rows: the dropout's gradient, then relu's factor, as the two ops form them.
QKV_SIMD_CLONES void relu_dropout_backward_chunk(const real* grad_y, const real* x, const std::uint8_t* keep,
                                                 real keep_scale, std::size_t first, std::size_t last, real* grad_x,
                                                 bool accumulate) {
  if (accumulate)
    for (std::size_t i = first; i < last; ++i)
      grad_x[i] += (grad_y[i] * (keep_scale * static_cast<real>(keep[i]))) * static_cast<real>(x[i] > 0);
  else
    for (std::size_t i = first; i < last; ++i)
      grad_x[i] = (grad_y[i] * (keep_scale * static_cast<real>(keep[i]))) * static_cast<real>(x[i] > 0);
}

QKV_SIMD_CLONES void dropout_backward_chunk(const real* grad_y, const std::uint8_t* keep, real keep_scale,
                                            std::size_t first, std::size_t last, real* grad_x, bool accumulate) {
  if (accumulate)
    for (std::size_t i = first; i < last; ++i) grad_x[i] += grad_y[i] * (keep_scale * static_cast<real>(keep[i]));
  else
    for (std::size_t i = first; i < last; ++i) grad_x[i] = grad_y[i] * (keep_scale * static_cast<real>(keep[i]));
}

}  // namespace

namespace {

void dropout_forward_with(const real* x, real p, Rng& rng, std::size_t count, std::uint8_t* keep, real* y,
                          bool relu_first, const real* residual = nullptr) {
  // Scaling the kept elements by 1/(1-p) keeps the expected value, so eval needs no rescale.
  const real keep_scale = real(1) / (real(1) - p);
  // Counter-based: one draw from `rng` keys the whole mask, and element i's decision is a hash
  // of (key, i). Any thread can draw any element, in any order, with the same result. The
  // element is dropped when its uniform u / 2^32 < p, i.e. when u < ceil(p · 2^32).
  const auto threshold = static_cast<std::uint64_t>(std::ceil(double(p) * 0x1.0p32));
  const std::uint64_t key = rng.next_u64();
  // Chunks start at even elements, so that both halves of a hash land in one chunk.
  const std::size_t pairs = (count + 1) / 2;
  parallel::for_chunks(pairs, parallel::min_elements_per_chunk / 2, [&](std::size_t first, std::size_t last) {
    dropout_chunk(x, keep_scale, key, threshold, 2 * first, std::min(count, 2 * last), keep, y, relu_first, residual);
  });
}

}  // namespace

void dropout_forward(const real* x, real p, Rng& rng, std::size_t count, std::uint8_t* keep, real* y) {
  dropout_forward_with(x, p, rng, count, keep, y, false);
}

void dropout_mask(real p, Rng& rng, std::size_t count, std::uint8_t* keep) {
  dropout_forward_with(nullptr, p, rng, count, keep, nullptr, false);
}

void add_dropout_forward(const real* residual, const real* x, real p, Rng& rng, std::size_t count, std::uint8_t* keep,
                         real* y) {
  dropout_forward_with(x, p, rng, count, keep, y, false, residual);
}

void relu_dropout_forward(const real* x, real p, Rng& rng, std::size_t count, std::uint8_t* keep, real* y) {
  dropout_forward_with(x, p, rng, count, keep, y, true);
}

void relu_dropout_backward(const real* grad_y, const real* x, const std::uint8_t* keep, real p, std::size_t count,
                           GradientOut grad_x) {
  const real keep_scale = real(1) / (real(1) - p);
  parallel::for_chunks(count, parallel::min_elements_per_chunk, [&](std::size_t first, std::size_t last) {
    relu_dropout_backward_chunk(grad_y, x, keep, keep_scale, first, last, grad_x.data, grad_x.accumulate);
  });
}

namespace {
thread_local const BatchShard* active_batch_shard = nullptr;
thread_local BatchShard batch_shard_storage;
}  // namespace

ScopedBatchShard::ScopedBatchShard(const BatchShard& shard) {
  check_arg(active_batch_shard == nullptr, "ScopedBatchShard", "batch shards do not nest");
  check_arg(shard.rows > 0 && shard.first_row + shard.rows <= shard.global_rows, "ScopedBatchShard", [&] {
    return "rows [" + std::to_string(shard.first_row) + ", " + std::to_string(shard.first_row + shard.rows) +
           ") do not lie in a batch of " + std::to_string(shard.global_rows);
  });
  batch_shard_storage = shard;
  active_batch_shard = &batch_shard_storage;
}
ScopedBatchShard::~ScopedBatchShard() { active_batch_shard = nullptr; }
const BatchShard* current_batch_shard() { return active_batch_shard; }

void dropout_forward_shard(const real* x, real p, Rng& rng, const BatchShard& shard, std::size_t outer,
                           std::size_t row_elements, std::uint8_t* keep, real* y) {
  const real keep_scale = real(1) / (real(1) - p);
  const auto threshold = static_cast<std::uint64_t>(std::ceil(double(p) * 0x1.0p32));
  const std::uint64_t key = rng.next_u64();  // the one draw dropout_forward makes
  const std::size_t segments = outer * shard.rows;
  // One hash per element (dropout_forward shares one between two): a global index may be odd
  // where a local one is even, so the pairs do not line up.
  parallel::for_chunks(segments, std::max<std::size_t>(1, parallel::min_elements_per_chunk / std::max<std::size_t>(1, row_elements)),
                       [&](std::size_t first, std::size_t last) {
    for (std::size_t segment = first; segment < last; ++segment) {
      const std::size_t o = segment / shard.rows, b = segment % shard.rows;
      const std::size_t global_start = (o * shard.global_rows + shard.first_row + b) * row_elements;
      const std::size_t local_start = segment * row_elements;
      for (std::size_t i = 0; i < row_elements; ++i) {
        const std::size_t g = global_start + i;
        const std::uint64_t bits = splitmix64_mix(key + (g / 2) * splitmix64_increment);
        const std::uint64_t u = (g % 2 == 0) ? (bits & 0xffffffffULL) : (bits >> 32);
        const std::size_t l = local_start + i;
        keep[l] = static_cast<std::uint8_t>(u >= threshold);
        y[l] = x[l] * (keep_scale * static_cast<real>(keep[l]));
      }
    }
  });
}

void dropout_backward(const real* grad_y, const std::uint8_t* keep, real p, std::size_t count, GradientOut grad_x) {
  const real keep_scale = real(1) / (real(1) - p);
  parallel::for_chunks(count, parallel::min_elements_per_chunk, [&](std::size_t first, std::size_t last) {
    dropout_backward_chunk(grad_y, keep, keep_scale, first, last, grad_x.data, grad_x.accumulate);
  });
}

// ---- where ----------------------------------------------------------------------------------

Array where_select(const char* op, const BoolArray& condition, const Array& a, const Array& b) {
  const Shape condition_shape = shape_of(condition);
  const Shape out_shape =
      broadcast_shapes(op, broadcast_shapes(op, condition_shape, shape_of(a)), shape_of(b));
  Array out = Array::from_shape(out_shape);
  const Shape strides[4] = {strides_of(out_shape), broadcast_strides(condition_shape, out_shape),
                            broadcast_strides(shape_of(a), out_shape), broadcast_strides(shape_of(b), out_shape)};
  // Along a row each operand advances by its last stride (0 when broadcast along it).
  const auto row_step = [](const Shape& s) { return s.empty() ? std::size_t{0} : s.back(); };
  const std::size_t sc = row_step(strides[1]), sa = row_step(strides[2]), sb = row_step(strides[3]);
  const bool* pc = condition.data();
  const real* pa = a.data();
  const real* pb = b.data();
  real* po = out.data();
  for_each_row(out_shape, strides,
               [&](std::size_t o, std::size_t ic, std::size_t ia, std::size_t ib, std::size_t count) {
                 for (std::size_t i = 0; i < count; ++i)
                   po[o + i] = pc[ic + i * sc] ? pa[ia + i * sa] : pb[ib + i * sb];
               });
  return out;
}

Array where_gradient(const BoolArray& condition, const Array& gradient, bool keep_when) {
  const Shape shape = shape_of(gradient);
  Array out = Array::from_shape(shape);
  const Shape strides[2] = {strides_of(shape), broadcast_strides(shape_of(condition), shape)};
  const std::size_t sc = strides[1].empty() ? 0 : strides[1].back();
  const bool* pc = condition.data();
  const real* pg = gradient.data();
  real* po = out.data();
  for_each_row(shape, strides, [&](std::size_t o, std::size_t ic, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) po[o + i] = pc[ic + i * sc] == keep_when ? pg[o + i] : real(0);
  });
  return out;
}

}  // namespace qkv::kernels
