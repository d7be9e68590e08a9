// In the float32 build that training uses, MultiheadAttention's route that reads heads in place
// (attention_weights, attend_values) gives the bits of the route that splits them
// (autograd/attention_kernels.hpp): the forward always, the gradients too where the scale is a
// power of two (1/√d_k at d_k = 16), and within float32's rounding otherwise (d_k = 32).
#include <cstring>

#include "layers/multihead_attention.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

bool same_bits(const Array& a, const Array& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(real)) == 0;
}

/// Relative difference, max |a - b| / max |b|.
double relative_difference(const Array& a, const Array& b) {
  double largest = 0;
  for (real x : b) largest = std::max(largest, double(std::abs(x)));
  return max_abs_diff(a, b) / std::max(largest, 1e-30);
}

struct Run {
  std::vector<Array> forward, gradients;
};

/// A transformer-tiny-sized layer (E = 64) in training, self-attention with a causal mask and
/// cross-attention over a memory; observed = a hook on "scores", which sends it the split way.
Run run(std::size_t heads, bool observed) {
  Rng rng(7);
  MultiheadAttention layer(64, heads, rng, {.dropout = real(0.1)});
  randomise_biases(layer, 8);
  layer.train();
  if (observed) layer.add_hook("scores", [](Variable&, const HookCall&) {});
  Variable x = leaf(random_array({8, 24, 64}, 9)), memory = leaf(random_array({8, 20, 64}, 10));
  const MultiheadAttentionOutput self = layer.forward(x, AttentionMask{.causal = true});
  const MultiheadAttentionOutput cross = layer.forward(x, memory, memory);
  sum(self.output * Variable(random_array({8, 24, 64}, 11)) + cross.output * cross.output).backward();
  Run r{{self.output.value(), self.weights.value(), cross.output.value(), cross.weights.value()},
        {x.grad(), memory.grad()}};
  for (auto& [name, p] : layer.named_parameters()) r.gradients.push_back(p.grad());
  return r;
}

}  // namespace

TEST_CASE("float32: MultiheadAttention reading heads in place gives the split route's bits") {
  for (const std::size_t heads : {std::size_t{4}, std::size_t{2}}) {
    const bool power_of_two_scale = heads == 4;  // d_k 16: 1/√d_k = 0.25
    CAPTURE(heads);
    const Run in_place = run(heads, false), split = run(heads, true);
    for (std::size_t i = 0; i < in_place.forward.size(); ++i) {
      CAPTURE(i);
      CHECK(same_bits(in_place.forward[i], split.forward[i]));
    }
    for (std::size_t i = 0; i < in_place.gradients.size(); ++i) {
      CAPTURE(i);
      if (power_of_two_scale) CHECK(same_bits(in_place.gradients[i], split.gradients[i]));
      else CHECK(relative_difference(in_place.gradients[i], split.gradients[i]) < 1e-5);
    }
  }
}
