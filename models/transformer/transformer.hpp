#pragma once
// The tiny encoder-decoder transformer (Vaswani et al. 2017) for the toy tasks and small
// corpora: separate source and target embeddings scaled by √d_model, a position scheme, an
// encoder and a decoder stack (layers/transformer.hpp), and a Linear to the target vocabulary.
//
// Positions: "sinusoidal" and "learned" add a table to the embeddings; "relative" (Shaw et
// al., distances clipped to relative_max_distance, per-layer tables), "rope" and "alibi" (Press
// et al., the bias mirrored in the encoder, causal in the decoder) act inside every
// self-attention layer. Cross-attention has no position term in any scheme.
//
// μP (Yang et al. 2022, Tensor Programs V; microsoft/mup with MuAdam), when mup_base_d_model is
// set: with the width multiplier m = d_model / mup_base_d_model (the feed-forward width, the
// head size and the key/value width taken to scale with d_model by the same m),
//   hidden weights   (both dimensions scale with m: the attention projections, the feed-forward
//                    Linears) keep their initialisation (variance ∝ 1/fan_in, already μP's) and
//                    get Adam's lr / m and weight_decay · m (parameter_groups(), "mup hidden")
//   vector-like      (embeddings, biases, LayerNorm, position tables, memory slots, the readout)
//                    keep lr and weight_decay
//   Linear biases    start width-independent: U(±1/√base_fan_in), mup's rescale_linear_bias
//   embeddings       N(0, 1/base_d_model) scaled by √base_d_model (rather than N(0, 1/d_model)
//                    by √d_model: the same unit-variance start, but a multiplier constant in m,
//                    as μP's input layer has)
//   readout          MuReadout: logits = output(x / m), its weight and bias drawn from
//                    U(±1/√base_d_model) (constant variance)
// The attention part of μP is the existing options: scale inverse_dim with value 8 (q·kᵀ·8/d)
// and zero_query_init. At m = 1 the model is the standard one, bit for bit (tested).
#include <cstdint>
#include <memory>
#include <string>

#include "lib/numerics/enum_names.hpp"
#include "models/seq2seq.hpp"
#include "layers/embedding.hpp"
#include "layers/positional.hpp"
#include "layers/transformer.hpp"

namespace qkv::models {

enum class PositionalKind { sinusoidal, learned, relative, rope, alibi };
constexpr EnumNames<PositionalKind, 5> enum_names(PositionalKind) {
  return {"positional encoding",
          {{{PositionalKind::sinusoidal, "sinusoidal"}, {PositionalKind::learned, "learned"},
            {PositionalKind::relative, "relative"}, {PositionalKind::rope, "rope"},
            {PositionalKind::alibi, "alibi"}}}};
}

struct TransformerConfig {
  std::size_t source_vocab_size = 0;
  std::size_t target_vocab_size = 0;
  std::size_t d_model = 64;
  std::size_t nhead = 4;  // config.json: "num_heads"
  std::size_t encoder_layers = 2;
  std::size_t decoder_layers = 2;
  std::size_t dim_feedforward = 256;
  real dropout = real(0.1);
  Activation activation = Activation::relu;
  /// Pre-LN; the stacks then end with a final LayerNorm, as pre-LN needs.
  bool norm_first = false;
  PositionalKind positional = PositionalKind::sinusoidal;
  /// Shaw's clipping distance k ("relative" only).
  std::size_t relative_max_distance = 16;
  /// How attention scores are scaled; `value` is the factor of "fixed" and the initial
  /// temperature of "learned_temperature".
  ScoreScale scale = ScoreScale::inverse_sqrt_dim();
  /// Self-attention's pattern (encoder and decoder; cross-attention stays dense): "dense", or
  /// "block_sparse" with `block_sparse`'s blocks (layers/block_sparse.hpp; needs dropout 0).
  AttentionPattern attention_pattern = AttentionPattern::dense;
  BlockSparsePattern block_sparse{};
  /// QK-norm, σReparam (attention projections and feed-forward Linears) and zero-initialised
  /// queries in every attention layer (layers/transformer.hpp). config.json: "qk_norm",
  /// "sigma_reparam", "zero_query_init" (true/false, or 0/1 as the command line gives them).
  bool qk_norm = false, sigma_reparam = false, zero_query_init = false;
  /// Longest source or target sequence (the size of the position tables).
  std::size_t max_len = 256;  // config.json: "max_length"
  /// Key/value heads of every attention: grouped-query attention when fewer than nhead, 1 is
  /// multi-query; 0 (the default, and what a config.json without the key means) is nhead.
  std::size_t num_kv_heads = 0;
  /// Persistent memory slots per head in every self-attention (Sukhbaatar et al. 2019); needs
  /// sinusoidal or learned positions (the slots take none).
  std::size_t memory_slots = 0;
  /// μP's base width (see the top of this file); 0, the default and what a config.json
  /// without the key means, is the standard parametrisation.
  std::size_t mup_base_d_model = 0;
  std::uint64_t seed = 0;

  /// Throws Error naming the field for a zero size, d_model not divisible by nhead, odd
  /// head size with rope, num_kv_heads not dividing nhead, memory slots with positions inside
  /// attention, or dropout outside [0, 1).
  void validate() const;
};

/// Every field, by name; the scale as {"kind": "...", "value": x}.
void to_json(nlohmann::json& json, const TransformerConfig& config);
/// Missing fields keep their defaults; an unknown field or a bad value throws Error naming it.
void from_json(const nlohmann::json& json, TransformerConfig& config);

class TransformerModel : public Seq2SeqModel {
 public:
  explicit TransformerModel(const TransformerConfig& config);
  /// Rebuilds a model from config() (what checkpoints write to config.json).
  static std::unique_ptr<TransformerModel> from_config(const nlohmann::json& json);

  /// Cross-attention maps "layer L head H" (1-based), each [B, T, S].
  Seq2SeqOutput forward(const IndexArray& source, const IndexArray& source_lengths,
                        const IndexArray& target_input) override;
  std::unique_ptr<DecoderState> start_decoding(const IndexArray& source, const IndexArray& source_lengths) override;
  /// Cross-attention maps "layer L head H", each [B, S].
  StepOutput decode_step(DecoderState& state, const IndexArray& previous_tokens) override;
  /// Cross-attention, encoder self-attention and decoder self-attention, every layer x head.
  std::vector<AttentionGroup> attention_groups(const IndexArray& source, const IndexArray& source_lengths,
                                               const IndexArray& target_input) override;
  std::string kind() const override { return "transformer"; }
  nlohmann::json config() const override { return config_; }
  /// With mup_base_d_model: one group "mup hidden" (lr / m, weight_decay · m) of every weight
  /// with two dimensions that scale with the width, found as microsoft/mup finds them — the
  /// dimensions whose size differs in a model of the same config but wider (d_model + 2·heads,
  /// dim_feedforward + 1). Without: none.
  std::vector<ParameterGroup> parameter_groups() const override;
  /// d_model / mup_base_d_model; 1 without μP.
  double width_multiplier() const;

  const TransformerConfig& transformer_config() const { return config_; }

 private:
  /// The encoder's output [B, S, D] for source [B, S].
  Variable encode(const IndexArray& source, const IndexArray& source_lengths);
  /// The same, with each encoder layer's self-attention [B, H, S, S].
  TransformerEncoder::Output encode_with_attention(const IndexArray& source, const IndexArray& source_lengths);
  /// tokens [B, T] at positions start.. -> embedding · √d_model (+ table), then dropout.
  Variable embed(const Embedding& embedding, Module* positions, const IndexArray& tokens, std::size_t start);
  /// The decoder's output [..., D] -> logits [..., V]; under μP through x / m (MuReadout).
  Variable readout(const Variable& decoded) const;
  /// Per-layer attention [B, H, Tq, Tk] -> maps "layer L head H" [B, Tq, Tk].
  std::vector<NamedAttention> name_attention(const std::vector<Variable>& attention) const;

  TransformerConfig config_;
  std::shared_ptr<Embedding> source_embedding_, target_embedding_;
  /// Sinusoidal or learned tables, one per side; null for relative / rope.
  std::shared_ptr<Module> source_positions_, target_positions_;
  std::shared_ptr<Dropout> embedding_dropout_;
  std::shared_ptr<TransformerEncoder> encoder_;
  std::shared_ptr<TransformerDecoder> decoder_;
  std::shared_ptr<Linear> output_;
};

}  // namespace qkv::models
