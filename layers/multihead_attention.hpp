#pragma once
// Multi-head attention, batch first ([B, T, E]), with PyTorch's parameter names and layout
// (nn.MultiheadAttention): in_proj_weight [3E, E], in_proj_bias [3E], out_proj.weight [E, E],
// out_proj.bias [E] — a state dict moves between the two by name.
//
// Composed from primitive ops (linear, reshape, permute, matmul, masked softmax): no
// hand-written backward.
#include <cstdint>
#include <memory>
#include <optional>

#include "layers/attention.hpp"
#include "layers/linear.hpp"

namespace qkv {

/// Which query may attend to which key. Every field is optional; the layer ANDs them into one
/// `allowed` mask (true = may attend, the one polarity qkv uses).
struct AttentionMask {
  /// [B] or [B, Tq]: key j of batch b is real iff j < valid_lens[b] (or valid_lens[b, i]).
  std::optional<IndexArray> valid_lens = std::nullopt;
  /// [B, Tk]: true where the key is a real token (NOT PyTorch's key_padding_mask polarity).
  std::optional<BoolArray> key_allowed = std::nullopt;
  /// [Tq, Tk], [B, Tq, Tk] or [B|1, H|1, Tq, Tk]: any extra pattern.
  std::optional<BoolArray> allowed = std::nullopt;
  /// Query at position p sees only keys at positions <= p.
  bool causal = false;
  /// Query at position p sees only keys at positions within `window` of p (both sides, or
  /// only the past when causal).
  std::optional<std::size_t> window = std::nullopt;
};

/// Projected keys and values, per head. For incremental self-attention it holds the steps
/// decoded so far: feeding a sequence one step at a time through a cache gives the same
/// outputs as one causal pass over the whole sequence. For cross-attention, project_memory
/// fills one with the encoder's keys and values once per batch.
struct KVCache {
  Variable keys;    // [B, H, T_past, d_head], before any position encoding (applied per call)
  Variable values;  // [B, H, T_past, d_head]
  std::size_t length() const { return keys.defined() ? keys.dim(2) : 0; }
  void clear() { keys = Variable(); values = Variable(); }
};

struct MultiheadAttentionOptions {
  real dropout = 0;  // on the attention weights, in training mode
  bool bias = true;  // in_proj_bias and out_proj.bias
  ScoreScale scale = ScoreScale::inverse_sqrt_dim();  // over the head size d_head = E / H
  /// Relative / rotary / ALiBi positions inside attention; registered as submodule "positions".
  std::shared_ptr<AttentionPositionEncoding> positions = nullptr;
};

struct MultiheadAttentionOutput {
  Variable output;   // [B, Tq, E]
  Variable weights;  // [B, H, Tq, Tk], per head
  /// Weights averaged over heads: [B, Tq, Tk] (PyTorch's average_attn_weights=True).
  Variable average_weights() const;
};

/// Hook points (layers/hooks.hpp): "scores" [B, H, Tq, Tk] (scaled, before masking), "weights"
/// [B, H, Tq, Tk] (before dropout), "heads" — each head's output before the heads are merged
/// [B, H, Tq, d_head], and "output" [B, Tq, E] (after out_proj). On the KV-cache path they fire
/// once per step, with Tq = the new steps and Tk = all steps so far.
class MultiheadAttention : public Module {
 public:
  /// Draws one seed from `rng`: the projections come from Rng(seed), the attention dropout's
  /// stream is Rng(seed + 1) — what this layer did when it took the seed itself. Throws Error
  /// naming the layer when embed_dim is not divisible by num_heads.
  MultiheadAttention(std::size_t embed_dim, std::size_t num_heads, Rng& rng, MultiheadAttentionOptions options = {});

  /// query [B, Tq, E], key [B, Tk, E], value [B, Tk, E] (pass the same variable three times
  /// for self-attention: it is projected with one gemm). With a cache, key and value are the
  /// new steps only; they are appended to the cache, queries are placed after the cached
  /// steps, and the mask's positions count from the start of the sequence.
  MultiheadAttentionOutput forward(const Variable& query, const Variable& key, const Variable& value,
                                   const AttentionMask& mask = {}, KVCache* cache = nullptr);
  /// Self-attention: forward(x, x, x, ...).
  MultiheadAttentionOutput forward(const Variable& x, const AttentionMask& mask = {}, KVCache* cache = nullptr);

  /// Cross-attention for a decoder: memory [B, Tk, E] (the encoder's output) projected to keys
  /// and values once per batch, then reused at every decoding step by attend_to_memory.
  KVCache project_memory(const Variable& memory) const;
  /// forward(query, memory, memory, mask) with the memory's projections taken from
  /// project_memory. Queries count from position 0 for masks and position encodings.
  MultiheadAttentionOutput attend_to_memory(const Variable& query, const KVCache& memory, const AttentionMask& mask = {});

  std::size_t embed_dim() const { return embed_dim_; }
  std::size_t num_heads() const { return num_heads_; }
  std::size_t head_dim() const { return embed_dim_ / num_heads_; }
  /// Int8 inference from now on for in_proj_weight (layers/quantized.hpp); out_proj is a Linear
  /// submodule with its own quantize_int8 (quantize_for_inference converts both).
  Int8Report quantize_int8(const Int8Options& options = {});

 private:
  /// x [B, T, E] through block 0 (q), 1 (k) or 2 (v) of the stacked projection -> [B, H, T, d].
  Variable project(const Variable& x, std::size_t block) const;
  /// Attention over per-head q [B, H, Tq, d], k and v [B, H, Tk, d], then the output projection.
  MultiheadAttentionOutput attend(const Variable& q, const Variable& k, const Variable& v, const AttentionMask& mask,
                                  std::size_t query_start);

  std::size_t embed_dim_, num_heads_;
  Variable in_proj_weight_, in_proj_bias_;
  std::shared_ptr<Linear> out_proj_;  // out_proj.weight [E, E], out_proj.bias [E]
  std::shared_ptr<DotProductAttention> attention_;
  std::shared_ptr<AttentionPositionEncoding> positions_;
  HookPoint output_point_;
  Int8Weight int8_in_proj_;  // in_proj_weight [3E, E] in int8, once quantize_int8 ran
};

}  // namespace qkv
