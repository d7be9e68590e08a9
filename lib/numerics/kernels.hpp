#pragma once
// Fused numerical kernels for the neural-network ops: softmax, log-softmax, softmax + NLL
// (cross-entropy), layer norm, embedding gather/scatter, dropout masks and masked selection.
//
// Plain functions over raw pointers and Arrays: lib knows nothing of autograd. Each forward
// kernel has its backward beside it; backward kernels ADD into the `real*` gradient buffers they
// are given (the autograd contract), and a null gradient pointer means "not needed". A backward
// that can as cheaply write as add takes a GradientOut instead (lib/numerics/gradient_out.hpp)
// and writes when its buffer is fresh.
//
// Only generic kernels live here; those of one model family sit beside the ops that use them
// (the GRU and additive-attention kernels in autograd/recurrent_kernels.hpp).
//
// Reductions that decide precision (softmax sums, layer-norm moments, the loss) accumulate in
// double, so the float32 build keeps its digits on long rows.
#include <cstddef>
#include <cstdint>

#include "lib/numerics/gradient_out.hpp"
#include "lib/numerics/rng.hpp"
#include "lib/numerics/shape.hpp"
#include "lib/numerics/tensor.hpp"

namespace qkv::kernels {

// ---- softmax along one axis ---------------------------------------------------------------
// `split` describes the input as [outer, size, inner] around the softmax axis (split_at_axis);
// inner == 1 (the last axis) takes a contiguous-row fast path.

/// y = exp(x - max) / Σ exp(x - max) along the axis.
void softmax_forward(const real* x, real* y, AxisSplit split);
/// y = x - max - log Σ exp(x - max) along the axis.
void log_softmax_forward(const real* x, real* y, AxisSplit split);
/// grad_x (+)= y ⊙ (grad_y - Σ grad_y ⊙ y), from the softmax output y (no Jacobian).
void softmax_backward(const real* grad_y, const real* y, GradientOut grad_x, AxisSplit split);
/// grad_x += grad_y - exp(y) Σ grad_y, from the log-softmax output y.
void log_softmax_backward(const real* grad_y, const real* y, real* grad_x, AxisSplit split);
/// Softmax over the last axis of x (shape `shape`) among the entries `allowed` keeps, read
/// through `mask_strides` (broadcast strides: 0 along the mask's size-1 axes). Disallowed
/// entries get 0; a row with nothing allowed gets 0 everywhere. Its backward is
/// softmax_backward over the last axis.
void masked_softmax_forward(const real* x, const bool* allowed, const Shape& shape, const Shape& mask_strides, real* y);
/// softmax_forward over the last axis of `rows` contiguous rows of `count`, serially (x may be y):
/// for fused kernels, so that their weights are softmax_forward's bits.
void softmax_rows(const real* x, real* y, std::size_t rows, std::size_t count);
/// One row of masked_softmax_forward: `count` scores x, the mask read with stride `keep_step`
/// (0: one flag for the whole row). Serial; for fused kernels that form a row themselves
/// (autograd/attention_kernels.cpp), so that their weights are masked_softmax_forward's bits.
void masked_softmax_row(const real* x, const bool* allowed, std::size_t keep_step, std::size_t count, real* y);
/// One row of softmax_backward: grad_x (+)= y ⊙ (grad_y - Σ grad_y ⊙ y), the sum in double.
void softmax_backward_row(const real* grad_y, const real* y, std::size_t count, GradientOut grad_x);

// ---- cross-entropy: log-softmax + NLL fused over rows of C classes --------------------------
// Targets must already be validated: each is in [0, C) or equals `ignore_index`.

struct CrossEntropyForward {
  real loss = 0;            // mean over counted rows; 0 when none is counted
  std::size_t counted = 0;  // rows whose target is not ignore_index
};

/// logits [rows, C], targets [rows]. Writes each row's max logit and log Σ exp(logits - max)
/// into `row_max` and `row_log_total` ([rows] each) so that the backward can rebuild the
/// probabilities without keeping a [rows, C] copy. (Kept apart rather than summed into one
/// logsumexp: for logits near 1e4 in float32 the sum would round away the small part.)
/// With smoothing ε the row loss is
///   (1 - ε) · (-log p_target) + ε · mean_c(-log p_c)   (PyTorch's definition).
CrossEntropyForward cross_entropy_forward(const real* logits, const std::int64_t* targets,
                                          std::size_t rows, std::size_t classes,
                                          std::int64_t ignore_index, real label_smoothing,
                                          real* row_max, real* row_log_total);
/// grad_logits += grad_loss / counted · (softmax - (1 - ε) onehot(target) - ε / C) on counted
/// rows; ignored rows (and everything when counted == 0) receive nothing.
void cross_entropy_backward(real grad_loss, const real* logits, const std::int64_t* targets,
                            const real* row_max, const real* row_log_total, std::size_t rows, std::size_t classes,
                            std::int64_t ignore_index, real label_smoothing, std::size_t counted,
                            real* grad_logits);

// ---- layer norm over the last dim ---------------------------------------------------------

/// x [rows, D] -> y = (x - mean) · rstd ⊙ weight + bias, rstd = 1 / sqrt(var + eps) with the
/// biased variance. `weight` and `bias` ([D]) may be null (1 and 0). Writes mean and rstd
/// ([rows]) for the backward.
void layer_norm_forward(const real* x, const real* weight, const real* bias, std::size_t rows,
                        std::size_t dim, real eps, real* y, real* mean, real* rstd);
/// Puts the gradient w.r.t. x and adds those w.r.t. weight and bias; any of the three may be
/// null. With
/// x̂ = (x - mean) · rstd and ĝ = grad_y ⊙ weight:
///   grad_x = rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ ⊙ x̂)),  grad_weight = Σ_rows grad_y ⊙ x̂,
///   grad_bias = Σ_rows grad_y.
void layer_norm_backward(const real* grad_y, const real* x, const real* weight, const real* mean,
                         const real* rstd, std::size_t rows, std::size_t dim, GradientOut grad_x,
                         real* grad_weight, real* grad_bias);

// ---- reductions over rows ------------------------------------------------------------------

/// out[c] += Σ_r x[r, c] for x [rows, cols]: a bias's gradient. Each column sums its rows in
/// order, whatever the thread count.
void add_column_sums(const real* x, std::size_t rows, std::size_t cols, real* out);

/// Σ x[i]² in double over `count` elements, summed in fixed blocks of 4,096 whose partial sums
/// are added in order: the same bits on any number of threads.
double sum_of_squares(const real* x, std::size_t count);

// ---- embedding ------------------------------------------------------------------------------
// Indices must already be validated to lie in [0, V).

/// out[i] = weight[indices[i]] for `count` indices; weight is [V, dim], out [count, dim].
void embedding_forward(const real* weight, const std::int64_t* indices, std::size_t count,
                       std::size_t dim, real* out);
/// grad_weight[indices[i]] += grad_out[i]: repeated indices accumulate.
void embedding_backward(const real* grad_out, const std::int64_t* indices, std::size_t count,
                        std::size_t dim, real* grad_weight);

// ---- dropout --------------------------------------------------------------------------------

/// Draws whether each of `count` elements is kept (dropped with probability p, decided by a
/// hash of the element's index and one 64-bit draw from `rng`, so the mask is the same on any
/// number of threads) into `keep` (1 or 0, a byte each: a quarter of a float mask's memory
/// traffic) and writes y = x · keep / (1 - p). Requires 0 <= p < 1.
void dropout_forward(const real* x, real p, Rng& rng, std::size_t count, std::uint8_t* keep, real* y);
/// Only the mask dropout_forward would draw (the same draw from `rng`, the same bytes), for a
/// fused kernel that applies it itself. Requires 0 < p < 1.
void dropout_mask(real p, Rng& rng, std::size_t count, std::uint8_t* keep);
/// Data parallelism (train/distributed.hpp): this process holds rows [first_row, first_row +
/// rows) of a global batch of `global_rows`. While a ScopedBatchShard lives on the thread that
/// runs the forward pass, the dropout op draws each element's decision from the element's index
/// in the global batch (dropout_forward_shard), so that a process's rows get exactly the masks
/// one process would give them, whatever the number of processes.
struct BatchShard {
  std::size_t first_row = 0, rows = 0, global_rows = 0;
};
/// Sets the calling thread's shard for its lifetime (they do not nest).
class ScopedBatchShard {
 public:
  explicit ScopedBatchShard(const BatchShard& shard);
  ~ScopedBatchShard();
  ScopedBatchShard(const ScopedBatchShard&) = delete;
  ScopedBatchShard& operator=(const ScopedBatchShard&) = delete;
};
/// The calling thread's shard, or null outside a ScopedBatchShard.
const BatchShard* current_batch_shard();
/// dropout_forward for x viewed as [outer, shard.rows, row_elements] (the batch on the middle
/// axis): element (o, b, i) is decided as element (o·global_rows + first_row + b)·row_elements + i
/// of the global batch [outer, global_rows, row_elements] would be by dropout_forward. With
/// shard {0, B, B} the mask is dropout_forward's.
void dropout_forward_shard(const real* x, real p, Rng& rng, const BatchShard& shard, std::size_t outer,
                           std::size_t row_elements, std::uint8_t* keep, real* y);
/// grad_x (+)= grad_y · keep / (1 - p).
void dropout_backward(const real* grad_y, const std::uint8_t* keep, real p, std::size_t count, GradientOut grad_x);
/// y = residual + dropout_forward(x): the same mask and values as dropout_forward then the sum,
/// without the dropped-out x in between (a residual connection's add and its sublayer's dropout).
void add_dropout_forward(const real* residual, const real* x, real p, Rng& rng, std::size_t count, std::uint8_t* keep,
                         real* y);
/// dropout_forward of relu(x) without forming relu(x): y = (x > 0 ? x : 0) · keep / (1 - p), the
/// same mask and values as relu then dropout_forward with the same `rng`.
void relu_dropout_forward(const real* x, real p, Rng& rng, std::size_t count, std::uint8_t* keep, real* y);
/// Its gradient: grad_x (+)= (grad_y · keep / (1 - p)) · [x > 0], the values of dropout_backward
/// then relu's backward.
void relu_dropout_backward(const real* grad_y, const real* x, const std::uint8_t* keep, real p, std::size_t count,
                           GradientOut grad_x);

// ---- selection under a broadcast boolean mask -------------------------------------------------

/// condition ? a : b with NumPy broadcasting of all three; throws ShapeError naming `op` and
/// the shapes when they do not broadcast.
Array where_select(const char* op, const BoolArray& condition, const Array& a, const Array& b);
/// The part of `gradient` where `condition` (broadcast to gradient's shape) equals
/// `keep_when`, zeros elsewhere: the backward of where_select for one branch.
Array where_gradient(const BoolArray& condition, const Array& gradient, bool keep_when);

}  // namespace qkv::kernels
