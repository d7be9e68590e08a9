#include "layers/nadaraya_watson.hpp"

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"

namespace qkv {

NadarayaWatson::NadarayaWatson(Rng& rng) { w_ = register_parameter("w", uniform({1}, 0, 1, rng)); }

NadarayaWatsonOutput NadarayaWatson::forward(const Variable& queries, const Variable& keys,
                                             const Variable& values) const {
  const Shape sq = queries.shape(), sk = keys.shape(), sv = values.shape();
  const bool shared_keys = sk.size() == 1, per_query_keys = sk.size() == 2 && !sq.empty() && sk[0] == sq[0];
  check_shape(sq.size() == 1 && (shared_keys || per_query_keys) && sv == sk && sk.back() > 0, "NadarayaWatson",
              "queries " + to_string(sq) + ", keys " + to_string(sk) + " and values " + to_string(sv) +
                  " must be [n_queries] with keys and values both [n_keys] or both [n_queries, n_keys], n_keys > 0");
  const Variable distance = (unsqueeze(queries, 1) - keys) * w_;                 // [nq, nk]
  const Variable attention = softmax(mul_scalar(distance * distance, real(-0.5)), 1);  // [nq, nk]
  NadarayaWatsonOutput result;
  result.predictions = sum(attention * values, {1});  // [nq]
  result.attention = attention;
  return result;
}

}  // namespace qkv
