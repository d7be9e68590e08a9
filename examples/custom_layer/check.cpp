// Gradient check of the gated attention layer and of its gate op, in float64, with qkv's public
// checker (autograd/gradcheck.hpp). Exits 1 and prints the checker's report on a failure.
#include <cstdio>

#include "autograd/gradcheck.hpp"
#include "autograd/ops.hpp"
#include "gated_attention.hpp"

int main() {
  static_assert(sizeof(qkv::real) == 8, "link qkv::qkv_f64: central differences need float64");
  qkv::Rng rng(7);
  bool passed = true;
  const auto report = [&](const char* what, const qkv::GradcheckResult& result) {
    std::printf("%s: %s (%zu values checked, worst relative error %.2e)\n", what, result ? "passed" : "FAILED",
                result.checked, result.worst.rel_error);
    if (!result) std::printf("%s\n", result.report().c_str());
    passed = passed && result.passed;
  };

  // The op alone: both inputs, logits wide enough to reach σ's flat tails.
  report("sigmoid_gate", qkv::gradcheck([](const auto& in) { return custom::sigmoid_gate(in[0], in[1]); },
                                        {qkv::Variable(qkv::normal({3, 5}, 0, 1, rng)),
                                         qkv::Variable(qkv::normal({3, 5}, 0, 3, rng))}));

  // The layer: the input and every parameter, by name.
  custom::GatedSelfAttention layer(6, rng);
  report("GatedSelfAttention", qkv::gradcheck([&](const auto& in) { return layer.forward(in[0]); },
                                              {qkv::Variable(qkv::normal({2, 4, 6}, 0, 1, rng))},
                                              layer.named_parameters()));
  return passed ? 0 : 1;
}
