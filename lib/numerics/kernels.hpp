#pragma once
// Fused numerical kernels for the neural-network ops: softmax, log-softmax, softmax + NLL
// (cross-entropy), layer norm, embedding gather/scatter, dropout masks and masked selection.
//
// Plain functions over raw pointers and Arrays: lib knows nothing of autograd. Each forward
// kernel has its backward beside it; backward kernels ADD into the gradient buffers they are
// given (the autograd contract), and a null gradient pointer means "not needed". Those with an
// `overwrite` flag write instead when it is true: the buffer is fresh and uninitialised
// (Variable::grad_buffer(accumulate)), which saves zero-filling it and reading the zeros back.
//
// Reductions that decide precision (softmax sums, layer-norm moments, the loss) accumulate in
// double, so the float32 build keeps its digits on long rows.
#include <cstddef>
#include <cstdint>

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
/// grad_x += y ⊙ (grad_y - Σ grad_y ⊙ y), from the softmax output y (no Jacobian).
void softmax_backward(const real* grad_y, const real* y, real* grad_x, AxisSplit split, bool overwrite = false);
/// grad_x += grad_y - exp(y) Σ grad_y, from the log-softmax output y.
void log_softmax_backward(const real* grad_y, const real* y, real* grad_x, AxisSplit split);
/// Softmax over the last axis of x (shape `shape`) among the entries `allowed` keeps, read
/// through `mask_strides` (broadcast strides: 0 along the mask's size-1 axes). Disallowed
/// entries get 0; a row with nothing allowed gets 0 everywhere. Its backward is
/// softmax_backward over the last axis.
void masked_softmax_forward(const real* x, const bool* allowed, const Shape& shape, const Shape& mask_strides, real* y);

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
/// Adds the gradients w.r.t. x, weight and bias; any of the three outputs may be null. With
/// x̂ = (x - mean) · rstd and ĝ = grad_y ⊙ weight:
///   grad_x = rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ ⊙ x̂)),  grad_weight = Σ_rows grad_y ⊙ x̂,
///   grad_bias = Σ_rows grad_y.
void layer_norm_backward(const real* grad_y, const real* x, const real* weight, const real* mean,
                         const real* rstd, std::size_t rows, std::size_t dim, real* grad_x,
                         real* grad_weight, real* grad_bias, bool overwrite_grad_x = false);

// ---- additive attention scores -------------------------------------------------------------

/// scores[b, i, j] = Σ_a v[a] · tanh(queries[b, i, a] + keys[b, j, a]) for queries [B, Tq, A],
/// keys [B, Tk, A], v [A]; writes the tanh values into `features` [B, Tq, Tk, A] for the
/// backward. One pass instead of a broadcast add, a tanh and a product, each over [B, Tq, Tk, A].
void additive_scores_forward(const real* queries, const real* keys, const real* v, std::size_t batch,
                             std::size_t query_count, std::size_t key_count, std::size_t hidden, real* features,
                             real* scores);
/// Adds the gradients w.r.t. queries, keys and v (any may be null) from grad_scores [B, Tq, Tk]
/// and the saved features: with d = grad · v ⊙ (1 - features²), grad_queries[b, i] += Σ_j d,
/// grad_keys[b, j] += Σ_i d, grad_v += Σ grad · features.
void additive_scores_backward(const real* grad_scores, const real* features, const real* v, std::size_t batch,
                              std::size_t query_count, std::size_t key_count, std::size_t hidden,
                              real* grad_queries, real* grad_keys, real* grad_v);

// ---- GRU cell ------------------------------------------------------------------------------

/// PyTorch's GRU update from both halves of the gates, input_gates = W_ih x + b_ih and
/// hidden_gates = W_hh h + b_hh ([B, 3H] each, gate order r, z, n) and h [B, H]:
///   r = σ(i_r + h_r), z = σ(i_z + h_z), n = tanh(i_n + r ⊙ h_n), h' = n + z ⊙ (h - n).
/// Writes h' [B, H] and saves r, z, n into `saved` [B, 3H] for the backward.
void gru_cell_forward(const real* input_gates, const real* hidden_gates, const real* h, std::size_t batch,
                      std::size_t hidden, real* h_next, real* saved);
/// Where a backward kernel puts one input's gradient: added into `data`, or, when `accumulate`
/// is false (a fresh buffer from Variable::grad_buffer(bool&)), written over it, which saves
/// zero-filling the buffer first. Null `data`: the input needs no gradient.
struct GradientOut {
  real* data = nullptr;
  bool accumulate = true;
};

/// Puts the gradients w.r.t. input_gates, hidden_gates and h from grad_h_next. When two of them
/// share a buffer (the same variable passed twice), the first that arrives fresh must come first.
void gru_cell_backward(const real* grad_h_next, const real* hidden_gates, const real* h, const real* saved,
                       std::size_t batch, std::size_t hidden, GradientOut grad_input_gates,
                       GradientOut grad_hidden_gates, GradientOut grad_h);

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
/// grad_x += grad_y · keep / (1 - p).
void dropout_backward(const real* grad_y, const std::uint8_t* keep, real p, std::size_t count, real* grad_x,
                      bool overwrite = false);

// ---- selection under a broadcast boolean mask -------------------------------------------------

/// condition ? a : b with NumPy broadcasting of all three; throws ShapeError naming `op` and
/// the shapes when they do not broadcast.
Array where_select(const char* op, const BoolArray& condition, const Array& a, const Array& b);
/// The part of `gradient` where `condition` (broadcast to gradient's shape) equals
/// `keep_when`, zeros elsewhere: the backward of where_select for one branch.
Array where_gradient(const BoolArray& condition, const Array& gradient, bool keep_when);

// ---- attention context ------------------------------------------------------------------------

/// output[b, i] = Σ_j weights[b, i, j] · values[b, j] for weights [B, Tq, Tk] and values
/// [B, Tk, dv] -> output [B, Tq, dv] (written, not added). A batched matmul, as plain loops: for the
/// one-query-per-row products of an RNN decoder's attention, B separate [1, Tk] x [Tk, dv] gemms
/// spend more in BLAS's call and packing overhead than in arithmetic.
void attention_context_forward(const real* weights, const real* values, std::size_t batch, std::size_t query_count,
                               std::size_t key_count, std::size_t value_size, real* output);
/// Adds grad_weights[b, i, j] += grad_output[b, i] · values[b, j] and grad_values[b, j] +=
/// Σ_i weights[b, i, j] · grad_output[b, i] (either may be null).
void attention_context_backward(const real* grad_output, const real* weights, const real* values, std::size_t batch,
                                std::size_t query_count, std::size_t key_count, std::size_t value_size,
                                real* grad_weights, real* grad_values);

}  // namespace qkv::kernels
