// The smallest real training run: a two-layer network learns XOR.
//
//   qkv-xor [--steps 500] [--hidden 8] [--lr 0.05] [--seed 0]
//
// It prints the loss falling, then the network's answer for each of the four inputs, and
// exits with status 1 if any answer is wrong — so the test suite runs it as a check too.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cmath>

#include "autograd/ops.hpp"
#include "lib/numerics/rng.hpp"
#include "lib/numerics/shape.hpp"
#include "optim/adam.hpp"

namespace {

using qkv::Array;
using qkv::Variable;

/// PyTorch's default Linear initialisation: U(-1/√in, 1/√in) for weight and bias.
Variable uniform_parameter(const qkv::Shape& shape, std::size_t fan_in, qkv::Rng& rng) {
  const qkv::real bound = qkv::real(1) / std::sqrt(qkv::real(fan_in));
  return Variable(qkv::uniform(shape, -bound, bound, rng), true);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qkv-xor: a two-layer network learns XOR"};
  int steps = 500;
  std::size_t hidden = 8;
  double learning_rate = 0.05;
  std::uint64_t seed = 0;
  app.add_option("--steps", steps, "training steps")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden, "hidden units")->check(CLI::PositiveNumber);
  app.add_option("--lr", learning_rate, "Adam learning rate")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "initialisation seed");
  CLI11_PARSE(app, argc, argv);

  qkv::Rng rng(seed);
  const Variable inputs(Array{{0, 0}, {0, 1}, {1, 0}, {1, 1}});  // [4, 2]
  qkv::IndexArray labels{0, 1, 1, 0};                            // [4]

  // Two layers: [4, 2] -> tanh([4, hidden]) -> logits [4, 2].
  Variable w1 = uniform_parameter({hidden, 2}, 2, rng), b1 = uniform_parameter({hidden}, 2, rng);
  Variable w2 = uniform_parameter({2, hidden}, hidden, rng), b2 = uniform_parameter({2}, hidden, rng);
  qkv::Adam optimizer({{"w1", w1}, {"b1", b1}, {"w2", w2}, {"b2", b2}}, {.lr = learning_rate});
  auto forward = [&] { return qkv::linear(qkv::tanh(qkv::linear(inputs, w1, b1)), w2, b2); };

  spdlog::info("training a 2-{}-2 network on XOR for {} steps (Adam, lr {})", hidden, steps, learning_rate);
  for (int step = 1; step <= steps; ++step) {
    Variable loss = qkv::cross_entropy(forward(), labels);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (step == 1 || step % (steps / 10 > 0 ? steps / 10 : 1) == 0)
      spdlog::info("step {:>5}  loss {:.6f}", step, loss.item());
  }

  qkv::NoGradGuard no_grad;
  const Array probabilities = qkv::softmax(forward(), -1).value();  // [4, 2]
  int wrong = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    const int answer = probabilities(i, 1) > probabilities(i, 0) ? 1 : 0;
    wrong += answer != labels(i);
    spdlog::info("{} xor {} -> {}  (p = {:.4f}){}", inputs.value()(i, 0), inputs.value()(i, 1), answer,
                 probabilities(i, answer), answer == labels(i) ? "" : "  WRONG");
  }
  spdlog::info("{}/4 correct", 4 - wrong);
  return wrong == 0 ? 0 : 1;
}
