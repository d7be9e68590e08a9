#include "gated_seq2seq.hpp"

#include <algorithm>
#include <mutex>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "models/registry.hpp"

namespace custom {
using qkv::real;
using qkv::Variable;

namespace {

/// What decoding keeps between steps: the memory, its mask and the next position.
struct GatedState : qkv::models::DecoderState {
  Variable memory;           // [B, S, D]
  qkv::IndexArray lengths;   // [B]
  std::size_t position = 0;  // of the next decoder input

  void select_rows(const std::vector<std::size_t>& rows) override {
    qkv::IndexArray selected_lengths = qkv::IndexArray::from_shape({rows.size()});
    for (std::size_t i = 0; i < rows.size(); ++i) selected_lengths(i) = lengths(rows[i]);
    lengths = selected_lengths;
    // Decoding runs without gradients: the memory's rows are copied as plain values.
    const qkv::Array& all = memory.value();  // [B, S, D]
    const std::size_t row = all.size() / all.shape()[0];
    qkv::Array kept = qkv::Array::from_shape({rows.size(), all.shape()[1], all.shape()[2]});  // [B', S, D]
    for (std::size_t i = 0; i < rows.size(); ++i)
      std::copy_n(all.data() + rows[i] * row, row, kept.data() + i * row);
    memory = Variable(std::move(kept));
  }
};

}  // namespace

GatedSeq2Seq::GatedSeq2Seq(std::size_t source_vocab_size, std::size_t target_vocab_size, std::size_t d_model,
                           std::uint64_t seed)
    : source_vocab_size_(source_vocab_size), target_vocab_size_(target_vocab_size), d_model_(d_model), seed_(seed) {
  qkv::Rng rng(seed);
  source_embedding_ = register_module("source_embedding", std::make_shared<qkv::Embedding>(source_vocab_size, d_model, rng));
  target_embedding_ = register_module("target_embedding", std::make_shared<qkv::Embedding>(target_vocab_size, d_model, rng));
  positions_ = register_module("positions", std::make_shared<qkv::SinusoidalPositionalEncoding>(d_model));
  encoder_ = register_module("encoder", std::make_shared<GatedSelfAttention>(d_model, rng));
  query_projection_ = register_module("query_projection", std::make_shared<qkv::Linear>(d_model, d_model, rng));
  key_projection_ = register_module("key_projection", std::make_shared<qkv::Linear>(d_model, d_model, rng));
  cross_attention_ = register_module("cross_attention", std::make_shared<qkv::DotProductAttention>());
  output_ = register_module("output", std::make_shared<qkv::Linear>(2 * d_model, target_vocab_size, rng));
}

nlohmann::json GatedSeq2Seq::config() const {
  return {{"d_model", d_model_}, {"seed", seed_}};
}

Variable GatedSeq2Seq::encode(const qkv::IndexArray& source) {
  // A residual around the layer, as in a transformer block: the positions stay readable in the
  // memory for the decoder's position-addressed attention.
  const Variable x = positions_->forward(source_embedding_->forward(source));  // [B, S, D]
  return x + encoder_->forward(x);                                                    // [B, S, D]
}

qkv::AttentionOutput GatedSeq2Seq::decode(const Variable& memory, const qkv::BoolArray& allowed,
                                          const qkv::IndexArray& inputs, std::size_t start, Variable& logits) {
  const Variable queries = positions_->forward(target_embedding_->forward(inputs), start);  // [B, T, D]
  qkv::AttentionOutput attended = cross_attention_->forward(query_projection_->forward(queries),
                                                            key_projection_->forward(memory), memory, allowed);  // [B, T, D]
  logits = output_->forward(qkv::concat({queries, attended.output}, -1));                          // [B, T, V]
  return attended;
}

qkv::models::Seq2SeqOutput GatedSeq2Seq::forward(const qkv::IndexArray& source, const qkv::IndexArray& source_lengths,
                                                 const qkv::IndexArray& target_input) {
  const Variable memory = encode(source);  // [B, S, D]
  const qkv::BoolArray allowed =
      qkv::allowed_from_valid_lens(source_lengths, target_input.shape()[1], source.shape()[1]);  // [B, T, S]
  Variable logits;
  const qkv::AttentionOutput attended = decode(memory, allowed, target_input, 0, logits);
  return {.logits = logits, .attention = {{"cross-attention", attended.weights.value()}}};
}

std::unique_ptr<qkv::models::DecoderState> GatedSeq2Seq::start_decoding(const qkv::IndexArray& source,
                                                                        const qkv::IndexArray& source_lengths) {
  auto state = std::make_unique<GatedState>();
  state->memory = encode(source);
  state->lengths = source_lengths;
  return state;
}

qkv::models::StepOutput GatedSeq2Seq::decode_step(qkv::models::DecoderState& base, const qkv::IndexArray& previous) {
  auto& state = dynamic_cast<GatedState&>(base);
  const std::size_t batch = previous.shape()[0], source_length = state.memory.dim(1);
  qkv::IndexArray inputs = qkv::IndexArray::from_shape({batch, 1});
  std::copy(previous.begin(), previous.end(), inputs.begin());  // [B, 1]
  const qkv::BoolArray allowed = qkv::allowed_from_valid_lens(state.lengths, 1, source_length);  // [B, 1, S]
  Variable logits;
  const qkv::AttentionOutput attended = decode(state.memory, allowed, inputs, state.position++, logits);
  const std::size_t vocab = logits.dim(-1);
  const long rows = long(batch);
  return {.logits = qkv::reshape(logits, {rows, long(vocab)}),  // [B, V]
          .attention = {{"cross-attention", qkv::reshape(attended.weights, {rows, long(source_length)}).value()}}};
}

void register_gated_seq2seq() {
  static std::once_flag once;
  std::call_once(once, [] {
    qkv::models::register_model_kind(
        {.name = "gated_seq2seq",
         .summary = "gated self-attention encoder, position-addressed cross-attention decoder (examples/custom_layer)",
         .options = {{.flag = "--d-model", .keys = {"/d_model"}, .help = "width", .default_value = 32u, .min = 1,
                      .max = 4096}},
         .make = [](const nlohmann::json& config) -> std::shared_ptr<qkv::models::Seq2SeqModel> {
           const std::string where = "gated_seq2seq config";
           return std::make_shared<GatedSeq2Seq>(qkv::json_field<std::size_t>(config, where, "source_vocab_size"),
                                                 qkv::json_field<std::size_t>(config, where, "target_vocab_size"),
                                                 qkv::json_field<std::size_t>(config, where, "d_model"),
                                                 qkv::json_field<std::uint64_t>(config, where, "seed"));
         }});
  });
}

}  // namespace custom
