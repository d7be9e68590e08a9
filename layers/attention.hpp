#pragma once
// Attention building blocks: masks, the scoring functions (dot, scaled dot,
// additive) and the hook through which positional schemes (relative, rotary, ALiBi) act
// inside attention.
//
// Masks have ONE polarity everywhere in qkv: a BoolArray called `allowed` is true where a
// query MAY attend to a key. Valid lengths are turned into the same thing. (PyTorch's
// key_padding_mask and boolean attn_mask mean the opposite: true = ignore.)
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "lib/numerics/enum_names.hpp"
#include "autograd/ops.hpp"
#include "layers/module.hpp"
#include "layers/quantized.hpp"
#include "layers/normalization.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

// ---- masks -----------------------------------------------------------------------------

/// allowed[b, i, j] = j < valid_lens[b] (valid_lens [B]) or j < valid_lens[b, i]
/// (valid_lens [B, Tq]) -> [B, Tq, Tk]. Lengths must lie in [0, Tk].
BoolArray allowed_from_valid_lens(const IndexArray& valid_lens, std::size_t queries, std::size_t keys);
/// [Tq, Tk]: query i, at absolute position query_start + i, may see key j iff j <= query_start + i.
BoolArray causal_allowed(std::size_t queries, std::size_t keys, std::size_t query_start = 0);
/// [Tq, Tk]: query i may see key j iff |query_start + i - j| <= window (local attention;
/// combine with causal_allowed for a one-sided window).
BoolArray window_allowed(std::size_t queries, std::size_t keys, std::size_t window, std::size_t query_start = 0);
/// a AND b, broadcasting as NumPy does; nullopt on either side means "everything allowed".
std::optional<BoolArray> allowed_and(const std::optional<BoolArray>& a, const std::optional<BoolArray>& b);

// masked_softmax, the op these masks feed, is in autograd/ops.hpp.

// ---- scoring ---------------------------------------------------------------------------

/// What an attention layer gives back: the attended values and the weights that made them
/// (the softmax output, before attention dropout).
struct AttentionOutput {
  Variable output;   // [..., Tq, dv]
  Variable weights;  // [..., Tq, Tk]
};

/// How dot-product scores are scaled before the softmax.
struct ScoreScale {
  enum class Kind {
    inverse_sqrt_dim,     // q·k / √d_k (Vaswani et al.; the default)
    none,                 // q·k (plain dot-product attention)
    inverse_dim,          // q·k · value / d_k (value 1; μP, microsoft/mup: 8, equal to 1/√d_k at d_k = 64)
    fixed,                // q·k * value
    learned_temperature,  // q·k / τ with τ a trained parameter "temperature", starting at value
    // The length-aware scales multiply the 1/√d_k-scaled scores (position terms included) by
    // s · ln n, n the number of keys the query may attend to (its allowed keys under the mask:
    // the valid source length with padding, i + 1 for causal query i; all Tk without a mask).
    log_length,        // s · ln n · q·k / √d_k with s = value fixed (Chiang & Cholak 2022: s = 1)
    scalable_softmax,  // the same with s a trained parameter per head, starting at value (SSMax,
                       // Nakanishi 2025): parameter "length_scale" [heads] ([] for one head)
  };
  Kind kind = Kind::inverse_sqrt_dim;
  real value = 1;

  static ScoreScale inverse_sqrt_dim() { return {}; }
  static ScoreScale none() { return {Kind::none, 1}; }
  static ScoreScale inverse_dim(real numerator = 1) { return {Kind::inverse_dim, numerator}; }
  static ScoreScale fixed(real factor) { return {Kind::fixed, factor}; }
  /// τ starts at `initial` (√d_k reproduces the default scaling at the start of training).
  static ScoreScale learned_temperature(real initial) { return {Kind::learned_temperature, initial}; }
  /// s · ln n on top of 1/√d_k; s = 1 is Chiang & Cholak's log-length scaling.
  static ScoreScale log_length(real s = 1) { return {Kind::log_length, s}; }
  /// SSMax: s · ln n on top of 1/√d_k with s learned per head, starting at `initial`.
  static ScoreScale scalable_softmax(real initial) { return {Kind::scalable_softmax, initial}; }
  /// log_length and scalable_softmax: the factor depends on how many keys each query sees.
  bool depends_on_length() const { return kind == Kind::log_length || kind == Kind::scalable_softmax; }
};
constexpr EnumNames<ScoreScale::Kind, 7> enum_names(ScoreScale::Kind) {
  return {"score scale",
          {{{ScoreScale::Kind::inverse_sqrt_dim, "inverse_sqrt_dim"}, {ScoreScale::Kind::none, "none"},
            {ScoreScale::Kind::inverse_dim, "inverse_dim"}, {ScoreScale::Kind::fixed, "fixed"},
            {ScoreScale::Kind::learned_temperature, "learned_temperature"},
            {ScoreScale::Kind::log_length, "log_length"}, {ScoreScale::Kind::scalable_softmax, "scalable_softmax"}}}};
}

/// The number of keys each query may attend to: `allowed` [..., Tq, Tk'] (Tk' = Tk, or 1
/// broadcasting over the keys) -> counts [..., Tq, 1]; without a mask, [1] holding Tk.
Array allowed_key_counts(const std::optional<BoolArray>& allowed, std::size_t keys);
/// ln(max(n, 1)) of allowed_key_counts, the length factor of ScoreScale::log_length (a fully
/// masked row gets 0: masked_softmax handles it whatever its scores).
Array log_allowed_keys(const std::optional<BoolArray>& allowed, std::size_t keys);

/// A position encoding that acts inside attention rather than on the input embeddings:
/// relative (Shaw et al.), rotary (RoPE), ALiBi. Dot-product attention calls these hooks on
/// per-head tensors laid out [B, H, T, d]. Queries sit at absolute positions query_start + i;
/// keys at 0..Tk-1 (with a KV cache, all keys so far), so new keys start at key_start.
/// Every hook defaults to "no change".
class AttentionPositionEncoding : public Module {
 public:
  /// Applied to queries [B, H, Tq, d] before scoring (RoPE rotates them).
  virtual Variable encode_queries(const Variable& queries, std::size_t query_start) const;
  /// Applied to keys [B, H, Tk_new, d] before scoring and before they enter a KV cache.
  virtual Variable encode_keys(const Variable& keys, std::size_t key_start) const;
  /// A term [B, H, Tq, Tk] added to q·kᵀ before scaling (Shaw's key embeddings), or undefined.
  virtual Variable score_term(const Variable& queries, std::size_t query_start, std::size_t keys) const;
  /// A bias added to the scaled scores, broadcasting to [B, H, Tq, Tk] (ALiBi), or undefined.
  virtual Variable score_bias(std::size_t heads, std::size_t queries, std::size_t query_start,
                              std::size_t keys) const;
  /// A term [B, H, Tq, dv] added to weights·V (Shaw's value embeddings), or undefined.
  virtual Variable output_term(const Variable& weights, std::size_t query_start) const;
};

/// While alive, sees the scores and weights of every DotProductAttention::forward on this
/// thread (the innermost observer when they nest) — for diagnostics that need what the
/// softmax saw inside a model, e.g. qkv-scaling-study's attention logits during training.
/// Nothing is recorded when no observer is installed.
class AttentionObserver {
 public:
  /// scores: the scaled scores fed to the softmax [..., Tq, Tk] (position terms included);
  /// weights: its output [..., Tq, Tk]; allowed: the mask broadcasting to them, if any.
  using Callback =
      std::function<void(const Array& scores, const Array& weights, const std::optional<BoolArray>& allowed)>;
  explicit AttentionObserver(Callback callback);
  ~AttentionObserver();
  AttentionObserver(const AttentionObserver&) = delete;
  AttentionObserver& operator=(const AttentionObserver&) = delete;

 private:
  friend class DotProductAttention;
  static AttentionObserver*& current();
  Callback callback_;
  AttentionObserver* previous_;
};

/// Dot-product attention: softmax(scale · q kᵀ + position terms) V over the last two axes,
/// with any leading (batch, head) axes. Parameters: "temperature" only when the scale is
/// learned; "length_scale" only for scalable_softmax. Submodule "dropout" (on the weights, in
/// training mode).
/// Hook points (layers/hooks.hpp): "scores" — the scaled scores the softmax gets, position
/// terms included, before masking [..., Tq, Tk]; "weights" — the softmax's output, before
/// dropout [..., Tq, Tk]; "output" [..., Tq, dv]. A MultiheadAttention shows them as its own
/// "scores", "weights" and "heads".
class DotProductAttention : public Module {
 public:
  /// `dropout_stream` is the attention dropout's random stream (a stream keeper, see
  /// module.hpp); the default is the one a seed of 0 gave.
  /// `heads` sizes scalable_softmax's per-head s (axis 1 of [B, H, Tq, Tk] scores must then
  /// have that size); with 1 head, s is one scalar for any layout.
  explicit DotProductAttention(ScoreScale scale = {}, real dropout = 0, Rng dropout_stream = Rng(0),
                               std::size_t heads = 1);

  /// queries [..., Tq, d], keys [..., Tk, d], values [..., Tk, dv] -> output [..., Tq, dv] and
  /// weights [..., Tq, Tk]. `allowed` broadcasts to [..., Tq, Tk]. `positions` (optional)
  /// needs the [B, H, T, d] layout.
  AttentionOutput forward(const Variable& queries, const Variable& keys, const Variable& values,
                          const std::optional<BoolArray>& allowed = std::nullopt,
                          const AttentionPositionEncoding* positions = nullptr, std::size_t query_start = 0);

  /// The constant factor for key size d_k (not for a learned temperature, which is a parameter;
  /// 1/√d_k for the length-aware scales, whose s · ln n multiplies it per query).
  real scale_factor(std::size_t key_size) const;
  const ScoreScale& scale() const { return scale_; }
  /// True when a hook is attached to any of this layer's points or an AttentionObserver is
  /// installed: a fused kernel that never forms the scores and weights must then step aside.
  bool observed() const {
    return !scores_point_.empty() || !weights_point_.empty() || !output_point_.empty() ||
           AttentionObserver::current() != nullptr;
  }
  /// True when forward_heads computes what forward would: no position encoding inside the
  /// attention, a constant scale, nothing observing (observed()).
  bool fuses(const AttentionPositionEncoding* positions) const;
  /// forward for heads read where they lie — q [B, H, Tq, d], k and v [B, H_kv, Tk, d] as views
  /// (autograd/ops.hpp: attention_weights, then attend_values with this layer's dropout) — with
  /// the output's heads already merged, [B, Tq, H·d], and the weights [B, H, Tq, Tk]. The same
  /// values, gradients and dropout draws as forward on the split heads; only when fuses().
  AttentionOutput forward_heads(const HeadView& q, const HeadView& k, const HeadView& v,
                                const std::optional<BoolArray>& allowed);

 private:
  ScoreScale scale_;
  std::shared_ptr<Dropout> dropout_;
  Variable temperature_;  // [] when the scale is learned
  Variable length_scale_;  // [heads] (or [] for one head) for scalable_softmax
  std::size_t heads_ = 1;
  HookPoint scores_point_, weights_point_, output_point_;
};

/// Additive (Bahdanau) attention: score(q, k) = vᵀ tanh(W_q q + W_k k). Parameters "W_q"
/// [hidden, query_size], "W_k" [hidden, key_size], "v" [hidden]; submodule "dropout" (on the
/// weights, in training mode).
/// Hook points: "scores" [B, Tq, Tk] (before masking), "weights" [B, Tq, Tk] (before dropout),
/// "output" [B, Tq, dv]. In a decoder that attends once per step they fire once per step.
class AdditiveAttention : public Module {
 public:
  /// Draws one seed from `rng`: the dropout stream is Rng(seed), the weights come from
  /// Rng(seed ^ φ) — what this layer did when it took the seed itself.
  AdditiveAttention(std::size_t query_size, std::size_t key_size, std::size_t hidden_size, Rng& rng,
                    real dropout = 0);

  /// keys [B, Tk, key_size] -> W_k k [B, Tk, hidden]. A decoder computes this once per batch
  /// and passes it to forward_projected at every step.
  Variable project_keys(const Variable& keys) const;
  /// queries [B, Tq, query_size], keys [B, Tk, key_size], values [B, Tk, dv], `allowed`
  /// broadcasting to [B, Tq, Tk] -> output [B, Tq, dv], weights [B, Tq, Tk].
  AttentionOutput forward(const Variable& queries, const Variable& keys, const Variable& values,
                          const std::optional<BoolArray>& allowed = std::nullopt);
  /// As forward, with keys already projected by project_keys. With `key_rows` [B], batch row b
  /// reads row key_rows[b] of projected_keys [N, Tk, hidden] and values [N, Tk, dv] (beam
  /// hypotheses sharing their sentence's encoder outputs); without, row b.
  /// `query_weight`, when given, is W_q from prepare_query_weight(), made once for a decoder's
  /// steps.
  AttentionOutput forward_projected(const Variable& queries, const Variable& projected_keys,
                                    const Variable& values, const std::optional<BoolArray>& allowed = std::nullopt,
                                    const IndexArray* key_rows = nullptr, const PreparedWeight* query_weight = nullptr);
  /// W_q transposed once (ops.hpp), valid until the weight next changes; none once int8 W_q runs
  /// (quantize_int8), which has its own layout.
  std::optional<PreparedWeight> prepare_query_weight() const;
  /// Int8 inference from now on for W_q and W_k (layers/quantized.hpp).
  Int8Report quantize_int8(const Int8Options& options = {});

 private:
  std::size_t query_size_, key_size_, hidden_size_;
  std::shared_ptr<Dropout> dropout_;
  Variable w_q_, w_k_, v_;
  HookPoint scores_point_, weights_point_, output_point_;
  Int8Weight int8_w_q_, int8_w_k_;  // once quantize_int8 ran
};

}  // namespace qkv
