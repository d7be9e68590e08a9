// μP for Adam (Yang et al. 2022, microsoft/mup): the optimizers' parameter groups (a group's
// multiplier s is the optimizer at lr·s on those parameters, bit for bit; saved, checked on
// load; bad groups named), and the transformer's mup_base_d_model (its groups, its
// initialisation and readout, equal to the standard model at m = 1, gradcheck at m = 2, and a
// checkpointed run that resumes bit for bit).
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <unistd.h>

#include "lib/numerics/safetensors.hpp"
#include "lib/text/tasks.hpp"
#include "models/registry.hpp"
#include "models/transformer/transformer.hpp"
#include "optim/adam.hpp"
#include "optim/sgd.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"
#include "support/training.hpp"

using namespace qkv;
using namespace qkv::models;
using namespace qkv::test;
namespace fs = std::filesystem;

namespace {

const std::map<std::string, Array> kInitial = {{"hidden.w", random_array({3, 4}, 1)}, {"norm.b", random_array({4}, 2)}};

std::vector<NamedVariable> copy_of(const std::map<std::string, Array>& values) {
  std::vector<NamedVariable> parameters;
  for (const auto& [name, value] : values) parameters.emplace_back(name, Variable(value, true));
  return parameters;
}

Array gradient_of(const std::string& name, int step) {
  return random_array(name == "hidden.w" ? Shape{3, 4} : Shape{4}, 100 + 10 * step + (name == "hidden.w"));
}

/// Three steps, the rate changing every step as a schedule would change it.
void run_steps(Optimizer& optimizer, std::vector<NamedVariable>& parameters, double lr) {
  for (int step = 0; step < 3; ++step) {
    for (auto& [name, parameter] : parameters) parameter.grad_buffer() = gradient_of(name, step);
    optimizer.set_learning_rate(lr / (step + 1));
    optimizer.step();
  }
}

struct Kind {
  const char* name;
  std::function<std::unique_ptr<Optimizer>(std::vector<NamedVariable>, double lr, double weight_decay)> make;
};

const Kind kKinds[] = {
    {"Adam", [](auto p, double lr, double wd) { return std::make_unique<Adam>(p, AdamOptions{.lr = lr, .weight_decay = wd}); }},
    {"AdamW",
     [](auto p, double lr, double wd) { return std::make_unique<AdamW>(p, AdamWOptions{.lr = lr, .weight_decay = wd}); }},
    {"SGD",
     [](auto p, double lr, double wd) {
       return std::make_unique<SGD>(p, SGDOptions{.lr = lr, .momentum = 0.9, .weight_decay = wd});
     }},
};

const IndexArray kTarget = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 4, 3}};  // no <pad>: see test_model_transformer

TransformerConfig mup_config(std::size_t base) {
  TransformerConfig config = tiny_transformer_config();
  config.encoder_layers = config.decoder_layers = 1;
  config.norm_first = true;
  config.scale = ScoreScale::inverse_dim(8);
  config.mup_base_d_model = base;
  return config;
}

}  // namespace

TEST_CASE("parameter groups: a group's multiplier s is the optimizer at lr·s (and weight_decay·t), bit for bit") {
  const double lr = 0.01, weight_decay = 0.1, s = 0.25, t = 4;
  for (const Kind& kind : kKinds) {
    CAPTURE(kind.name);
    std::vector<NamedVariable> grouped = copy_of(kInitial);
    const auto optimizer = kind.make(grouped, lr, weight_decay);
    optimizer->set_parameter_groups(
        {{.name = "hidden", .parameters = {"hidden.w"}, .lr_multiplier = s, .weight_decay_multiplier = t}});
    CHECK(optimizer->lr_multiplier(0) == s);  // "hidden.w" is first
    CHECK(optimizer->lr_multiplier(1) == 1);
    run_steps(*optimizer, grouped, lr);

    // The same parameters apart, each under its group's rates.
    std::vector<NamedVariable> hidden = copy_of({{"hidden.w", kInitial.at("hidden.w")}});
    std::vector<NamedVariable> rest = copy_of({{"norm.b", kInitial.at("norm.b")}});
    const auto hidden_optimizer = kind.make(hidden, lr * s, weight_decay * t);
    const auto rest_optimizer = kind.make(rest, lr, weight_decay);
    for (int step = 0; step < 3; ++step) {
      hidden[0].second.grad_buffer() = gradient_of("hidden.w", step);
      rest[0].second.grad_buffer() = gradient_of("norm.b", step);
      hidden_optimizer->set_learning_rate(lr / (step + 1) * s);
      rest_optimizer->set_learning_rate(lr / (step + 1));
      hidden_optimizer->step();
      rest_optimizer->step();
    }
    // lr / (step + 1) * s is what the grouped optimizer computes too: the same doubles.
    CHECK(max_abs_diff(grouped[0].second.value(), hidden[0].second.value()) == 0);
    CHECK(max_abs_diff(grouped[1].second.value(), rest[0].second.value()) == 0);
    CHECK(max_abs_diff(grouped[0].second.value(), kInitial.at("hidden.w")) > 0);
  }
}

TEST_CASE("parameter groups: saved with the state, refused on load by an optimizer with other groups") {
  const ParameterGroup hidden{.name = "hidden", .parameters = {"hidden.w"}, .lr_multiplier = 0.5,
                              .weight_decay_multiplier = 2};
  const fs::path dir = fresh_directory("mup", "groups");
  const std::string grouped_file = (dir / "grouped.safetensors").string(), plain_file = (dir / "plain.safetensors").string();

  std::vector<NamedVariable> uninterrupted = copy_of(kInitial);
  Adam reference(uninterrupted, {.lr = 0.01, .weight_decay = 0.1});
  reference.set_parameter_groups({hidden});
  run_steps(reference, uninterrupted, 0.01);
  run_steps(reference, uninterrupted, 0.01);

  std::vector<NamedVariable> first = copy_of(kInitial);
  Adam before(first, {.lr = 0.01, .weight_decay = 0.1});
  before.set_parameter_groups({hidden});
  run_steps(before, first, 0.01);
  before.save(grouped_file);
  CHECK(read_safetensors(grouped_file).metadata.at("parameter_groups") ==
        "hidden.w: lr x 0.5, weight_decay x 2");

  std::map<std::string, Array> values;
  for (const auto& [name, parameter] : first) values[name] = parameter.value();
  std::vector<NamedVariable> resumed = copy_of(values);
  Adam after(resumed, {.lr = 0.01, .weight_decay = 0.1});
  after.set_parameter_groups({hidden});
  after.load(grouped_file);
  run_steps(after, resumed, 0.01);
  for (std::size_t i = 0; i < resumed.size(); ++i)
    CHECK(max_abs_diff(resumed[i].second.value(), uninterrupted[i].second.value()) == 0);

  // Loaded without the groups, or with others, the rates would change silently: refused.
  std::vector<NamedVariable> other = copy_of(values);
  Adam plain(other, {.lr = 0.01, .weight_decay = 0.1});
  CHECK_THROWS_WITH_AS(plain.load(grouped_file),
                       doctest::Contains("Adam: load: the state was saved with parameter groups [hidden.w: lr x 0.5, "
                                         "weight_decay x 2] but this optimizer has []"),
                       Error);
  CHECK(plain.step_count() == 0);
  plain.save(plain_file);  // no groups: no record, as every file written before groups
  CHECK(read_safetensors(plain_file).metadata.count("parameter_groups") == 0);
  Adam grouped(other, {.lr = 0.01, .weight_decay = 0.1});
  grouped.set_parameter_groups({hidden});
  CHECK_THROWS_WITH_AS(grouped.load(plain_file), doctest::Contains("saved with parameter groups [] but"), Error);
  // Multipliers of 1 are no groups as far as the update is concerned.
  Adam ones(other, {.lr = 0.01, .weight_decay = 0.1});
  ones.set_parameter_groups({{.name = "ones", .parameters = {"hidden.w"}}});
  ones.load(plain_file);
  fs::remove_all(dir);
}

TEST_CASE("parameter groups: bad groups are named with the option, and change nothing") {
  std::vector<NamedVariable> parameters = copy_of(kInitial);
  Adam adam(parameters);
  adam.set_parameter_groups({{.name = "kept", .parameters = {"norm.b"}, .lr_multiplier = 3}});
  const auto group = [](double lr, double decay, std::vector<std::string> names = {"hidden.w"}) {
    return ParameterGroup{.name = "g", .parameters = std::move(names), .lr_multiplier = lr, .weight_decay_multiplier = decay};
  };
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(0, 1)}),
                       "Adam: set_parameter_groups: group 'g': lr_multiplier must be > 0 and finite, got 0", Error);
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(-0.5, 1)}),
                       "Adam: set_parameter_groups: group 'g': lr_multiplier must be > 0 and finite, got -0.5", Error);
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(nan, 1)}),
                       "Adam: set_parameter_groups: group 'g': lr_multiplier must be > 0 and finite, got nan", Error);
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(inf, 1)}),
                       "Adam: set_parameter_groups: group 'g': lr_multiplier must be > 0 and finite, got inf", Error);
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(1, nan)}),
                       "Adam: set_parameter_groups: group 'g': weight_decay_multiplier must be > 0 and finite, got nan",
                       Error);
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(1, 1, {"hidden.v"})}),
                       "Adam: set_parameter_groups: group 'g': no parameter named 'hidden.v'", Error);
  ParameterGroup second = group(2, 1);
  second.name = "h";
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(1, 1), second}),
                       "Adam: set_parameter_groups: parameter 'hidden.w' is in two groups, 'g' and 'h'", Error);
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({group(1, 1), group(2, 1, {"norm.b"})}),
                       "Adam: set_parameter_groups: parameter group name 'g' appears twice", Error);
  ParameterGroup unnamed = group(1, 1);
  unnamed.name.clear();
  CHECK_THROWS_WITH_AS(adam.set_parameter_groups({unnamed}),
                       "Adam: set_parameter_groups: a parameter group has an empty name", Error);
  // Every refusal left the groups as they were.
  CHECK(adam.lr_multiplier(1) == 3);
  CHECK(adam.lr_multiplier(0) == 1);
  REQUIRE(adam.parameter_groups().size() == 1);
  CHECK(adam.parameter_groups()[0].name == "kept");
}

TEST_CASE("mup: the groups are the weights with two width dimensions, the rest keeps the rate") {
  TransformerConfig config = mup_config(4);  // d_model 8: m = 2
  config.num_kv_heads = 1;                    // the key/value projection narrower than the queries'
  config.memory_slots = 2;                    // [heads, slots, d_head]: one width dimension
  config.qk_norm = true;                      // per-head LayerNorm gains [d_head]
  const TransformerModel model(config);
  CHECK(model.width_multiplier() == 2);
  const std::vector<ParameterGroup> groups = model.parameter_groups();
  REQUIRE(groups.size() == 1);
  CHECK(groups[0].name == "mup hidden");
  CHECK(groups[0].lr_multiplier == 0.5);
  CHECK(groups[0].weight_decay_multiplier == 2);
  const std::set<std::string> hidden(groups[0].parameters.begin(), groups[0].parameters.end());
  std::size_t expected = 0;
  for (const auto& named : model.named_parameters()) {
    const std::string& name = named.first;
    CAPTURE(name);
    // By name: the attention projections and the feed-forward weights, nothing else.
    const bool matrix = name.ends_with("proj_weight") || name.ends_with("out_proj.weight") ||
                        name.ends_with("linear1.weight") || name.ends_with("linear2.weight");
    CHECK(hidden.count(name) == (matrix ? 1u : 0u));
    expected += matrix ? 1 : 0;
  }
  CHECK(hidden.size() == expected);
  // Encoder: queries, keys/values, out_proj, 2 feed-forward; decoder: that twice (self and cross) but one feed-forward.
  CHECK(expected == 5 + 8);
  CHECK(hidden.count("output.weight") == 0);  // the readout is vector-like (MuAdam keeps its rate)
  CHECK(hidden.count("source_embedding.weight") == 0);
  CHECK(TransformerModel(tiny_transformer_config()).parameter_groups().empty());
}

TEST_CASE("mup: at m = 1 the model is the standard one, bit for bit") {
  TransformerConfig standard = mup_config(0);
  TransformerConfig mup = mup_config(standard.d_model);
  TransformerModel a(standard), b(mup);
  randomise_biases(a, 100, 0.3), randomise_biases(b, 100, 0.3);
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(max_abs_diff(pa[i].second.value(), pb[i].second.value()) == 0);
  CHECK(max_abs_diff(a.forward(kTinySource, kTinySourceLengths, kTarget).logits.value(),
                     b.forward(kTinySource, kTinySourceLengths, kTarget).logits.value()) == 0);
  REQUIRE(b.parameter_groups().size() == 1);
  CHECK(b.parameter_groups()[0].lr_multiplier == 1);
}

TEST_CASE("mup: the forward pass is the standard one with the embeddings and the readout rescaled") {
  // μP at m = 2 against the standard model holding the same weights but embeddings · 1/√2
  // (its multiplier is √d_model, μP's √base) and a readout weight · 1/2 (μP divides its input
  // by m): the same function.
  TransformerModel mup(mup_config(4));
  randomise_biases(mup, 100, 0.3);
  TransformerModel standard(mup_config(0));
  std::map<std::string, Array> state = mup.state_dict();
  for (const char* name : {"source_embedding.weight", "target_embedding.weight"}) state[name] *= 1 / std::sqrt(2.0);
  state["output.weight"] *= 0.5;
  standard.load_state_dict(state);
  CHECK(max_abs_diff(mup.forward(kTinySource, kTinySourceLengths, kTarget).logits.value(),
                     standard.forward(kTinySource, kTinySourceLengths, kTarget).logits.value()) < 1e-12);
}

TEST_CASE("mup: initialisation — biases and readout of width-independent size, embeddings N(0, 1/base)") {
  TransformerConfig config = mup_config(2);
  config.d_model = 32, config.dim_feedforward = 48;  // m = 16
  const TransformerModel model(config);
  const auto largest = [&](const std::string& name) {
    double worst = 0;
    for (const auto& [n, p] : model.named_parameters())
      if (n == name)
        for (const real v : p.value()) worst = std::max(worst, std::abs(double(v)));
    return worst;
  };
  // U(±1/√2) where the standard initialisation draws U(±1/√32) (readout, linear1) or U(±1/√48) (linear2).
  for (const char* name : {"output.weight", "output.bias", "encoder.layers.0.linear1.bias", "encoder.layers.0.linear2.bias"}) {
    CAPTURE(name);
    CHECK(largest(name) <= 1 / std::sqrt(2.0) + 1e-12);
    CHECK(largest(name) > 0.5 / std::sqrt(2.0));
  }
  // Hidden weights keep variance ∝ 1/fan_in: U(±1/√32).
  CHECK(largest("encoder.layers.0.linear1.weight") <= 1 / std::sqrt(32.0) + 1e-12);
  double square = 0;
  std::size_t count = 0;
  for (const auto& [n, p] : model.named_parameters())
    if (n == "source_embedding.weight")
      for (std::size_t i = config.d_model; i < p.numel(); ++i, ++count) square += double(p.value().data()[i]) * double(p.value().data()[i]);
  CHECK(std::sqrt(square / double(count)) == doctest::Approx(1 / std::sqrt(2.0)).epsilon(0.15));
}

TEST_CASE("mup: gradcheck of every parameter at m = 2") {
  for (const bool zero_queries : {false, true}) {
    CAPTURE(zero_queries);
    TransformerConfig config = mup_config(4);
    config.zero_query_init = zero_queries;
    TransformerModel model(config);
    randomise_biases(model, 100, 0.3);
    GradcheckOptions options;
    options.fast_mode = true;  // one random direction per tensor
    const GradcheckResult result = gradcheck(
        [&](const auto&) { return model.forward(kTinySource, kTinySourceLengths, kTarget).logits; }, {},
        model.named_parameters(), options);
    INFO(result.report());
    CHECK(result.passed);
  }
}

TEST_CASE("mup: the config.json key, and old configs load without it") {
  const TransformerConfig config = mup_config(4);
  const nlohmann::json json = config;
  CHECK(json.at("mup_base_d_model") == 4);
  CHECK(json.get<TransformerConfig>().mup_base_d_model == 4);
  nlohmann::json old = json;
  old.erase("mup_base_d_model");  // a config.json from before the option
  CHECK(old.get<TransformerConfig>().mup_base_d_model == 0);
  old["mup_base_d_model"] = -2;
  CHECK_THROWS_WITH_AS(old.get<TransformerConfig>(), doctest::Contains("mup_base_d_model"), Error);
}

TEST_CASE("mup: the Trainer uses the model's groups, and a checkpointed run resumes bit for bit") {
  const Dataset data = reverse_task({.train_size = 48, .validation_size = 8, .test_size = 8, .seed = 3,
                                     .min_length = 3, .max_length = 5});
  const Vocabs vocabs = build_vocabs(data.train);
  const nlohmann::json config = {{"d_model", 16},      {"num_heads", 2},      {"encoder_layers", 1},
                                 {"decoder_layers", 1}, {"dim_feedforward", 32}, {"dropout", 0.0},
                                 {"norm_first", true},  {"mup_base_d_model", 8}, {"seed", 5}};
  const auto model = [&] { return make_model("transformer", config, vocabs.source.size(), vocabs.target.size()); };
  train::TrainOptions options;
  options.epochs = 2, options.batch_size = 16, options.lr = 1e-2, options.seed = 11;
  const fs::path straight_dir = fresh_directory("mup", "straight"), resumed_dir = fresh_directory("mup", "resumed");
  std::vector<double> straight, resumed;
  struct Losses : train::TrainerCallback {
    std::vector<double>* losses;
    explicit Losses(std::vector<double>* l) : losses(l) {}
    void on_step_end(train::Trainer&, const train::StepInfo& info) override { losses->push_back(info.loss); }
  };
  {
    train::Trainer trainer = checkpointed_trainer(model(), vocabs, data, options, straight_dir.string());
    const Optimizer& optimizer = trainer.optimizer();
    std::size_t halved = 0;
    for (std::size_t i = 0; i < optimizer.parameters().size(); ++i) halved += optimizer.lr_multiplier(i) == 0.5 ? 1 : 0;
    // Encoder: in_proj, out_proj, 2 feed-forward; decoder: 2 attentions' in_proj and out_proj, 2 feed-forward.
    CHECK(halved == 4 + 6);
    trainer.add_callback(std::make_shared<Losses>(&straight));
    trainer.train();
  }
  {
    train::TrainOptions first = options;
    first.epochs = 1;
    train::Trainer trainer = checkpointed_trainer(model(), vocabs, data, first, resumed_dir.string());
    trainer.add_callback(std::make_shared<Losses>(&resumed));
    trainer.train();
  }
  CHECK(read_safetensors((resumed_dir / "optimizer.safetensors").string()).metadata.count("parameter_groups") ==
        1);
  {
    train::Trainer trainer = resumed_trainer(train::load_checkpoint(resumed_dir.string()), data, options);
    trainer.add_callback(std::make_shared<Losses>(&resumed));
    trainer.train();
  }
  REQUIRE(straight.size() == 6);  // 48 pairs / 16, two epochs
  REQUIRE(resumed.size() == straight.size());
  for (std::size_t i = 0; i < straight.size(); ++i) CHECK_MESSAGE(resumed[i] == straight[i], "step " << i + 1);
  fs::remove_all(straight_dir.parent_path());
}
