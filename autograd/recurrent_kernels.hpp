#pragma once
// The fused kernels of the recurrent (Bahdanau) model family: additive attention scores, the
// GRU cell and the attention context. They sit beside their ops (autograd/ops_recurrent.cpp)
// rather than among lib/numerics' generic kernels, because nothing else uses them.
//
// Same conventions as lib/numerics/kernels.hpp: raw pointers, a null gradient pointer means
// "not needed", `real*` gradients are added into and GradientOut ones written or added as
// they say. Each is one serial loop (not shared out among threads) compiled for AVX2 as well
// (QKV_SIMD_CLONES); they run once per time step on small [B, ...] blocks.
#include <cstddef>
#include <cstdint>

#include "lib/numerics/gradient_out.hpp"
#include "lib/numerics/tensor.hpp"

namespace qkv::kernels {

// ---- additive attention scores -------------------------------------------------------------

/// scores[b, i, j] = Σ_a v[a] · tanh(queries[b, i, a] + keys[b, j, a]) for queries [B, Tq, A],
/// keys [B, Tk, A], v [A]; writes the tanh values into `features` [B, Tq, Tk, A] for the
/// backward. One pass instead of a broadcast add, a tanh and a product, each over [B, Tq, Tk, A].
/// `key_rows` [B], when not null, picks the keys of batch row b as keys[key_rows[b]] (keys then
/// [N, Tk, A], rows of one sentence's beam hypotheses sharing them); null means key row b.
/// `features` null keeps none (no backward will run: decoding).
void additive_scores_forward(const real* queries, const real* keys, const std::int64_t* key_rows, const real* v,
                             std::size_t batch, std::size_t query_count, std::size_t key_count, std::size_t hidden,
                             real* features, real* scores);
/// Adds the gradients w.r.t. queries, keys and v (any may be null) from grad_scores [B, Tq, Tk]
/// and the saved features: with d = grad · v ⊙ (1 - features²), grad_queries[b, i] += Σ_j d,
/// grad_keys[b, j] += Σ_i d, grad_v += Σ grad · features.
/// With key_rows, grad_keys [N, Tk, A] gets each row's Σ_i d at its key row (summed over the rows
/// sharing it, in row order).
void additive_scores_backward(const real* grad_scores, const real* features, const std::int64_t* key_rows,
                              const real* v, std::size_t batch, std::size_t query_count, std::size_t key_count,
                              std::size_t hidden, real* grad_queries, real* grad_keys, real* grad_v);

// ---- GRU cell ------------------------------------------------------------------------------

/// PyTorch's GRU update from both halves of the gates, input_gates = W_ih x + b_ih and
/// hidden_gates = W_hh h + b_hh ([B, 3H] each, gate order r, z, n) and h [B, H]:
///   r = σ(i_r + h_r), z = σ(i_z + h_z), n = tanh(i_n + r ⊙ h_n), h' = n + z ⊙ (h - n).
/// Writes h' [B, H] and saves r, z, n into `saved` [B, 3H] for the backward. `extra_input_gates`
/// [B, 3H], when not null, is added to input_gates first (i = input_gates + extra, then i + h as
/// above): the Bahdanau decoder's W_c c next to the embeddings' gates precomputed for all steps.
void gru_cell_forward(const real* input_gates, const real* extra_input_gates, const real* hidden_gates, const real* h,
                      std::size_t batch, std::size_t hidden, real* h_next, real* saved);
/// Puts the gradients w.r.t. input_gates, extra_input_gates (both get d i), hidden_gates and h
/// from grad_h_next. When two of them share a buffer (the same variable passed twice), the first
/// that arrives fresh must come first, in that order.
void gru_cell_backward(const real* grad_h_next, const real* hidden_gates, const real* h, const real* saved,
                       std::size_t batch, std::size_t hidden, GradientOut grad_input_gates,
                       GradientOut grad_extra_input_gates, GradientOut grad_hidden_gates, GradientOut grad_h);

// ---- attention context ------------------------------------------------------------------------

/// output[b, i] = Σ_j weights[b, i, j] · values[b, j] for weights [B, Tq, Tk] and values
/// [B, Tk, dv] -> output [B, Tq, dv] (written, not added). A batched matmul, as plain loops: for the
/// one-query-per-row products of an RNN decoder's attention, B separate [1, Tk] x [Tk, dv] gemms
/// spend more in BLAS's call and packing overhead than in arithmetic.
/// `value_rows` [B], when not null, reads values[value_rows[b]] for batch row b (values [N, Tk, dv]).
void attention_context_forward(const real* weights, const real* values, const std::int64_t* value_rows,
                               std::size_t batch, std::size_t query_count, std::size_t key_count,
                               std::size_t value_size, real* output);
/// Adds grad_weights[b, i, j] += grad_output[b, i] · values[b, j] and grad_values[b, j] +=
/// Σ_i weights[b, i, j] · grad_output[b, i] (either may be null).
void attention_context_backward(const real* grad_output, const real* weights, const real* values,
                                const std::int64_t* value_rows, std::size_t batch, std::size_t query_count,
                                std::size_t key_count, std::size_t value_size, real* grad_weights,
                                real* grad_values);

}  // namespace qkv::kernels
