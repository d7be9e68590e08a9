// Thread count and results, in the float32 build that training uses: a training step of each
// example model gives the same loss and the same parameters, bit for bit, on 1 and 2 threads
// (qkv's kernels and gemm splits never change the order of a sum; dropout masks are hashed
// from the element index).
#include <map>

#include "autograd/ops.hpp"
#include "lib/numerics/parallel.hpp"
#include "models/registry.hpp"
#include "optim/adam.hpp"
#include "optim/clip.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

struct StepsResult {
  std::vector<real> losses;
  std::map<std::string, Array> parameters;
};

IndexArray random_tokens(std::size_t rows, std::size_t columns, std::size_t vocab, Rng& rng) {
  IndexArray tokens = IndexArray::from_shape({rows, columns});
  for (auto& token : tokens) token = 4 + static_cast<std::int64_t>(rng.next_u64() % (vocab - 4));
  return tokens;
}

/// Three Adam steps (with dropout where the model has it) on `threads` threads.
StepsResult train_steps(const std::string& kind, const nlohmann::json& config, std::size_t vocab, std::size_t batch,
                        std::size_t length, int threads) {
  parallel::set_num_threads(threads);
  const auto model = models::make_model(kind, config, vocab, vocab);
  model->train();
  Adam optimizer(model->named_parameters(), {.lr = 1e-3, .betas = {0.9, 0.98}, .eps = 1e-9});
  Rng rng(11);
  const IndexArray source = random_tokens(batch, length, vocab, rng);
  IndexArray source_lengths = IndexArray::from_shape({batch});
  for (std::size_t b = 0; b < batch; ++b) source_lengths(b) = static_cast<std::int64_t>(length - b % 3);  // padding too
  StepsResult result;
  for (int step = 0; step < 3; ++step) {
    const IndexArray target_output = random_tokens(batch, length, vocab, rng);
    IndexArray target_input = IndexArray::from_shape({batch, length});
    for (std::size_t b = 0; b < batch; ++b) {
      target_input(b, 0) = 1;
      for (std::size_t t = 1; t < length; ++t) target_input(b, t) = target_output(b, t - 1);
    }
    Variable loss = cross_entropy(model->forward(source, source_lengths, target_input).logits, target_output,
                                  {.ignore_index = 0});
    optimizer.zero_grad();
    loss.backward();
    clip_grad_norm(optimizer.parameters(), 1.0);
    optimizer.step();
    result.losses.push_back(loss.value()());
  }
  for (const auto& [name, parameter] : model->named_parameters()) result.parameters[name] = parameter.value();
  parallel::set_num_threads(1);
  return result;
}

void check_identical(const StepsResult& a, const StepsResult& b) {
  CHECK(a.losses == b.losses);
  REQUIRE(a.parameters.size() == b.parameters.size());
  for (const auto& entry : a.parameters) {
    const auto& name = entry.first;
    const auto& value = entry.second;
    CAPTURE(name);
    CHECK(max_abs_diff(value, b.parameters.at(name)) == 0);
  }
}

}  // namespace

TEST_CASE("float32: transformer training steps are bit-identical on 1 and 2 threads") {
  // Large enough that the gemms are split and the kernels run in chunks (batch 32 × 24 tokens
  // × d_model 64 is 49,152 elements per activation).
  const nlohmann::json config = {{"d_model", 64},       {"num_heads", 4},    {"encoder_layers", 1},
                                 {"decoder_layers", 1}, {"dim_feedforward", 256}, {"dropout", 0.1},
                                 {"seed", 5}};
  const StepsResult one = train_steps("transformer", config, 64, 32, 24, 1);
  const StepsResult two = train_steps("transformer", config, 64, 32, 24, 2);
  CHECK(one.losses.front() > 3.0);  // ln 64 ≈ 4.16 at the start: a real loss, not a constant
  check_identical(one, two);
  check_identical(two, train_steps("transformer", config, 64, 32, 24, 2));  // and reproducible
}

TEST_CASE("float32: Bahdanau training steps are bit-identical on 1 and 2 threads") {
  const nlohmann::json config = {{"embed_size", 32}, {"hidden_size", 64}, {"attention_size", 64},
                                 {"dropout", 0.1},   {"seed", 5}};
  const StepsResult one = train_steps("bahdanau", config, 64, 48, 16, 1);
  const StepsResult two = train_steps("bahdanau", config, 64, 48, 16, 2);
  CHECK(one.losses.front() > 3.0);
  check_identical(one, two);
}
