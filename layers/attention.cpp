#include "layers/attention.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>
#include <type_traits>
#include <utility>

#include "lib/numerics/broadcast.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

// ---- masks -----------------------------------------------------------------------------

BoolArray allowed_from_valid_lens(const IndexArray& valid_lens, std::size_t queries, std::size_t keys) {
  const Shape shape = shape_of(valid_lens);
  check_shape(shape.size() == 1 || (shape.size() == 2 && shape[1] == queries), "allowed_from_valid_lens",
              "valid_lens must be [B] or [B, Tq] with Tq = " + std::to_string(queries) + ", got " + to_string(shape));
  const std::size_t batch = shape[0];
  const bool per_query = shape.size() == 2;
  BoolArray allowed = BoolArray::from_shape({batch, queries, keys});
  bool* out = allowed.data();
  const std::int64_t* lens = valid_lens.data();
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t i = 0; i < queries; ++i) {
      const std::int64_t length = lens[per_query ? b * queries + i : b];
      check_arg(length >= 0 && length <= static_cast<std::int64_t>(keys), "allowed_from_valid_lens", [&] {
        return "valid length " + std::to_string(length) + " at batch " + std::to_string(b) + " is outside [0, " +
               std::to_string(keys) + "] (there are " + std::to_string(keys) + " keys)";
      });
      bool* row = out + (b * queries + i) * keys;
      for (std::size_t j = 0; j < keys; ++j) row[j] = static_cast<std::int64_t>(j) < length;
    }
  return allowed;
}

BoolArray causal_allowed(std::size_t queries, std::size_t keys, std::size_t query_start) {
  BoolArray allowed = BoolArray::from_shape({queries, keys});
  for (std::size_t i = 0; i < queries; ++i)
    for (std::size_t j = 0; j < keys; ++j) allowed(i, j) = j <= query_start + i;
  return allowed;
}

BoolArray window_allowed(std::size_t queries, std::size_t keys, std::size_t window, std::size_t query_start) {
  BoolArray allowed = BoolArray::from_shape({queries, keys});
  for (std::size_t i = 0; i < queries; ++i) {
    const std::size_t position = query_start + i;
    for (std::size_t j = 0; j < keys; ++j) allowed(i, j) = (j > position ? j - position : position - j) <= window;
  }
  return allowed;
}

std::optional<BoolArray> allowed_and(const std::optional<BoolArray>& a, const std::optional<BoolArray>& b) {
  if (!a) return b;
  if (!b) return a;
  broadcast_shapes("allowed_and", shape_of(*a), shape_of(*b));  // throws naming both shapes
  BoolArray both = *a && *b;
  return both;
}

Array allowed_key_counts(const std::optional<BoolArray>& allowed, std::size_t keys) {
  if (!allowed) return full({1}, static_cast<real>(keys));
  const Shape shape = shape_of(*allowed);
  check_shape(!shape.empty() && (shape.back() == keys || shape.back() == 1), "allowed_key_counts", [&] {
    return "the mask " + to_string(shape) + " must end in the key count " + std::to_string(keys) + " or 1";
  });
  Shape counted = shape;
  counted.back() = 1;
  Array counts = zeros(counted);  // [..., Tq, 1]
  const std::size_t width = shape.back(), rows = counts.size();
  // A mask of width 1 allows all Tk keys of a row or none.
  const real per_allowed = width == 1 ? static_cast<real>(keys) : real(1);
  const bool* keep = allowed->data();
  real* out = counts.data();
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < width; ++j) out[r] += keep[r * width + j] ? per_allowed : real(0);
  return counts;
}

Array log_allowed_keys(const std::optional<BoolArray>& allowed, std::size_t keys) {
  Array counts = allowed_key_counts(allowed, keys);
  real* n = counts.data();
  for (std::size_t i = 0; i < counts.size(); ++i) n[i] = std::log(std::max(n[i], real(1)));
  return counts;
}

// ---- position hooks: defaults change nothing --------------------------------------------

Variable AttentionPositionEncoding::encode_queries(const Variable& queries, std::size_t) const { return queries; }
Variable AttentionPositionEncoding::encode_keys(const Variable& keys, std::size_t) const { return keys; }
Variable AttentionPositionEncoding::score_term(const Variable&, std::size_t, std::size_t) const { return {}; }
Variable AttentionPositionEncoding::score_bias(std::size_t, std::size_t, std::size_t, std::size_t) const { return {}; }
Variable AttentionPositionEncoding::output_term(const Variable&, std::size_t) const { return {}; }

// ---- dot-product attention ---------------------------------------------------------------

AttentionObserver::AttentionObserver(Callback callback) : callback_(std::move(callback)), previous_(current()) {
  current() = this;
}

AttentionObserver::~AttentionObserver() { current() = previous_; }

AttentionObserver*& AttentionObserver::current() {
  thread_local AttentionObserver* observer = nullptr;
  return observer;
}


DotProductAttention::DotProductAttention(ScoreScale scale, real dropout, Rng dropout_stream, std::size_t heads)
    : scale_(scale), heads_(heads) {
  check_range("DotProductAttention", "dropout", dropout, 0, 1);
  check_arg(heads > 0, "DotProductAttention", "heads must be positive, got 0");
  dropout_ = register_dropout(std::make_shared<Dropout>(dropout, dropout_stream));
  if (scale.kind == ScoreScale::Kind::learned_temperature) {
    check_arg(scale.value > 0, "DotProductAttention",
              "a learned temperature must start positive, got " + format_number(scale.value));
    temperature_ = register_parameter("temperature", full({}, scale.value));
  }
  if (scale.kind == ScoreScale::Kind::log_length || scale.kind == ScoreScale::Kind::scalable_softmax)
    check_arg(std::isfinite(scale.value), "DotProductAttention",
              "the length scale s must be finite, got " + format_number(scale.value));
  if (scale.kind == ScoreScale::Kind::scalable_softmax)
    length_scale_ =
        register_parameter("length_scale", heads == 1 ? full({}, scale.value) : full({heads}, scale.value));
  register_hook_point("scores", scores_point_);
  register_hook_point("weights", weights_point_);
  register_hook_point("output", output_point_);
}

real DotProductAttention::scale_factor(std::size_t key_size) const {
  switch (scale_.kind) {
    case ScoreScale::Kind::inverse_sqrt_dim: return real(1) / std::sqrt(static_cast<real>(key_size));
    case ScoreScale::Kind::none: return 1;
    case ScoreScale::Kind::inverse_dim: return scale_.value / static_cast<real>(key_size);
    case ScoreScale::Kind::fixed: return scale_.value;
    case ScoreScale::Kind::log_length:
    case ScoreScale::Kind::scalable_softmax: return real(1) / std::sqrt(static_cast<real>(key_size));
    case ScoreScale::Kind::learned_temperature: break;
  }
  throw Error("DotProductAttention: a learned temperature has no constant scale factor");
}

AttentionOutput DotProductAttention::forward(const Variable& queries, const Variable& keys, const Variable& values,
                                             const std::optional<BoolArray>& allowed,
                                             const AttentionPositionEncoding* positions, std::size_t query_start) {
  const Shape sq = queries.shape(), sk = keys.shape(), sv = values.shape();
  const auto shapes = [&] {
    return "queries " + to_string(sq) + ", keys " + to_string(sk) + ", values " + to_string(sv);
  };
  check_shape(sq.size() >= 2 && sk.size() == sq.size() && sv.size() == sq.size(), "DotProductAttention",
              [&] { return "queries, keys and values need the same rank (at least 2), got " + shapes(); });
  check_shape(sq.back() == sk.back(), "DotProductAttention",
              [&] { return "queries and keys must have the same size in the last axis, got " + shapes(); });
  check_shape(sk[sk.size() - 2] == sv[sv.size() - 2], "DotProductAttention",
              [&] { return "keys and values must have the same number of steps, got " + shapes(); });
  check_shape(positions == nullptr || sq.size() == 4, "DotProductAttention",
              [&] { return "position encodings inside attention need [B, H, T, d] tensors, got " + shapes(); });

  const Variable q = positions ? positions->encode_queries(queries, query_start) : queries;  // [..., Tq, d]
  const Variable k = positions ? positions->encode_keys(keys, 0) : keys;                      // [..., Tk, d]
  const std::size_t key_count = sk[sk.size() - 2];
  const bool learned = scale_.kind == ScoreScale::Kind::learned_temperature;
  const Variable term = positions ? positions->score_term(q, query_start, key_count) : Variable();
  Variable scores;  // [..., Tq, Tk]
  if (learned || term.defined()) {
    scores = matmul(q, k, Trans::No, Trans::Yes);
    if (term.defined()) scores = scores + term;
    if (learned) scores = scores / temperature_;
    else if (const real factor = scale_factor(sq.back()); factor != 1) scores = scores * factor;
  } else {
    // The constant factor rides in the gemm: no pass of its own over the scores.
    scores = matmul(q, k, Trans::No, Trans::Yes, scale_factor(sq.back()));
  }
  if (positions) {
    const std::size_t heads = sq[1];
    const Variable bias = positions->score_bias(heads, sq[2], query_start, key_count);
    if (bias.defined()) scores = scores + bias;
  }
  if (scale_.depends_on_length()) {
    // s · ln n per query, n its allowed keys: after the position bias, so that the whole input of
    // the softmax is multiplied, as SSMax replaces the softmax (n^{s z_i} / Σ_j n^{s z_j}).
    check_shape(!allowed || broadcasts_to(shape_of(*allowed), scores.shape()), "DotProductAttention", [&] {
      return "allowed mask " + to_string(shape_of(*allowed)) + " does not broadcast to the scores " +
             to_string(scores.shape()) + " (" + shapes() + ")";
    });
    const Variable log_n(log_allowed_keys(allowed, key_count));  // [..., Tq, 1] or [1]
    if (scale_.kind == ScoreScale::Kind::log_length) {
      scores = scores * (log_n * scale_.value);
    } else {
      check_shape(heads_ == 1 || (sq.size() == 4 && sq[1] == heads_), "DotProductAttention", [&] {
        return "scalable_softmax with " + std::to_string(heads_) + " heads needs [B, " + std::to_string(heads_) +
               ", T, d] inputs, got " + shapes();
      });
      const Variable s = heads_ == 1 ? length_scale_ : reshape(length_scale_, {long(heads_), 1, 1});  // [H, 1, 1]
      scores = scores * (s * log_n);
    }
  }

  if (allowed) {
    const Shape mask_shape = shape_of(*allowed);
    check_shape(broadcasts_to(mask_shape, scores.shape()), "DotProductAttention", [&] {
      return "allowed mask " + to_string(mask_shape) + " does not broadcast to the scores " + to_string(scores.shape()) +
             " (" + shapes() + ")";
    });
  }
  scores_point_(scores);
  Variable weights = masked_softmax(scores, allowed);  // [..., Tq, Tk]
  weights_point_(weights);
  if (const AttentionObserver* observer = AttentionObserver::current())
    observer->callback_(scores.value(), weights.value(), allowed);
  const Variable attended = dropout_->forward(weights);  // [..., Tq, Tk]
  Variable output = matmul(attended, values);          // [..., Tq, dv]
  if (positions) {
    const Variable term = positions->output_term(attended, query_start);
    if (term.defined()) output = output + term;
  }
  output_point_(output);
  return {output, weights};
}

bool DotProductAttention::fuses(const AttentionPositionEncoding* positions) const {
  return positions == nullptr && scale_.kind != ScoreScale::Kind::learned_temperature && !scale_.depends_on_length() &&
         !observed();
}

AttentionOutput DotProductAttention::forward_heads(const HeadView& q, const HeadView& k, const HeadView& v,
                                                   const std::optional<BoolArray>& allowed) {
  check_arg(fuses(nullptr), "DotProductAttention",
            "forward_heads needs a constant scale and no hook or observer (fuses()); use forward");
  const Variable weights = attention_weights(q, k, allowed, scale_factor(q.head_dim));  // [B, H, Tq, Tk]
  return {dropout_->forward_attend(weights, v), weights};                              // [B, Tq, H·d]
}

// ---- additive attention ------------------------------------------------------------------

AdditiveAttention::AdditiveAttention(std::size_t query_size, std::size_t key_size, std::size_t hidden_size, Rng& rng,
                                     real dropout)
    : query_size_(query_size), key_size_(key_size), hidden_size_(hidden_size) {
  check_arg(query_size > 0 && key_size > 0 && hidden_size > 0, "AdditiveAttention",
            "sizes must be positive, got query_size " + std::to_string(query_size) + ", key_size " +
                std::to_string(key_size) + ", hidden_size " + std::to_string(hidden_size));
  check_range("AdditiveAttention", "dropout", dropout, 0, 1);
  const std::uint64_t seed = rng.next_u64();
  dropout_ = register_dropout(std::make_shared<Dropout>(dropout, Rng(seed)));
  // nn.Linear's default: U(-1/√fan_in, 1/√fan_in).
  Rng init(seed ^ splitmix64_increment);
  auto bound = [](std::size_t fan_in) { return real(1) / std::sqrt(static_cast<real>(fan_in)); };
  w_q_ = register_parameter("W_q", uniform({hidden_size, query_size}, -bound(query_size), bound(query_size), init));
  w_k_ = register_parameter("W_k", uniform({hidden_size, key_size}, -bound(key_size), bound(key_size), init));
  v_ = register_parameter("v", uniform({hidden_size}, -bound(hidden_size), bound(hidden_size), init));
  register_hook_point("scores", scores_point_);
  register_hook_point("weights", weights_point_);
  register_hook_point("output", output_point_);
}

Variable AdditiveAttention::project_keys(const Variable& keys) const {
  const Shape sk = keys.shape();
  check_shape(sk.size() == 3 && sk[2] == key_size_, "AdditiveAttention",
              "keys must be [B, Tk, " + std::to_string(key_size_) + "], got " + to_string(sk));
  if (int8_w_k_.active()) return int8_w_k_.linear(keys, Variable(), "AdditiveAttention (int8)");  // [B, Tk, hidden]
  return linear(keys, w_k_, Variable());  // [B, Tk, hidden]
}

Int8Report AdditiveAttention::quantize_int8(const Int8Options& options) {
  Int8Report report = int8_w_q_.quantize(w_q_, "AdditiveAttention W_q", options);
  report += int8_w_k_.quantize(w_k_, "AdditiveAttention W_k", options);
  return report;
}

AttentionOutput AdditiveAttention::forward(const Variable& queries, const Variable& keys, const Variable& values,
                                           const std::optional<BoolArray>& allowed) {
  return forward_projected(queries, project_keys(keys), values, allowed);
}

std::optional<PreparedWeight> AdditiveAttention::prepare_query_weight() const {
  if (int8_w_q_.active()) return std::nullopt;
  return prepare_weight(w_q_);
}

AttentionOutput AdditiveAttention::forward_projected(const Variable& queries, const Variable& projected_keys,
                                                     const Variable& values, const std::optional<BoolArray>& allowed,
                                                     const IndexArray* key_rows, const PreparedWeight* query_weight) {
  const Shape sq = queries.shape(), sk = projected_keys.shape(), sv = values.shape();
  // The messages are built only on failure: a decoder calls this at every time step.
  const auto shapes = [&] {
    return "queries " + to_string(sq) + ", projected keys " + to_string(sk) + ", values " + to_string(sv);
  };
  check_shape(sq.size() == 3 && sq[2] == query_size_, "AdditiveAttention",
              [&] { return "queries must be [B, Tq, " + std::to_string(query_size_) + "], got " + shapes(); });
  check_shape(sk.size() == 3 && sk[2] == hidden_size_ && (key_rows || sk[0] == sq[0]), "AdditiveAttention", [&] {
    return "projected keys must be [B, Tk, " + std::to_string(hidden_size_) + "] with the queries' B, got " + shapes();
  });
  check_shape(sv.size() == 3 && sv[0] == sk[0] && sv[1] == sk[1], "AdditiveAttention",
              [&] { return "values must be [B, Tk, dv] with the keys' B and Tk, got " + shapes(); });
  const Shape score_shape{sq[0], sq[1], sk[1]};
  if (allowed) {
    const Shape mask_shape = shape_of(*allowed);
    check_shape(broadcasts_to(mask_shape, score_shape), "AdditiveAttention", [&] {
      return "allowed mask " + to_string(mask_shape) + " does not broadcast to the scores " + to_string(score_shape) +
             " (" + shapes() + ")";
    });
  }

  check_arg(!query_weight || (query_weight->weight.id() == w_q_.id() && !int8_w_q_.active()), "AdditiveAttention",
            "the prepared query weight is not this layer's float W_q: prepare it with prepare_query_weight()");
  const Variable projected_queries = int8_w_q_.active() ? int8_w_q_.linear(queries, Variable(), "AdditiveAttention (int8)")
                                     : query_weight     ? linear(queries, *query_weight, Variable())
                                                        : linear(queries, w_q_, Variable());  // [B, Tq, hidden]
  // Every query against every key, vᵀ tanh(W_q q + W_k k), in one fused op.
  Variable scores = key_rows ? additive_scores(projected_queries, projected_keys, *key_rows, v_)
                             : additive_scores(projected_queries, projected_keys, v_);  // [B, Tq, Tk]
  scores_point_(scores);
  Variable weights = masked_softmax(scores, allowed);  // [B, Tq, Tk]
  weights_point_(weights);
  const Variable attended = dropout_->forward(weights);  // [B, Tq, Tk]
  // Loops rather than a batched matmul: with one query per row (a decoder step) that would be
  // B tiny gemms, each paying BLAS's call and packing overhead.
  Variable output = key_rows ? attention_context(attended, values, *key_rows)
                             : attention_context(attended, values);  // [B, Tq, dv]
  output_point_(output);
  return {output, weights};
}

}  // namespace qkv
