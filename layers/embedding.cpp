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
}

std::string Embedding::describe() const {
  return "Embedding(" + std::to_string(num_embeddings_) + ", " + std::to_string(embedding_dim_) + ")";
}

Variable Embedding::forward(const IndexArray& indices) const {
  for (const std::int64_t index : indices)
    check_arg(index >= 0 && static_cast<std::size_t>(index) < num_embeddings_, describe().c_str(),
              "index " + std::to_string(index) + " is outside [0, " + std::to_string(num_embeddings_) +
                  ") in indices of shape " + to_string(Shape(indices.shape().begin(), indices.shape().end())));
  Variable rows = embedding(weight_, indices);  // [..., D]
  if (!padding_idx_ || !rows.requires_grad()) return rows;
  // The padding token's row is a constant: stop the gradient at the positions that read it.
  // This costs one copy of the output, the price of keeping the embedding op itself generic.
  const std::int64_t pad = *padding_idx_;
  if (std::find(indices.begin(), indices.end(), pad) == indices.end()) return rows;
  const std::size_t dim = embedding_dim_;
  Array value = rows.value();
  return make_op("embedding_padding", std::move(value), {rows},
                 [indices, pad, dim](const Array& g, const Array&, std::span<Variable> in) {
    real* dx = in[0].grad_buffer().data();
    const real* pg = g.data();
    for (std::size_t i = 0; i < indices.size(); ++i)
      if (indices.data()[i] != pad)
        for (std::size_t j = 0; j < dim; ++j) dx[i * dim + j] += pg[i * dim + j];
  });
}

}  // namespace qkv
