#pragma once
// Embedding: a lookup table of vectors, as torch.nn.Embedding.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "layers/module.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

struct EmbeddingOptions {
  /// This token's row is zero at initialisation and never receives a gradient, so it stays
  /// whatever it was set to (zero unless loaded otherwise).
  std::optional<std::int64_t> padding_idx;
};

/// Hook point "output" [..., embedding_dim]: the rows looked up (for attributions, replace it by
/// a leaf that requires grad and read that leaf's gradient).
class Embedding : public Module {
 public:
  /// weight [num_embeddings, embedding_dim] drawn from N(0, 1), as PyTorch does.
  Embedding(std::size_t num_embeddings, std::size_t embedding_dim, Rng& rng, const EmbeddingOptions& options = {});

  /// indices of any shape [...] -> [..., embedding_dim]. Throws on an index outside [0, V).
  Variable forward(const IndexArray& indices) const;
  Variable operator()(const IndexArray& indices) const { return forward(indices); }

  std::size_t num_embeddings() const { return num_embeddings_; }
  std::size_t embedding_dim() const { return embedding_dim_; }
  const std::optional<std::int64_t>& padding_idx() const { return padding_idx_; }
  const Variable& weight() const { return weight_; }
  /// "Embedding(7, 4)", the prefix of this layer's error messages.
  std::string describe() const;

 private:
  std::size_t num_embeddings_, embedding_dim_;
  std::optional<std::int64_t> padding_idx_;
  Variable weight_;  // [V, D]
  HookPoint output_point_;
};

}  // namespace qkv
