// Anomaly detection (set_detect_anomaly / AnomalyModeGuard): the first op whose forward output
// or backward gradient is NaN or ±Inf is named, with its pass and input shapes; off, nothing
// is checked. A Trainer in anomaly mode stops at the bad op and keeps the last good checkpoint.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <unistd.h>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/text/tasks.hpp"
#include "models/registry.hpp"
#include "support/training.hpp"
#include "train/trainer.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {
constexpr real inf = std::numeric_limits<real>::infinity();
}

TEST_CASE("anomaly: off by default, and the guard restores the previous setting") {
  CHECK_FALSE(is_anomaly_enabled());
  const Variable x = leaf(array_of({2}, {-1, 1}));
  CHECK(std::isnan(log(x).value()(0)));  // no check, no throw
  {
    AnomalyModeGuard on;
    CHECK(is_anomaly_enabled());
    {
      AnomalyModeGuard off(false);
      CHECK_FALSE(is_anomaly_enabled());
    }
    CHECK(is_anomaly_enabled());
  }
  CHECK_FALSE(is_anomaly_enabled());
  set_detect_anomaly(true);
  CHECK(is_anomaly_enabled());
  set_detect_anomaly(false);
}

TEST_CASE("anomaly: a log of a negative number is named in the forward pass") {
  AnomalyModeGuard anomaly;
  const Variable x = leaf(array_of({2, 3}, {1, 2, 3, 4, -5, 6}));
  CHECK(exp(x).value()(0) == doctest::Approx(std::exp(1.0)));  // finite: no complaint
  CHECK_THROWS_WITH_AS(log(x - 3),
                       "anomaly detected in the forward pass of 'log': its output [2, 3] holds NaN at flat index 0; "
                       "input shapes: [2, 3]",
                       Error);
  // log(0) is -Inf, which is just as fatal to training.
  CHECK_THROWS_WITH_AS(log(x * 0), doctest::Contains("forward pass of 'log': its output [2, 3] holds -Inf"), Error);
  // Also without any gradient recording: evaluation code is checked too.
  NoGradGuard no_grad;
  CHECK_THROWS_WITH_AS(log(Variable(array_of({1}, {-1}))), doctest::Contains("forward pass of 'log'"), Error);
}

TEST_CASE("anomaly: 0 * Inf names the multiplication, not its inputs") {
  AnomalyModeGuard anomaly;
  // A leaf holding Inf is data, not an op; the first op to make a NaN of it is the product.
  const Variable big = leaf(array_of({3}, {1, inf, 2}));
  const Variable zeros_ = leaf(array_of({2, 1}, {0, 1}));
  CHECK_THROWS_WITH_AS(zeros_ * big,
                       "anomaly detected in the forward pass of 'mul': its output [2, 3] holds NaN at flat index 1; "
                       "input shapes: [2, 1], [3]",
                       Error);
}

TEST_CASE("anomaly: sqrt(0) is finite forward, but its backward divides by zero") {
  const Variable x = leaf(array_of({3}, {4, 0, 1}));
  {
    AnomalyModeGuard anomaly;
    Variable loss = sum(sqrt(x));
    CHECK_THROWS_WITH_AS(loss.backward(),
                         "anomaly detected in the backward pass of 'sqrt': the gradient it produced for input 0 [3] "
                         "holds Inf at flat index 1; input shapes: [3]",
                         Error);
  }
  // Off: the same backward completes and leaves the Inf for the optimizer to spread.
  Variable x2 = leaf(array_of({3}, {4, 0, 1}));
  sum(sqrt(x2)).backward();
  CHECK(std::isinf(x2.grad()(1)));
}

TEST_CASE("anomaly: a custom op whose backward produces NaN is named, with its input") {
  // y = 2 a + b, with a backward that is wrong for b: it sends 0/0 there.
  const auto faulty = [](const Variable& a, const Variable& b) {
    Array value = a.value() * 2 + b.value();  // [2]
    return make_op("faulty_axpy", std::move(value), {a, b},
                   [](const Array& g, const Array&, std::span<Variable> in) {
                     if (in[0].requires_grad()) in[0].add_grad(Array(g * 2));
                     if (in[1].requires_grad()) in[1].add_grad(Array(g * real(0) / real(0)));
                   });
  };
  const Variable a = leaf(array_of({2}, {1, 2})), b = leaf(array_of({2}, {3, 4}));
  AnomalyModeGuard anomaly;
  Variable loss = sum(faulty(a, b) * 3);
  CHECK_THROWS_WITH_AS(loss.backward(),
                       "anomaly detected in the backward pass of 'faulty_axpy': the gradient it produced for input 1 "
                       "[2] holds NaN at flat index 0; input shapes: [2], [2]",
                       Error);
}

TEST_CASE("anomaly: a non-finite seed gradient is reported by backward itself") {
  AnomalyModeGuard anomaly;
  const Variable x = leaf(array_of({2}, {1, 2}));
  Variable y = x * 2;
  CHECK_THROWS_WITH_AS(y.backward(array_of({2}, {1, NAN})), doctest::Contains("backward: anomaly detected"), Error);
}

TEST_CASE("anomaly: a Trainer stops at the op that went bad and keeps the last good checkpoint") {
  using namespace qkv::models;
  using namespace qkv::train;
  namespace fs = std::filesystem;
  const Dataset data = reverse_task(
      {.train_size = 64, .validation_size = 16, .test_size = 16, .seed = 3, .min_length = 3, .max_length = 5});
  const Vocabs vocabs = build_vocabs(data.train);
  const nlohmann::json config = {{"d_model", 8}, {"num_heads", 2}, {"encoder_layers", 1}, {"decoder_layers", 1},
                                 {"dim_feedforward", 16}, {"seed", 1}};
  TrainOptions options;
  options.epochs = 1;
  options.batch_size = 16;
  const fs::path dir = fs::temp_directory_path() / ("qkv_anomaly_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  {
    Trainer trainer = checkpointed_trainer(make_model("transformer", config, vocabs.source.size(), vocabs.target.size()),
                                           vocabs, data, options, dir.string());
    trainer.train();
  }
  Checkpoint checkpoint = load_checkpoint(dir.string());
  const std::int64_t saved_step = checkpoint.progress.step;
  REQUIRE(saved_step == 4);
  // A NaN weight in one feed-forward layer: every token passes through it.
  bool poisoned = false;
  for (auto& [name, parameter] : checkpoint.model->named_parameters())
    if (name == "encoder.layers.0.linear1.weight") parameter.mutable_value()(0, 0) = NAN, poisoned = true;
  REQUIRE(poisoned);
  options.epochs = 2;
  Trainer trainer = resumed_trainer(checkpoint, data, options);
  {
    AnomalyModeGuard anomaly;
    CHECK_THROWS_WITH_AS(trainer.train(), doctest::Contains("anomaly detected in the forward pass of 'linear'"), Error);
  }
  CHECK(load_checkpoint(dir.string()).progress.step == saved_step);
  fs::remove_all(dir);
}
