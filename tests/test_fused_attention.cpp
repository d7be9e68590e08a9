// Dense attention on heads where they lie (attention_weights, attend_values): against the ops
// they fuse — split_heads, matmul, masked_softmax, dropout, matmul, merge_heads — in values,
// weights, gradients and dropout draws, over masks, grouped heads, cross-attention, dropout in
// and out of training and the KV cache's [B, H, T, d] layout; float64 gradcheck; bad inputs;
// and MultiheadAttention's route (in place unless something observes or sits in between).
#include <optional>

#include <xtensor/xview.hpp>

#include "layers/multihead_attention.hpp"
#include "layers/positional.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

struct Case {
  std::size_t batch = 2, heads = 4, kv_heads = 4, queries = 5, keys = 5, head_dim = 3;
  bool self = true;  // q, k, v columns of one rows tensor [B, T, H·d + 2·H_kv·d]; else q rows and k, v rows
  std::optional<BoolArray> allowed;
  real p = 0;
  bool training = false;
};

struct Result {
  Array output, weights;
  std::vector<Array> grads;
};

/// The unfused reference: heads split out, attention as DotProductAttention composes it
/// (key/value heads repeated for grouped queries), heads merged.
Result unfused(const Case& c, const std::vector<Array>& inputs, const Array& upstream, real scale) {
  std::vector<Variable> leaves;
  for (const Array& a : inputs) leaves.push_back(leaf(a));
  const std::size_t qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  const Variable& q_rows = leaves[0];
  const Variable& kv_rows = c.self ? leaves[0] : leaves[1];
  const std::size_t k_first = c.self ? qd : 0;
  const Variable q = split_heads(q_rows, c.heads, 0, qd);                 // [B, H, Tq, d]
  Variable k = split_heads(kv_rows, c.kv_heads, k_first, kvd);            // [B, H_kv, Tk, d]
  Variable v = split_heads(kv_rows, c.kv_heads, k_first + kvd, kvd);      // [B, H_kv, Tk, d]
  if (c.kv_heads != c.heads) {
    const std::size_t group = c.heads / c.kv_heads;
    const auto repeat = [&](const Variable& x) {
      const Shape s = x.shape();
      return reshape(expand(unsqueeze(x, 2), {s[0], s[1], group, s[2], s[3]}),
                     {long(s[0]), long(s[1] * group), long(s[2]), long(s[3])});  // [B, H, Tk, d]
    };
    k = repeat(k), v = repeat(v);
  }
  const Variable weights = masked_softmax(matmul(q, k, Trans::No, Trans::Yes, scale), c.allowed);  // [B, H, Tq, Tk]
  Rng rng(17);
  const Variable output = merge_heads(matmul(dropout(weights, c.p, c.training, rng), v));  // [B, Tq, H·d]
  sum(output * Variable(upstream)).backward();
  Result r{output.value(), weights.value(), {}};
  for (const Variable& l : leaves) r.grads.push_back(l.grad());
  return r;
}

Result fused(const Case& c, const std::vector<Array>& inputs, const Array& upstream, real scale) {
  std::vector<Variable> leaves;
  for (const Array& a : inputs) leaves.push_back(leaf(a));
  const std::size_t qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  const Variable& kv_rows = c.self ? leaves[0] : leaves[1];
  const std::size_t k_first = c.self ? qd : 0;
  const HeadView q = head_view_of_rows(leaves[0], c.heads, 0, qd);
  const HeadView k = head_view_of_rows(kv_rows, c.kv_heads, k_first, kvd);
  const HeadView v = head_view_of_rows(kv_rows, c.kv_heads, k_first + kvd, kvd);
  const Variable weights = attention_weights(q, k, c.allowed, scale);  // [B, H, Tq, Tk]
  Rng rng(17);
  const Variable output = attend_values(weights, v, c.p, c.training, rng);  // [B, Tq, H·d]
  sum(output * Variable(upstream)).backward();
  Result r{output.value(), weights.value(), {}};
  for (const Variable& l : leaves) r.grads.push_back(l.grad());
  return r;
}

std::vector<Array> inputs_of(const Case& c, std::uint64_t seed) {
  const std::size_t qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  if (c.self) return {random_array({c.batch, c.queries, qd + 2 * kvd}, seed)};
  return {random_array({c.batch, c.queries, qd}, seed), random_array({c.batch, c.keys, 2 * kvd}, seed + 1)};
}

void check_same(const Case& c, real scale, std::uint64_t seed) {
  const std::vector<Array> inputs = inputs_of(c, seed);
  const Array upstream = random_array({c.batch, c.queries, c.heads * c.head_dim}, seed + 7);
  const Result a = unfused(c, inputs, upstream, scale), b = fused(c, inputs, upstream, scale);
  CHECK(max_abs_diff(a.weights, b.weights) < 1e-13);
  CHECK(max_abs_diff(a.output, b.output) < 1e-13);
  REQUIRE(a.grads.size() == b.grads.size());
  for (std::size_t i = 0; i < a.grads.size(); ++i) CHECK(max_abs_diff(a.grads[i], b.grads[i]) < 1e-13);
}

BoolArray random_mask(const Shape& shape, std::uint64_t seed) {
  Rng rng(seed);
  BoolArray mask = BoolArray::from_shape(shape);
  for (bool& x : mask) x = rng.uniform() < 0.7;
  return mask;
}

}  // namespace

TEST_CASE("attention_weights and attend_values: the values, weights and gradients of the ops they fuse") {
  const real scale = real(0.6);
  SUBCASE("self-attention, no mask, eval") { check_same({}, scale, 1); }
  SUBCASE("self-attention, key padding [B, 1, 1, Tk]") {
    BoolArray keys = BoolArray::from_shape({2, 1, 1, 5});
    std::fill(keys.begin(), keys.end(), true);
    keys(1, 0, 0, 3) = keys(1, 0, 0, 4) = false;
    check_same({.allowed = keys}, scale, 2);
  }
  SUBCASE("self-attention, causal [Tq, Tk], dropout in training") {
    check_same({.allowed = causal_allowed(5, 5, 0), .p = real(0.3), .training = true}, scale, 3);
  }
  SUBCASE("a full [B, H, Tq, Tk] mask with a row that allows nothing") {
    BoolArray mask = random_mask({2, 4, 5, 5}, 4);
    for (std::size_t j = 0; j < 5; ++j) mask(1, 2, 3, j) = false;
    check_same({.allowed = mask, .p = real(0.25), .training = true}, scale, 5);
  }
  SUBCASE("grouped heads: 4 query heads over 2 and over 1 key/value heads") {
    check_same({.kv_heads = 2, .allowed = causal_allowed(5, 5, 0)}, scale, 6);
    check_same({.kv_heads = 1, .p = real(0.2), .training = true}, scale, 7);
  }
  SUBCASE("cross-attention: 3 queries over 6 keys of another tensor") {
    check_same({.queries = 3, .keys = 6, .self = false, .allowed = random_mask({2, 1, 3, 6}, 8)}, scale, 9);
  }
  SUBCASE("dropout: p 1 drops everything, eval and p 0 nothing, scale 1") {
    check_same({.p = 1, .training = true}, scale, 10);
    check_same({.p = real(0.5), .training = false}, real(1), 11);
  }
}

TEST_CASE("attention_weights and attend_values: the same dropout draws as the dropout op") {
  // One draw from the stream per call, the mask of the op's elements: after both, the streams agree.
  const Case c{.p = real(0.4), .training = true};
  const std::vector<Array> inputs = inputs_of(c, 21);
  const HeadView q = head_view_of_rows(Variable(inputs[0]), 4, 0, 12), v = head_view_of_rows(Variable(inputs[0]), 4, 24, 12);
  const Variable weights = attention_weights(q, head_view_of_rows(Variable(inputs[0]), 4, 12, 12), std::nullopt, 1);
  Rng a(5), b(5);
  const Variable out = attend_values(weights, v, c.p, true, a);
  const Variable reference = merge_heads(matmul(dropout(weights, c.p, true, b), split_heads(Variable(inputs[0]), 4, 24, 12)));
  CHECK(max_abs_diff(out.value(), reference.value()) < 1e-14);
  CHECK(a.next_u64() == b.next_u64());
}

TEST_CASE("attention_weights and attend_values: heads of [B, H, T, d] tensors (the KV cache's layout)") {
  const Array qa = random_array({2, 3, 4, 2}, 31), ka = random_array({2, 3, 6, 2}, 32), va = random_array({2, 3, 6, 2}, 33);
  const Array upstream = random_array({2, 4, 6}, 34);
  Variable q1 = leaf(qa), k1 = leaf(ka), v1 = leaf(va);
  Rng r1(3);
  const Variable w1 = attention_weights(head_view(q1), head_view(k1), causal_allowed(4, 6, 2), real(0.9));
  const Variable o1 = attend_values(w1, head_view(v1), real(0.3), true, r1);
  sum(o1 * Variable(upstream)).backward();
  Variable q2 = leaf(qa), k2 = leaf(ka), v2 = leaf(va);
  Rng r2(3);
  const Variable w2 = masked_softmax(matmul(q2, k2, Trans::No, Trans::Yes, real(0.9)), causal_allowed(4, 6, 2));
  const Variable o2 = merge_heads(matmul(dropout(w2, real(0.3), true, r2), v2));
  sum(o2 * Variable(upstream)).backward();
  CHECK(max_abs_diff(o1.value(), o2.value()) < 1e-13);
  CHECK(max_abs_diff(q1.grad(), q2.grad()) < 1e-13);
  CHECK(max_abs_diff(k1.grad(), k2.grad()) < 1e-13);
  CHECK(max_abs_diff(v1.grad(), v2.grad()) < 1e-13);
}

TEST_CASE("attention_weights and attend_values: float64 gradcheck, through the weights too") {
  BoolArray mask = random_mask({2, 1, 4, 4}, 41);
  for (std::size_t i = 0; i < 4; ++i) mask(0, 0, i, 0) = true;  // every row allows a key
  for (std::size_t i = 0; i < 4; ++i) mask(1, 0, i, 0) = true;
  // Self-attention over one rows tensor (q, k and v columns of it), 4 query heads on 2 key/value
  // heads, dropout with a fixed stream so that every evaluation draws the same mask; the loss
  // reads the weights as well, as an attention-entropy penalty would.
  QKV_CHECK_GRADIENTS(
      [&](const std::vector<Variable>& in) {
        const HeadView q = head_view_of_rows(in[0], 4, 0, 8), k = head_view_of_rows(in[0], 2, 8, 4),
                       v = head_view_of_rows(in[0], 2, 12, 4);
        const Variable weights = attention_weights(q, k, mask, real(0.7));
        Rng rng(9);
        return sum(attend_values(weights, v, real(0.25), true, rng) * Variable(random_array({2, 4, 8}, 42))) +
               sum(weights * weights);
      },
      {Variable(random_array({2, 4, 16}, 43))});
  // Cross-attention with the cache's layout for keys and values.
  QKV_CHECK_GRADIENTS(
      [&](const std::vector<Variable>& in) {
        const Variable weights = attention_weights(head_view_of_rows(in[0], 2, 0, 6), head_view(in[1]), std::nullopt, 1);
        Rng rng(9);
        return attend_values(weights, head_view(in[2]), 0, false, rng);
      },
      {Variable(random_array({2, 3, 6}, 44)), Variable(random_array({2, 2, 5, 3}, 45)),
       Variable(random_array({2, 2, 5, 3}, 46))});
}

TEST_CASE("attention_weights and attend_values: bad inputs name the op and the shapes") {
  const Variable rows(zeros({2, 3, 12})), cache(zeros({2, 2, 5, 3}));
  const HeadView q = head_view_of_rows(rows, 2, 0, 6);
  CHECK_THROWS_WITH_AS(head_view_of_rows(rows, 5, 0, 12), doctest::Contains("head_view_of_rows: needs [B, T, C]"), ShapeError);
  CHECK_THROWS_WITH_AS(head_view(rows), "head_view: needs [B, H, T, d], got [2, 3, 12]", ShapeError);
  CHECK_THROWS_WITH_AS(attention_weights(q, head_view_of_rows(rows, 2, 0, 4), std::nullopt, 1),
                       "attention_weights: q and k must have the same (positive) head size, got q [2, 3, 12] read as 2 "
                       "heads of 3 at 3 steps, k [2, 3, 12] read as 2 heads of 2 at 3 steps",
                       ShapeError);
  CHECK_THROWS_WITH_AS(attention_weights(head_view_of_rows(rows, 3, 0, 9), head_view(cache), std::nullopt, 1),
                       doctest::Contains("the key heads must divide the query heads"), ShapeError);
  CHECK_THROWS_WITH_AS(attention_weights(q, head_view(cache), BoolArray::from_shape({3, 4}), 1),
                       doctest::Contains("allowed mask [3, 4] does not broadcast to the weights [2, 2, 3, 5]"), ShapeError);
  HeadView past_the_end = q;
  past_the_end.at.offset = 7;
  CHECK_THROWS_WITH_AS(attention_weights(past_the_end, q, std::nullopt, 1),
                       doctest::Contains("attention_weights: q [2, 3, 12] read as 2 heads of 3 at 3 steps reaches float 72 "
                                         "of a tensor of 72"),
                       ShapeError);
  const Variable weights = attention_weights(q, head_view(cache), std::nullopt, 1);  // [2, 2, 3, 5]
  Rng rng(1);
  CHECK_THROWS_WITH_AS(attend_values(weights, head_view_of_rows(rows, 2, 6, 6), 0, false, rng),
                       doctest::Contains("attend_values: needs weights [B, H, Tq, Tk] and values of the same B with Tk steps"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(attend_values(weights, head_view(cache), real(1.5), true, rng),
                       doctest::Contains("attend_values"), Error);
}

TEST_CASE("MultiheadAttention reads heads in place unless something observes or sits in between") {
  // Two layers from one seed, in training with dropout and a causal mask: one reads the heads in
  // place, the other splits them (a hook on "scores" forces that route): the same output,
  // weights, gradients and dropout draws.
  for (const std::size_t kv_heads : {std::size_t{0}, std::size_t{1}}) {
    CAPTURE(kv_heads);
    const Array xa = random_array({2, 5, 8}, 51), ma = random_array({2, 3, 8}, 52);
    const auto run = [&](bool observed) {
      Rng rng(3);
      MultiheadAttention layer(8, 4, rng, {.dropout = real(0.2), .num_kv_heads = kv_heads});
      randomise_biases(layer, 53);
      layer.train();
      bool fired = false;
      if (observed) layer.add_hook("scores", [&](Variable&, const HookCall&) { fired = true; });
      Variable x = leaf(xa), memory = leaf(ma);
      const MultiheadAttentionOutput self = layer.forward(x, AttentionMask{.causal = true});
      const MultiheadAttentionOutput cross = layer.forward(x, memory, memory);
      sum(self.output * self.output + cross.output).backward();
      CHECK(fired == observed);
      std::vector<Array> arrays{self.output.value(), self.weights.value(), cross.weights.value(), x.grad(),
                                memory.grad()};
      for (auto& [name, p] : layer.named_parameters()) arrays.push_back(p.grad());
      return arrays;
    };
    const auto in_place = run(false), split = run(true);
    REQUIRE(in_place.size() == split.size());
    for (std::size_t i = 0; i < in_place.size(); ++i) {
      CAPTURE(i);
      CHECK(max_abs_diff(in_place[i], split[i]) < 1e-13);
    }
  }
}

TEST_CASE("MultiheadAttention: the KV cache and the projected memory read in place give the full forward's values") {
  Rng rng(4);
  MultiheadAttention layer(8, 2, rng);
  randomise_biases(layer, 61);
  const NoGradGuard no_grad;
  const Array xa = random_array({2, 4, 8}, 62), ma = random_array({2, 3, 8}, 63);
  const MultiheadAttentionOutput full = layer.forward(Variable(xa), AttentionMask{.causal = true});
  KVCache cache;
  for (std::size_t t = 0; t < 4; ++t) {
    const Variable step(Array(xt::view(xa, xt::all(), xt::range(t, t + 1), xt::all())));
    const MultiheadAttentionOutput stepped = layer.forward(step, AttentionMask{.causal = true}, &cache);
    const Array expected = xt::view(full.output.value(), xt::all(), xt::range(t, t + 1), xt::all());
    CHECK(max_abs_diff(stepped.output.value(), expected) < 1e-13);
  }
  const KVCache memory = layer.project_memory(Variable(ma));
  const MultiheadAttentionOutput a = layer.attend_to_memory(Variable(xa), memory);
  const MultiheadAttentionOutput b = layer.forward(Variable(xa), Variable(ma), Variable(ma));
  CHECK(max_abs_diff(a.output.value(), b.output.value()) < 1e-13);
  CHECK(max_abs_diff(a.weights.value(), b.weights.value()) < 1e-13);
}
