#pragma once
// Transformer blocks (Vaswani et al. 2017), batch first ([B, T, D]), as PyTorch's
// nn.TransformerEncoderLayer / nn.TransformerDecoderLayer / nn.TransformerEncoder /
// nn.TransformerDecoder with batch_first=True — same parameter names (self_attn.in_proj_weight,
// multihead_attn.*, linear1, linear2, norm1..norm3; stacks layers.0.*, final norm), same
// layouts, same post-LN and pre-LN (norm_first) wiring — so a PyTorch state dict loads by name.
//
// Composed from MultiheadAttention, Linear, LayerNorm and Dropout: no hand-written backward.
//
// Incremental decoding: a TransformerDecoderCache holds, per decoder layer, the self-attention
// KV cache (the target steps so far) and the cross-attention keys and values projected once
// from the encoder memory. Feeding the target one step at a time through the cache gives the
// rows of the full causal pass (tested to 1e-12 in float64).
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "layers/linear.hpp"
#include "layers/multihead_attention.hpp"
#include "layers/normalization.hpp"

namespace qkv {

enum class Activation { relu, gelu };

/// "relu" / "gelu" (name_of, parse_name: lib/numerics/enum_names.hpp).
constexpr EnumNames<Activation, 2> enum_names(Activation) {
  return {"activation", {{{Activation::relu, "relu"}, {Activation::gelu, "gelu"}}}};
}

/// A new position encoding for one self-attention layer (each layer gets its own, as Shaw's
/// relative embeddings are per layer). Called once per layer at construction.
using PositionEncodingFactory = std::function<std::shared_ptr<AttentionPositionEncoding>()>;

/// nn.TransformerEncoderLayer's / nn.TransformerDecoderLayer's arguments, plus the attention
/// options qkv adds (score scale, position encoding inside self-attention).
struct TransformerLayerOptions {
  std::size_t d_model = 512;
  std::size_t nhead = 8;
  std::size_t dim_feedforward = 2048;
  /// After attention, inside and after the feed-forward block, and on the attention weights.
  real dropout = real(0.1);
  Activation activation = Activation::relu;
  real layer_norm_eps = real(1e-5);
  /// Pre-LN (x + f(norm(x))) when true; post-LN (norm(x + f(x))), the paper's and PyTorch's
  /// default, when false.
  bool norm_first = false;
  /// Biases of every Linear and of the attention projections.
  bool bias = true;
  ScoreScale scale = ScoreScale::inverse_sqrt_dim();
  /// Attention stability options, passed to every MultiheadAttention (layers/multihead_attention.hpp);
  /// sigma_reparam also reparametrises linear1 and linear2 (Zhai et al. do every linear layer).
  bool qk_norm = false, sigma_reparam = false, zero_query_init = false;
  /// Position encoding inside self-attention (relative, rotary, ALiBi), or none. It is not
  /// applied to cross-attention: target and source positions are not on one axis.
  PositionEncodingFactory self_attention_positions = nullptr;
  /// Key/value heads of every attention (grouped-query; 0 = nhead, multi-head); divides nhead.
  std::size_t num_kv_heads = 0;
  /// Persistent memory slots per head in every self-attention (Sukhbaatar et al. 2019); 0: none.
  /// The feed-forward block stays (the paper drops it; here the two are measured apart).
  std::size_t memory_slots = 0;
  /// Block-sparse self-attention (layers/block_sparse.hpp), or dense; never cross-attention.
  std::optional<BlockSparsePattern> self_attention_block_sparse = std::nullopt;
};

/// What a layer gives back: its output and the attention weights per head, for plots.
struct TransformerLayerOutput {
  Variable output;           // [B, T, D]
  Variable self_attention;   // [B, H, T, T_keys]
  Variable cross_attention;  // [B, H, T, S] (decoder layers only)
};

/// Self-attention then the feed-forward block linear2(dropout(activation(linear1(x)))), each
/// with a residual connection and a LayerNorm (norm1, norm2).
class TransformerEncoderLayer : public Module {
 public:
  /// Draws its weights and its parts' seeds from `rng`, in registration order. Throws Error
  /// naming the layer for a zero size, d_model not divisible by nhead, or a dropout outside
  /// [0, 1).
  TransformerEncoderLayer(const TransformerLayerOptions& options, Rng& rng);

  /// x [B, S, D] -> [B, S, D]. `mask` restricts self-attention (source padding by valid_lens).
  TransformerLayerOutput forward(const Variable& x, const AttentionMask& mask = {});

  const TransformerLayerOptions& options() const { return options_; }
  /// "TransformerEncoderLayer(d_model=8, nhead=2)", the prefix of this layer's error messages.
  std::string describe() const;

 private:
  TransformerLayerOptions options_;
  std::shared_ptr<MultiheadAttention> self_attn_;
  std::shared_ptr<Linear> linear1_, linear2_;
  std::shared_ptr<LayerNorm> norm1_, norm2_;
  std::shared_ptr<Dropout> dropout_, dropout1_, dropout2_;
};

/// Per decoder layer: the target steps decoded so far and the projected encoder memory.
struct TransformerDecoderLayerCache {
  KVCache self_attention;  // [B, H_kv, T_cached, d_head]
  KVCache memory;          // [B, H_kv, S, d_head]
};

/// Every layer's cache.
struct TransformerDecoderCache {
  std::vector<TransformerDecoderLayerCache> layers;
  /// Steps decoded so far (the position of the next one) — more than the self-attention caches
  /// hold once a limit evicts.
  std::size_t steps = 0;
  std::size_t length() const { return steps; }
  /// Bounds every layer's self-attention cache (attention sinks + window, KVCacheLimit).
  void limit_self_attention(const KVCacheLimit& limit);
  /// Bytes held by the self-attention caches (the part that grows with each step) and by the
  /// projected encoder memory, summed over layers.
  std::size_t self_attention_bytes() const;
  std::size_t memory_bytes() const;
  /// Keeps only the given batch rows, in order (rows may repeat), of every cached tensor —
  /// for beam search. The result holds plain values (no gradient history).
  void select_rows(const std::vector<std::size_t>& rows);
};

class TransformerDecoderLayer : public Module {
 public:
  /// As TransformerEncoderLayer's.
  TransformerDecoderLayer(const TransformerLayerOptions& options, Rng& rng);

  /// Teacher-forced pass: target [B, T, D], memory [B, S, D] -> [B, T, D]. `target_mask`
  /// restricts self-attention (usually {.causal = true}), `memory_mask` cross-attention
  /// (source padding by valid_lens).
  TransformerLayerOutput forward(const Variable& target, const Variable& memory, const AttentionMask& target_mask = {},
                                 const AttentionMask& memory_mask = {});

  /// Projects the encoder memory [B, S, D] once; start of incremental decoding.
  TransformerDecoderLayerCache start(const Variable& memory) const;
  /// The next target steps [B, T_new, D] (usually T_new = 1) after the cached ones, attending
  /// causally to all steps so far: appends them to the cache.
  TransformerLayerOutput step(const Variable& target, TransformerDecoderLayerCache& cache,
                              const AttentionMask& memory_mask = {});

  const TransformerLayerOptions& options() const { return options_; }
  std::string describe() const;

 private:
  /// The body forward and step share; the two differ only in how they attend.
  using Attend = std::function<MultiheadAttentionOutput(const Variable& x)>;
  TransformerLayerOutput run(const Variable& target, const Attend& self_attention, const Attend& cross_attention);

  TransformerLayerOptions options_;
  std::shared_ptr<MultiheadAttention> self_attn_, multihead_attn_;
  std::shared_ptr<Linear> linear1_, linear2_;
  std::shared_ptr<LayerNorm> norm1_, norm2_, norm3_;
  std::shared_ptr<Dropout> dropout_, dropout1_, dropout2_, dropout3_;
};

/// N encoder layers (layers.0 .. layers.N-1, each seeded differently) and an optional final
/// LayerNorm `norm` — what a pre-LN stack needs, since its layers end un-normalised.
class TransformerEncoder : public Module {
 public:
  /// Draws one seed from `rng`; layer i's generator is Rng(seed · 1000003 + i + 1), as when
  /// the stack took the seed itself.
  TransformerEncoder(const TransformerLayerOptions& layer_options, std::size_t num_layers, bool final_norm, Rng& rng);

  struct Output {
    Variable output;                       // [B, S, D]
    std::vector<Variable> self_attention;  // per layer, [B, H, S, S]
  };
  Output forward(const Variable& x, const AttentionMask& mask = {});

  std::size_t num_layers() const { return layers_.size(); }
  TransformerEncoderLayer& layer(std::size_t index) { return *layers_.at(index); }

 private:
  std::vector<std::shared_ptr<TransformerEncoderLayer>> layers_;
  std::shared_ptr<LayerNorm> norm_;
};

class TransformerDecoder : public Module {
 public:
  /// Seeds its layers as TransformerEncoder does.
  TransformerDecoder(const TransformerLayerOptions& layer_options, std::size_t num_layers, bool final_norm, Rng& rng);

  struct Output {
    Variable output;                        // [B, T, D]
    std::vector<Variable> self_attention;   // per layer, [B, H, T, T_keys]
    std::vector<Variable> cross_attention;  // per layer, [B, H, T, S]
  };
  /// Teacher-forced pass, as TransformerDecoderLayer::forward through every layer.
  Output forward(const Variable& target, const Variable& memory, const AttentionMask& target_mask = {},
                 const AttentionMask& memory_mask = {});
  /// Projects the memory for every layer.
  TransformerDecoderCache start(const Variable& memory) const;
  /// As TransformerDecoderLayer::step through every layer.
  Output step(const Variable& target, TransformerDecoderCache& cache, const AttentionMask& memory_mask = {});

  std::size_t num_layers() const { return layers_.size(); }
  TransformerDecoderLayer& layer(std::size_t index) { return *layers_.at(index); }

 private:
  Variable finish(const Variable& x) const;

  std::vector<std::shared_ptr<TransformerDecoderLayer>> layers_;
  std::shared_ptr<LayerNorm> norm_;
};

}  // namespace qkv
