#pragma once
// Multi-head attention, batch first ([B, T, E]), with PyTorch's parameter names and layout
// (nn.MultiheadAttention): in_proj_weight [3E, E], in_proj_bias [3E], out_proj.weight [E, E],
// out_proj.bias [E] — a state dict moves between the two by name.
//
// Two variants PyTorch's layer does not have (docs/variants.md has their measurements):
// - Grouped-query attention (Ainslie et al. 2023; multi-query, Shazeer 2019, when
//   num_kv_heads = 1): H_kv = num_kv_heads key/value heads, each shared by H / H_kv query
//   heads (query head h reads key/value head h / (H / H_kv), Llama's repeat_kv order). The
//   projections are then q_proj_weight [E, E], q_proj_bias [E], kv_proj_weight [2·H_kv·d, E]
//   and kv_proj_bias [2·H_kv·d] (keys' rows first, then values'); a KV cache holds
//   [B, H_kv, T, d], H / H_kv times less than multi-head attention's.
// - Persistent memory (Sukhbaatar et al. 2019): N learned key/value slots per head,
//   memory_keys [H, N, d] and memory_values [H, N, d], appended after the keys and values of
//   every call — never masked, never position-encoded, never cached.
//
// Composed from primitive ops (linear, reshape, permute, matmul, masked softmax): no
// hand-written backward.
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "layers/attention.hpp"
#include "layers/block_sparse.hpp"
#include "layers/linear.hpp"
#include "layers/sigma_reparam.hpp"

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
///
/// A limit turns a self-attention cache into StreamingLLM's (Xiao et al. 2023): the first
/// `sink_tokens` steps ("attention sinks") and the last `window` steps are kept, the middle is
/// evicted before each call attends. Positions inside attention (rope, relative, ALiBi) count
/// within the cache, as StreamingLLM assigns them: key j of the cache sits at position j.
struct KVCacheLimit {
  std::size_t sink_tokens = 0;  // the first steps, kept for good
  std::size_t window = 0;       // the most recent steps, the new ones included; 0: no limit
  bool limited() const { return window > 0; }
};

struct KVCache {
  Variable keys;    // [B, H_kv, T_cached, d_head], before any position encoding (applied per call)
  Variable values;  // [B, H_kv, T_cached, d_head]
  KVCacheLimit limit = {};  // self-attention only; at most sink_tokens + window steps are kept
  std::size_t length() const { return keys.defined() ? keys.dim(2) : 0; }
  /// The bytes the cached keys and values occupy.
  std::size_t bytes() const;
  void clear() { keys = Variable(); values = Variable(); }
};

struct MultiheadAttentionOptions {
  real dropout = 0;  // on the attention weights, in training mode
  bool bias = true;  // in_proj_bias and out_proj.bias
  ScoreScale scale = ScoreScale::inverse_sqrt_dim();  // over the head size d_head = E / H
  /// Relative / rotary / ALiBi positions inside attention; registered as submodule "positions".
  std::shared_ptr<AttentionPositionEncoding> positions = nullptr;
  /// Key/value heads H_kv (grouped-query attention): 0 or num_heads is multi-head attention, 1
  /// multi-query; must divide num_heads.
  std::size_t num_kv_heads = 0;
  /// Persistent memory slots N per head (0: none). Not combinable with `positions`.
  std::size_t memory_slots = 0;
  /// Block-sparse attention (layers/block_sparse.hpp): the pattern is ANDed with the mask, and
  /// while a graph is recorded the fused kernel block_sparse_attention runs — the output's
  /// `weights` is then undefined, [B, H, Tq, Tk] is never formed. Without a graph (NoGradGuard:
  /// evaluation, decoding, attention plots) or when a hook or AttentionObserver reads "scores" or
  /// "weights", the dense path runs with the same mask (the same values, weights defined).
  /// Needs dropout 0, a constant scale, and no position encoding or rotary only (the kernel
  /// has no place for score terms); the constructor throws Error otherwise.
  std::optional<BlockSparsePattern> block_sparse = std::nullopt;
  /// QK-norm (Dehghani et al. 2023, Wortsman et al. 2023): a LayerNorm over d_head of every
  /// head's query and of every head's key, after the projection and before scoring (and before
  /// any rotary encoding). Submodules "q_norm" and "k_norm", each LayerNorm(d_head) with one
  /// weight and bias shared by the heads, as timm's and OLMo's q_norm / k_norm are.
  bool qk_norm = false;
  /// σReparam (Zhai et al. 2023) on each of the three [E, E] blocks of in_proj_weight:
  /// submodules "in_proj_sigma_q", "in_proj_sigma_k", "in_proj_sigma_v" (layers/sigma_reparam.hpp).
  bool sigma_reparam = false;
  /// Zero the query block of in_proj_weight at construction (μP, microsoft/mup's recipe with
  /// the 1/d scale): every head starts with uniform attention.
  bool zero_query_init = false;
};

struct MultiheadAttentionOutput {
  Variable output;   // [B, Tq, E]
  Variable weights;  // [B, H, Tq, Tk (+ N memory slots, last)], per head
  /// Weights averaged over heads: [B, Tq, Tk] (PyTorch's average_attn_weights=True).
  Variable average_weights() const;
};

/// Hook points (layers/hooks.hpp): "scores" [B, H, Tq, Tk] (scaled, before masking), "weights"
/// [B, H, Tq, Tk] (before dropout; with persistent memory both have Tk + N columns, the memory's last), "heads" — each head's output before the heads are merged
/// [B, H, Tq, d_head], and "output" [B, Tq, E] (after out_proj). On the KV-cache path they fire
/// once per step, with Tq = the new steps and Tk = all steps so far.
class MultiheadAttention : public Module {
 public:
  /// Draws one seed from `rng`: the projections come from Rng(seed), the attention dropout's
  /// stream is Rng(seed + 1) — what this layer did when it took the seed itself. Throws Error
  /// naming the layer when embed_dim is not divisible by num_heads, num_kv_heads does not
  /// divide num_heads, or memory slots come with a position encoding.
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
  /// H_kv: num_heads for multi-head attention.
  std::size_t num_kv_heads() const { return num_kv_heads_; }
  std::size_t memory_slots() const { return memory_slots_; }
  /// Int8 inference from now on for the q, k, v projections (layers/quantized.hpp; σReparam's
  /// effective weights when it is on); out_proj is a Linear
  /// submodule with its own quantize_int8 (quantize_for_inference converts both).
  Int8Report quantize_int8(const Int8Options& options = {});

 private:
  /// x [B, T, E] through block 0 (q -> [B, H, T, d]), 1 (k) or 2 (v -> [B, H_kv, T, d]).
  Variable project(const Variable& x, std::size_t block) const;
  /// Block `block`'s rows of the projection weight as stored (before σReparam).
  Variable stored_projection_weight(std::size_t block) const;
  /// x [B, T, E] through projection blocks [first, last) (0 q, 1 k, 2 v) in one gemm -> [B, T, their
  /// rows]: the stored weight's rows, through σReparam block by block when it is on, or the int8
  /// weight after quantize_int8. Grouped layers stack k with v only.
  Variable project_blocks(const Variable& x, std::size_t first, std::size_t last) const;
  /// The query (block 0) or key (block 1) per head [B, H or H_kv, T, d] through QK-norm when it is on.
  Variable normalize_head(const Variable& heads, std::size_t block) const;
  /// Attention over per-head q [B, H, Tq, d], k and v [B, H_kv, Tk, d] (repeated to H heads, the
  /// memory slots appended), then the output projection.
  MultiheadAttentionOutput attend(const Variable& q, const Variable& k, const Variable& v, const AttentionMask& mask,
                                  std::size_t query_start);
  /// True when attention can read the heads where the projections left them
  /// (DotProductAttention::forward_heads): nothing between the projection and the scores (no
  /// QK-norm, no position encoding inside attention), no memory slots, no block-sparse pattern,
  /// a constant scale and nothing observing.
  bool reads_heads_in_place() const;
  /// attend's result for q, k, v read where they lie, without splitting or merging heads.
  MultiheadAttentionOutput attend_in_place(const HeadView& q, const HeadView& k, const HeadView& v,
                                           const AttentionMask& mask, std::size_t query_start);

  std::size_t embed_dim_, num_heads_, num_kv_heads_, memory_slots_;
  Variable in_proj_weight_, in_proj_bias_;  // multi-head attention: [3E, E], [3E]
  Variable q_proj_weight_, q_proj_bias_, kv_proj_weight_, kv_proj_bias_;  // grouped: [E, E], [E], [2·H_kv·d, E], [2·H_kv·d]
  Variable memory_keys_, memory_values_;  // [H, N, d] each, with persistent memory
  std::shared_ptr<LayerNorm> q_norm_, k_norm_;  // QK-norm, or null
  std::shared_ptr<SigmaReparam> sigma_[3];      // σReparam per block (q, k, v), or null
  std::shared_ptr<Linear> out_proj_;  // out_proj.weight [E, E], out_proj.bias [E]
  std::shared_ptr<DotProductAttention> attention_;
  std::shared_ptr<AttentionPositionEncoding> positions_;
  std::optional<BlockSparsePattern> block_sparse_;
  HookPoint output_point_;
  Int8Weight int8_in_proj_, int8_q_proj_, int8_kv_proj_;  // the projections in int8, once quantize_int8 ran
};

}  // namespace qkv
