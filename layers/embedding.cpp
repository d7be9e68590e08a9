#include "layers/embedding.hpp"

#include <algorithm>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"

namespace qkv {

Embedding::Embedding(std::size_t num_embeddings, std::size_t embedding_dim, Rng& rng,
                     const EmbeddingOptions& options)
    : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim), padding_idx_(options.padding_idx) {
  check_arg(num_embeddings > 0 && embedding_dim > 0, "Embedding",
            "num_embeddings and embedding_dim must be positive, got " + std::to_string(num_embeddings) + " and " +
                std::to_string(embedding_dim));
  if (padding_idx_) {
    // PyTorch also accepts a negative padding_idx, counted from the end of the table.
    const auto v = static_cast<std::int64_t>(num_embeddings);
    check_arg(*padding_idx_ >= -v && *padding_idx_ < v, describe().c_str(),
              "padding_idx " + std::to_string(*padding_idx_) + " is outside [-" + std::to_string(v) + ", " +
                  std::to_string(v) + ")");
    if (*padding_idx_ < 0) *padding_idx_ += v;
  }
  Array table = normal({num_embeddings, embedding_dim}, 0, 1, rng);  // [V, D]
  if (padding_idx_) {
    real* row = table.data() + static_cast<std::size_t>(*padding_idx_) * embedding_dim;
    std::fill(row, row + embedding_dim, real(0));
  }
  weight_ = register_parameter("weight", std::move(table));
  register_hook_point("output", output_point_);
}

std::string Embedding::describe() const {
  return "Embedding(" + std::to_string(num_embeddings_) + ", " + std::to_string(embedding_dim_) + ")";
}

Variable Embedding::forward(const IndexArray& indices) const {
  // The message (which names this module) is built only for a bad index: this runs per element.
  const auto bad = std::find_if(indices.begin(), indices.end(), [&](std::int64_t index) {
    return index < 0 || static_cast<std::size_t>(index) >= num_embeddings_;
  });
  if (bad != indices.end())
    throw Error(describe() + ": index " + std::to_string(*bad) + " is outside [0, " + std::to_string(num_embeddings_) +
                ") in indices of shape " + to_string(shape_of(indices)));
  Variable rows = embedding(weight_, indices);  // [..., D]
  // The padding token's row is a constant: stop the gradient at the positions that read it.
  Variable output = padding_idx_ ? embedding_padding(rows, indices, *padding_idx_) : rows;
  output_point_(output);
  return output;
}

}  // namespace qkv
