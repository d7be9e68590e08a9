#pragma once
// Every differentiable op qkv has. Each is a free function: it computes its value now and
// returns a Variable that knows its backward. Elementwise ops broadcast as NumPy does, and
// their backward sums the gradient back to each input's shape. Bad shapes throw ShapeError
// naming the op and the shapes.
//
// The rules for ops:
// - Every differentiable op is made here, in autograd/ (ops_*.cpp), with make_op, and declared
//   in this header; layers/, models/ and the rest compose these and never call make_op
//   themselves. (A user's own op may: see docs/custom_ops.md.)
// - A backward adds into its inputs' gradients: through grad_buffer() or add_grad() when it can
//   only add, or through gradient_out() when it can write as cheaply as add (a gemm with beta,
//   a kernel taking a GradientOut) — then `accumulate` false means the buffer is fresh and must
//   be written in full (lib/numerics/gradient_out.hpp). Kernels get a null pointer for an input
//   that does not require a gradient.
// - Checks run at forward time and build their messages only on failure (check_shape and
//   check_arg with a lambda) when they run per element or on a hot path.
// - Every tensor line that is not obvious carries its shape in a comment: `// [B, T, D]`.
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "autograd/attention_kernels.hpp"
#include "autograd/block_sparse_kernels.hpp"
#include "autograd/variable.hpp"
#include "lib/numerics/blas.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

using blas::Trans;

// ---- elementwise, broadcasting ---------------------------------------------------------
Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
Variable neg(const Variable& x);
/// x^exponent; the exponent is a constant.
Variable pow(const Variable& x, real exponent);
/// x^y elementwise with broadcasting; dy uses log(x), so x must be positive where y needs a
/// gradient.
Variable pow(const Variable& x, const Variable& y);
Variable add_scalar(const Variable& x, real value);
Variable mul_scalar(const Variable& x, real value);
Variable sqrt(const Variable& x);
Variable exp(const Variable& x);
Variable log(const Variable& x);
Variable tanh(const Variable& x);
Variable sigmoid(const Variable& x);
Variable relu(const Variable& x);
/// Exact GELU, x * Phi(x) with the normal CDF from erf (PyTorch's default).
Variable gelu(const Variable& x);

Variable operator+(const Variable& a, const Variable& b);
Variable operator-(const Variable& a, const Variable& b);
Variable operator*(const Variable& a, const Variable& b);
Variable operator/(const Variable& a, const Variable& b);
Variable operator-(const Variable& x);
Variable operator+(const Variable& x, real value);
Variable operator+(real value, const Variable& x);
Variable operator-(const Variable& x, real value);
Variable operator-(real value, const Variable& x);
Variable operator*(const Variable& x, real value);
Variable operator*(real value, const Variable& x);
Variable operator/(const Variable& x, real value);

// ---- reductions ------------------------------------------------------------------------
/// Sum of every element: shape [].
Variable sum(const Variable& x);
/// Sum over `axes` (negative counts from the end); keepdim leaves them as extent 1.
Variable sum(const Variable& x, const std::vector<long>& axes, bool keepdim = false);
Variable mean(const Variable& x);
Variable mean(const Variable& x, const std::vector<long>& axes, bool keepdim = false);
/// Maximum over `axes`; the gradient goes to the first maximal element of each group.
Variable max(const Variable& x, const std::vector<long>& axes, bool keepdim = false);

// ---- shape -----------------------------------------------------------------------------
/// Same elements, new shape; one extent may be -1 (inferred).
Variable reshape(const Variable& x, const std::vector<long>& shape);
/// Inserts an axis of extent 1 at `axis`.
Variable unsqueeze(const Variable& x, long axis);
/// Removes the axis `axis`, which must have extent 1.
Variable squeeze(const Variable& x, long axis);
/// Broadcasts x to `shape` (NumPy rules); the backward sums back.
Variable expand(const Variable& x, const Shape& shape);
/// Swaps two axes (the result is a contiguous copy).
Variable transpose(const Variable& x, long axis0, long axis1);
/// Reorders axes: result dim i is x's dim order[i].
Variable permute(const Variable& x, const std::vector<std::size_t>& order);
/// [B, T, H·d] -> [B, H, T, d]: multi-head attention's split into heads, in one copy (the
/// same as permute(reshape(x, {B, T, H, d}), {0, 2, 1, 3}), which copies twice).
Variable split_heads(const Variable& x, std::size_t heads);
/// The same for `columns` of x [B, T, C] from `first_column`: one block of a stacked q, k, v
/// projection split into heads without slicing it out first.
Variable split_heads(const Variable& x, std::size_t heads, std::size_t first_column, std::size_t columns);
/// [B, H, T, d] -> [B, T, H·d]: the heads joined back, in one copy.
Variable merge_heads(const Variable& x);
/// Elements [start, end) along `axis`.
Variable slice(const Variable& x, long axis, std::size_t start, std::size_t end);
/// Joins along an existing axis.
Variable concat(const std::vector<Variable>& parts, long axis);
/// Joins along a new axis.
Variable stack(const std::vector<Variable>& parts, long axis);
/// Cuts along `axis` into pieces of the given sizes (which must add up to the extent).
std::vector<Variable> split(const Variable& x, const std::vector<std::size_t>& sizes, long axis);

// ---- products --------------------------------------------------------------------------
/// Matrix product through BLAS gemm. 2-d operands give [M, N]; n-d operands multiply their
/// last two dims and broadcast the leading ones. Trans::Yes reads an operand transposed in
/// place (no copy): matmul(q, k, Trans::No, Trans::Yes) is q kᵀ. `scale` multiplies the product
/// inside the gemm (attention's 1/√d_k without a pass of its own over the scores).
Variable matmul(const Variable& a, const Variable& b, Trans transpose_a = Trans::No,
                Trans transpose_b = Trans::No, real scale = 1);
/// x Wᵀ + b over the last dim of x: [..., in] x [out, in] -> [..., out], one gemm for all the
/// leading dims. `bias` ([out]) may be undefined.
Variable linear(const Variable& x, const Variable& weight, const Variable& bias);
/// A weight W [out, in] with Wᵀ [in, out] laid out once, for a loop that applies the same
/// weight at every step (a recurrent cell, a decoder's query projection): linear over it runs
/// the plain product, where x Wᵀ makes the gemm copy the transposed W at each call (a quarter of
/// a [64, 128] x [128, 384] product's time here). A snapshot of the value: prepare it again
/// once the weight has changed (the models prepare theirs in each forward).
struct PreparedWeight {
  Variable weight;                          // [out, in]; gradients flow to it
  std::shared_ptr<const Array> transposed;  // [in, out], a copy of its value
};
PreparedWeight prepare_weight(const Variable& weight);
/// linear(x, prepared.weight, bias), the forward product read from the transposed copy. The
/// same values; the same bits wherever both products run one kernel (libxsmm's, blas.hpp).
Variable linear(const Variable& x, const PreparedWeight& weight, const Variable& bias);

// ---- neural-network ops ----------------------------------------------------------------
/// Rows of `weight` ([V, D]) picked by `indices` (any shape) -> [..., D]. The backward
/// scatter-adds into the picked rows. Throws on an index outside [0, V).
Variable embedding(const Variable& weight, const IndexArray& indices);
/// `rows` ([..., D], embedding(weight, indices)) unchanged, with no gradient through the
/// positions whose index is `padding_idx`: PyTorch's padding_idx, whose row is a constant.
/// Returns `rows` itself when no gradient is recorded or no index is `padding_idx`.
Variable embedding_padding(const Variable& rows, const IndexArray& indices, std::int64_t padding_idx);
/// Numerically stable softmax along `axis`.
Variable softmax(const Variable& x, long axis);
/// Numerically stable log-softmax along `axis`.
Variable log_softmax(const Variable& x, long axis);
/// Softmax over the last axis of scores [..., Tk], restricted to the allowed keys (`allowed`
/// broadcasts to the scores). Masked entries get weight exactly 0 and gradient 0; a row with
/// no allowed key gets all-zero weights and zero gradients — never NaN, never uniform weights
/// over padding. A fused op: composing masked_fill + softmax cannot give that last row.
Variable masked_softmax(const Variable& scores, const BoolArray& allowed);
/// Plain softmax over the last axis when `allowed` is nullopt, masked_softmax otherwise.
Variable masked_softmax(const Variable& scores, const std::optional<BoolArray>& allowed);

struct CrossEntropyOptions {
  /// Targets equal to this are not counted (PyTorch's default).
  std::int64_t ignore_index = -100;
  /// Weight moved from the target to a uniform distribution over classes.
  real label_smoothing = 0;
};
/// Fused log-softmax + negative log-likelihood. logits [..., C], targets [...] -> scalar
/// mean over the counted targets. When every target is ignored the loss is 0 with zero
/// gradients (PyTorch gives NaN).
Variable cross_entropy(const Variable& logits, const IndexArray& targets,
                       const CrossEntropyOptions& options = {});
/// Layer normalisation over the last dim; `weight` and `bias` ([D]) may be undefined.
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias,
                    real eps = real(1e-5));
/// Zeroes each element with probability p and scales the rest by 1/(1-p) when `training`;
/// the identity otherwise. Under a kernels::ScopedBatchShard (data parallelism) the mask is the
/// one the whole batch would get, read at this process's rows: `batch_axis` is the axis that
/// holds the batch (1 for time-major [T, B, ...]); an axis of a multiple of the shard's rows
/// counts as rows of that many sub-rows each ([B·H, ...] laid out batch-major).
Variable dropout(const Variable& x, real p, bool training, Rng& rng, std::size_t batch_axis = 0);
// ---- fused ops of the transformer's feed-forward block ----
/// dropout(relu(x), p, training, rng, batch_axis), fused: the same mask, values and gradients
/// (bit for bit) without the [..., F] relu output in between — the feed-forward block's
/// activation and dropout.
Variable relu_dropout(const Variable& x, real p, bool training, Rng& rng, std::size_t batch_axis = 0);
/// residual + dropout(x, p, training, rng, batch_axis), fused when the two have one shape: the
/// same mask, values and gradients (bit for bit) without the dropped-out x in between — a
/// residual connection around a sublayer whose output is dropped out.
Variable add_dropout(const Variable& residual, const Variable& x, real p, bool training, Rng& rng,
                     std::size_t batch_axis = 0);
/// condition ? a : b, elementwise with broadcasting of all three.
Variable where(const BoolArray& condition, const Variable& a, const Variable& b);
/// x with `value` wherever `mask` is true (mask broadcasts to x).
Variable masked_fill(const Variable& x, const BoolArray& mask, real value);
/// Rotates x [..., T, d] (positions start, start+1, ...) pair by pair as RoPE does
/// (RotaryPositionEncoding). A fused op: the backward is the inverse rotation.
Variable rotary_embedding(const Variable& x, std::size_t start, real base = 10000);

// ---- dense attention on heads where they lie (ops_attention.cpp) --------------------------
/// One of attention's q, k or v without its copy into [B, H, T, d]: `heads` heads of `head_dim`
/// floats at each of `steps` steps of every sentence of `tensor`, where `at` says.
struct HeadView {
  Variable tensor;
  std::size_t heads = 0, steps = 0, head_dim = 0;
  kernels::HeadStrides at;
};
/// The heads in columns [first_column, first_column + columns) of rows [B, T, C] — one block of
/// a stacked q, k, v projection, as split_heads(rows, heads, first_column, columns) would split it.
HeadView head_view_of_rows(const Variable& rows, std::size_t heads, std::size_t first_column, std::size_t columns);
/// The heads of x [B, H, T, d] (a KV cache's keys or values).
HeadView head_view(const Variable& x);
/// Attention weights [B, H, Tq, Tk] = masked_softmax(matmul(q, k, No, Yes, scale), allowed) for
/// the heads q [B, H, Tq, d] and k [B, H_kv, Tk, d] (query head h reads key head h / (H / H_kv)),
/// without forming either in [B, H, T, d] or the scores; `allowed` broadcasts to
/// [B, H, Tq, Tk] (nullopt: every key). Bits: autograd/attention_kernels.hpp.
Variable attention_weights(const HeadView& q, const HeadView& k, const std::optional<BoolArray>& allowed, real scale);
/// merge_heads(matmul(dropout(weights, p, training, rng), v)) -> [B, Tq, H·d] for weights
/// [B, H, Tq, Tk] and the heads v [B, H_kv, Tk, d], without the dropped-out weights, the heads or
/// the per-head outputs in between: the same mask (and draw from `rng`), values and gradients.
Variable attend_values(const Variable& weights, const HeadView& v, real p, bool training, Rng& rng);

// ---- block-sparse attention (ops_block_sparse.cpp) -------------------------------------
/// softmax(scale · q kᵀ) v over the pairs `layout` allows (autograd/block_sparse_kernels.hpp;
/// layers/block_sparse.hpp makes layouts from patterns), ANDed with `allowed` when given
/// (broadcasting to [B, H, Tq, Tk]: padding, say): q [B, H, Tq, d], k [B, H, Tk, d],
/// v [B, H, Tk, dv] -> [B, H, Tq, dv]. The same values and gradients as
/// matmul(masked_softmax(matmul(q, k, No, Yes, scale), mask), v) with the layout's mask, but
/// a fused kernel that visits allowed blocks only and never forms [B, H, Tq, Tk]; a row with no
/// allowed key gives 0, as masked_softmax does.
Variable block_sparse_attention(const Variable& q, const Variable& k, const Variable& v,
                                const BlockSparseLayout& layout, const std::optional<BoolArray>& allowed, real scale);

// ---- recurrent (Bahdanau) model family: fused per-time-step ops (ops_recurrent.cpp) -------
/// Additive (Bahdanau) attention scores, fused: queries [B, Tq, A], keys [B, Tk, A], v [A] ->
/// [B, Tq, Tk] with scores[b, i, j] = vᵀ tanh(queries[b, i] + keys[b, j]). Same values as
/// composing unsqueeze, add, tanh and a product with v, without the [B, Tq, Tk, A] temporaries
/// (the tanh values are kept for the backward).
Variable additive_scores(const Variable& queries, const Variable& keys, const Variable& v);
/// The GRU update, fused (PyTorch's equations, gate order r, z, n): input_gates = W_ih x + b_ih
/// and hidden_gates = W_hh h + b_hh, both [B, 3H], and h [B, H] ->
///   h' = n + z ⊙ (h - n), r = σ(i_r + h_r), z = σ(i_z + h_z), n = tanh(i_n + r ⊙ h_n).
/// One op instead of the ~15 elementwise ones it replaces.
Variable gru_cell(const Variable& input_gates, const Variable& hidden_gates, const Variable& h);
/// gru_cell whose input gates are rows [first_row, first_row + B) of `input_gates` [R, 3H] (one
/// time step of a projection made for every step at once), plus `extra_input_gates` [B, 3H] when
/// defined (the Bahdanau decoder's W_c c): the step reads them in place, with no slice or add
/// op (and their copies) per step. Same values as gru_cell(slice(...) + extra, hidden_gates, h).
Variable gru_cell_rows(const Variable& input_gates, std::size_t first_row, const Variable& extra_input_gates,
                       const Variable& hidden_gates, const Variable& h);
/// The attention's weighted sum of values, weights [B, Tq, Tk] and values [B, Tk, dv] ->
/// [B, Tq, dv] with output[b, i] = Σ_j weights[b, i, j] · values[b, j]: matmul(weights, values)
/// without a BLAS call per batch row, which is what it costs when Tq is 1 (an RNN decoder's step).
Variable attention_context(const Variable& weights, const Variable& values);
/// additive_scores and attention_context with the keys (values) of batch row b taken from row
/// key_rows[b] (value_rows[b]) of keys [N, Tk, A] (values [N, Tk, dv]), key_rows [B] in [0, N):
/// beam search's hypotheses read their sentence's encoder outputs without a copy per hypothesis.
/// Gradients of rows that share a key row add up there.
Variable additive_scores(const Variable& queries, const Variable& keys, const IndexArray& key_rows, const Variable& v);
Variable attention_context(const Variable& weights, const Variable& values, const IndexArray& value_rows);

}  // namespace qkv
