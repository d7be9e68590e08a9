#include "layers/multihead_attention.hpp"

#include <cmath>

#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

constexpr const char* kLayer = "MultiheadAttention";

BoolArray reshaped(BoolArray mask, const Shape& shape) {
  mask.reshape(shape);
  return mask;
}

/// Every field of `mask` as one allowed mask that broadcasts to [B, H, Tq, Tk]; queries sit
/// at positions query_start + i, keys at 0..Tk-1.
std::optional<BoolArray> resolve_mask(const AttentionMask& mask, std::size_t batch, std::size_t heads,
                                      std::size_t queries, std::size_t keys, std::size_t query_start) {
  const std::string scores = "the scores [B, H, Tq, Tk] = " + to_string({batch, heads, queries, keys});
  std::optional<BoolArray> allowed;
  if (mask.valid_lens) {
    const Shape s = shape_of(*mask.valid_lens);
    check_shape((s.size() == 1 || (s.size() == 2 && s[1] == queries)) && s[0] == batch, kLayer,
                "valid_lens must be [B] or [B, Tq] for " + scores + ", got " + to_string(s));
    allowed = allowed_and(allowed, reshaped(allowed_from_valid_lens(*mask.valid_lens, queries, keys),
                                            {batch, 1, queries, keys}));
  }
  if (mask.key_allowed) {
    const Shape s = shape_of(*mask.key_allowed);
    check_shape(s == Shape{batch, keys}, kLayer, "key_allowed must be [B, Tk] for " + scores + ", got " + to_string(s));
    allowed = allowed_and(allowed, reshaped(*mask.key_allowed, {batch, 1, 1, keys}));
  }
  if (mask.allowed) {
    const Shape s = shape_of(*mask.allowed);
    const bool fits = (s.size() == 2 && s == Shape{queries, keys}) ||
                      (s.size() == 3 && s == Shape{batch, queries, keys}) ||
                      (s.size() == 4 && (s[0] == batch || s[0] == 1) && (s[1] == heads || s[1] == 1) &&
                       s[2] == queries && s[3] == keys);
    check_shape(fits, kLayer, "allowed must be [Tq, Tk], [B, Tq, Tk] or [B|1, H|1, Tq, Tk] for " + scores +
                                  ", got " + to_string(s));
    // A [B, Tq, Tk] mask gets its head axis here, so it does not align B with H.
    allowed = allowed_and(allowed, s.size() == 3 ? reshaped(*mask.allowed, {batch, 1, queries, keys}) : *mask.allowed);
  }
  if (mask.causal) allowed = allowed_and(allowed, causal_allowed(queries, keys, query_start));
  if (mask.window) allowed = allowed_and(allowed, window_allowed(queries, keys, *mask.window, query_start));
  return allowed;
}

}  // namespace

Variable MultiheadAttentionOutput::average_weights() const { return mean(weights, {1}); }

MultiheadAttention::MultiheadAttention(std::size_t embed_dim, std::size_t num_heads, Rng& rng,
                                       MultiheadAttentionOptions options)
    : embed_dim_(embed_dim), num_heads_(num_heads) {
  check_arg(embed_dim > 0 && num_heads > 0, kLayer,
            "embed_dim and num_heads must be positive, got embed_dim " + std::to_string(embed_dim) +
                ", num_heads " + std::to_string(num_heads));
  check_arg(embed_dim % num_heads == 0, kLayer,
            "embed_dim " + std::to_string(embed_dim) + " is not divisible by num_heads " + std::to_string(num_heads));
  const std::uint64_t seed = rng.next_u64();
  Rng init(seed);
  // nn.MultiheadAttention: xavier_uniform over the stacked [3E, E] weight, zero biases.
  const real bound = std::sqrt(real(6) / static_cast<real>(4 * embed_dim));
  in_proj_weight_ = register_parameter("in_proj_weight", uniform({3 * embed_dim, embed_dim}, -bound, bound, init));
  if (options.bias) in_proj_bias_ = register_parameter("in_proj_bias", zeros({3 * embed_dim}));
  // out_proj is an nn.Linear (its default U(-1/√E, 1/√E) weight) whose bias PyTorch then zeroes.
  // The bias Linear draws comes after the weight and is the last draw from `init`.
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(embed_dim, embed_dim, init,
                                                                   LinearOptions{.bias = options.bias}));
  if (options.bias) {
    Variable out_bias = out_proj_->bias();
    out_bias.mutable_value().fill(0);
  }
  attention_ = register_module("attention",
                               std::make_shared<DotProductAttention>(options.scale, options.dropout, Rng(seed + 1)));
  if (options.positions) positions_ = register_module("positions", options.positions);
  // The scores, weights and per-head outputs are computed by `attention`; they are this layer's
  // points, so that `...self_attn.weights` names them (and nothing names them twice).
  adopt_hook_point(*attention_, "scores", "scores");
  adopt_hook_point(*attention_, "weights", "weights");
  adopt_hook_point(*attention_, "output", "heads");
  register_hook_point("output", output_point_);
}

MultiheadAttentionOutput MultiheadAttention::forward(const Variable& x, const AttentionMask& mask, KVCache* cache) {
  return forward(x, x, x, mask, cache);
}

namespace {

/// The shapes of a call's inputs, for messages.
std::string input_shapes(const Variable& query, const Variable& key, const Variable& value, std::size_t embed_dim) {
  return "query " + to_string(query.shape()) + ", key " + to_string(key.shape()) + ", value " +
         to_string(value.shape()) + " (embed_dim " + std::to_string(embed_dim) + ")";
}

/// The check every entry point makes on its [B, T, E] inputs (messages formatted only on failure).
void check_inputs(const Variable& query, const Variable& key, const Variable& value, std::size_t embed_dim) {
  const Shape sq = query.shape(), sk = key.shape(), sv = value.shape();
  const auto shapes = [&] { return input_shapes(query, key, value, embed_dim); };
  check_shape(sq.size() == 3 && sk.size() == 3 && sv.size() == 3, kLayer,
              [&] { return "query, key and value must be [B, T, E] (batch first), got " + shapes(); });
  check_shape(sq[2] == embed_dim && sk[2] == embed_dim && sv[2] == embed_dim, kLayer,
              [&] { return "query, key and value must end in embed_dim, got " + shapes(); });
  check_shape(sk[0] == sq[0] && sv[0] == sq[0] && sk[1] == sv[1], kLayer,
              [&] { return "batch sizes must agree and key and value must have the same length, got " + shapes(); });
}

}  // namespace

Variable MultiheadAttention::project(const Variable& x, std::size_t block) const {
  const std::size_t embed = embed_dim_;
  if (int8_in_proj_.active())
    return split_heads(int8_in_proj_.linear(x, in_proj_bias_, block * embed, (block + 1) * embed, kLayer), num_heads_);
  const Variable weight = slice(in_proj_weight_, 0, block * embed, (block + 1) * embed);  // [E, E]
  const Variable bias =
      in_proj_bias_.defined() ? slice(in_proj_bias_, 0, block * embed, (block + 1) * embed) : Variable();  // [E]
  return split_heads(linear(x, weight, bias), num_heads_);  // [B, H, T, d]
}

MultiheadAttentionOutput MultiheadAttention::attend(const Variable& q, const Variable& k, const Variable& v,
                                                    const AttentionMask& mask, std::size_t query_start) {
  const std::optional<BoolArray> allowed = resolve_mask(mask, q.dim(0), num_heads_, q.dim(2), k.dim(2), query_start);
  const AttentionOutput attended = attention_->forward(q, k, v, allowed, positions_.get(), query_start);
  const Variable merged = merge_heads(attended.output);  // [B, Tq, E]
  Variable output = out_proj_->forward(merged);           // [B, Tq, E]
  output_point_(output);
  return {output, attended.weights};
}

MultiheadAttentionOutput MultiheadAttention::forward(const Variable& query, const Variable& key, const Variable& value,
                                                     const AttentionMask& mask, KVCache* cache) {
  check_inputs(query, key, value, embed_dim_);
  const std::size_t embed = embed_dim_;
  Variable q, k, v;  // [B, H, T, d]
  if (query.id() == key.id() && key.id() == value.id()) {
    // Self-attention: one gemm against the stacked weight, then cut into q, k, v.
    const Variable stacked = int8_in_proj_.active() ? int8_in_proj_.linear(query, in_proj_bias_, kLayer)
                                                    : linear(query, in_proj_weight_, in_proj_bias_);  // [B, T, 3E]
    const std::vector<Variable> parts = split(stacked, {embed, embed, embed}, -1);
    q = split_heads(parts[0], num_heads_), k = split_heads(parts[1], num_heads_), v = split_heads(parts[2], num_heads_);
  } else {
    q = project(query, 0), k = project(key, 1), v = project(value, 2);
  }

  std::size_t past = 0;
  if (cache) {
    past = cache->length();
    if (past > 0) {
      check_shape(cache->keys.dim(0) == q.dim(0) && cache->keys.dim(1) == num_heads_, kLayer, [&] {
        return "the KV cache holds keys " + to_string(cache->keys.shape()) + " but this call has " +
               input_shapes(query, key, value, embed_dim_);
      });
      k = concat({cache->keys, k}, 2);    // [B, H, past + Tk_new, d]
      v = concat({cache->values, v}, 2);  // [B, H, past + Tk_new, d]
    }
    cache->keys = k;
    cache->values = v;
  }
  return attend(q, k, v, mask, past);
}

Int8Report MultiheadAttention::quantize_int8(const Int8Options& options) {
  return int8_in_proj_.quantize(in_proj_weight_, "MultiheadAttention in_proj_weight", options);
}

KVCache MultiheadAttention::project_memory(const Variable& memory) const {
  check_inputs(memory, memory, memory, embed_dim_);
  return {project(memory, 1), project(memory, 2)};
}

MultiheadAttentionOutput MultiheadAttention::attend_to_memory(const Variable& query, const KVCache& memory,
                                                              const AttentionMask& mask) {
  check_arg(memory.length() > 0, kLayer, "attend_to_memory needs a cache filled by project_memory, got an empty one");
  check_inputs(query, query, query, embed_dim_);
  check_shape(memory.keys.dim(0) == query.dim(0) && memory.keys.dim(1) == num_heads_, kLayer,
              "the memory holds keys " + to_string(memory.keys.shape()) + " but the query is " +
                  to_string(query.shape()) + " (embed_dim " + std::to_string(embed_dim_) + ")");
  return attend(project(query, 0), memory.keys, memory.values, mask, 0);
}

}  // namespace qkv
