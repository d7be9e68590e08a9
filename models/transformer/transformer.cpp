#include "models/transformer/transformer.hpp"

#include <cmath>
#include <map>

#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv::models {

namespace {

constexpr const char* kModel = "TransformerModel";
constexpr const char* kConfig = "TransformerConfig";


/// Head h of per-head weights [B, H, T, S] -> [B, T, S].
Array head_of(const Array& weights, std::size_t head) {
  const std::size_t batch = weights.shape()[0], heads = weights.shape()[1];
  const std::size_t block = weights.shape()[2] * weights.shape()[3];  // T * S
  Array result = zeros({batch, weights.shape()[2], weights.shape()[3]});
  for (std::size_t b = 0; b < batch; ++b)
    std::copy_n(weights.data() + (b * heads + head) * block, block, result.data() + b * block);
  return result;
}

}  // namespace


void TransformerConfig::validate() const {
  const auto positive = [](std::size_t value, const char* field) {
    check_arg(value > 0, kConfig, std::string(field) + " must be positive, got 0");
  };
  positive(source_vocab_size, "source_vocab_size");
  positive(target_vocab_size, "target_vocab_size");
  positive(d_model, "d_model");
  positive(nhead, "num_heads");
  positive(encoder_layers, "encoder_layers");
  positive(decoder_layers, "decoder_layers");
  positive(dim_feedforward, "dim_feedforward");
  positive(max_len, "max_length");
  check_arg(d_model % nhead == 0, kConfig,
            "d_model " + std::to_string(d_model) + " is not divisible by num_heads " + std::to_string(nhead));
  check_arg(positional != PositionalKind::rope || (d_model / nhead) % 2 == 0, kConfig,
            "rope needs an even head size, got d_model / num_heads = " + std::to_string(d_model / nhead));
  check_arg(positional != PositionalKind::relative || relative_max_distance > 0, kConfig,
            "relative_max_distance must be positive, got 0");
  check_arg(num_kv_heads == 0 || nhead % num_kv_heads == 0, kConfig,
            "num_kv_heads " + std::to_string(num_kv_heads) + " does not divide num_heads " + std::to_string(nhead));
  check_arg(memory_slots == 0 || positional == PositionalKind::sinusoidal || positional == PositionalKind::learned,
            kConfig,
            "memory_slots " + std::to_string(memory_slots) + " need positions added to the embeddings (sinusoidal or "
            "learned): the slots take no position, and " + std::string(name_of(positional)) +
                " acts inside attention");
  check_range(kConfig, "dropout", dropout, 0, 1);
  // A value the scale does not use would be ignored silently (e.g. --attention-scale-value with 1/√d_k).
  const bool has_value = scale.kind == ScoreScale::Kind::fixed || scale.kind == ScoreScale::Kind::learned_temperature ||
                         scale.kind == ScoreScale::Kind::inverse_dim || scale.depends_on_length();
  check_arg(has_value || scale.value == 1, kConfig,
            "scale " + name_of(scale.kind) + " takes no value, got " + format_number(scale.value));
  if (attention_pattern == AttentionPattern::block_sparse) {
    block_sparse.validate();
    check_arg(dropout == 0, kConfig,
              "block_sparse attention has no dropout on the attention weights: dropout must be 0, got " +
                  format_number(dropout));
    check_arg(positional != PositionalKind::relative && positional != PositionalKind::alibi &&
                  scale.kind != ScoreScale::Kind::learned_temperature && !scale.depends_on_length(),
              kConfig,
              "block_sparse attention takes no relative or ALiBi positions and a constant score scale (the kernel "
              "forms no score terms), got positional " + std::string(name_of(positional)) + " and scale " +
                  name_of(scale.kind));
    check_arg(memory_slots == 0, kConfig, "block_sparse attention takes no memory_slots");
  }
}

void to_json(nlohmann::json& json, const TransformerConfig& config) {
  json = {
      {"source_vocab_size", config.source_vocab_size},
      {"target_vocab_size", config.target_vocab_size},
      {"d_model", config.d_model},
      {"num_heads", config.nhead},
      {"encoder_layers", config.encoder_layers},
      {"decoder_layers", config.decoder_layers},
      {"dim_feedforward", config.dim_feedforward},
      {"dropout", config.dropout},
      {"activation", name_of(config.activation)},
      {"norm_first", config.norm_first},
      {"positional", name_of(config.positional)},
      {"relative_max_distance", config.relative_max_distance},
      {"scale", {{"kind", name_of(config.scale.kind)}, {"value", config.scale.value}}},
      {"attention_pattern", name_of(config.attention_pattern)},
      {"block_sparse",
       {{"block_size", config.block_sparse.block_size}, {"global_tokens", config.block_sparse.global_tokens},
        {"window_blocks", config.block_sparse.window_blocks}, {"random_blocks", config.block_sparse.random_blocks},
        {"seed", config.block_sparse.seed}}},
      {"qk_norm", config.qk_norm},
      {"sigma_reparam", config.sigma_reparam},
      {"zero_query_init", config.zero_query_init},
      {"max_length", config.max_len},
      {"num_kv_heads", config.num_kv_heads},
      {"memory_slots", config.memory_slots},
      {"mup_base_d_model", config.mup_base_d_model},
      {"seed", config.seed},
  };
}

void from_json(const nlohmann::json& json, TransformerConfig& config) {
  check_arg(json.is_object(), kConfig, "expected a JSON object, got " + json.dump());
  config = TransformerConfig{};
  // Sizes go through json_value, which refuses -8 and 1e30 (nlohmann's get<std::size_t> would
  // wrap the one and convert the other with undefined behaviour; both found by fuzzing).
  for (const auto& item : json.items()) {
    // Named, not a structured binding: clang 14 (the fuzz build) cannot capture one.
    const std::string& key = item.key();
    const nlohmann::json& value = item.value();
    const auto size = [&] { return json_value<std::size_t>(value, kConfig, key); };
    const auto text = [&] { return json_value<std::string>(value, kConfig, key); };
    if (key == "source_vocab_size") config.source_vocab_size = size();
    else if (key == "target_vocab_size") config.target_vocab_size = size();
    else if (key == "d_model") config.d_model = size();
    else if (key == "num_heads") config.nhead = size();
    else if (key == "encoder_layers") config.encoder_layers = size();
    else if (key == "decoder_layers") config.decoder_layers = size();
    else if (key == "dim_feedforward") config.dim_feedforward = size();
    else if (key == "dropout") config.dropout = json_value<real>(value, kConfig, key);
    else if (key == "activation") config.activation = parse_name<Activation>(text(), kConfig);
    else if (key == "norm_first") config.norm_first = json_value<bool>(value, kConfig, key);
    else if (key == "positional") config.positional = parse_name<PositionalKind>(text(), kConfig);
    else if (key == "relative_max_distance") config.relative_max_distance = size();
    else if (key == "scale") {
      const std::string owner = std::string(kConfig) + " scale";
      config.scale.kind = parse_name<ScoreScale::Kind>(json_field<std::string>(value, owner, "kind"), owner);
      config.scale.value = json_field_or<real>(value, owner, "value", config.scale.value);
    } else if (key == "attention_pattern") config.attention_pattern = parse_name<AttentionPattern>(text(), kConfig);
    else if (key == "block_sparse") {
      const std::string owner = std::string(kConfig) + " block_sparse";
      check_arg(value.is_object(), owner.c_str(), "expected a JSON object, got " + value.dump());
      BlockSparsePattern& p = config.block_sparse;
      for (const auto& field : value.items()) {
        const std::string& name = field.key();
        const std::size_t number = json_value<std::size_t>(field.value(), owner, name);
        if (name == "block_size") p.block_size = number;
        else if (name == "global_tokens") p.global_tokens = number;
        else if (name == "window_blocks") p.window_blocks = number;
        else if (name == "random_blocks") p.random_blocks = number;
        else if (name == "seed") p.seed = json_value<std::uint64_t>(field.value(), owner, name);
        else throw Error(owner + ": unknown field \"" + name + "\"");
      }
    } else if (key == "qk_norm" || key == "sigma_reparam" || key == "zero_query_init") {
      // A flag from the command line arrives as 0 or 1; config.json writes true or false.
      bool on = false;
      if (value.is_boolean()) on = value.get<bool>();
      else {
        const std::size_t number = size();
        check_arg(number <= 1, kConfig, key + " must be true, false, 0 or 1, got " + value.dump());
        on = number == 1;
      }
      (key == "qk_norm" ? config.qk_norm : key == "sigma_reparam" ? config.sigma_reparam : config.zero_query_init) = on;
    } else if (key == "max_length") config.max_len = size();
    else if (key == "num_kv_heads") config.num_kv_heads = size();
    else if (key == "memory_slots") config.memory_slots = size();
    else if (key == "mup_base_d_model") config.mup_base_d_model = size();
    else if (key == "seed") config.seed = json_value<std::uint64_t>(value, kConfig, key);
    else throw Error(std::string(kConfig) + ": unknown field \"" + key + "\"");
  }
  config.validate();
}

TransformerModel::TransformerModel(const TransformerConfig& config) : config_(config) {
  config.validate();
  Rng rng(config.seed);
  const std::size_t d = config.d_model, head_dim = config.d_model / config.nhead;
  const EmbeddingOptions padding{.padding_idx = 0};
  source_embedding_ =
      register_module("source_embedding", std::make_shared<Embedding>(config.source_vocab_size, d, rng, padding));
  target_embedding_ =
      register_module("target_embedding", std::make_shared<Embedding>(config.target_vocab_size, d, rng, padding));
  // N(0, 1/d) rather than Embedding's N(0, 1): after the √d scaling the embeddings have unit
  // variance, the scale of the position tables (as in fairseq / tensor2tensor). Under μP the
  // same with the base width, so that both the start and the multiplier are constant in m.
  const std::size_t embedding_width = config.mup_base_d_model > 0 ? config.mup_base_d_model : d;
  for (const auto& embedding : {source_embedding_, target_embedding_}) {
    Variable weight = embedding->weight();
    weight.mutable_value() = normal(weight.shape(), 0, real(1) / std::sqrt(static_cast<real>(embedding_width)), rng);
    std::fill_n(weight.mutable_value().data(), d, real(0));  // the <pad> row stays zero
  }
  if (config.positional == PositionalKind::sinusoidal) {
    source_positions_ = register_module("source_positions", std::make_shared<SinusoidalPositionalEncoding>(d, config.max_len));
    target_positions_ = register_module("target_positions", std::make_shared<SinusoidalPositionalEncoding>(d, config.max_len));
  } else if (config.positional == PositionalKind::learned) {
    source_positions_ =
        register_module("source_positions", std::make_shared<LearnedPositionalEmbedding>(d, config.max_len, rng));
    target_positions_ =
        register_module("target_positions", std::make_shared<LearnedPositionalEmbedding>(d, config.max_len, rng));
  }
  embedding_dropout_ =
      register_module("embedding_dropout", std::make_shared<Dropout>(config.dropout, Rng(rng.next_u64())));

  TransformerLayerOptions layer;
  layer.d_model = d;
  layer.nhead = config.nhead;
  layer.dim_feedforward = config.dim_feedforward;
  layer.dropout = config.dropout;
  layer.activation = config.activation;
  layer.norm_first = config.norm_first;
  layer.scale = config.scale;
  layer.num_kv_heads = config.num_kv_heads;
  layer.memory_slots = config.memory_slots;
  if (config.attention_pattern == AttentionPattern::block_sparse) layer.self_attention_block_sparse = config.block_sparse;
  layer.qk_norm = config.qk_norm, layer.sigma_reparam = config.sigma_reparam;
  layer.zero_query_init = config.zero_query_init;
  if (config.positional == PositionalKind::relative) {
    // Each self-attention layer gets its own tables, seeded in construction order.
    auto seed = std::make_shared<std::uint64_t>(rng.next_u64());
    const std::size_t distance = config.relative_max_distance;
    layer.self_attention_positions = [seed, head_dim, distance] {
      Rng tables((*seed)++);
      return std::make_shared<RelativePositionEncoding>(head_dim, distance, tables);
    };
  } else if (config.positional == PositionalKind::rope) {
    layer.self_attention_positions = [head_dim] { return std::make_shared<RotaryPositionEncoding>(head_dim); };
  } else if (config.positional == PositionalKind::alibi) {
    const std::size_t heads = config.nhead;
    layer.self_attention_positions = [heads] { return std::make_shared<ALiBi>(heads); };
  }
  encoder_ = register_module(
      "encoder", std::make_shared<TransformerEncoder>(layer, config.encoder_layers, config.norm_first, rng));
  decoder_ = register_module(
      "decoder", std::make_shared<TransformerDecoder>(layer, config.decoder_layers, config.norm_first, rng));
  output_ = register_module("output", std::make_shared<Linear>(d, config.target_vocab_size, rng));
  if (config.mup_base_d_model > 0) {
    // μP's initialisation (microsoft/mup's set_base_shapes): every Linear was drawn from
    // U(±1/√fan_in); its bias, and the readout's weight too, become U(±1/√base_fan_in) — of a
    // size that does not change with the width. Hidden weights keep variance ∝ 1/fan_in. Every
    // fan-in here (d_model, dim_feedforward) scales by m, so the factor is √m throughout.
    const real grow = std::sqrt(static_cast<real>(width_multiplier()));
    const auto scale = [grow](const Variable& parameter) {
      Variable handle = parameter;
      for (real& value : handle.mutable_value()) value *= grow;
    };
    for (const auto& [name, module] : named_modules())
      if (const auto* linear = dynamic_cast<const Linear*>(module); linear != nullptr && linear->bias().defined())
        scale(linear->bias());
    scale(output_->weight());
  }
}

double TransformerModel::width_multiplier() const {
  if (config_.mup_base_d_model == 0) return 1;
  return static_cast<double>(config_.d_model) / static_cast<double>(config_.mup_base_d_model);
}

std::vector<ParameterGroup> TransformerModel::parameter_groups() const {
  if (config_.mup_base_d_model == 0) return {};
  // Which dimensions scale with the width: those that change when the width does (microsoft/mup
  // compares against a "delta" model the same way). Wider by 2 per head keeps rope's head size
  // even; the feed-forward width counts as scaling with d_model. Vocabularies, max_length,
  // memory slots, heads and relative distances stay put.
  TransformerConfig wider = config_;
  wider.d_model += 2 * config_.nhead;
  wider.dim_feedforward += 1;
  wider.mup_base_d_model = 0;
  const TransformerModel probe(wider);
  std::map<std::string, Shape> wider_shapes;
  for (const auto& [name, parameter] : probe.named_parameters()) wider_shapes.emplace(name, parameter.shape());
  const double m = width_multiplier();
  ParameterGroup hidden{.name = "mup hidden", .parameters = {}, .lr_multiplier = 1 / m, .weight_decay_multiplier = m};
  for (const auto& [name, parameter] : named_parameters()) {
    const Shape& shape = parameter.shape();
    const Shape& other = wider_shapes.at(name);  // the same modules, so the same names
    std::size_t scaling = 0;
    for (std::size_t i = 0; i < shape.size(); ++i) scaling += shape[i] != other[i] ? 1 : 0;
    // mup's MuAdam refuses these too: which dimension is the fan-in would be a guess.
    check_arg(scaling <= 2, kModel,
              "mup: parameter " + name + " " + qkv::to_string(shape) + " has " + std::to_string(scaling) +
                  " dimensions that scale with the width; μP's rules cover at most 2");
    if (scaling == 2) hidden.parameters.push_back(name);
  }
  return {hidden};
}

Variable TransformerModel::readout(const Variable& decoded) const {
  if (config_.mup_base_d_model == 0) return output_->forward(decoded);
  return output_->forward(decoded * static_cast<real>(1 / width_multiplier()));  // [..., D] -> [..., V]
}

std::unique_ptr<TransformerModel> TransformerModel::from_config(const nlohmann::json& json) {
  return std::make_unique<TransformerModel>(json.get<TransformerConfig>());
}

Variable TransformerModel::embed(const Embedding& embedding, Module* positions, const IndexArray& tokens,
                                 std::size_t start) {
  const std::size_t width = config_.mup_base_d_model > 0 ? config_.mup_base_d_model : config_.d_model;
  const Variable x = embedding.forward(tokens) * std::sqrt(static_cast<real>(width));  // [B, T, D]
  Variable placed = x;
  if (auto* sinusoidal = dynamic_cast<SinusoidalPositionalEncoding*>(positions))
    placed = sinusoidal->forward(x, start);
  else if (auto* learned = dynamic_cast<LearnedPositionalEmbedding*>(positions))
    placed = learned->forward(x, start);
  return embedding_dropout_->forward(placed);
}

Variable TransformerModel::encode(const IndexArray& source, const IndexArray& source_lengths) {
  return encode_with_attention(source, source_lengths).output;
}

TransformerEncoder::Output TransformerModel::encode_with_attention(const IndexArray& source,
                                                                   const IndexArray& source_lengths) {
  check_shape(source.dimension() == 2 && source_lengths.dimension() == 1 &&
                  source_lengths.shape()[0] == source.shape()[0],
              kModel,
              "source must be [B, S] and source_lengths [B], got source " + qkv::to_string(shape_of(source)) +
                  " and source_lengths " + qkv::to_string(shape_of(source_lengths)));
  check_shape(source.shape()[1] <= config_.max_len, kModel,
              "source length " + std::to_string(source.shape()[1]) + " exceeds max_length " +
                  std::to_string(config_.max_len));
  AttentionMask mask;
  mask.valid_lens = source_lengths;
  return encoder_->forward(embed(*source_embedding_, source_positions_.get(), source, 0), mask);  // [B, S, D]
}

std::vector<NamedAttention> TransformerModel::name_attention(const std::vector<Variable>& attention) const {
  std::vector<NamedAttention> maps;
  for (std::size_t l = 0; l < attention.size(); ++l)
    for (std::size_t h = 0; h < config_.nhead; ++h)
      maps.emplace_back("layer " + std::to_string(l + 1) + " head " + std::to_string(h + 1),
                        head_of(attention[l].value(), h));  // [B, T_queries, T_keys]
  return maps;
}

std::vector<AttentionGroup> TransformerModel::attention_groups(const IndexArray& source,
                                                               const IndexArray& source_lengths,
                                                               const IndexArray& target_input) {
  const NoGradGuard no_grad;
  const TransformerEncoder::Output encoded = encode_with_attention(source, source_lengths);  // [B, S, D]
  check_shape(target_input.dimension() == 2 && target_input.shape()[0] == source.shape()[0], kModel,
              "target_input must be [B, T] with the source's batch " + std::to_string(source.shape()[0]) + ", got " +
                  qkv::to_string(shape_of(target_input)));
  AttentionMask source_mask;
  source_mask.valid_lens = source_lengths;
  const Variable target = embed(*target_embedding_, target_positions_.get(), target_input, 0);  // [B, T, D]
  const TransformerDecoder::Output decoded = decoder_->forward(target, encoded.output, {.causal = true}, source_mask);
  const std::size_t heads = config_.nhead;
  // Plots label keys with tokens: the persistent memory's columns (the last) are left out, so
  // a self-attention map's rows sum to the share the sequence got.
  const auto tokens_only = [&](std::vector<Variable> attention) {
    for (Variable& weights : attention)  // [B, H, Tq, Tk + N] -> [B, H, Tq, Tk]
      if (config_.memory_slots > 0) weights = slice(weights, 3, 0, weights.dim(3) - config_.memory_slots);
    return attention;
  };
  return {{"cross-attention", TokenSide::target, TokenSide::source, heads, name_attention(decoded.cross_attention)},
          {"encoder self-attention", TokenSide::source, TokenSide::source, heads,
           name_attention(tokens_only(encoded.self_attention))},
          {"decoder self-attention", TokenSide::target, TokenSide::target, heads,
           name_attention(tokens_only(decoded.self_attention))}};
}

Seq2SeqOutput TransformerModel::forward(const IndexArray& source, const IndexArray& source_lengths,
                                        const IndexArray& target_input) {
  const Variable memory = encode(source, source_lengths);  // [B, S, D]
  check_shape(target_input.dimension() == 2 && target_input.shape()[0] == source.shape()[0], kModel,
              "target_input must be [B, T] with the source's batch " + std::to_string(source.shape()[0]) + ", got " +
                  qkv::to_string(shape_of(target_input)));
  check_shape(target_input.shape()[1] <= config_.max_len, kModel,
              "target length " + std::to_string(target_input.shape()[1]) + " exceeds max_length " +
                  std::to_string(config_.max_len));
  AttentionMask source_mask;
  source_mask.valid_lens = source_lengths;
  const Variable target = embed(*target_embedding_, target_positions_.get(), target_input, 0);  // [B, T, D]
  const TransformerDecoder::Output decoded = decoder_->forward(target, memory, {.causal = true}, source_mask);
  return {readout(decoded.output), name_attention(decoded.cross_attention)};  // [B, T, V]
}

namespace {

class TransformerDecoderState : public DecoderState {
 public:
  TransformerDecoderCache cache;
  IndexArray source_lengths;  // [B]

  void select_rows(const std::vector<std::size_t>& rows) override {
    cache.select_rows(rows);  // checks the rows
    IndexArray lengths = IndexArray::from_shape({rows.size()});
    for (std::size_t i = 0; i < rows.size(); ++i) lengths(i) = source_lengths(rows[i]);
    source_lengths = std::move(lengths);
  }

  void limit_cache(const KVCacheLimit& limit) override { cache.limit_self_attention(limit); }
};

}  // namespace

std::unique_ptr<DecoderState> TransformerModel::start_decoding(const IndexArray& source,
                                                               const IndexArray& source_lengths) {
  auto state = std::make_unique<TransformerDecoderState>();
  state->cache = decoder_->start(encode(source, source_lengths));
  state->source_lengths = source_lengths;
  return state;
}

StepOutput TransformerModel::decode_step(DecoderState& state, const IndexArray& previous_tokens) {
  auto* transformer_state = dynamic_cast<TransformerDecoderState*>(&state);
  check_arg(transformer_state != nullptr, kModel, "decode_step needs the state from this model's start_decoding");
  const std::size_t batch = transformer_state->source_lengths.size();
  check_shape(previous_tokens.dimension() == 1 && previous_tokens.size() == batch, kModel,
              "previous_tokens must be [B] with B = " + std::to_string(batch) + ", got " +
                  qkv::to_string(shape_of(previous_tokens)));
  const std::size_t position = transformer_state->cache.length();
  check_shape(position < config_.max_len, kModel,
              "decoding step " + std::to_string(position + 1) + " exceeds max_length " +
                  std::to_string(config_.max_len));
  IndexArray tokens = previous_tokens;
  tokens.reshape({batch, 1});
  const Variable target = embed(*target_embedding_, target_positions_.get(), tokens, position);  // [B, 1, D]
  AttentionMask source_mask;
  source_mask.valid_lens = transformer_state->source_lengths;
  const TransformerDecoder::Output decoded = decoder_->step(target, transformer_state->cache, source_mask);
  const Variable logits = reshape(readout(decoded.output),
                                  {static_cast<long>(batch), static_cast<long>(config_.target_vocab_size)});  // [B, V]
  std::vector<NamedAttention> maps = name_attention(decoded.cross_attention);
  for (auto& [name, weights] : maps) weights.reshape({batch, weights.shape()[2]});  // [B, 1, S] -> [B, S]
  return {logits, std::move(maps)};
}

}  // namespace qkv::models
