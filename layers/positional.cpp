#include "layers/positional.hpp"

#include <algorithm>
#include <cmath>

#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

/// Indices start, start+1, ..., start+count-1.
IndexArray positions_from(std::size_t start, std::size_t count) {
  IndexArray indices = IndexArray::from_shape({count});
  for (std::size_t t = 0; t < count; ++t) indices(t) = static_cast<std::int64_t>(start + t);
  return indices;
}

/// The checks both absolute encodings make on their sizes and dropout.
void check_absolute_options(const char* layer, std::size_t d_model, std::size_t max_len, real dropout) {
  check_arg(d_model > 0 && max_len > 0, layer,
            "d_model and max_len must be positive, got " + std::to_string(d_model) + " and " + std::to_string(max_len));
  check_range(layer, "dropout", dropout, 0, 1);
}

/// The check both absolute encodings make on x [B, T, D] at positions start..start+T-1.
void check_absolute_input(const char* layer, const Variable& x, std::size_t d_model, std::size_t max_len,
                          std::size_t start) {
  const Shape s = x.shape();
  check_shape(s.size() == 3 && s[2] == d_model, layer,
              "input must be [B, T, " + std::to_string(d_model) + "], got " + to_string(s));
  check_shape(start + s[1] <= max_len, layer,
              "positions " + std::to_string(start) + ".." + std::to_string(start + s[1]) + " of input " +
                  to_string(s) + " exceed max_len " + std::to_string(max_len));
}

}  // namespace

// ---- absolute encodings ------------------------------------------------------------------

Array sinusoidal_table(std::size_t max_len, std::size_t d_model, real base) {
  Array table = Array::from_shape({max_len, d_model});
  for (std::size_t p = 0; p < max_len; ++p)
    for (std::size_t column = 0; column < d_model; ++column) {
      const std::size_t pair = column / 2;  // columns 2i and 2i+1 share a frequency
      const double angle = static_cast<double>(p) /
                           std::pow(static_cast<double>(base), 2.0 * static_cast<double>(pair) / static_cast<double>(d_model));
      table(p, column) = static_cast<real>(column % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  return table;
}

SinusoidalPositionalEncoding::SinusoidalPositionalEncoding(std::size_t d_model, std::size_t max_len, real dropout,
                                                           Rng dropout_stream)
    : d_model_(d_model), max_len_(max_len) {
  check_absolute_options("SinusoidalPositionalEncoding", d_model, max_len, dropout);
  dropout_ = register_dropout(std::make_shared<Dropout>(dropout, dropout_stream));
  table_ = register_buffer("pe", sinusoidal_table(max_len, d_model));
}

Variable SinusoidalPositionalEncoding::forward(const Variable& x, std::size_t start) {
  check_absolute_input("SinusoidalPositionalEncoding", x, d_model_, max_len_, start);
  const Variable encoded = x + slice(table_, 0, start, start + x.dim(1));  // [B, T, D] + [T, D]
  return dropout_->forward(encoded);                                        // [B, T, D]
}

LearnedPositionalEmbedding::LearnedPositionalEmbedding(std::size_t d_model, std::size_t max_len, Rng& rng,
                                                       real dropout)
    : d_model_(d_model), max_len_(max_len) {
  check_absolute_options("LearnedPositionalEmbedding", d_model, max_len, dropout);
  const std::uint64_t seed = rng.next_u64();
  dropout_ = register_dropout(std::make_shared<Dropout>(dropout, Rng(seed)));
  Rng init(seed ^ splitmix64_increment);
  weight_ = register_parameter("weight", normal({max_len, d_model}, 0, real(0.02), init));
}

Variable LearnedPositionalEmbedding::forward(const Variable& x, std::size_t start) {
  check_absolute_input("LearnedPositionalEmbedding", x, d_model_, max_len_, start);
  const Variable encoded = x + embedding(weight_, positions_from(start, x.dim(1)));  // [B, T, D] + [T, D]
  return dropout_->forward(encoded);                                                // [B, T, D]
}

// ---- relative positions (Shaw et al. 2018) -------------------------------------------------

RelativePositionEncoding::RelativePositionEncoding(std::size_t head_dim, std::size_t max_distance, Rng& rng,
                                                   bool value_embeddings)
    : head_dim_(head_dim), max_distance_(max_distance) {
  check_arg(head_dim > 0, "RelativePositionEncoding", "head_dim must be positive, got 0");
  const std::size_t distances = 2 * max_distance + 1;
  const real bound = std::sqrt(real(6) / static_cast<real>(distances + head_dim));  // xavier uniform
  relative_keys_ = register_parameter("relative_keys", uniform({distances, head_dim}, -bound, bound, rng));
  if (value_embeddings)
    relative_values_ = register_parameter("relative_values", uniform({distances, head_dim}, -bound, bound, rng));
}

IndexArray RelativePositionEncoding::relative_indices(std::size_t queries, std::size_t query_start,
                                                      std::size_t keys) const {
  IndexArray indices = IndexArray::from_shape({queries, keys});
  const auto k = static_cast<std::int64_t>(max_distance_);
  for (std::size_t i = 0; i < queries; ++i)
    for (std::size_t j = 0; j < keys; ++j) {
      const std::int64_t distance = static_cast<std::int64_t>(j) - static_cast<std::int64_t>(query_start + i);
      indices(i, j) = std::clamp(distance, -k, k) + k;
    }
  return indices;
}

Variable RelativePositionEncoding::score_term(const Variable& queries, std::size_t query_start,
                                              std::size_t keys) const {
  check_shape(queries.rank() == 4 && queries.dim(3) == head_dim_, "RelativePositionEncoding",
              "queries must be [B, H, Tq, " + std::to_string(head_dim_) + "], got " + to_string(queries.shape()));
  const std::size_t query_count = queries.dim(2);
  const Variable table = embedding(relative_keys_, relative_indices(query_count, query_start, keys));  // [Tq, Tk, d]
  // q_i · a_ij for every (i, j): [B, H, Tq, 1, d] x [Tq, Tk, d]ᵀ -> [B, H, Tq, 1, Tk]
  return squeeze(matmul(unsqueeze(queries, 3), table, Trans::No, Trans::Yes), 3);  // [B, H, Tq, Tk]
}

Variable RelativePositionEncoding::output_term(const Variable& weights, std::size_t query_start) const {
  if (!relative_values_.defined()) return {};
  check_shape(weights.rank() == 4, "RelativePositionEncoding",
              "weights must be [B, H, Tq, Tk], got " + to_string(weights.shape()));
  const std::size_t query_count = weights.dim(2), keys = weights.dim(3);
  const Variable table = embedding(relative_values_, relative_indices(query_count, query_start, keys));  // [Tq, Tk, d]
  // Σ_j α_ij a_ij: [B, H, Tq, 1, Tk] x [Tq, Tk, d] -> [B, H, Tq, 1, d]
  return squeeze(matmul(unsqueeze(weights, 3), table), 3);  // [B, H, Tq, d]
}

// ---- rotary (RoPE) -------------------------------------------------------------------------

RotaryPositionEncoding::RotaryPositionEncoding(std::size_t head_dim, real base) : head_dim_(head_dim), base_(base) {
  check_arg(head_dim > 0 && head_dim % 2 == 0, "RotaryPositionEncoding",
            "head_dim must be even and positive (it rotates pairs), got " + std::to_string(head_dim));
  check_arg(base > 1, "RotaryPositionEncoding", "base must exceed 1, got " + format_number(base));
}

Variable RotaryPositionEncoding::encode_queries(const Variable& queries, std::size_t query_start) const {
  check_shape(queries.rank() >= 2 && queries.dim(-1) == head_dim_, "RotaryPositionEncoding",
              "queries must be [..., T, " + std::to_string(head_dim_) + "], got " + to_string(queries.shape()));
  return rotary_embedding(queries, query_start, base_);
}

Variable RotaryPositionEncoding::encode_keys(const Variable& keys, std::size_t key_start) const {
  check_shape(keys.rank() >= 2 && keys.dim(-1) == head_dim_, "RotaryPositionEncoding",
              "keys must be [..., T, " + std::to_string(head_dim_) + "], got " + to_string(keys.shape()));
  return rotary_embedding(keys, key_start, base_);
}

// ---- ALiBi ---------------------------------------------------------------------------------

std::vector<real> alibi_slopes(std::size_t num_heads) {
  check_arg(num_heads > 0, "alibi_slopes", "num_heads must be positive, got 0");
  auto power_of_two_slopes = [](std::size_t n) {
    // start = 2^(-8/n); slopes start^1, ..., start^n.
    const double start = std::pow(2.0, -8.0 / static_cast<double>(n));
    std::vector<real> slopes(n);
    for (std::size_t h = 0; h < n; ++h) slopes[h] = static_cast<real>(std::pow(start, static_cast<double>(h + 1)));
    return slopes;
  };
  std::size_t closest = 1;
  while (closest * 2 <= num_heads) closest *= 2;
  std::vector<real> slopes = power_of_two_slopes(closest);
  if (closest == num_heads) return slopes;
  // The paper's code: the rest are every other slope of the next power of two.
  const std::vector<real> finer = alibi_slopes(2 * closest);
  for (std::size_t h = 0; slopes.size() < num_heads; h += 2) slopes.push_back(finer[h]);
  return slopes;
}

ALiBi::ALiBi(std::size_t num_heads) : slopes_(alibi_slopes(num_heads)) {}

Variable ALiBi::score_bias(std::size_t heads, std::size_t queries, std::size_t query_start, std::size_t keys) const {
  check_shape(heads == slopes_.size(), "ALiBi",
              "built for " + std::to_string(slopes_.size()) + " heads but the scores have " + std::to_string(heads));
  Array bias = Array::from_shape({heads, queries, keys});  // broadcasts over B
  for (std::size_t h = 0; h < heads; ++h)
    for (std::size_t i = 0; i < queries; ++i)
      for (std::size_t j = 0; j < keys; ++j) {
        const std::size_t position = query_start + i;
        const auto distance = static_cast<real>(j > position ? j - position : position - j);
        bias(h, i, j) = -slopes_[h] * distance;
      }
  return Variable(std::move(bias));
}

}  // namespace qkv
