#pragma once
// A translation model of this project's own, built around its gated attention layer and
// trained with qkv's installed Trainer (gated_seq2seq_train.cpp):
//
//   encoder  x = source embedding + sinusoidal positions; memory = x + GatedSelfAttention(x)
//   decoder  query = previous token's embedding + its position; scaled dot-product attention
//            of W_q query over W_k memory (source padding masked) gives the context;
//            Linear([query; context]) -> logits
//
// The decoder has no recurrence: step t sees y_{t-1}, t and the source, which is enough for
// the `copy` task (output t is input t: attention by position) and keeps decode_step exactly
// the matching row of forward(). Registered with qkv's model registry under the kind
// "gated_seq2seq", so qkv's checkpoints rebuild it by name.
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "gated_attention.hpp"
#include "layers/attention.hpp"
#include "layers/embedding.hpp"
#include "layers/linear.hpp"
#include "layers/positional.hpp"
#include "models/seq2seq.hpp"

namespace custom {

class GatedSeq2Seq : public qkv::models::Seq2SeqModel {
 public:
  GatedSeq2Seq(std::size_t source_vocab_size, std::size_t target_vocab_size, std::size_t d_model, std::uint64_t seed);

  qkv::models::Seq2SeqOutput forward(const qkv::IndexArray& source, const qkv::IndexArray& source_lengths,
                                     const qkv::IndexArray& target_input) override;
  std::unique_ptr<qkv::models::DecoderState> start_decoding(const qkv::IndexArray& source,
                                                            const qkv::IndexArray& source_lengths) override;
  qkv::models::StepOutput decode_step(qkv::models::DecoderState& state, const qkv::IndexArray& previous_tokens) override;
  std::string kind() const override { return "gated_seq2seq"; }
  nlohmann::json config() const override;

 private:
  /// memory [B, S, D] for source [B, S].
  qkv::Variable encode(const qkv::IndexArray& source);
  /// logits [B, T, V] and cross-attention [B, T, S] for decoder inputs [B, T] at positions start..
  qkv::AttentionOutput decode(const qkv::Variable& memory, const qkv::BoolArray& allowed, const qkv::IndexArray& inputs,
                              std::size_t start, qkv::Variable& logits);

  std::size_t source_vocab_size_, target_vocab_size_, d_model_;
  std::uint64_t seed_;
  std::shared_ptr<qkv::Embedding> source_embedding_, target_embedding_;
  std::shared_ptr<qkv::SinusoidalPositionalEncoding> positions_;
  std::shared_ptr<GatedSelfAttention> encoder_;
  std::shared_ptr<qkv::Linear> query_projection_, key_projection_;
  std::shared_ptr<qkv::DotProductAttention> cross_attention_;
  std::shared_ptr<qkv::Linear> output_;
};

/// Adds "gated_seq2seq" (options --d-model and the model seed) to qkv's registry; idempotent.
void register_gated_seq2seq();

}  // namespace custom
