#include "layers/transformer.hpp"

#include <algorithm>
#include <sstream>

#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

std::string describe_layer(const char* kind, const TransformerLayerOptions& options) {
  std::ostringstream text;
  text << kind << "(d_model=" << options.d_model << ", nhead=" << options.nhead << ")";
  return text.str();
}

/// The checks both layer kinds make on their options, with the layer's name in the message.
void check_options(const TransformerLayerOptions& options, const std::string& layer) {
  check_arg(options.d_model > 0 && options.nhead > 0 && options.dim_feedforward > 0, layer.c_str(),
            "d_model, nhead and dim_feedforward must be positive, got d_model " + std::to_string(options.d_model) +
                ", nhead " + std::to_string(options.nhead) + ", dim_feedforward " +
                std::to_string(options.dim_feedforward));
  check_arg(options.d_model % options.nhead == 0, layer.c_str(),
            "d_model " + std::to_string(options.d_model) + " is not divisible by nhead " +
                std::to_string(options.nhead));
  check_arg(options.num_kv_heads == 0 || options.nhead % options.num_kv_heads == 0, layer.c_str(),
            "num_kv_heads " + std::to_string(options.num_kv_heads) + " does not divide nhead " +
                std::to_string(options.nhead));
  check_range(layer, "dropout", options.dropout, 0, 1);
  check_arg(options.layer_norm_eps > 0, layer.c_str(),
            "layer_norm_eps must be positive, got " + format_number(options.layer_norm_eps));
}

/// x must be [B, T, d_model]; `what` names the argument in the message.
void check_sequence(const Variable& x, std::size_t d_model, const std::string& layer, const std::string& what) {
  check_shape(x.rank() == 3 && x.dim(2) == d_model, layer.c_str(),
              what + " must be [B, T, d_model] with d_model " + std::to_string(d_model) + ", got " +
                  to_string(x.shape()));
}

/// Self-attention gets the position encoding and the persistent memory; cross-attention
/// neither (target and source positions are not on one axis; the memory is Sukhbaatar's
/// self-attention's).
MultiheadAttentionOptions attention_options(const TransformerLayerOptions& options, bool self_attention) {
  MultiheadAttentionOptions result;
  result.dropout = options.dropout;
  result.bias = options.bias;
  result.scale = options.scale;
  result.num_kv_heads = options.num_kv_heads;
  if (self_attention && options.self_attention_positions) result.positions = options.self_attention_positions();
  if (self_attention) result.memory_slots = options.memory_slots;
  if (self_attention) result.block_sparse = options.self_attention_block_sparse;
  result.qk_norm = options.qk_norm, result.sigma_reparam = options.sigma_reparam;
  result.zero_query_init = options.zero_query_init;
  return result;
}

/// A Dropout with its own stream, seeded by one draw of `rng`.
std::shared_ptr<Dropout> make_dropout(real p, Rng& rng) { return std::make_shared<Dropout>(p, Rng(rng.next_u64())); }

Variable activate(const Variable& x, Activation activation) {
  return activation == Activation::relu ? relu(x) : gelu(x);
}

/// dropout(activate(x)): ReLU and its dropout are one fused op (the same values), GELU two.
Variable activate_then_drop(const Variable& x, Activation activation, Dropout& dropout) {
  return activation == Activation::relu ? dropout.forward_relu(x) : dropout.forward(activate(x, activation));
}

/// Rows `rows` of x along axis 0, as a plain value: x [B, ...] -> [rows.size(), ...].
Variable take_rows(const Variable& x, const std::vector<std::size_t>& rows, const char* op) {
  if (!x.defined()) return x;
  const Array& value = x.value();
  Shape shape = x.shape();
  const std::size_t row_size = numel(shape) / std::max<std::size_t>(shape[0], 1);
  for (const std::size_t row : rows)
    check_arg(row < shape[0], op,
              "row " + std::to_string(row) + " is out of range for a batch of " + std::to_string(shape[0]));
  shape[0] = rows.size();
  Array result = zeros(shape);
  for (std::size_t i = 0; i < rows.size(); ++i)
    std::copy_n(value.data() + rows[i] * row_size, row_size, result.data() + i * row_size);
  return Variable(std::move(result));
}

}  // namespace

// ---- encoder layer -----------------------------------------------------------------------

TransformerEncoderLayer::TransformerEncoderLayer(const TransformerLayerOptions& options, Rng& rng)
    : options_(options) {
  check_options(options, describe());
  const LinearOptions linear{.bias = options.bias, .sigma_reparam = options.sigma_reparam};
  const LayerNormOptions norm{.eps = options.layer_norm_eps};
  // Registration order is PyTorch's, so named_parameters() lists the same names in the same order.
  self_attn_ = register_module("self_attn", std::make_shared<MultiheadAttention>(options.d_model, options.nhead, rng,
                                                                                 attention_options(options, true)));
  linear1_ = register_module("linear1", std::make_shared<Linear>(options.d_model, options.dim_feedforward, rng, linear));
  dropout_ = register_module("dropout", make_dropout(options.dropout, rng));
  linear2_ = register_module("linear2", std::make_shared<Linear>(options.dim_feedforward, options.d_model, rng, linear));
  norm1_ = register_module("norm1", std::make_shared<LayerNorm>(options.d_model, norm));
  norm2_ = register_module("norm2", std::make_shared<LayerNorm>(options.d_model, norm));
  dropout1_ = register_module("dropout1", make_dropout(options.dropout, rng));
  dropout2_ = register_module("dropout2", make_dropout(options.dropout, rng));
}

std::string TransformerEncoderLayer::describe() const { return describe_layer("TransformerEncoderLayer", options_); }

TransformerLayerOutput TransformerEncoderLayer::forward(const Variable& x, const AttentionMask& mask) {
  check_sequence(x, options_.d_model, describe(), "the input");
  Variable weights;  // [B, H, S, S]
  // Each block returns residual + its dropped-out output, the sum and the dropout one op (add_dropout).
  const auto self_attention_block = [&](const Variable& residual, const Variable& in) {
    MultiheadAttentionOutput attended = self_attn_->forward(in, mask);
    weights = attended.weights;
    return dropout1_->forward_add(residual, attended.output);  // [B, S, D]
  };
  const auto feed_forward_block = [&](const Variable& residual, const Variable& in) {
    const Variable hidden = activate_then_drop(linear1_->forward(in), options_.activation, *dropout_);  // [B, S, F]
    return dropout2_->forward_add(residual, linear2_->forward(hidden));                              // [B, S, D]
  };
  Variable y = x;  // [B, S, D]
  if (options_.norm_first) {
    y = self_attention_block(y, norm1_->forward(y));
    y = feed_forward_block(y, norm2_->forward(y));
  } else {
    y = norm1_->forward(self_attention_block(y, y));
    y = norm2_->forward(feed_forward_block(y, y));
  }
  return {y, weights, Variable()};
}

// ---- decoder layer -----------------------------------------------------------------------

TransformerDecoderLayer::TransformerDecoderLayer(const TransformerLayerOptions& options, Rng& rng)
    : options_(options) {
  check_options(options, describe());
  const LinearOptions linear{.bias = options.bias, .sigma_reparam = options.sigma_reparam};
  const LayerNormOptions norm{.eps = options.layer_norm_eps};
  self_attn_ = register_module("self_attn", std::make_shared<MultiheadAttention>(options.d_model, options.nhead, rng,
                                                                                 attention_options(options, true)));
  multihead_attn_ = register_module("multihead_attn",
                                    std::make_shared<MultiheadAttention>(options.d_model, options.nhead, rng,
                                                                         attention_options(options, false)));
  linear1_ = register_module("linear1", std::make_shared<Linear>(options.d_model, options.dim_feedforward, rng, linear));
  dropout_ = register_module("dropout", make_dropout(options.dropout, rng));
  linear2_ = register_module("linear2", std::make_shared<Linear>(options.dim_feedforward, options.d_model, rng, linear));
  norm1_ = register_module("norm1", std::make_shared<LayerNorm>(options.d_model, norm));
  norm2_ = register_module("norm2", std::make_shared<LayerNorm>(options.d_model, norm));
  norm3_ = register_module("norm3", std::make_shared<LayerNorm>(options.d_model, norm));
  dropout1_ = register_module("dropout1", make_dropout(options.dropout, rng));
  dropout2_ = register_module("dropout2", make_dropout(options.dropout, rng));
  dropout3_ = register_module("dropout3", make_dropout(options.dropout, rng));
}

std::string TransformerDecoderLayer::describe() const { return describe_layer("TransformerDecoderLayer", options_); }

TransformerLayerOutput TransformerDecoderLayer::run(const Variable& target, const Attend& self_attention,
                                                    const Attend& cross_attention) {
  TransformerLayerOutput result;
  // Each block returns residual + its dropped-out output, the sum and the dropout one op (add_dropout).
  const auto self_attention_block = [&](const Variable& residual, const Variable& in) {
    MultiheadAttentionOutput attended = self_attention(in);
    result.self_attention = attended.weights;                   // [B, H, T, T_keys]
    return dropout1_->forward_add(residual, attended.output);  // [B, T, D]
  };
  const auto cross_attention_block = [&](const Variable& residual, const Variable& in) {
    MultiheadAttentionOutput attended = cross_attention(in);
    result.cross_attention = attended.weights;                  // [B, H, T, S]
    return dropout2_->forward_add(residual, attended.output);  // [B, T, D]
  };
  const auto feed_forward_block = [&](const Variable& residual, const Variable& in) {
    const Variable hidden = activate_then_drop(linear1_->forward(in), options_.activation, *dropout_);  // [B, T, F]
    return dropout3_->forward_add(residual, linear2_->forward(hidden));                              // [B, T, D]
  };
  Variable y = target;  // [B, T, D]
  if (options_.norm_first) {
    y = self_attention_block(y, norm1_->forward(y));
    y = cross_attention_block(y, norm2_->forward(y));
    y = feed_forward_block(y, norm3_->forward(y));
  } else {
    y = norm1_->forward(self_attention_block(y, y));
    y = norm2_->forward(cross_attention_block(y, y));
    y = norm3_->forward(feed_forward_block(y, y));
  }
  result.output = y;
  return result;
}

TransformerLayerOutput TransformerDecoderLayer::forward(const Variable& target, const Variable& memory,
                                                        const AttentionMask& target_mask,
                                                        const AttentionMask& memory_mask) {
  check_sequence(target, options_.d_model, describe(), "the target");
  check_sequence(memory, options_.d_model, describe(), "the memory");
  check_shape(memory.dim(0) == target.dim(0), describe().c_str(),
              "target " + to_string(target.shape()) + " and memory " + to_string(memory.shape()) +
                  " have different batch sizes");
  return run(
      target, [&](const Variable& x) { return self_attn_->forward(x, target_mask); },
      [&](const Variable& x) { return multihead_attn_->forward(x, memory, memory, memory_mask); });
}

TransformerDecoderLayerCache TransformerDecoderLayer::start(const Variable& memory) const {
  check_sequence(memory, options_.d_model, describe(), "the memory");
  return {KVCache{}, multihead_attn_->project_memory(memory)};
}

TransformerLayerOutput TransformerDecoderLayer::step(const Variable& target, TransformerDecoderLayerCache& cache,
                                                     const AttentionMask& memory_mask) {
  check_sequence(target, options_.d_model, describe(), "the target");
  check_arg(cache.memory.length() > 0, describe().c_str(), "step needs a cache from start(memory), got an empty one");
  check_shape(cache.memory.keys.dim(0) == target.dim(0), describe().c_str(),
              "the cache holds a batch of " + std::to_string(cache.memory.keys.dim(0)) + " but the target is " +
                  to_string(target.shape()));
  // The new steps see every cached step and, among themselves, only the past: the MHA places
  // them after the cache, so `causal` counts from the start of the sequence.
  const AttentionMask causal{.causal = true};
  return run(
      target, [&](const Variable& x) { return self_attn_->forward(x, causal, &cache.self_attention); },
      [&](const Variable& x) { return multihead_attn_->attend_to_memory(x, cache.memory, memory_mask); });
}

void TransformerDecoderCache::limit_self_attention(const KVCacheLimit& limit) {
  check_arg(!limit.limited() || steps == 0, "TransformerDecoderCache",
            "limit the cache before the first step, not after " + std::to_string(steps));
  check_arg(limit.limited() || limit.sink_tokens == 0, "TransformerDecoderCache",
            "sink tokens " + std::to_string(limit.sink_tokens) + " need a cache window (window 0 keeps everything)");
  for (TransformerDecoderLayerCache& layer : layers) layer.self_attention.limit = limit;
}

std::size_t TransformerDecoderCache::self_attention_bytes() const {
  std::size_t bytes = 0;
  for (const TransformerDecoderLayerCache& layer : layers) bytes += layer.self_attention.bytes();
  return bytes;
}

std::size_t TransformerDecoderCache::memory_bytes() const {
  std::size_t bytes = 0;
  for (const TransformerDecoderLayerCache& layer : layers) bytes += layer.memory.bytes();
  return bytes;
}

void TransformerDecoderCache::select_rows(const std::vector<std::size_t>& rows) {
  constexpr const char* op = "TransformerDecoderCache::select_rows";
  for (TransformerDecoderLayerCache& layer : layers) {
    for (KVCache* cache : {&layer.self_attention, &layer.memory}) {
      cache->keys = take_rows(cache->keys, rows, op);      // [rows, H, T, d]
      cache->values = take_rows(cache->values, rows, op);  // [rows, H, T, d]
    }
  }
}

// ---- stacks ------------------------------------------------------------------------------

namespace {

/// The layers of a stack, layers.0 .. layers.N-1, each with its own generator derived from
/// one seed drawn from `rng`, then the optional final norm.
template <class Layer>
std::vector<std::shared_ptr<Layer>> make_stack(const TransformerLayerOptions& options, std::size_t num_layers,
                                               Rng& rng, const char* stack) {
  check_arg(num_layers > 0, stack, "num_layers must be positive, got 0");
  const std::uint64_t seed = rng.next_u64();
  std::vector<std::shared_ptr<Layer>> layers;
  for (std::size_t i = 0; i < num_layers; ++i) {
    Rng layer_rng(seed * 1000003 + i + 1);
    layers.push_back(std::make_shared<Layer>(options, layer_rng));
  }
  return layers;
}

std::shared_ptr<LayerNorm> make_final_norm(const TransformerLayerOptions& options) {
  return std::make_shared<LayerNorm>(options.d_model, LayerNormOptions{.eps = options.layer_norm_eps});
}

}  // namespace

TransformerEncoder::TransformerEncoder(const TransformerLayerOptions& layer_options, std::size_t num_layers,
                                       bool final_norm, Rng& rng) {
  layers_ = make_stack<TransformerEncoderLayer>(layer_options, num_layers, rng, "TransformerEncoder");
  for (std::size_t i = 0; i < layers_.size(); ++i) register_module("layers." + std::to_string(i), layers_[i]);
  if (final_norm) norm_ = register_module("norm", make_final_norm(layer_options));
}

TransformerEncoder::Output TransformerEncoder::forward(const Variable& x, const AttentionMask& mask) {
  Output result;
  Variable y = x;  // [B, S, D]
  for (const auto& layer : layers_) {
    TransformerLayerOutput out = layer->forward(y, mask);
    y = out.output;
    result.self_attention.push_back(out.self_attention);
  }
  result.output = norm_ ? norm_->forward(y) : y;
  return result;
}

TransformerDecoder::TransformerDecoder(const TransformerLayerOptions& layer_options, std::size_t num_layers,
                                       bool final_norm, Rng& rng) {
  layers_ = make_stack<TransformerDecoderLayer>(layer_options, num_layers, rng, "TransformerDecoder");
  for (std::size_t i = 0; i < layers_.size(); ++i) register_module("layers." + std::to_string(i), layers_[i]);
  if (final_norm) norm_ = register_module("norm", make_final_norm(layer_options));
}

Variable TransformerDecoder::finish(const Variable& x) const { return norm_ ? norm_->forward(x) : x; }

TransformerDecoder::Output TransformerDecoder::forward(const Variable& target, const Variable& memory,
                                                       const AttentionMask& target_mask,
                                                       const AttentionMask& memory_mask) {
  Output result;
  Variable y = target;  // [B, T, D]
  for (const auto& layer : layers_) {
    TransformerLayerOutput out = layer->forward(y, memory, target_mask, memory_mask);
    y = out.output;
    result.self_attention.push_back(out.self_attention);
    result.cross_attention.push_back(out.cross_attention);
  }
  result.output = finish(y);
  return result;
}

TransformerDecoderCache TransformerDecoder::start(const Variable& memory) const {
  TransformerDecoderCache cache;
  for (const auto& layer : layers_) cache.layers.push_back(layer->start(memory));
  return cache;
}

TransformerDecoder::Output TransformerDecoder::step(const Variable& target, TransformerDecoderCache& cache,
                                                    const AttentionMask& memory_mask) {
  check_arg(cache.layers.size() == layers_.size(), "TransformerDecoder",
            "the cache has " + std::to_string(cache.layers.size()) + " layers but the decoder has " +
                std::to_string(layers_.size()) + "; build it with start(memory)");
  Output result;
  Variable y = target;  // [B, T_new, D]
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    TransformerLayerOutput out = layers_[i]->step(y, cache.layers[i], memory_mask);
    y = out.output;
    result.self_attention.push_back(out.self_attention);
    result.cross_attention.push_back(out.cross_attention);
  }
  cache.steps += target.dim(1);
  result.output = finish(y);
  return result;
}

}  // namespace qkv
