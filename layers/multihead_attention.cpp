#include "layers/multihead_attention.hpp"

#include <algorithm>
#include <cmath>

#include "layers/positional.hpp"
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

std::size_t KVCache::bytes() const {
  const std::size_t elements = (keys.defined() ? keys.value().size() : 0) + (values.defined() ? values.value().size() : 0);
  return elements * sizeof(real);
}

MultiheadAttention::MultiheadAttention(std::size_t embed_dim, std::size_t num_heads, Rng& rng,
                                       MultiheadAttentionOptions options)
    : embed_dim_(embed_dim),
      num_heads_(num_heads),
      num_kv_heads_(options.num_kv_heads == 0 ? num_heads : options.num_kv_heads),
      memory_slots_(options.memory_slots) {
  check_arg(embed_dim > 0 && num_heads > 0, kLayer,
            "embed_dim and num_heads must be positive, got embed_dim " + std::to_string(embed_dim) +
                ", num_heads " + std::to_string(num_heads));
  check_arg(embed_dim % num_heads == 0, kLayer,
            "embed_dim " + std::to_string(embed_dim) + " is not divisible by num_heads " + std::to_string(num_heads));
  check_arg(num_heads % num_kv_heads_ == 0, kLayer,
            "num_kv_heads " + std::to_string(num_kv_heads_) + " does not divide num_heads " + std::to_string(num_heads));
  check_arg(memory_slots_ == 0 || !options.positions, kLayer,
            "persistent memory slots take no position, but a position encoding inside attention would encode "
            "them; use positions added to the embeddings (sinusoidal, learned) with memory_slots " +
                std::to_string(memory_slots_));
  const std::uint64_t seed = rng.next_u64();
  Rng init(seed);
  // nn.MultiheadAttention: xavier_uniform over the stacked [3E, E] weight, zero biases. The
  // grouped projections keep that bound, so that both start at the same scale.
  const real bound = std::sqrt(real(6) / static_cast<real>(4 * embed_dim));
  const std::size_t kv_rows = 2 * num_kv_heads_ * head_dim();  // keys' and values' rows
  if (num_kv_heads_ == num_heads) {
    in_proj_weight_ = register_parameter("in_proj_weight", uniform({3 * embed_dim, embed_dim}, -bound, bound, init));
    if (options.bias) in_proj_bias_ = register_parameter("in_proj_bias", zeros({3 * embed_dim}));
  } else {
    q_proj_weight_ = register_parameter("q_proj_weight", uniform({embed_dim, embed_dim}, -bound, bound, init));
    kv_proj_weight_ = register_parameter("kv_proj_weight", uniform({kv_rows, embed_dim}, -bound, bound, init));
    if (options.bias) {
      q_proj_bias_ = register_parameter("q_proj_bias", zeros({embed_dim}));
      kv_proj_bias_ = register_parameter("kv_proj_bias", zeros({kv_rows}));
    }
  }
  // μP (microsoft/mup): queries start at zero, so every head starts with uniform attention.
  if (options.zero_query_init) {
    Variable query_weight = in_proj_weight_.defined() ? in_proj_weight_ : q_proj_weight_;  // first E rows
    std::fill_n(query_weight.mutable_value().data(), embed_dim * embed_dim, real(0));
  }
  // out_proj is an nn.Linear (its default U(-1/√E, 1/√E) weight) whose bias PyTorch then zeroes.
  // The bias Linear draws comes after the weight and is the last draw from `init`.
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(embed_dim, embed_dim, init,
                                                                   LinearOptions{.bias = options.bias, .sigma_reparam = options.sigma_reparam}));
  if (options.bias) {
    Variable out_bias = out_proj_->bias();
    out_bias.mutable_value().fill(0);
  }
  if (memory_slots_ > 0) {
    // Sukhbaatar et al.'s initialisation: keys N(0, 1/d), values N(0, 1/N). Drawn after
    // everything else, so a layer without memory draws what it always drew.
    const std::size_t d = head_dim();
    memory_keys_ = register_parameter(
        "memory_keys", normal({num_heads, memory_slots_, d}, 0, real(1) / std::sqrt(static_cast<real>(d)), init));
    memory_values_ = register_parameter(
        "memory_values",
        normal({num_heads, memory_slots_, d}, 0, real(1) / std::sqrt(static_cast<real>(memory_slots_)), init));
  }
  attention_ = register_module("attention",
                               std::make_shared<DotProductAttention>(options.scale, options.dropout, Rng(seed + 1), num_heads));
  if (options.positions) positions_ = register_module("positions", options.positions);
  if (options.block_sparse) {
    // The fused kernel has a constant scale, no weights to drop out and no score terms.
    options.block_sparse->validate();
    const std::string pattern = " (block-sparse attention, " + options.block_sparse->describe() + ")";
    check_arg(options.dropout == 0, kLayer,
              "block-sparse attention has no dropout on the attention weights: dropout must be 0, got " +
                  format_number(options.dropout) + pattern);
    check_arg(options.scale.kind != ScoreScale::Kind::learned_temperature && !options.scale.depends_on_length(), kLayer,
              "block-sparse attention needs a constant score scale, got " + name_of(options.scale.kind) + pattern);
    check_arg(memory_slots_ == 0, kLayer,
              "block-sparse attention takes no persistent memory slots, got " + std::to_string(memory_slots_) + pattern);
    check_arg(!options.positions || dynamic_cast<const RotaryPositionEncoding*>(options.positions.get()), kLayer,
              "block-sparse attention takes rotary positions only (relative and ALiBi add [B, H, Tq, Tk] score "
              "terms the kernel never forms)" + pattern);
    block_sparse_ = options.block_sparse;
  }
  if (options.qk_norm) {
    q_norm_ = register_module("q_norm", std::make_shared<LayerNorm>(embed_dim / num_heads));
    k_norm_ = register_module("k_norm", std::make_shared<LayerNorm>(embed_dim / num_heads));
  }
  if (options.sigma_reparam) {
    check_arg(!options.zero_query_init, kLayer, "sigma_reparam cannot reparametrise a zero query block");
    const char* names[3] = {"q", "k", "v"};
    for (std::size_t block = 0; block < 3; ++block)
      sigma_[block] = register_module(std::string("in_proj_sigma_") + names[block],
                                      std::make_shared<SigmaReparam>(stored_projection_weight(block).value()));
  }
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

Variable MultiheadAttention::stored_projection_weight(std::size_t block) const {
  const std::size_t embed = embed_dim_, kv = num_kv_heads_ * head_dim();
  if (in_proj_weight_.defined()) return slice(in_proj_weight_, 0, block * embed, (block + 1) * embed);  // [E, E]
  if (block == 0) return q_proj_weight_;                                                              // [E, E]
  return slice(kv_proj_weight_, 0, (block - 1) * kv, block * kv);                                     // [H_kv·d, E]
}

Variable MultiheadAttention::project_blocks(const Variable& x, std::size_t first, std::size_t last) const {
  const std::size_t embed = embed_dim_, kv = num_kv_heads_ * head_dim();
  // Which stored matrix holds the blocks, and their rows in it: in_proj_weight [3E, E] for
  // multi-head attention; q_proj_weight [E, E] (block 0) or kv_proj_weight [2·H_kv·d, E]
  // (blocks 1, 2) when grouped.
  const bool stacked = in_proj_weight_.defined(), query = !stacked && first == 0;
  check_arg(stacked || first > 0 || last == 1, kLayer, "a grouped projection cannot stack q with k and v");
  const Variable& weight = stacked ? in_proj_weight_ : query ? q_proj_weight_ : kv_proj_weight_;
  const Variable& bias = stacked ? in_proj_bias_ : query ? q_proj_bias_ : kv_proj_bias_;
  const Int8Weight& int8_weight = stacked ? int8_in_proj_ : query ? int8_q_proj_ : int8_kv_proj_;
  const std::size_t block_rows = stacked || query ? embed : kv, offset = stacked || query ? 0 : 1;
  const std::size_t row_begin = (first - offset) * block_rows, row_end = (last - offset) * block_rows;
  if (int8_weight.active()) return int8_weight.linear(x, bias, row_begin, row_end, "MultiheadAttention (int8)");
  const bool whole = row_begin == 0 && row_end == weight.dim(0);
  const auto rows = [&](const Variable& v, std::size_t begin, std::size_t end) {
    return !v.defined() || (begin == 0 && end == v.dim(0)) ? v : slice(v, 0, begin, end);
  };
  Variable used = whole ? weight : slice(weight, 0, row_begin, row_end);  // [rows, E]
  if (sigma_[first]) {
    // σReparam block by block: each block has its own σ and γ.
    std::vector<Variable> blocks;
    for (std::size_t block = first; block < last; ++block)
      blocks.push_back(sigma_[block]->forward(rows(used, (block - first) * block_rows, (block - first + 1) * block_rows)));
    used = blocks.size() == 1 ? blocks.front() : concat(blocks, 0);
  }
  return linear(x, used, rows(bias, row_begin, row_end));  // [B, T, rows]
}

Variable MultiheadAttention::normalize_head(const Variable& heads, std::size_t block) const {
  if (!q_norm_ || block == 2) return heads;
  return (block == 0 ? q_norm_ : k_norm_)->forward(heads);  // [B, H or H_kv, T, d], normalised over d
}

Variable MultiheadAttention::project(const Variable& x, std::size_t block) const {
  return normalize_head(split_heads(project_blocks(x, block, block + 1), block == 0 ? num_heads_ : num_kv_heads_),
                        block);  // [B, H or H_kv, T, d]
}

namespace {

/// k [B, H_kv, T, d] -> [B, H, T, d], each key/value head repeated for its `group` query heads
/// (head h reads h / group).
Variable repeat_heads(const Variable& k, std::size_t group) {
  if (group == 1) return k;
  const Shape s = k.shape();
  const Variable grouped = expand(unsqueeze(k, 2), {s[0], s[1], group, s[2], s[3]});  // [B, H_kv, G, T, d]
  return reshape(grouped, {long(s[0]), long(s[1] * group), long(s[2]), long(s[3])});  // [B, H, T, d]
}

/// `allowed` (broadcasting to [B, H, Tq, Tk]) with `slots` always-allowed keys appended.
BoolArray with_memory_columns(const BoolArray& allowed, std::size_t slots) {
  Shape shape = shape_of(allowed);
  const std::size_t keys = shape.back(), rows = allowed.size() / std::max<std::size_t>(keys, 1);
  shape.back() = keys + slots;
  BoolArray result = BoolArray::from_shape(shape);
  for (std::size_t r = 0; r < rows; ++r) {
    std::copy_n(allowed.data() + r * keys, keys, result.data() + r * (keys + slots));
    std::fill_n(result.data() + r * (keys + slots) + keys, slots, true);
  }
  return result;
}

}  // namespace

MultiheadAttentionOutput MultiheadAttention::attend(const Variable& q, const Variable& k, const Variable& v,
                                                    const AttentionMask& mask, std::size_t query_start) {
  const std::size_t batch = q.dim(0), queries = q.dim(2), keys = k.dim(2);
  const Variable keys_per_head = repeat_heads(k, num_heads_ / num_kv_heads_);    // [B, H, Tk, d]
  const Variable values_per_head = repeat_heads(v, num_heads_ / num_kv_heads_);  // [B, H, Tk, d]
  if (block_sparse_ && is_grad_enabled() && !attention_->observed()) {
    // The fused kernel: the pattern and causality go into the layout; the rest of the mask is
    // an extra element mask, with [B] valid lengths as a [B, 1, 1, Tk] key mask rather than
    // allowed_from_valid_lens's [B, Tq, Tk].
    AttentionMask rest = mask;
    rest.causal = false;
    if (rest.valid_lens && rest.valid_lens->dimension() == 1) {
      BoolArray key_allowed = reshaped(allowed_from_valid_lens(*rest.valid_lens, 1, keys), {rest.valid_lens->size(), keys});
      rest.key_allowed = rest.key_allowed ? BoolArray(*rest.key_allowed && key_allowed) : key_allowed;
      rest.valid_lens.reset();
    }
    const std::optional<BoolArray> extra = resolve_mask(rest, batch, num_heads_, queries, keys, query_start);
    const BlockSparseLayout layout = block_sparse_layout(*block_sparse_, queries, keys, query_start, mask.causal);
    const Variable q_placed = positions_ ? positions_->encode_queries(q, query_start) : q;              // [B, H, Tq, d]
    const Variable k_placed = positions_ ? positions_->encode_keys(keys_per_head, 0) : keys_per_head;  // [B, H, Tk, d]
    const Variable heads = block_sparse_attention(q_placed, k_placed, values_per_head, layout, extra,
                                                  attention_->scale_factor(head_dim()));  // [B, H, Tq, d]
    Variable output = out_proj_->forward(merge_heads(heads));  // [B, Tq, E]
    output_point_(output);
    return {output, Variable()};
  }
  std::optional<BoolArray> allowed = resolve_mask(mask, batch, num_heads_, queries, keys, query_start);
  if (block_sparse_)  // the dense path with the pattern's mask: the kernel's values, weights formed
    allowed = allowed_and(allowed, block_sparse_allowed(*block_sparse_, queries, keys, query_start, mask.causal));
  Variable attended_keys = keys_per_head, attended_values = values_per_head;
  if (memory_slots_ > 0) {
    const Shape memory_shape{batch, num_heads_, memory_slots_, head_dim()};
    attended_keys = concat({attended_keys, expand(unsqueeze(memory_keys_, 0), memory_shape)}, 2);        // [B, H, Tk + N, d]
    attended_values = concat({attended_values, expand(unsqueeze(memory_values_, 0), memory_shape)}, 2);  // [B, H, Tk + N, d]
    if (allowed) allowed = with_memory_columns(*allowed, memory_slots_);
  }
  const AttentionOutput attended =
      attention_->forward(q, attended_keys, attended_values, allowed, positions_.get(), query_start);
  const Variable merged = merge_heads(attended.output);  // [B, Tq, E]
  Variable output = out_proj_->forward(merged);           // [B, Tq, E]
  output_point_(output);
  return {output, attended.weights};
}

namespace {

/// Keeps the first limit.sink_tokens and the last limit.window steps of x [B, H_kv, T, d].
Variable evict_middle(const Variable& x, const KVCacheLimit& limit) {
  const std::size_t length = x.dim(2);
  if (length <= limit.sink_tokens + limit.window) return x;
  const Variable recent = slice(x, 2, length - limit.window, length);  // [B, H_kv, W, d]
  if (limit.sink_tokens == 0) return recent;
  return concat({slice(x, 2, 0, limit.sink_tokens), recent}, 2);  // [B, H_kv, S + W, d]
}

}  // namespace

bool MultiheadAttention::reads_heads_in_place() const {
  return !q_norm_ && memory_slots_ == 0 && !block_sparse_ && attention_->fuses(positions_.get());
}

MultiheadAttentionOutput MultiheadAttention::attend_in_place(const HeadView& q, const HeadView& k, const HeadView& v,
                                                             const AttentionMask& mask, std::size_t query_start) {
  const std::optional<BoolArray> allowed = resolve_mask(mask, q.tensor.dim(0), num_heads_, q.steps, k.steps, query_start);
  const AttentionOutput attended = attention_->forward_heads(q, k, v, allowed);  // [B, Tq, E], [B, H, Tq, Tk]
  Variable output = out_proj_->forward(attended.output);                         // [B, Tq, E]
  output_point_(output);
  return {output, attended.weights};
}

MultiheadAttentionOutput MultiheadAttention::forward(const Variable& query, const Variable& key, const Variable& value,
                                                     const AttentionMask& mask, KVCache* cache) {
  check_inputs(query, key, value, embed_dim_);
  // q, k and v as blocks of columns of the projections' rows [B, T, C]: split into heads
  // [B, H, T, d] (H_kv for k and v) where attention needs them so, read in place otherwise.
  struct Block {
    Variable rows;
    std::size_t first_column, columns, heads;
  };
  const std::size_t embed = embed_dim_, kv = num_kv_heads_ * head_dim();
  Block q_block, k_block, v_block;
  if (query.id() == key.id() && key.id() == value.id()) {
    // Self-attention: one gemm against the stacked weight (two when grouped).
    if (in_proj_weight_.defined()) {
      const Variable stacked = project_blocks(query, 0, 3);  // [B, T, 3E]
      q_block = {stacked, 0, embed, num_heads_};
      k_block = {stacked, embed, kv, num_kv_heads_};
      v_block = {stacked, embed + kv, kv, num_kv_heads_};
    } else {
      const Variable keys_values = project_blocks(query, 1, 3);  // [B, T, 2·H_kv·d]
      q_block = {project_blocks(query, 0, 1), 0, embed, num_heads_};
      k_block = {keys_values, 0, kv, num_kv_heads_};
      v_block = {keys_values, kv, kv, num_kv_heads_};
    }
  } else if (key.id() == value.id()) {
    // Cross-attention over one memory: k and v from one gemm against their stacked rows.
    const Variable keys_values = project_blocks(key, 1, 3);  // [B, Tk, 2·H_kv·d]
    q_block = {project_blocks(query, 0, 1), 0, embed, num_heads_};
    k_block = {keys_values, 0, kv, num_kv_heads_};
    v_block = {keys_values, kv, kv, num_kv_heads_};
  } else {
    q_block = {project_blocks(query, 0, 1), 0, embed, num_heads_};
    k_block = {project_blocks(key, 1, 2), 0, kv, num_kv_heads_};
    v_block = {project_blocks(value, 2, 3), 0, kv, num_kv_heads_};
  }
  const auto split = [&](const Block& b, std::size_t block) {
    return normalize_head(split_heads(b.rows, b.heads, b.first_column, b.columns), block);  // [B, H or H_kv, T, d]
  };
  const auto in_place = [](const Block& b) { return head_view_of_rows(b.rows, b.heads, b.first_column, b.columns); };
  const bool read_in_place = reads_heads_in_place();
  if (!cache) {
    if (read_in_place) return attend_in_place(in_place(q_block), in_place(k_block), in_place(v_block), mask, 0);
    return attend(split(q_block, 0), split(k_block, 1), split(v_block, 2), mask, 0);
  }

  // The cache holds keys and values split into heads: the new steps are appended to them.
  Variable k = split(k_block, 1), v = split(v_block, 2);  // [B, H_kv, Tk_new, d]
  const std::size_t fresh = k.dim(2);
  if (cache->length() > 0) {
    check_shape(cache->keys.dim(0) == query.dim(0) && cache->keys.dim(1) == num_kv_heads_, kLayer, [&] {
      return "the KV cache holds keys " + to_string(cache->keys.shape()) + " but this call has " +
             input_shapes(query, key, value, embed_dim_) +
             (num_kv_heads_ == num_heads_ ? "" : " and " + std::to_string(num_kv_heads_) + " key/value heads");
    });
    k = concat({cache->keys, k}, 2);    // [B, H_kv, past + Tk_new, d]
    v = concat({cache->values, v}, 2);  // [B, H_kv, past + Tk_new, d]
  }
  if (cache->limit.limited()) {
    check_arg(fresh <= cache->limit.window, kLayer, [&] {
      return "a KV cache window of " + std::to_string(cache->limit.window) + " steps cannot take " +
             std::to_string(fresh) + " new steps at once";
    });
    k = evict_middle(k, cache->limit), v = evict_middle(v, cache->limit);  // [B, H_kv, <= S + W, d]
  }
  cache->keys = k;
  cache->values = v;
  // The new steps are the cache's last: positions and the causal mask count within the cache.
  const std::size_t query_start = k.dim(2) - fresh;
  if (read_in_place) return attend_in_place(in_place(q_block), head_view(k), head_view(v), mask, query_start);
  return attend(split(q_block, 0), k, v, mask, query_start);
}

Int8Report MultiheadAttention::quantize_int8(const Int8Options& options) {
  // What multiplies is what gets quantized: with σReparam, γ/σ(W)·W block by block (eval mode's u
  // and v); the float weight is then released like any other.
  const auto quantize = [&](Int8Weight& into, Variable& weight, std::size_t first_block, const std::string& what) {
    if (!sigma_[first_block]) return into.quantize(weight, what, options);
    const std::size_t blocks = weight.dim(0) / stored_projection_weight(first_block).dim(0);
    const std::size_t block_rows = weight.dim(0) / blocks;
    std::vector<Variable> effective;
    for (std::size_t i = 0; i < blocks; ++i)
      effective.push_back(Variable(sigma_[first_block + i]->effective(
          slice(weight, 0, i * block_rows, (i + 1) * block_rows).value())));  // [rows, E]
    NoGradGuard no_grad;
    Variable stacked = blocks == 1 ? effective.front() : concat(effective, 0);
    Int8Report report = into.quantize(stacked, what, options);
    if (!options.keep_float_weights) weight.mutable_value() = Array::from_shape({0, weight.dim(1)});
    return report;
  };
  if (in_proj_weight_.defined()) return quantize(int8_in_proj_, in_proj_weight_, 0, "MultiheadAttention in_proj_weight");
  Int8Report report = quantize(int8_q_proj_, q_proj_weight_, 0, "MultiheadAttention q_proj_weight");
  const Int8Report kv = quantize(int8_kv_proj_, kv_proj_weight_, 1, "MultiheadAttention kv_proj_weight");
  report.weights += kv.weights, report.float_bytes += kv.float_bytes, report.int8_bytes += kv.int8_bytes;
  return report;
}

KVCache MultiheadAttention::project_memory(const Variable& memory) const {
  check_inputs(memory, memory, memory, embed_dim_);
  return {project(memory, 1), project(memory, 2)};
}

MultiheadAttentionOutput MultiheadAttention::attend_to_memory(const Variable& query, const KVCache& memory,
                                                              const AttentionMask& mask) {
  check_arg(memory.length() > 0, kLayer, "attend_to_memory needs a cache filled by project_memory, got an empty one");
  check_inputs(query, query, query, embed_dim_);
  check_shape(memory.keys.dim(0) == query.dim(0) && memory.keys.dim(1) == num_kv_heads_, kLayer,
              "the memory holds keys " + to_string(memory.keys.shape()) + " but the query is " +
                  to_string(query.shape()) + " (embed_dim " + std::to_string(embed_dim_) + ")");
  if (reads_heads_in_place())
    return attend_in_place(head_view_of_rows(project_blocks(query, 0, 1), num_heads_, 0, embed_dim_),
                           head_view(memory.keys), head_view(memory.values), mask, 0);
  return attend(project(query, 0), memory.keys, memory.values, mask, 0);
}

}  // namespace qkv
