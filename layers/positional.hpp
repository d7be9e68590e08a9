#pragma once
// Positional encodings. Two act on the input embeddings ([B, T, D] + a position table):
// sinusoidal (a buffer) and learned absolute (a parameter). Three act inside attention, as
// AttentionPositionEncoding hooks for DotProductAttention / MultiheadAttention:
//   RelativePositionEncoding  Shaw et al. 2018: learned embeddings of the clipped distance
//                             j - i, added to the keys (and values) per query-key pair;
//   RotaryPositionEncoding    RoPE (Su et al. 2021): rotates q and k so q·k depends on j - i only;
//   ALiBi                     Press et al. 2022: a per-head linear bias -m_h |i - j| on the scores.
#include <cstdint>
#include <vector>

#include "layers/attention.hpp"

namespace qkv {

/// The sinusoidal table of Vaswani et al. [max_len, D]:
///   P[p, 2i] = sin(p / 10000^(2i/D)),  P[p, 2i+1] = cos(p / 10000^(2i/D)).
Array sinusoidal_table(std::size_t max_len, std::size_t d_model, real base = 10000);

/// x + P[start : start + T], then dropout. Buffer "pe" [max_len, D]; submodule "dropout".
class SinusoidalPositionalEncoding : public Module {
 public:
  /// `dropout_stream` is the dropout's random stream (a stream keeper, see module.hpp); the
  /// default is the one a seed of 0 gave.
  SinusoidalPositionalEncoding(std::size_t d_model, std::size_t max_len = 1000, real dropout = 0,
                               Rng dropout_stream = Rng(0));
  /// x [B, T, D] -> [B, T, D]; positions start at `start` (incremental decoding).
  Variable forward(const Variable& x, std::size_t start = 0);

 private:
  std::size_t d_model_, max_len_;
  std::shared_ptr<Dropout> dropout_;
  Variable table_;
};

/// x + W[start : start + T] with W a trained parameter "weight" [max_len, D] (BERT/GPT-2
/// style), initialised N(0, 0.02²), then dropout (submodule "dropout").
class LearnedPositionalEmbedding : public Module {
 public:
  /// Draws one seed from `rng`: the dropout stream is Rng(seed), the table comes from
  /// Rng(seed ^ φ) — what this layer did when it took the seed itself.
  LearnedPositionalEmbedding(std::size_t d_model, std::size_t max_len, Rng& rng, real dropout = 0);
  Variable forward(const Variable& x, std::size_t start = 0);

 private:
  std::size_t d_model_, max_len_;
  std::shared_ptr<Dropout> dropout_;
  Variable weight_;
};

/// Shaw et al. 2018. For query i and key j, with distance clipped to [-k, k]:
///   score_ij = q_i · (k_j + a^K_{clip(j-i)})  (before scaling),
///   out_i    = Σ_j α_ij (v_j + a^V_{clip(j-i)}).
/// Parameters "relative_keys" [2k+1, d_head] and, when `value_embeddings`, "relative_values"
/// [2k+1, d_head]; shared across heads, as in the paper. Both are drawn from `rng`.
class RelativePositionEncoding : public AttentionPositionEncoding {
 public:
  RelativePositionEncoding(std::size_t head_dim, std::size_t max_distance, Rng& rng, bool value_embeddings = true);
  Variable score_term(const Variable& queries, std::size_t query_start, std::size_t keys) const override;
  Variable output_term(const Variable& weights, std::size_t query_start) const override;
  /// [Tq, Tk] indices into the tables: clip(j - (query_start + i), -k, k) + k.
  IndexArray relative_indices(std::size_t queries, std::size_t query_start, std::size_t keys) const;

 private:
  std::size_t head_dim_, max_distance_;
  Variable relative_keys_, relative_values_;
};

/// Rotary position embedding. Each pair (x_2i, x_2i+1) of a query or key at position p is
/// rotated by the angle p θ_i, θ_i = base^(-2i/d), as in the paper; d must be even. Rotations
/// preserve norms, and q_m · k_n depends only on n - m. No parameters.
class RotaryPositionEncoding : public AttentionPositionEncoding {
 public:
  explicit RotaryPositionEncoding(std::size_t head_dim, real base = 10000);
  Variable encode_queries(const Variable& queries, std::size_t query_start) const override;
  Variable encode_keys(const Variable& keys, std::size_t key_start) const override;

 private:
  std::size_t head_dim_;
  real base_;
};

/// The per-head slopes of ALiBi: for n a power of two, 2^(-8/n), 2^(-16/n), ..., 2^(-8); for
/// other n, the paper's rule (the slopes of the closest smaller power of two, then every other
/// slope of the next power of two).
std::vector<real> alibi_slopes(std::size_t num_heads);

/// ALiBi: adds -m_h |i - j| to the scaled scores of head h (the paper's -m_h (i - j) on the
/// causal part, mirrored for bidirectional attention). No parameters.
class ALiBi : public AttentionPositionEncoding {
 public:
  explicit ALiBi(std::size_t num_heads);
  Variable score_bias(std::size_t heads, std::size_t queries, std::size_t query_start,
                      std::size_t keys) const override;
  const std::vector<real>& slopes() const { return slopes_; }

 private:
  std::vector<real> slopes_;
};

}  // namespace qkv
