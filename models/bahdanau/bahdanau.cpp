#include "models/bahdanau/bahdanau.hpp"

#include <algorithm>
#include <string>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv::models {

namespace {

constexpr const char* model_name = "BahdanauModel";

// ---- config fields ----------------------------------------------------------------------

const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> keys{
      "source_vocab_size", "target_vocab_size", "embed_size",     "hidden_size", "decoder_hidden_size",
      "encoder_layers",    "bidirectional",     "decoder_layers", "attention_size", "readout",
      "dropout",           "seed"};
  return keys;
}

std::string join(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& name : names) text += (text.empty() ? "" : ", ") + name;
  return text;
}

// ---- row gathering ------------------------------------------------------------------------

/// x [B, ...] -> [K, ...] with row k = x[rows[k]]: the embedding op on x seen as a [B, rest]
/// table, so the gather has a backward (scatter-add, right for repeated rows too).
Variable gather_rows(const Variable& x, const IndexArray& rows) {
  const Shape shape = x.shape();
  const long batch = static_cast<long>(shape[0]);
  const long rest = batch == 0 ? 0 : static_cast<long>(numel(shape)) / batch;
  std::vector<long> gathered_shape(shape.begin(), shape.end());
  gathered_shape[0] = static_cast<long>(rows.size());
  return reshape(embedding(reshape(x, {batch, rest}), rows), gathered_shape);  // [K, ...]
}

}  // namespace

// ---- config -------------------------------------------------------------------------------

void BahdanauConfig::validate() const {
  auto positive = [](std::size_t value, const char* field) {
    check_arg(value > 0, "BahdanauConfig", std::string(field) + " must be positive, got " + std::to_string(value));
  };
  positive(source_vocab_size, "source_vocab_size");
  positive(target_vocab_size, "target_vocab_size");
  positive(embedding_dim, "embed_size");
  positive(hidden_size, "hidden_size");
  positive(encoder_layers, "encoder_layers");
  positive(decoder_layers, "decoder_layers");
  positive(attention_size, "attention_size");
  check_range("BahdanauConfig", "dropout", dropout, 0, 1);
}

void to_json(nlohmann::json& json, const BahdanauConfig& config) {
  json = nlohmann::json{{"source_vocab_size", config.source_vocab_size},
                        {"target_vocab_size", config.target_vocab_size},
                        {"embed_size", config.embedding_dim},
                        {"hidden_size", config.hidden_size},
                        {"decoder_hidden_size", config.decoder_hidden_size},
                        {"encoder_layers", config.encoder_layers},
                        {"bidirectional", config.bidirectional},
                        {"decoder_layers", config.decoder_layers},
                        {"attention_size", config.attention_size},
                        {"readout", name_of(config.readout)},
                        {"dropout", static_cast<double>(config.dropout)},
                        {"seed", config.seed}};
}

void from_json(const nlohmann::json& json, BahdanauConfig& config) {
  check_arg(json.is_object(), "BahdanauConfig", "expected a JSON object, got " + json.dump());
  std::vector<std::string> unknown;
  for (const auto& item : json.items())
    if (std::find(config_keys().begin(), config_keys().end(), item.key()) == config_keys().end())
      unknown.push_back("\"" + item.key() + "\"");
  check_arg(unknown.empty(), "BahdanauConfig",
            "unknown key(s) " + join(unknown) + "; the known keys are " + join(config_keys()));
  constexpr const char* owner = "BahdanauConfig";
  BahdanauConfig result;
  result.source_vocab_size = json_field<std::size_t>(json, owner, "source_vocab_size");
  result.target_vocab_size = json_field<std::size_t>(json, owner, "target_vocab_size");
  result.embedding_dim = json_field_or(json, owner, "embed_size", result.embedding_dim);
  result.hidden_size = json_field_or(json, owner, "hidden_size", result.hidden_size);
  // Absent from configs written before the field: 0, the decoder as wide as hidden_size, as it was.
  result.decoder_hidden_size = json_field_or(json, owner, "decoder_hidden_size", result.decoder_hidden_size);
  // Absent from configs written before the field: the output read the state only.
  result.readout = parse_name<BahdanauReadout>(json_field_or(json, owner, "readout", std::string("state")),
                                             "BahdanauConfig readout");
  result.encoder_layers = json_field_or(json, owner, "encoder_layers", result.encoder_layers);
  result.decoder_layers = json_field_or(json, owner, "decoder_layers", result.decoder_layers);
  result.attention_size = json_field_or(json, owner, "attention_size", result.attention_size);
  result.seed = json_field_or(json, owner, "seed", result.seed);
  result.bidirectional = json_field_or(json, owner, "bidirectional", result.bidirectional);
  result.dropout = static_cast<real>(json_field_or(json, owner, "dropout", static_cast<double>(result.dropout)));
  result.validate();
  config = result;
}

// ---- state --------------------------------------------------------------------------------

void BahdanauState::select_rows(const std::vector<std::size_t>& rows) {
  const std::size_t batch = batch_size();
  IndexArray indices = IndexArray::from_shape({rows.size()});
  for (std::size_t k = 0; k < rows.size(); ++k) {
    check_arg(rows[k] < batch, "BahdanauState::select_rows",
              "row " + std::to_string(rows[k]) + " (position " + std::to_string(k) + ") is outside a batch of " +
                  std::to_string(batch));
    indices(k) = static_cast<std::int64_t>(rows[k]);
  }
  IndexArray sentences = IndexArray::from_shape({rows.size()});  // [K]: new row k's sentence
  for (std::size_t k = 0; k < rows.size(); ++k) sentences(k) = sentence_of_row(rows[k]);
  sentence_of_row = std::move(sentences);
  for (Variable& h : hidden) h = gather_rows(h, indices);   // [K, H]

  const std::size_t row_size = numel(shape_of(allowed)) / batch;
  BoolArray gathered = BoolArray::from_shape({rows.size(), allowed.shape()[1], allowed.shape()[2]});  // [K, 1, S]
  for (std::size_t k = 0; k < rows.size(); ++k)
    std::copy_n(allowed.data() + rows[k] * row_size, row_size, gathered.data() + k * row_size);
  allowed = std::move(gathered);
}

// ---- model --------------------------------------------------------------------------------

BahdanauModel::BahdanauModel(const BahdanauConfig& config) : config_(config) {
  config.validate();
  Rng rng(config.seed);
  const std::size_t hidden = config.hidden_size;
  const std::size_t directions = config.bidirectional ? 2 : 1;
  const std::size_t key_size = directions * hidden;  // encoder output per source position

  source_embedding_ = register_module(
      "source_embedding", std::make_shared<Embedding>(config.source_vocab_size, config.embedding_dim, rng,
                                                      EmbeddingOptions{.padding_idx = 0}));
  encoder_ = register_module("encoder", std::make_shared<GRU>(config.embedding_dim, hidden, rng,
                                                              GRUOptions{.num_layers = config.encoder_layers,
                                                                         .dropout = config.dropout,
                                                                         .bidirectional = config.bidirectional}));
  const std::size_t decoder_hidden = config.decoder_width();
  if (config.bidirectional || config.encoder_layers != config.decoder_layers || decoder_hidden != hidden)
    bridge_ = register_module("bridge", std::make_shared<Linear>(key_size, config.decoder_layers * decoder_hidden, rng));
  attention_ = register_module(
      "attention", std::make_shared<AdditiveAttention>(decoder_hidden, key_size, config.attention_size, rng));
  target_embedding_ = register_module(
      "target_embedding", std::make_shared<Embedding>(config.target_vocab_size, config.embedding_dim, rng,
                                                      EmbeddingOptions{.padding_idx = 0}));
  for (std::size_t layer = 0; layer < config.decoder_layers; ++layer) {
    const std::size_t input = layer == 0 ? config.embedding_dim + key_size : decoder_hidden;  // [y_{t-1}; context] at the bottom
    decoder_.push_back(
        register_module("decoder." + std::to_string(layer), std::make_shared<GRUCell>(input, decoder_hidden, rng)));
  }
  const std::size_t readout_size =
      decoder_hidden + (config.readout == BahdanauReadout::deep ? key_size + config.embedding_dim : 0);
  output_ = register_module("output", std::make_shared<Linear>(readout_size, config.target_vocab_size, rng));
  if (config.dropout > 0)
    dropout_ = register_module("dropout", std::make_shared<Dropout>(config.dropout, Rng(rng.next_u64())));
}

std::shared_ptr<BahdanauModel> BahdanauModel::from_config(const nlohmann::json& config) {
  return std::make_shared<BahdanauModel>(config.get<BahdanauConfig>());
}

Variable BahdanauModel::drop(const Variable& x) const { return dropout_ ? dropout_->forward(x) : x; }

void BahdanauModel::check_source(const IndexArray& source, const IndexArray& source_lengths) const {
  const Shape shape = shape_of(source);
  const Shape lengths_shape = shape_of(source_lengths);
  check_shape(shape.size() == 2 && shape[0] > 0 && shape[1] > 0, model_name,
              "source must be [B, S] with B, S > 0, got " + to_string(shape));
  check_shape(lengths_shape == Shape{shape[0]}, model_name,
              "source_lengths " + to_string(lengths_shape) + " must be [" + std::to_string(shape[0]) +
                  "] for source " + to_string(shape));
  for (std::size_t b = 0; b < shape[0]; ++b)
    check_arg(source_lengths(b) >= 0 && source_lengths(b) <= static_cast<std::int64_t>(shape[1]), model_name,
              "source_lengths[" + std::to_string(b) + "] = " + std::to_string(source_lengths(b)) +
                  " is outside [0, " + std::to_string(shape[1]) + "] for source " + to_string(shape));
}

BahdanauState BahdanauModel::encode(const IndexArray& source, const IndexArray& source_lengths) {
  check_source(source, source_lengths);
  const std::size_t source_steps = source.shape()[1];
  const long batch = static_cast<long>(source.shape()[0]);
  const long hidden = static_cast<long>(config_.hidden_size);
  const std::size_t directions = encoder_->num_directions();

  const Variable embedded = drop(source_embedding_->forward(source));  // [B, S, E]
  const GRUOutput encoded = encoder_->forward(embedded, source_lengths);

  BahdanauState state;
  state.encoder_outputs = encoded.output;                                 // [B, S, D·H]
  state.projected_keys = attention_->project_keys(encoded.output);        // [B, S, A]
  state.allowed = allowed_from_valid_lens(source_lengths, 1, source_steps);  // [B, 1, S]
  state.sentence_of_row = IndexArray::from_shape({static_cast<std::size_t>(batch)});  // [B]: row b reads sentence b
  for (long b = 0; b < batch; ++b) state.sentence_of_row(b) = b;

  const std::size_t decoder_layers = config_.decoder_layers;
  if (bridge_) {
    // The top encoder layer's final states, forward then backward: [D, B, H] -> [B, D·H].
    const std::size_t top = (config_.encoder_layers - 1) * directions;
    const Variable finals = slice(encoded.hidden, 0, top, top + directions);                // [D, B, H]
    const Variable summary = reshape(transpose(finals, 0, 1), {batch, -1});                  // [B, D·H]
    const Variable initial = tanh(bridge_->forward(summary));                                // [B, L_dec·H_dec]
    state.hidden = split(initial, std::vector<std::size_t>(decoder_layers, config_.decoder_width()), 1);  // L x [B, H_dec]
  } else {
    // Unidirectional, as many layers as the decoder: layer l starts from encoder layer l.
    for (std::size_t layer = 0; layer < decoder_layers; ++layer)
      state.hidden.push_back(reshape(slice(encoded.hidden, 0, layer, layer + 1), {batch, hidden}));  // [B, H]
  }
  return state;
}

BahdanauModel::InputWeights BahdanauModel::split_input_weights() const {
  // The bottom cell reads [embedding; context]: W_ih = [W_e | W_c] along its input axis.
  const Variable& weight_ih = decoder_[0]->weight_ih();  // [3H, E + D·H]
  const std::size_t embed = config_.embedding_dim, input = weight_ih.dim(1);
  return {slice(weight_ih, 1, 0, embed), slice(weight_ih, 1, embed, input)};  // [3H, E], [3H, D·H]
}

BahdanauModel::StepResult BahdanauModel::step(BahdanauState& state, const Variable& embedding_gates,
                                               std::size_t first_row, const Variable& context_weight,
                                               const PreparedStepWeights* prepared) {
  const Variable query = unsqueeze(state.hidden.back(), 1);  // [B, 1, H]
  const PreparedWeight* query_weight = prepared && prepared->query ? &*prepared->query : nullptr;
  const AttentionOutput attended =
      attention_->forward_projected(query, state.projected_keys, state.encoder_outputs, state.allowed,
                                    &state.sentence_of_row, query_weight);
  // W_ih [y; c] + b_ih = (W_e y + b_ih) + W_c c: the embedding half comes precomputed.
  const Variable context = squeeze(attended.output, 1);  // [B, D·H]
  const Variable context_gates = prepared ? linear(context, prepared->context, Variable())
                                          : linear(context, context_weight, Variable());  // [B, 3H]
  state.hidden[0] = decoder_[0]->forward_gate_rows(embedding_gates, first_row, context_gates, state.hidden[0],
                                                   prepared ? &prepared->hidden : nullptr);  // [B, H]
  for (std::size_t layer = 1; layer < decoder_.size(); ++layer)
    state.hidden[layer] = decoder_[layer]->forward(drop(state.hidden[layer - 1]), state.hidden[layer]);  // [B, H]
  return {attended.weights, context};  // [B, 1, S], [B, D·H]
}

Variable BahdanauModel::readout(const Variable& top_state, const Variable& context, const Variable& embedded) const {
  if (config_.readout == BahdanauReadout::state) return top_state;                 // [..., H_dec]
  return concat({top_state, context, embedded}, static_cast<long>(top_state.rank()) - 1);  // [..., H_dec + D·H + E]
}

Seq2SeqOutput BahdanauModel::forward(const IndexArray& source, const IndexArray& source_lengths,
                                     const IndexArray& target_input) {
  check_source(source, source_lengths);
  const Shape target_shape = shape_of(target_input);
  check_shape(target_shape.size() == 2 && target_shape[1] > 0 && target_shape[0] == source.shape()[0],
              model_name,
              "target_input must be [B, T] with T > 0 and the source's B, got " + to_string(target_shape) +
                  " for source " + to_string(shape_of(source)));
  BahdanauState state = encode(source, source_lengths);
  const std::size_t batch = target_shape[0], steps = target_shape[1];
  const std::size_t source_steps = source.shape()[1];

  // All target embeddings in one lookup, time-major so each step's rows are contiguous, and
  // their half of the bottom cell's input gates in one gemm for every step. Flat [T·B, 3H], so a
  // step's [B, 3H] block is one slice, with no squeeze (and its copy) after it.
  const long flat_rows = static_cast<long>(steps * batch);
  const Variable target_embedded = drop(target_embedding_->forward(target_input));               // [B, T, E]
  const Variable embedded = reshape(transpose(target_embedded, 0, 1), {flat_rows, -1});           // [T·B, E]
  const InputWeights input_weights = split_input_weights();
  const Variable embedding_gates = linear(embedded, input_weights.embedding, decoder_[0]->bias_ih());  // [T·B, 3H]
  std::vector<Variable> top_states(steps);  // T x [B, H_dec]
  std::vector<Variable> contexts(steps);    // T x [B, D·H]
  Array weights = Array::from_shape({batch, steps, source_steps});  // [B, T, S]
  const PreparedStepWeights prepared{prepare_weight(input_weights.context), decoder_[0]->prepare_hidden_weight(),
                                     attention_->prepare_query_weight()};
  for (std::size_t t = 0; t < steps; ++t) {
    const StepResult stepped = step(state, embedding_gates, t * batch, input_weights.context, &prepared);
    const Variable& step_weights = stepped.weights;  // [B, 1, S]
    top_states[t] = state.hidden.back();
    contexts[t] = stepped.context;
    const real* from = step_weights.value().data();
    for (std::size_t b = 0; b < batch; ++b)
      std::copy_n(from + b * source_steps, source_steps, weights.data() + (b * steps + t) * source_steps);
  }
  // One output gemm for every step: [B, T, H_dec (+ D·H + E)] -> [B, T, V].
  Seq2SeqOutput result;
  const bool deep = config_.readout == BahdanauReadout::deep;
  result.logits = output_->forward(readout(stack(top_states, 1), deep ? stack(contexts, 1) : Variable(), target_embedded));
  result.attention.emplace_back("attention", std::move(weights));
  return result;
}

std::unique_ptr<DecoderState> BahdanauModel::start_decoding(const IndexArray& source, const IndexArray& source_lengths) {
  return std::make_unique<BahdanauState>(encode(source, source_lengths));
}

StepOutput BahdanauModel::decode_step(DecoderState& state, const IndexArray& previous_tokens) {
  auto* bahdanau = dynamic_cast<BahdanauState*>(&state);
  check_arg(bahdanau != nullptr, model_name, "decode_step needs the state start_decoding returned");
  const Shape tokens_shape = shape_of(previous_tokens);
  check_shape(tokens_shape == Shape{bahdanau->batch_size()}, model_name,
              "previous_tokens " + to_string(tokens_shape) + " must be [" + std::to_string(bahdanau->batch_size()) +
                  "], one per row of the decoder state");
  const InputWeights input_weights = split_input_weights();
  const Variable embedded = drop(target_embedding_->forward(previous_tokens));                 // [B, E]
  const Variable embedding_gates = linear(embedded, input_weights.embedding, decoder_[0]->bias_ih());  // [B, 3H_dec]
  const StepResult stepped = step(*bahdanau, embedding_gates, 0, input_weights.context, nullptr);
  const Variable& step_weights = stepped.weights;  // [B, 1, S]
  StepOutput result;
  result.logits = output_->forward(readout(bahdanau->hidden.back(), stepped.context, embedded));  // [B, V]
  const std::size_t batch = bahdanau->batch_size(), source_steps = step_weights.shape()[2];
  Array weights = Array::from_shape({batch, source_steps});  // [B, S]
  std::copy_n(step_weights.value().data(), weights.size(), weights.data());
  result.attention.emplace_back("attention", std::move(weights));
  return result;
}

}  // namespace qkv::models
