#pragma once
// The interface every translation model in examples/ implements, so that training, decoding
// (greedy and beam search), checkpoints, evaluation and attention plots are written once.
//
// Token ids follow lib/text/vocab.hpp: <pad> = 0, <bos> = 1, <eos> = 2, <unk> = 3.
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "layers/module.hpp"
#include "layers/multihead_attention.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/tensor.hpp"
#include "optim/optimizer.hpp"

namespace qkv::models {

/// A named attention map for plots: weights [B, Tq, Tk] (teacher-forced forward) or [B, Tk]
/// (one decoding step). Names say where it comes from: "attention" for Bahdanau,
/// "layer 1 head 3" for the transformer's cross-attention.
using NamedAttention = std::pair<std::string, Array>;

struct Seq2SeqOutput {
  Variable logits;                       // [B, T, V_target]
  std::vector<NamedAttention> attention; // cross-attention, each [B, T, S]
};

struct StepOutput {
  Variable logits;                       // [B, V_target]
  std::vector<NamedAttention> attention; // cross-attention of this step, each [B, S]
};

/// Which sentence labels an attention map's axis.
enum class TokenSide { source, target };

/// The attention maps of one kind, for plots: the Bahdanau cross-attention, or every layer x
/// head of one of the transformer's three attentions.
struct AttentionGroup {
  std::string title;   // "cross-attention", "encoder self-attention", "decoder self-attention"
  TokenSide queries = TokenSide::target;
  TokenSide keys = TokenSide::source;
  std::size_t heads = 1;              // maps per layer, in order: layer 1's heads first
  std::vector<NamedAttention> maps;   // each [B, T_queries, T_keys]
};

/// What a model keeps between decoding steps (encoder outputs, hidden state, KV caches).
class DecoderState {
 public:
  virtual ~DecoderState() = default;
  /// Keeps only the given batch rows, in the given order (rows may repeat): beam search
  /// expands each sentence into K hypotheses and reorders them after every step.
  virtual void select_rows(const std::vector<std::size_t>& rows) = 0;
  /// Bounds the decoder's self-attention KV cache to attention sinks + a window (StreamingLLM,
  /// layers/multihead_attention.hpp's KVCacheLimit), before the first step. A model with no
  /// such cache has nothing to bound: the default refuses rather than ignore the option.
  virtual void limit_cache(const KVCacheLimit& limit) {
    throw Error("this model's decoder keeps no KV cache to bound (sink tokens " + std::to_string(limit.sink_tokens) +
                ", cache window " + std::to_string(limit.window) + ")");
  }
};

class Seq2SeqModel : public Module {
 public:
  /// Teacher-forced pass: source [B, S] (padded with 0) with source_lengths [B], and
  /// target_input [B, T] (<bos> + target) -> logits for every target position.
  virtual Seq2SeqOutput forward(const IndexArray& source, const IndexArray& source_lengths,
                                const IndexArray& target_input) = 0;
  /// Encodes the source once for incremental decoding.
  virtual std::unique_ptr<DecoderState> start_decoding(const IndexArray& source,
                                                       const IndexArray& source_lengths) = 0;
  /// One decoding step: the previous tokens [B] (<bos> first) -> next-token logits [B, V].
  /// Equal to the matching row of forward() on the same prefix (tested).
  virtual StepOutput decode_step(DecoderState& state, const IndexArray& previous_tokens) = 0;
  /// Every attention map of a teacher-forced pass, grouped by kind, for plots (not used in
  /// training, so a model may do extra work here). The default: forward()'s cross-attention.
  virtual std::vector<AttentionGroup> attention_groups(const IndexArray& source, const IndexArray& source_lengths,
                                                       const IndexArray& target_input) {
    return {{.title = "cross-attention", .maps = forward(source, source_lengths, target_input).attention}};
  }

  /// "bahdanau" or "transformer": the key in config.json.
  virtual std::string kind() const = 0;
  /// Hyperparameters that rebuild this model (with the vocabulary sizes) — written to
  /// config.json by checkpoints and read back by the model's `from_config`.
  virtual nlohmann::json config() const = 0;
  /// The optimizer's parameter groups this model's parametrisation asks for (per-parameter
  /// learning-rate multipliers, optim/optimizer.hpp); the Trainer sets them on its optimizer.
  /// None by default: one learning rate for every parameter.
  virtual std::vector<ParameterGroup> parameter_groups() const { return {}; }
};

}  // namespace qkv::models
