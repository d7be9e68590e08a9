// PyTorch parity in the float32 build that training uses: the same fixtures as the float64
// tests (computed by PyTorch in float64), agreement within 1e-4.
#include <map>

#include "layers/linear.hpp"
#include "layers/multihead_attention.hpp"
#include "layers/normalization.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

constexpr double kTolerance = 1e-4;

/// Loads `<key>.<name>` for every parameter of `module` by name.
void load_prefixed(Module& module, const TensorFile& fixture, const std::string& prefix) {
  std::map<std::string, Array> state;
  for (const auto& [name, variable] : module.named_parameters()) state[name] = fixture.reals.at(prefix + name);
  module.load_state_dict(state);
}

/// Output, input gradient and parameter gradients of a one-input layer against `<key>.*`.
template <class Layer>
void check_layer(Layer& layer, const TensorFile& fixture, const std::string& key) {
  load_prefixed(layer, fixture, key + ".");
  Variable x(fixture.reals.at(key + ".input"), true);
  Variable y = layer(x);
  CHECK(max_abs_diff(y.value(), fixture.reals.at(key + ".output")) < kTolerance);
  y.backward(fixture.reals.at(key + ".projection"));
  CHECK(max_abs_diff(x.grad(), fixture.reals.at(key + ".grad.input")) < kTolerance);
  for (const auto& named : layer.named_parameters()) {
    const std::string& name = named.first;
    const Variable& variable = named.second;
    CAPTURE(name);
    CHECK(max_abs_diff(variable.grad(), fixture.reals.at(key + ".grad." + name)) < kTolerance);
  }
}

}  // namespace

TEST_CASE("float32: Linear and LayerNorm match PyTorch within 1e-4") {
  const TensorFile fixture = load_fixture("layers_core");
  Rng rng(1);
  Linear linear_layer(5, 4, rng);
  check_layer(linear_layer, fixture, "linear");
  LayerNorm norm(6);
  check_layer(norm, fixture, "layer_norm");
}

TEST_CASE("float32: MultiheadAttention matches PyTorch within 1e-4 (self, cross, padding, causal)") {
  const TensorFile fixture = load_fixture("mha");
  for (const std::string name : {"self", "cross", "padding", "causal"}) {
    CAPTURE(name);
    Rng mha_rng(0);
    MultiheadAttention mha(8, 2, mha_rng);
    std::map<std::string, Array> state;
    for (const char* parameter : {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"})
      state[parameter] = fixture.reals.at(parameter);
    mha.load_state_dict(state);
    const auto input = [&](const std::string& what) { return Variable(fixture.reals.at(name + "." + what), true); };
    const Variable query = input("query");
    const bool self = fixture.reals.count(name + ".key") == 0;
    const Variable key = self ? query : input("key");
    const Variable value = self ? query : input("value");
    AttentionMask mask;
    if (name == "padding") mask.valid_lens = fixture.integers.at("padding.valid_lens");
    if (name == "causal") mask.causal = true;
    const MultiheadAttentionOutput out = mha.forward(query, key, value, mask);
    CHECK(max_abs_diff(out.output.value(), fixture.reals.at(name + ".output")) < kTolerance);
    CHECK(max_abs_diff(out.weights.value(), fixture.reals.at(name + ".weights")) < kTolerance);
    Variable loss = sum(out.output * Variable(fixture.reals.at(name + ".r_out"))) +
                    sum(out.weights * Variable(fixture.reals.at(name + ".r_weights")));
    loss.backward();
    CHECK(max_abs_diff(query.grad(), fixture.reals.at(name + ".grad.query")) < kTolerance);
    for (const auto& named : mha.named_parameters()) {
      const std::string& parameter = named.first;
      const Variable& variable = named.second;
      CAPTURE(parameter);
      CHECK(max_abs_diff(variable.grad(), fixture.reals.at(name + ".grad." + parameter)) < kTolerance);
    }
  }
}
