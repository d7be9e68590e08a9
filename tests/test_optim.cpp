// Optimizers, gradient clipping and learning-rate schedules: PyTorch parity over three steps,
// hand-computed steps, state round trips and the errors a misconfigured run gets.
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>

#include "optim/adam.hpp"
#include "optim/clip.hpp"
#include "optim/schedule.hpp"
#include "optim/sgd.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// A fresh leaf per parameter, so every optimizer starts from its own copy.
std::vector<NamedVariable> make_parameters(const std::map<std::string, Array>& values) {
  std::vector<NamedVariable> parameters;
  for (const auto& [name, value] : values) parameters.emplace_back(name, Variable(value, true));
  return parameters;
}

void set_gradient(Variable& parameter, const Array& gradient) { parameter.grad_buffer() = gradient; }

/// A file in the temporary directory, removed when the test ends.
struct TemporaryFile {
  std::filesystem::path path;
  explicit TemporaryFile(const std::string& name) : path(std::filesystem::temp_directory_path() / name) {}
  ~TemporaryFile() { std::filesystem::remove(path); }
};

using OptimizerFactory = std::function<std::unique_ptr<Optimizer>(std::vector<NamedVariable>)>;

/// The configurations of scripts/fixtures/optim_steps.py, by the same names.
std::vector<std::pair<std::string, OptimizerFactory>> fixture_configs() {
  return {
      {"sgd", [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1}); }},
      {"sgd_momentum", [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1, .momentum = 0.9}); }},
      {"sgd_dampening",
       [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.3}); }},
      {"sgd_nesterov",
       [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1, .momentum = 0.9, .nesterov = true}); }},
      {"sgd_weight_decay",
       [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1, .momentum = 0.5, .weight_decay = 0.05}); }},
      {"adam", [](auto p) { return std::make_unique<Adam>(p, AdamOptions{.lr = 0.01}); }},
      {"adam_weight_decay",
       [](auto p) {
         return std::make_unique<Adam>(p, AdamOptions{.lr = 0.01, .betas = {0.8, 0.99}, .eps = 1e-6, .weight_decay = 0.1});
       }},
      {"adamw",
       [](auto p) { return std::make_unique<AdamW>(p, AdamWOptions{.lr = 0.01, .betas = {0.8, 0.99}, .weight_decay = 0.1}); }},
  };
}

}  // namespace

TEST_CASE("optimizers match PyTorch over three steps, a parameter without gradient skipped") {
  const TensorFile fixture = load_fixture("optim_steps");
  const std::vector<std::string> names = {"b", "w"};
  std::map<std::string, Array> initial;
  for (const auto& name : names) initial[name] = fixture.reals.at("init." + name);

  double worst = 0;
  for (const auto& named_config : fixture_configs()) {
    const std::string& config = named_config.first;
    const auto& make_optimizer = named_config.second;
    CAPTURE(config);
    std::vector<NamedVariable> parameters = make_parameters(initial);
    const std::unique_ptr<Optimizer> optimizer = make_optimizer(parameters);
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      for (auto& [name, parameter] : parameters) {
        const auto gradient = fixture.reals.find("grad." + std::to_string(step) + "." + name);
        if (gradient != fixture.reals.end()) set_gradient(parameter, gradient->second);
      }
      optimizer->step();
      for (const auto& named : parameters) {
        const std::string& name = named.first;
        const Variable& parameter = named.second;
        CAPTURE(name);
        const double difference =
            max_abs_diff(parameter.value(), fixture.reals.at(config + ".after." + std::to_string(step) + "." + name));
        worst = std::max(worst, difference);
        CHECK(difference < 1e-10);
      }
    }
    // "b" had no gradient on the first step: it was updated twice, the optimizer stepped three times.
    const auto state = optimizer->state();
    CHECK(state.at("step")() == 3);
    CHECK(state.at("w.step")() == 3);
    CHECK(state.at("b.step")() == 2);
  }
  MESSAGE("worst difference from PyTorch: " << worst);
}

TEST_CASE("SGD with momentum: two steps by hand") {
  std::vector<NamedVariable> parameters = {{"p", Variable(array_of({2}, {1, 2}), true)}};
  Variable p = parameters[0].second;
  SGD optimizer(parameters, {.lr = 0.1, .momentum = 0.9});
  // First update: buffer = g = [0.5, -1]; p = [1, 2] - 0.1 · [0.5, -1] = [0.95, 2.1].
  set_gradient(p, array_of({2}, {0.5, -1}));
  optimizer.step();
  CHECK(max_abs_diff(p.value(), array_of({2}, {0.95, 2.1})) < 1e-15);
  // Second: buffer = 0.9 · [0.5, -1] + [1, 1] = [1.45, 0.1]; p = [0.95 - 0.145, 2.1 - 0.01].
  set_gradient(p, array_of({2}, {1, 1}));
  optimizer.step();
  CHECK(max_abs_diff(optimizer.state().at("p.momentum_buffer"), array_of({2}, {1.45, 0.1})) < 1e-15);
  CHECK(max_abs_diff(p.value(), array_of({2}, {0.805, 2.09})) < 1e-15);
}

TEST_CASE("SGD with Nesterov momentum and weight decay: one step by hand") {
  std::vector<NamedVariable> parameters = {{"p", Variable(array_of({2}, {2, -1}), true)}};
  Variable p = parameters[0].second;
  SGD optimizer(parameters, {.lr = 0.5, .momentum = 0.5, .weight_decay = 0.1, .nesterov = true});
  // d = g + 0.1 · p = [1.2, 0.9]; buffer = d; Nesterov d = d + 0.5 · buffer = [1.8, 1.35];
  // p = [2, -1] - 0.5 · [1.8, 1.35] = [1.1, -1.675].
  set_gradient(p, array_of({2}, {1, 1}));
  optimizer.step();
  CHECK(max_abs_diff(p.value(), array_of({2}, {1.1, -1.675})) < 1e-15);
}

TEST_CASE("Adam's first step moves each weight by about lr against its gradient's sign") {
  std::vector<NamedVariable> parameters = {{"p", Variable(array_of({3}, {1, -2, 0.5}), true)}};
  Variable p = parameters[0].second;
  Adam optimizer(parameters, {.lr = 0.1});
  set_gradient(p, array_of({3}, {0.3, -4, 0}));
  optimizer.step();
  // After bias correction m̂ = g and v̂ = g², so the step is lr · g / (|g| + eps).
  CHECK(max_abs_diff(p.value(), array_of({3}, {1 - 0.1 * 0.3 / (0.3 + 1e-8), -2 + 0.1 * 4 / (4 + 1e-8), 0.5})) < 1e-15);
  // The raw moments are not bias-corrected: m = 0.1 · g, v = 0.001 · g².
  const auto state = optimizer.state();
  CHECK(max_abs_diff(state.at("p.exp_avg"), array_of({3}, {0.03, -0.4, 0})) < 1e-15);
  CHECK(max_abs_diff(state.at("p.exp_avg_sq"), array_of({3}, {0.00009, 0.016, 0})) < 1e-15);
}

TEST_CASE("AdamW decays weights before the Adam step, Adam adds the decay to the gradient") {
  const Array start = array_of({2}, {2, -4});
  const Array gradient = array_of({2}, {1, 0});
  std::vector<NamedVariable> decoupled_parameters = {{"p", Variable(start, true)}};
  std::vector<NamedVariable> l2_parameters = {{"p", Variable(start, true)}};
  AdamW decoupled(decoupled_parameters, {.lr = 0.1, .weight_decay = 0.5});
  Adam l2(l2_parameters, {.lr = 0.1, .weight_decay = 0.5});
  set_gradient(decoupled_parameters[0].second, gradient);
  set_gradient(l2_parameters[0].second, gradient);
  decoupled.step();
  l2.step();
  // AdamW: p · (1 - 0.1 · 0.5) = [1.9, -3.8], then lr · g / (|g| + eps) with g = [1, 0].
  CHECK(max_abs_diff(decoupled_parameters[0].second.value(), array_of({2}, {1.9 - 0.1 / (1 + 1e-8), -3.8})) < 1e-15);
  // Adam: g = [1, 0] + 0.5 · [2, -4] = [2, -2]; the first step is lr · sign(g) (up to eps).
  CHECK(max_abs_diff(l2_parameters[0].second.value(), array_of({2}, {2 - 0.1 * 2 / (2 + 1e-8), -4 + 0.1 * 2 / (2 + 1e-8)})) <
        1e-15);
}

TEST_CASE("default options are PyTorch's") {
  std::vector<NamedVariable> parameters = {{"p", Variable(zeros({1}), true)}};
  const Adam adam(parameters);
  CHECK(adam.learning_rate() == 1e-3);
  CHECK(adam.options().betas == std::pair<double, double>{0.9, 0.999});
  CHECK(adam.options().eps == 1e-8);
  CHECK(adam.options().weight_decay == 0);
  const AdamW adamw(parameters);
  CHECK(adamw.options().weight_decay == 1e-2);
  const SGD sgd(parameters, {.lr = 0.1});
  CHECK(sgd.options().momentum == 0);
  CHECK(sgd.options().dampening == 0);
  CHECK(!sgd.options().nesterov);
}

TEST_CASE("zero_grad zeroes every parameter's gradient") {
  std::vector<NamedVariable> parameters = make_parameters({{"a", zeros({2})}, {"b", zeros({3})}});
  set_gradient(parameters[0].second, array_of({2}, {1, 2}));
  set_gradient(parameters[1].second, array_of({3}, {3, 4, 5}));
  SGD optimizer(parameters, {.lr = 1});
  optimizer.zero_grad();
  CHECK(max_abs_diff(parameters[0].second.grad(), zeros({2})) == 0);
  CHECK(max_abs_diff(parameters[1].second.grad(), zeros({3})) == 0);
}

TEST_CASE("clip_grad_norm: global norm, scaled only above max_norm") {
  // Gradients [3, 4] and [12]: the global norm is sqrt(9 + 16 + 144) = 13.
  auto make = [] {
    std::vector<Variable> parameters = {Variable(zeros({2}), true), Variable(zeros({1}), true),
                                        Variable(zeros({5}), true)};  // the last has no gradient
    set_gradient(parameters[0], array_of({2}, {3, 4}));
    set_gradient(parameters[1], array_of({1}, {12}));
    return parameters;
  };
  SUBCASE("below max_norm: unchanged") {
    std::vector<Variable> parameters = make();
    CHECK(clip_grad_norm(parameters, 26) == doctest::Approx(13).epsilon(1e-15));
    CHECK(max_abs_diff(parameters[0].grad(), array_of({2}, {3, 4})) == 0);
    CHECK(max_abs_diff(parameters[1].grad(), array_of({1}, {12})) == 0);
    CHECK(!parameters[2].has_grad());
  }
  SUBCASE("above max_norm: scaled by max_norm / (norm + 1e-6)") {
    std::vector<Variable> parameters = make();
    CHECK(clip_grad_norm(parameters, 6.5) == doctest::Approx(13).epsilon(1e-15));
    const double scale = 6.5 / (13 + 1e-6);
    CHECK(max_abs_diff(parameters[0].grad(), array_of({2}, {3 * scale, 4 * scale})) < 1e-15);
    CHECK(max_abs_diff(parameters[1].grad(), array_of({1}, {12 * scale})) < 1e-15);
    CHECK(!parameters[2].has_grad());
    // The clipped norm is max_norm (up to the 1e-6 guard).
    CHECK(clip_grad_norm(parameters, 100) == doctest::Approx(6.5).epsilon(1e-6));
  }
  SUBCASE("named parameters") {
    const std::vector<Variable> parameters = make();
    const std::vector<NamedVariable> named = {{"a", parameters[0]}, {"b", parameters[1]}, {"c", parameters[2]}};
    CHECK(clip_grad_norm(named, 1.3) == doctest::Approx(13).epsilon(1e-15));
    CHECK(max_abs_diff(parameters[1].grad(), array_of({1}, {12 * 1.3 / (13 + 1e-6)})) < 1e-15);
  }
}

TEST_CASE("clip_grad_norm leaves non-finite gradients alone and reports the norm") {
  const real nan = std::numeric_limits<real>::quiet_NaN();
  const real inf = std::numeric_limits<real>::infinity();
  std::vector<Variable> parameters = {Variable(zeros({2}), true), Variable(zeros({1}), true)};
  set_gradient(parameters[0], array_of({2}, {3, nan}));
  set_gradient(parameters[1], array_of({1}, {100}));
  CHECK(std::isnan(clip_grad_norm(parameters, 1)));
  CHECK(parameters[1].grad()(0) == 100);  // not scaled by NaN
  CHECK(parameters[0].grad()(0) == 3);
  CHECK_THROWS_WITH_AS(clip_grad_norm(parameters, 1, true),
                       doctest::Contains("clip_grad_norm: the total gradient norm is nan"), Error);
  set_gradient(parameters[0], array_of({2}, {3, inf}));
  CHECK(std::isinf(clip_grad_norm(parameters, 1)));
  CHECK(parameters[1].grad()(0) == 100);
  CHECK_THROWS_WITH_AS(clip_grad_norm(parameters, 0), "clip_grad_norm: max_norm must be > 0, got 0", Error);
}

TEST_CASE("schedules by hand") {
  SUBCASE("constant") {
    const ConstantSchedule schedule(0.3);
    CHECK(schedule.learning_rate(0) == 0.3);
    CHECK(schedule.learning_rate(1000000) == 0.3);
  }
  SUBCASE("step decay") {
    const StepSchedule schedule(1.0, 3, 0.5);
    CHECK(schedule.learning_rate(0) == 1.0);
    CHECK(schedule.learning_rate(2) == 1.0);
    CHECK(schedule.learning_rate(3) == 0.5);
    CHECK(schedule.learning_rate(5) == 0.5);
    CHECK(schedule.learning_rate(6) == 0.25);
    CHECK(schedule.learning_rate(9) == 0.125);
  }
  SUBCASE("cosine from base to minimum") {
    const CosineSchedule schedule(0.1, 10, 0.01);
    CHECK(schedule.learning_rate(0) == doctest::Approx(0.1).epsilon(1e-15));
    CHECK(schedule.learning_rate(5) == doctest::Approx(0.055).epsilon(1e-15));  // halfway: the mean
    CHECK(schedule.learning_rate(10) == 0.01);
    CHECK(schedule.learning_rate(25) == 0.01);  // stays at the minimum
    // (1 + cos(π/5)) / 2 = 0.904508497187474
    CHECK(schedule.learning_rate(2) == doctest::Approx(0.01 + 0.09 * 0.904508497187474).epsilon(1e-14));
  }
  SUBCASE("Noam: linear warm-up to base_lr, then inverse square root") {
    const NoamSchedule schedule(1e-3, 4);
    CHECK(schedule.learning_rate(0) == doctest::Approx(2.5e-4).epsilon(1e-15));  // update 1 of 4
    CHECK(schedule.learning_rate(1) == doctest::Approx(5e-4).epsilon(1e-15));
    CHECK(schedule.learning_rate(3) == doctest::Approx(1e-3).epsilon(1e-15));  // the peak, update 4
    CHECK(schedule.learning_rate(15) == doctest::Approx(5e-4).epsilon(1e-15));   // 1e-3 · sqrt(4 / 16)
    CHECK(schedule.learning_rate(399) == doctest::Approx(1e-4).epsilon(1e-15));  // 1e-3 · sqrt(4 / 400)
    // The documented formula: base · sqrt(w) · min(s^-0.5, s · w^-1.5), peak exactly base.
    double peak = 0;
    for (std::int64_t step = 0; step < 100; ++step) {
      const double s = static_cast<double>(step + 1);
      CHECK(schedule.learning_rate(step) ==
            doctest::Approx(1e-3 * std::sqrt(4.0) * std::min(std::pow(s, -0.5), s * std::pow(4.0, -1.5))).epsilon(1e-14));
      peak = std::max(peak, schedule.learning_rate(step));
    }
    CHECK(peak == 1e-3);
  }
}

TEST_CASE("apply_schedule sets the rate for the optimizer's next update") {
  std::vector<NamedVariable> parameters = {{"p", Variable(zeros({1}), true)}};
  set_gradient(parameters[0].second, array_of({1}, {1}));
  SGD optimizer(parameters, {.lr = 1});
  const StepSchedule schedule(1.0, 2, 0.1);
  std::vector<double> rates;
  for (int i = 0; i < 5; ++i) {
    rates.push_back(apply_schedule(schedule, optimizer));
    CHECK(optimizer.learning_rate() == rates.back());
    optimizer.step();
  }
  CHECK(rates == std::vector<double>{1.0, 1.0, 0.1, 0.1, std::pow(0.1, 2)});
  // Plain SGD with gradient 1 moves p by minus the sum of the rates.
  CHECK(parameters[0].second.value()(0) == doctest::Approx(-(2.2 + std::pow(0.1, 2))).epsilon(1e-15));
}

TEST_CASE("save, load into a fresh optimizer, and continue exactly as an uninterrupted run") {
  const std::map<std::string, Array> initial = {{"decoder.w", random_array({3, 4}, 1)},
                                                {"decoder.b", random_array({4}, 2)}};
  auto gradient_of = [](const std::string& name, int step) {
    return random_array(name == "decoder.w" ? Shape{3, 4} : Shape{4}, 100 + 10 * step + (name == "decoder.w"));
  };
  const NoamSchedule schedule(0.05, 3);
  // Runs steps [first, last) on `parameters` with `optimizer`, the schedule applied each time.
  auto run = [&](Optimizer& optimizer, std::vector<NamedVariable>& parameters, int first, int last) {
    for (int step = first; step < last; ++step) {
      for (auto& [name, parameter] : parameters) set_gradient(parameter, gradient_of(name, step));
      apply_schedule(schedule, optimizer);
      optimizer.step();
    }
  };
  const std::vector<std::pair<std::string, OptimizerFactory>> configs = {
      {"sgd_dampening", fixture_configs()[2].second},
      {"adam_weight_decay", fixture_configs()[6].second},
      {"adamw", fixture_configs()[7].second},
  };
  for (const auto& named_config : configs) {
    const std::string& config = named_config.first;
    const auto& make_optimizer = named_config.second;
    CAPTURE(config);
    std::vector<NamedVariable> uninterrupted = make_parameters(initial);
    const auto reference = make_optimizer(uninterrupted);
    run(*reference, uninterrupted, 0, 5);

    std::vector<NamedVariable> first_half = make_parameters(initial);
    const auto before = make_optimizer(first_half);
    run(*before, first_half, 0, 2);
    before->set_learning_rate(0.123);  // restored by load: the file records it
    const TemporaryFile file("qkv_test_optim_" + config + ".safetensors");
    before->save(file.path.string());

    std::map<std::string, Array> checkpoint;
    for (const auto& [name, parameter] : first_half) checkpoint[name] = parameter.value();
    std::vector<NamedVariable> resumed = make_parameters(checkpoint);
    const auto after = make_optimizer(resumed);
    after->load(file.path.string());
    CHECK(after->step_count() == 2);
    CHECK(after->learning_rate() == 0.123);
    run(*after, resumed, 2, 5);

    for (std::size_t i = 0; i < resumed.size(); ++i)
      CHECK(max_abs_diff(resumed[i].second.value(), uninterrupted[i].second.value()) == 0);
    const auto expected_state = reference->state();
    const auto resumed_state = after->state();
    REQUIRE(expected_state.size() == resumed_state.size());
    for (const auto& entry : expected_state) {
      const auto& name = entry.first;
      const auto& value = entry.second;
      CAPTURE(name);
      CHECK(max_abs_diff(resumed_state.at(name), value) == 0);
    }
  }
}

TEST_CASE("state names: a global step counter, then per parameter") {
  std::vector<NamedVariable> parameters = make_parameters({{"decoder.w", zeros({2, 3})}, {"decoder.b", zeros({3})}});
  std::vector<std::string> names;
  for (const auto& [name, value] : Adam(parameters).state()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"decoder.b.exp_avg", "decoder.b.exp_avg_sq", "decoder.b.step",
                                          "decoder.w.exp_avg", "decoder.w.exp_avg_sq", "decoder.w.step", "step"});
  names.clear();
  for (const auto& [name, value] : SGD(parameters, {.lr = 1}).state()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"decoder.b.step", "decoder.w.step", "step"});
  CHECK(SGD(parameters, {.lr = 1, .momentum = 0.9}).state().at("decoder.w.momentum_buffer").shape() ==
        std::vector<std::size_t>{2, 3});
}

TEST_CASE("bad configurations name the optimizer and the value") {
  std::vector<NamedVariable> parameters = {{"p", Variable(zeros({1}), true)}};
  CHECK_THROWS_WITH_AS(SGD(parameters, {.lr = -0.1}), "SGD: lr must be >= 0, got -0.1", Error);
  CHECK_THROWS_WITH_AS(SGD(parameters, {}), "SGD: lr must be given (torch.optim.SGD has no default either)", Error);
  CHECK_THROWS_WITH_AS(SGD(parameters, {.lr = 0.1, .nesterov = true}),
                       "SGD: nesterov requires momentum > 0 and dampening = 0, got momentum 0 and dampening 0", Error);
  CHECK_THROWS_WITH_AS(SGD(parameters, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                       doctest::Contains("nesterov requires momentum > 0 and dampening = 0"), Error);
  CHECK_THROWS_WITH_AS(SGD(parameters, {.lr = 0.1, .momentum = -0.5}), "SGD: momentum must be >= 0, got -0.5", Error);
  CHECK_THROWS_WITH_AS(SGD(parameters, {.lr = 0.1, .dampening = 1.5}), "SGD: dampening must be in [0, 1], got 1.5",
                       Error);
  CHECK_THROWS_WITH_AS(Adam(parameters, {.betas = {1.0, 0.999}}), "Adam: beta1 must be in [0, 1), got 1", Error);
  CHECK_THROWS_WITH_AS(Adam(parameters, {.betas = {0.9, -0.1}}), "Adam: beta2 must be in [0, 1), got -0.1", Error);
  CHECK_THROWS_WITH_AS(Adam(parameters, {.lr = std::numeric_limits<double>::quiet_NaN()}),
                       "Adam: lr must be >= 0, got nan", Error);
  CHECK_THROWS_WITH_AS(AdamW(parameters, {.eps = -1e-8}), "AdamW: eps must be >= 0, got -1e-08", Error);
  CHECK_THROWS_WITH_AS(AdamW(parameters, {.weight_decay = -0.01}), "AdamW: weight_decay must be >= 0, got -0.01",
                       Error);
  CHECK_THROWS_WITH_AS(Adam({}), "Adam: got an empty parameter list", Error);
  CHECK_THROWS_WITH_AS(Adam({{"p", Variable(zeros({1}))}, {"p", Variable(zeros({2}))}}),
                       "Adam: parameter name 'p' appears twice", Error);
  CHECK_THROWS_WITH_AS(Adam({{"p", Variable()}}), "Adam: parameter 'p' is an undefined variable", Error);
  Adam adam(parameters);
  CHECK_THROWS_WITH_AS(adam.set_learning_rate(std::numeric_limits<double>::infinity()),
                       "Adam: lr must be >= 0, got inf", Error);
  CHECK(adam.learning_rate() == 1e-3);

  CHECK_THROWS_WITH_AS(StepSchedule(0.1, 0), "StepSchedule: step_size must be >= 1, got 0", Error);
  CHECK_THROWS_WITH_AS(StepSchedule(0.1, 5, 0), "StepSchedule: gamma must be > 0 and finite, got 0", Error);
  CHECK_THROWS_WITH_AS(CosineSchedule(0.1, 10, 0.2), "CosineSchedule: min_lr must be in [0, 0.1], got 0.2", Error);
  CHECK_THROWS_WITH_AS(CosineSchedule(0.1, 0), "CosineSchedule: total_steps must be >= 1, got 0", Error);
  CHECK_THROWS_WITH_AS(NoamSchedule(-1, 10), "NoamSchedule: base_lr must be >= 0, got -1", Error);
  CHECK_THROWS_WITH_AS(NoamSchedule(1e-3, 0), "NoamSchedule: warmup_steps must be >= 1, got 0", Error);
  CHECK_THROWS_WITH_AS(ConstantSchedule(1).learning_rate(-1), "Schedule: step must be >= 0, got -1", Error);
}

TEST_CASE("a state that does not fit is reported whole and changes nothing") {
  std::vector<NamedVariable> parameters = make_parameters({{"decoder.w", zeros({2, 3})}, {"decoder.b", zeros({3})}});
  for (auto& [name, parameter] : parameters) set_gradient(parameter, full(parameter.shape(), 1));
  Adam adam(parameters);
  adam.step();
  const auto before = adam.state();

  // A momentum-SGD state over the same names: every Adam slot is missing, the buffers unexpected.
  SGD sgd(parameters, {.lr = 1, .momentum = 0.9});
  CHECK_THROWS_WITH_AS(adam.load_state(sgd.state()),
                       "Adam: load_state: the state does not fit this optimizer"
                       "\n  missing (4): decoder.b.exp_avg; decoder.b.exp_avg_sq; decoder.w.exp_avg; decoder.w.exp_avg_sq;"
                       "\n  unexpected (2): decoder.b.momentum_buffer; decoder.w.momentum_buffer;",
                       Error);

  auto state = adam.state();
  state["decoder.w.exp_avg"] = zeros({3, 2});
  state["step"] = full({}, 1.5);
  state["decoder.b.step"] = full({}, -1);
  state.erase("decoder.w.step");
  state["encoder.w.exp_avg"] = zeros({2});
  CHECK_THROWS_WITH_AS(adam.load_state(state),
                       "Adam: load_state: the state does not fit this optimizer"
                       "\n  missing (1): decoder.w.step;"
                       "\n  unexpected (1): encoder.w.exp_avg;"
                       "\n  mis-shaped (1): decoder.w.exp_avg (expected [2, 3], got [3, 2]);"
                       "\n  counters that are not whole numbers >= 0 (2): decoder.b.step = -1; step = 1.5;",
                       Error);
  const auto after = adam.state();
  for (const auto& entry : before) {
    const auto& name = entry.first;
    const auto& value = entry.second;
    CAPTURE(name);
    CHECK(max_abs_diff(after.at(name), value) == 0);
  }

  const TemporaryFile file("qkv_test_optim_saved_by_adam.safetensors");
  adam.save(file.path.string());
  AdamW adamw(parameters);
  CHECK_THROWS_WITH_AS(adamw.load(file.path.string()),
                       doctest::Contains("AdamW: load: this state was saved by Adam"), Error);
  SGD plain(parameters, {.lr = 1});
  CHECK_THROWS_WITH_AS(plain.load(file.path.string()), doctest::Contains("SGD: load: this state was saved by Adam"),
                       Error);
}
