// Decoding (greedy, beam search), the Trainer (resume bit for bit, checkpoints, interruption,
// divergence) and the model registry, on a small attention model defined here so the tests do
// not depend on the example models' hyperparameters.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "autograd/ops.hpp"
#include "layers/embedding.hpp"
#include "layers/linear.hpp"
#include "lib/numerics/error.hpp"
#include "lib/text/tasks.hpp"
#include "models/decoding.hpp"
#include "models/registry.hpp"
#include "support/helpers.hpp"
#include "support/training.hpp"
#include "train/callbacks.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;
using namespace qkv;
using namespace qkv::models;
using namespace qkv::train;
using qkv::test::checkpointed_trainer;
using qkv::test::fresh_directory;
using qkv::test::resumed_trainer;

namespace {

/// Rows of a [N, ...] array, in the given order.
Array take_rows(const Array& a, const std::vector<std::size_t>& rows) {
  Shape shape = shape_of(a);
  const std::size_t row_size = a.size() / shape[0];
  shape[0] = rows.size();
  Array out = Array::from_shape(shape);
  for (std::size_t r = 0; r < rows.size(); ++r)
    std::copy(a.data() + rows[r] * row_size, a.data() + (rows[r] + 1) * row_size, out.data() + r * row_size);
  return out;
}

/// A GRU-free recurrent decoder with dot-product attention over source embeddings:
///   h_t = tanh(W [emb(y_{t-1}); h_{t-1}]),  a_t = softmax(M h_t) over unpadded sources,
///   logits_t = U [h_t; a_t M].
class ToyModel : public Seq2SeqModel {
 public:
  ToyModel(std::size_t source_vocab, std::size_t target_vocab, std::size_t dim, std::uint64_t seed)
      : dim_(dim), seed_(seed) {
    Rng rng(seed);
    source_embedding_ = register_module("source_embedding", std::make_shared<Embedding>(source_vocab, dim, rng));
    target_embedding_ = register_module("target_embedding", std::make_shared<Embedding>(target_vocab, dim, rng));
    cell_ = register_module("cell", std::make_shared<Linear>(2 * dim, dim, rng));
    output_ = register_module("output", std::make_shared<Linear>(2 * dim, target_vocab, rng));
  }

  struct State : DecoderState {
    Variable memory;  // [B, S, D]
    BoolArray padding;  // [B, S]
    Variable hidden;  // [B, D]
    void select_rows(const std::vector<std::size_t>& rows) override {
      memory = Variable(take_rows(memory.value(), rows));
      hidden = Variable(take_rows(hidden.value(), rows));
      BoolArray selected = BoolArray::from_shape({rows.size(), padding.shape()[1]});
      for (std::size_t r = 0; r < rows.size(); ++r)
        for (std::size_t s = 0; s < padding.shape()[1]; ++s) selected(r, s) = padding(rows[r], s);
      padding = selected;
    }
  };

  std::unique_ptr<DecoderState> start_decoding(const IndexArray& source, const IndexArray& lengths) override {
    auto state = std::make_unique<State>();
    state->memory = (*source_embedding_)(source);  // [B, S, D]
    state->padding = BoolArray::from_shape(source.shape());
    for (std::size_t b = 0; b < source.shape()[0]; ++b)
      for (std::size_t s = 0; s < source.shape()[1]; ++s) state->padding(b, s) = std::int64_t(s) >= lengths(b);
    state->hidden = Variable(Array(xt::zeros<real>({source.shape()[0], dim_})));
    return state;
  }

  StepOutput decode_step(DecoderState& base, const IndexArray& previous) override {
    auto& state = dynamic_cast<State&>(base);
    const std::size_t batch = previous.size(), source_len = state.padding.shape()[1];
    const Variable embedded = (*target_embedding_)(previous);  // [B, D]
    state.hidden = tanh((*cell_)(concat({embedded, state.hidden}, -1)));  // [B, D]
    Variable scores = reshape(matmul(state.memory, unsqueeze(state.hidden, 2)), {long(batch), long(source_len)});
    const Variable weights = softmax(masked_fill(scores, state.padding, real(-1e9)), -1);  // [B, S]
    const Variable context = reshape(matmul(unsqueeze(weights, 1), state.memory), {long(batch), long(dim_)});
    return {(*output_)(concat({state.hidden, context}, -1)), {{"attention", weights.value()}}};
  }

  Seq2SeqOutput forward(const IndexArray& source, const IndexArray& lengths, const IndexArray& target_input) override {
    auto state = start_decoding(source, lengths);
    std::vector<Variable> logits;
    std::vector<Variable> attention;
    for (std::size_t t = 0; t < target_input.shape()[1]; ++t) {
      IndexArray column = IndexArray::from_shape({target_input.shape()[0]});  // [B]
      for (std::size_t b = 0; b < column.size(); ++b) column(b) = target_input(b, t);
      StepOutput step = decode_step(*state, column);
      logits.push_back(step.logits);
      attention.push_back(Variable(step.attention[0].second));
    }
    return {stack(logits, 1), {{"attention", stack(attention, 1).value()}}};  // [B, T, V], [B, T, S]
  }

  std::string kind() const override { return "toy"; }
  nlohmann::json config() const override { return {{"dim", dim_}, {"seed", seed_}}; }

 private:
  std::size_t dim_;
  std::uint64_t seed_;
  std::shared_ptr<Embedding> source_embedding_, target_embedding_;
  std::shared_ptr<Linear> cell_, output_;
};

void register_toy() {
  static const bool registered = [] {
    register_model_kind({.name = "toy",
                         .summary = "a test's model",
                         .options = {{.flag = "--dim", .keys = {"/dim"}, .help = "width", .default_value = 8u,
                                      .min = 1, .max = 64}},
                         .make = [](const nlohmann::json& config) -> std::shared_ptr<Seq2SeqModel> {
                           return std::make_shared<ToyModel>(config.at("source_vocab_size").get<std::size_t>(),
                                                             config.at("target_vocab_size").get<std::size_t>(),
                                                             config.at("dim").get<std::size_t>(),
                                                             config.at("seed").get<std::uint64_t>());
                         }});
    return true;
  }();
  (void)registered;
}

/// log P(y | x) by teacher forcing: the sum of log-softmax at each label (y ends in <eos>).
double sequence_log_probability(Seq2SeqModel& model, const IndexArray& source, const IndexArray& lengths,
                                const std::vector<std::int64_t>& labels) {
  IndexArray input = xt::zeros<std::int64_t>(Shape{1, labels.size()});  // [1, T]
  input(0, 0) = Vocab::bos_id;
  for (std::size_t t = 1; t < labels.size(); ++t) input(0, t) = labels[t - 1];
  const NoGradGuard no_grad;
  const Array log_probs = log_softmax(model.forward(source, lengths, input).logits, -1).value();  // [1, T, V]
  double total = 0;
  for (std::size_t t = 0; t < labels.size(); ++t) total += log_probs(0, t, std::size_t(labels[t]));
  return total;
}

Dataset tiny_reverse(std::size_t train = 96) {
  return reverse_task({.train_size = train, .validation_size = 24, .test_size = 24, .seed = 3, .min_length = 3,
                       .max_length = 5});
}

TrainOptions tiny_options() {
  TrainOptions options;
  options.epochs = 2;
  options.batch_size = 16;
  options.lr = 1e-2;
  options.seed = 11;
  options.label_smoothing = 0.1;
  return options;
}

/// The toy model every Trainer test trains (seed 7).
std::shared_ptr<ToyModel> toy_model(const Vocabs& vocabs, std::size_t width = 16) {
  return std::make_shared<ToyModel>(vocabs.source.size(), vocabs.target.size(), width, 7);
}

/// A Trainer of the toy model that validates after every epoch and writes nothing.
Trainer toy_trainer(const Vocabs& vocabs, const Dataset& data, const TrainOptions& options) {
  Trainer trainer(toy_model(vocabs), vocabs, data.train, options);
  trainer.set_evaluator(evaluate_on(data.validation));
  return trainer;
}

/// A resumed run's losses are the uninterrupted run's, bit for bit, step by step.
void check_same_losses(const std::vector<double>& straight, const std::vector<double>& resumed) {
  REQUIRE(resumed.size() == straight.size());
  for (std::size_t i = 0; i < straight.size(); ++i) CHECK_MESSAGE(resumed[i] == straight[i], "step " << i + 1);
}

/// DIR after one checkpointed epoch of the toy model: where the resume tests start.
fs::path one_epoch_run(const std::string& name, const Vocabs& vocabs, const Dataset& data, TrainOptions options) {
  options.epochs = 1;
  const fs::path dir = fresh_directory("training", name);
  checkpointed_trainer(toy_model(vocabs), vocabs, data, options, dir.string()).train();
  return dir;
}

}  // namespace

TEST_CASE("decoding: beam 1 without normalisation is greedy decoding") {
  ToyModel model(9, 7, 8, 5);
  model.eval();
  const IndexArray source = {{4, 5, 6, 2, 0}, {7, 8, 2, 0, 0}, {4, 4, 4, 5, 2}};
  const IndexArray lengths = {4, 3, 5};
  const auto greedy = greedy_decode(model, source, lengths, 12);
  const auto beam =
      beam_search(model, source, lengths, {.beam = 1, .max_length = 12, .length_penalty = LengthPenalty::none});
  REQUIRE(greedy.size() == 3);
  for (std::size_t b = 0; b < 3; ++b) {
    CHECK(greedy[b].tokens == beam[b].tokens);
    CHECK(greedy[b].finished == beam[b].finished);
    CHECK(greedy[b].log_probability == doctest::Approx(beam[b].log_probability).epsilon(1e-12));
    // One attention row per generated token, over this sentence's source only, each a distribution.
    REQUIRE(greedy[b].attention.size() == 1);
    const Array& weights = greedy[b].attention[0].second;
    CHECK(weights.shape()[0] == greedy[b].tokens.size() + (greedy[b].finished ? 1 : 0));
    CHECK(weights.shape()[1] == std::size_t(lengths(b)));
    for (std::size_t t = 0; t < weights.shape()[0]; ++t) {
      double total = 0;
      for (std::size_t s = 0; s < weights.shape()[1]; ++s) total += weights(t, s);
      CHECK(total == doctest::Approx(1).epsilon(1e-9));
    }
  }
  // decode() dispatches beam 1 to greedy.
  CHECK(decode(model, source, lengths, {.beam = 1, .max_length = 12})[1].tokens == greedy[1].tokens);
}

TEST_CASE("decoding: an exhaustive beam finds the most likely sequence, at least as likely as greedy") {
  // Target vocabulary 6, at most 3 tokens: every sequence fits in a beam of 6^3, so beam search
  // must return the brute-force optimum, and its log-probability must agree with teacher forcing.
  ToyModel model(9, 6, 8, 21);
  model.eval();
  const std::size_t vocab = 6, max_length = 3;
  for (std::uint64_t trial = 0; trial < 3; ++trial) {
    const IndexArray source = {{std::int64_t(4 + trial), 5, 6, 2}};
    const IndexArray lengths = {4};
    double best = -INFINITY;
    std::vector<std::int64_t> best_sequence;
    std::vector<std::int64_t> sequence;
    // Every y_1..y_n with y_n = <eos>, no earlier <eos>, n <= max_length.
    std::function<void()> enumerate = [&] {
      sequence.push_back(Vocab::eos_id);
      const double lp = sequence_log_probability(model, source, lengths, sequence);
      if (lp > best) best = lp, best_sequence = {sequence.begin(), sequence.end() - 1};
      sequence.pop_back();
      if (sequence.size() + 1 >= max_length) return;
      for (std::int64_t v = 0; v < std::int64_t(vocab); ++v) {
        if (v == Vocab::eos_id) continue;
        sequence.push_back(v);
        enumerate();
        sequence.pop_back();
      }
    };
    enumerate();
    const auto beam = beam_search(model, source, lengths,
                                  {.beam = 216, .max_length = max_length, .length_penalty = LengthPenalty::none});
    REQUIRE(beam[0].finished);
    CHECK(beam[0].tokens == best_sequence);
    CHECK(beam[0].log_probability == doctest::Approx(best).epsilon(1e-9));
    const auto greedy = greedy_decode(model, source, lengths, max_length);
    CHECK(beam[0].log_probability >= greedy[0].log_probability - 1e-12);
    // A small beam still does at least as well as greedy here.
    const auto small = beam_search(model, source, lengths, {.beam = 3, .max_length = max_length,
                                                            .length_penalty = LengthPenalty::none});
    CHECK(small[0].log_probability >= greedy[0].log_probability - 1e-12);
  }
}

TEST_CASE("decoding: length penalties and bad arguments") {
  CHECK(length_penalty(7, LengthPenalty::none, 0.6) == 1);
  CHECK(length_penalty(4, LengthPenalty::length, 1) == doctest::Approx(4));
  CHECK(length_penalty(7, LengthPenalty::gnmt, 1) == doctest::Approx(2));  // (5 + 7) / 6
  ToyModel model(9, 7, 8, 5);
  const IndexArray source = {{4, 5, 2}};
  CHECK_THROWS_WITH_AS(decode(model, source, IndexArray{3}, {.beam = 0}), doctest::Contains("beam"), Error);
  CHECK_THROWS_WITH_AS(decode(model, source, IndexArray{4}, {.beam = 2}), doctest::Contains("source length 4"), Error);
  CHECK_THROWS_AS(greedy_decode(model, source, IndexArray{3, 3}, 5), ShapeError);
}

TEST_CASE("registry: unknown kinds list the known ones, names are registered once") {
  register_toy();
  CHECK_THROWS_WITH_AS(make_model("lstm", {}, 10, 10), doctest::Contains("unknown model kind 'lstm'; known kinds:"),
                       Error);
  CHECK_THROWS_WITH_AS(make_model("lstm", {}, 10, 10), doctest::Contains("toy"), Error);
  CHECK_THROWS_WITH_AS(register_model_kind({.name = "toy", .make = [](const nlohmann::json&) {
                                              return std::shared_ptr<Seq2SeqModel>();
                                            }}),
                       doctest::Contains("already registered"), Error);
  const auto model = make_model("toy", {{"dim", 4}, {"seed", 1}}, 10, 12);
  CHECK(model->kind() == "toy");
}

TEST_CASE("trainer: resuming reproduces the losses of an uninterrupted run bit for bit") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  const TrainOptions options = tiny_options();

  const fs::path straight_dir = fresh_directory("training", "straight"), resumed_dir = fresh_directory("training", "resumed");
  std::vector<double> straight, resumed;
  {
    Trainer trainer = checkpointed_trainer(toy_model(vocabs), vocabs, data, options, straight_dir.string());
    trainer.add_callback(after_each_step([&](const StepInfo& info) { straight.push_back(info.loss); }));
    const TrainResult result = trainer.train();
    CHECK(result.reason == StopReason::completed);
    CHECK(result.epochs_completed == 2);
    CHECK(trainer.history().size() == 2);
  }
  REQUIRE(straight.size() == 12);  // 96 pairs / 16, two epochs
  CHECK(straight.back() < straight.front());

  {  // One epoch, then stop.
    TrainOptions first = options;
    first.epochs = 1;
    Trainer trainer = checkpointed_trainer(toy_model(vocabs), vocabs, data, first, resumed_dir.string());
    trainer.add_callback(after_each_step([&](const StepInfo& info) { resumed.push_back(info.loss); }));
    trainer.train();
  }
  {  // A new process, as far as the trainer can tell: everything comes from the directory.
    Checkpoint checkpoint = load_checkpoint(resumed_dir.string());
    CHECK(checkpoint.progress.epoch == 1);
    CHECK(checkpoint.progress.step == 6);
    Trainer trainer = resumed_trainer(checkpoint, data, options);
    trainer.add_callback(after_each_step([&](const StepInfo& info) { resumed.push_back(info.loss); }));
    trainer.train();
    CHECK(trainer.history().size() == 2);
  }
  check_same_losses(straight, resumed);

  // The final weights agree too.
  const auto a = load_checkpoint(straight_dir.string()).model->state_dict();
  const auto b = load_checkpoint(resumed_dir.string()).model->state_dict();
  for (const auto& entry : a) CHECK_MESSAGE(entry.second == b.at(entry.first), entry.first);

  std::ifstream metrics(resumed_dir / "metrics.jsonl");
  std::string line;
  std::size_t lines = 0;
  while (std::getline(metrics, line)) {
    const auto entry = nlohmann::json::parse(line);
    CHECK(entry.contains("bleu"));
    CHECK(entry.contains("val_loss"));
    ++lines;
  }
  CHECK(lines == 2);
  CHECK(fs::exists(resumed_dir / "best" / "model.safetensors"));
}

TEST_CASE("trainer: a stop request mid-epoch saves a checkpoint that resumes exactly") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  const TrainOptions options = tiny_options();
  std::vector<double> straight, resumed;
  {
    Trainer trainer = checkpointed_trainer(toy_model(vocabs), vocabs, data, options, fresh_directory("training", "straight2").string());
    trainer.add_callback(after_each_step([&](const StepInfo& info) { straight.push_back(info.loss); }));
    trainer.train();
  }
  const fs::path dir = fresh_directory("training", "interrupted");
  std::atomic<bool> stop{false};
  {
    Trainer trainer = checkpointed_trainer(toy_model(vocabs), vocabs, data, options, dir.string());
    trainer.add_callback(after_each_step([&](const StepInfo& info) {
      resumed.push_back(info.loss);
      if (info.step == 8) stop = true;  // in the second epoch
    }));
    const TrainResult result = trainer.train(&stop);
    CHECK(result.reason == StopReason::interrupted);
  }
  Checkpoint checkpoint = load_checkpoint(dir.string());
  CHECK(checkpoint.progress.epoch == 1);
  CHECK(checkpoint.progress.batch_in_epoch == 2);
  Trainer trainer = resumed_trainer(checkpoint, data);
  trainer.add_callback(after_each_step([&](const StepInfo& info) { resumed.push_back(info.loss); }));
  trainer.train();
  check_same_losses(straight, resumed);
}

TEST_CASE("trainer: checkpoints round-trip, and a failed save leaves the previous one loadable") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  TrainOptions options = tiny_options();
  options.epochs = 1;
  const fs::path dir = fresh_directory("training", "roundtrip");
  {
    Trainer trainer = checkpointed_trainer(toy_model(vocabs), vocabs, data, options, dir.string(), {{"task", "reverse"}});
    trainer.train();

    const Checkpoint loaded = load_checkpoint(dir.string());
    CHECK(loaded.model->kind() == "toy");
    CHECK(loaded.vocabs.source == vocabs.source);
    CHECK(loaded.vocabs.target == vocabs.target);
    CHECK(loaded.options.to_json() == trainer.options().to_json());
    CHECK(loaded.data == nlohmann::json{{"task", "reverse"}});
    CHECK(loaded.progress.step == 6);
    for (const auto& entry : trainer.model().state_dict())
      CHECK_MESSAGE(entry.second == loaded.model->state_dict().at(entry.first), entry.first);
  }  // the trainer's Checkpointer releases the directory here

  // A save that fails half-way (the optimizer file cannot be put in place) changes nothing in
  // the directory: the previous checkpoint still loads, at its step.
  const fs::path trap = dir / ".staging" / "optimizer.safetensors";
  fs::create_directories(trap);
  std::ofstream(trap / "occupied") << "x";
  Checkpoint resumed = load_checkpoint(dir.string());
  TrainOptions more = options;
  more.epochs = 2;
  Trainer continued = resumed_trainer(resumed, data, more);
  CHECK_THROWS_AS(continued.train(), Error);
  CHECK(load_checkpoint(dir.string()).progress.step == 6);
  fs::remove_all(dir / ".staging");

  // Corrupt or foreign checkpoints are named in the error.
  std::ofstream(dir / "config.json") << "{ not json";
  CHECK_THROWS_WITH_AS(load_checkpoint(dir.string()), doctest::Contains("config.json: not valid JSON"), Error);
  std::ofstream(dir / "config.json") << R"({"format": "something else"})";
  CHECK_THROWS_WITH_AS(load_checkpoint(dir.string()), doctest::Contains("not a qkv checkpoint"), Error);
  CHECK_THROWS_WITH_AS(load_checkpoint((dir / "nowhere").string()), doctest::Contains("is missing"), Error);
}

TEST_CASE("trainer: changed options on resume and a non-finite loss are reported") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  TrainOptions options = tiny_options();
  options.epochs = 1;
  const fs::path dir = one_epoch_run("diverge", vocabs, data, options);
  // The batch layout decides what the saved progress means: it cannot change on resume.
  TrainOptions other = options;
  other.batch_size = 8;
  CHECK_THROWS_WITH_AS(Trainer(load_checkpoint(dir.string()), data.train, other),
                       doctest::Contains("batch_size (saved 16, given 8)"),
                       Error);

  Checkpoint checkpoint = load_checkpoint(dir.string());
  for (auto& [name, parameter] : checkpoint.model->named_parameters())  // <bos>'s row: every sentence uses it
    if (name == "target_embedding.weight") parameter.mutable_value()(Vocab::bos_id, 0) = NAN;
  TrainOptions more = options;
  more.epochs = 2;
  Trainer trainer = resumed_trainer(checkpoint, data, more);
  const TrainResult result = trainer.train();
  CHECK(result.reason == StopReason::diverged);
  CHECK(result.message.find("the loss is") != std::string::npos);
  CHECK(result.message.find("at step 7") != std::string::npos);
  CHECK(load_checkpoint(dir.string()).progress.step == 6);  // the last good checkpoint stays
}

TEST_CASE("trainer: with dropout, a resumed transformer draws the same masks and losses bit for bit") {
  const Dataset data = tiny_reverse(64);
  const Vocabs vocabs = build_vocabs(data.train);
  const nlohmann::json config = {{"d_model", 16}, {"num_heads", 2}, {"encoder_layers", 1}, {"decoder_layers", 1},
                                 {"dim_feedforward", 32}, {"dropout", 0.1}, {"seed", 5}};
  auto model = [&] { return make_model("transformer", config, vocabs.source.size(), vocabs.target.size()); };
  const TrainOptions options = tiny_options();
  const fs::path straight_dir = fresh_directory("training", "dropout_straight"), resumed_dir = fresh_directory("training", "dropout_resumed");
  std::vector<double> straight, resumed;
  {
    Trainer trainer = checkpointed_trainer(model(), vocabs, data, options, straight_dir.string());
    trainer.add_callback(after_each_step([&](const StepInfo& info) { straight.push_back(info.loss); }));
    trainer.train();
  }
  {
    TrainOptions first = options;
    first.epochs = 1;
    Trainer trainer = checkpointed_trainer(model(), vocabs, data, first, resumed_dir.string());
    trainer.add_callback(after_each_step([&](const StepInfo& info) { resumed.push_back(info.loss); }));
    trainer.train();
  }
  {
    Checkpoint checkpoint = load_checkpoint(resumed_dir.string());
    CHECK(checkpoint.model->random_state().size() > 0);  // the dropout streams were saved
    Trainer trainer = resumed_trainer(checkpoint, data, options);
    trainer.add_callback(after_each_step([&](const StepInfo& info) { resumed.push_back(info.loss); }));
    trainer.train();
  }
  REQUIRE(straight.size() == 8);  // 64 pairs / 16, two epochs
  check_same_losses(straight, resumed);
}

TEST_CASE("trainer: weights of another model or vocabulary are refused, naming the file and the tensor") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  TrainOptions options = tiny_options();
  options.epochs = 1;
  const fs::path narrow = fresh_directory("training", "narrow"), wide = fresh_directory("training", "wide");
  for (const auto& [dir, width] : {std::pair{narrow, std::size_t{16}}, std::pair{wide, std::size_t{24}}}) {
    Trainer trainer = checkpointed_trainer(toy_model(vocabs, width),
                                           vocabs, data, options, dir.string(), {{"task", "reverse"}});
    trainer.train();
  }
  // Another model's weights under this config.json.
  fs::copy_file(wide / "model.safetensors", narrow / "model.safetensors", fs::copy_options::overwrite_existing);
  CHECK_THROWS_WITH_AS(load_checkpoint(narrow.string()), doctest::Contains("model.safetensors"), Error);
  CHECK_THROWS_WITH_AS(load_checkpoint(narrow.string()), doctest::Contains("[24"), Error);

  // A config.json whose target vocabulary is not the one the weights were trained with.
  nlohmann::json config = nlohmann::json::parse(std::ifstream(wide / "config.json"));
  config["vocab"]["target"]["tokens"].push_back("an-extra-token");
  std::ofstream(wide / "config.json") << config.dump();
  CHECK_THROWS_WITH_AS(load_checkpoint(wide.string()), doctest::Contains("model.safetensors"), Error);
}

TEST_CASE("trainer: the learning rate may change on resume, the change is reported and used") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  const TrainOptions options = tiny_options();
  const fs::path dir = one_epoch_run("lower_lr", vocabs, data, options);
  TrainOptions finer = options;
  finer.epochs = 2;
  finer.lr = 1e-3;
  std::vector<std::string> changes;
  Trainer trainer(load_checkpoint(dir.string()), data.train, finer, &changes);
  REQUIRE(changes.size() == 2);
  CHECK(changes[0] == "epochs: 1 -> 2");
  CHECK(changes[1] == "lr: 0.01 -> 0.001");
  std::vector<double> rates;
  trainer.add_callback(after_each_step([&](const StepInfo& info) { rates.push_back(info.learning_rate); }));
  trainer.train();
  REQUIRE(rates.size() == 6);
  for (const double rate : rates) CHECK(rate == doctest::Approx(1e-3));
}

TEST_CASE("trainer: without a checkpointer nothing is written, without an evaluator history has the losses only") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  const fs::path dir = fresh_directory("training", "nothing_written");
  const fs::path before = fs::current_path();
  fs::current_path(dir);  // anything written relative to the working directory would land here
  Trainer trainer(toy_model(vocabs), vocabs, data.train,
                  tiny_options());
  const TrainResult result = trainer.train();
  fs::current_path(before);
  CHECK(result.reason == StopReason::completed);
  CHECK(fs::is_empty(dir));
  REQUIRE(trainer.history().size() == 2);
  CHECK(trainer.history()[1].contains("train_loss"));
  CHECK(!trainer.history()[1].contains("bleu"));
  CHECK(trainer.progress().best_epoch == -1);
}

/// Records which seam ran, in order, and what the gradient looked like after backward.
class SeamRecorder : public TrainerCallback {
 public:
  explicit SeamRecorder(std::vector<std::string>& log) : log_(log) {}
  void on_train_start(Trainer& /*trainer*/) override { log_.push_back("start"); }
  void on_after_backward(Trainer& trainer, const StepInfo& step) override {
    // Every gradient is complete, and the optimizer has not moved yet.
    double squares = 0;
    for (const auto& [name, parameter] : trainer.optimizer().parameters())
      if (parameter.has_grad()) squares += double(xt::sum(parameter.grad() * parameter.grad())());
    log_.push_back("backward " + std::to_string(step.step) + (squares > 0 ? " grad" : " no-grad") +
                   (trainer.progress().step == step.step - 1 ? " before-step" : " after-step"));
  }
  void on_step_end(Trainer& trainer, const StepInfo& step) override {
    log_.push_back("step " + std::to_string(step.step) + (trainer.progress().step == step.step ? " taken" : " ?"));
  }
  void on_evaluation(Trainer& /*trainer*/, const EvaluationRecord& record) override {
    log_.push_back(std::string("evaluation") + (record.evaluation != nullptr ? " scored" : " unscored"));
  }
  void on_train_end(Trainer& /*trainer*/, const TrainResult& result) override {
    log_.push_back("end " + name_of(result.reason));
  }

 private:
  std::vector<std::string>& log_;
};

TEST_CASE("trainer: the seams run in order, after backward the gradients are there and the step is not taken") {
  register_toy();
  const Dataset data = tiny_reverse(32);
  const Vocabs vocabs = build_vocabs(data.train);
  TrainOptions options = tiny_options();
  options.epochs = 1;
  Trainer trainer = toy_trainer(vocabs, data, options);
  std::vector<std::string> log;
  trainer.add_callback(std::make_shared<SeamRecorder>(log));
  trainer.train();
  const std::vector<std::string> expected = {"start",  "backward 1 grad before-step", "step 1 taken",
                                             "backward 2 grad before-step", "step 2 taken", "evaluation scored",
                                             "end completed"};
  CHECK(log == expected);
}

TEST_CASE("trainer: a callback can stop training, StopAtTarget stops at the first evaluation reaching it") {
  register_toy();
  const Dataset data = tiny_reverse();
  const Vocabs vocabs = build_vocabs(data.train);
  TrainOptions options = tiny_options();
  options.epochs = 5;
  {  // A target every evaluation reaches: one epoch, then stop.
    Trainer trainer = toy_trainer(vocabs, data, options);
    trainer.add_callback(std::make_shared<StopAtTarget>(StopAtTarget::parse("val_loss=1000")));
    const TrainResult result = trainer.train();
    CHECK(result.reason == StopReason::requested);
    CHECK(result.message.find("reached the target 1000") != std::string::npos);
    CHECK(result.epochs_completed == 1);
  }
  {  // One no evaluation reaches: every epoch runs.
    Trainer trainer = toy_trainer(vocabs, data, options);
    trainer.add_callback(std::make_shared<StopAtTarget>("exact", 1.5));
    CHECK(trainer.train().reason == StopReason::completed);
    CHECK(trainer.progress().epoch == 5);
  }
  {  // A stop requested mid-epoch: the epoch is cut short, evaluated, and training ends.
    Trainer trainer = toy_trainer(vocabs, data, options);
    class StopAtStep3 : public TrainerCallback {
      void on_step_end(Trainer& trainer, const StepInfo& step) override {
        if (step.step == 3) trainer.request_stop("enough");
      }
    };
    trainer.add_callback(std::make_shared<StopAtStep3>());
    const TrainResult result = trainer.train();
    CHECK(result.reason == StopReason::requested);
    CHECK(result.message == "enough");
    CHECK(trainer.progress().step == 3);
    REQUIRE(trainer.history().size() == 1);
    CHECK(trainer.history()[0].at("epoch").get<double>() == doctest::Approx(0.5));
  }
  CHECK_THROWS_WITH_AS(StopAtTarget::parse("exact"), doctest::Contains("expected METRIC=VALUE"), Error);
  CHECK_THROWS_WITH_AS(StopAtTarget::parse("exact=high"), doctest::Contains("'high' is not a number"), Error);
  CHECK_THROWS_WITH_AS(StopAtTarget::parse("accuracy=0.9"), doctest::Contains("unknown metric 'accuracy'"), Error);
}

TEST_CASE("run directory lock: a second writer is refused, naming the directory and the holder") {
  const fs::path dir = fresh_directory("training", "locked");
  {
    const RunDirectoryLock first(dir.string());
    // flock locks belong to an open file description: a second open in this process conflicts
    // just as another process's would (qkv-train's ctest runs two processes).
    CHECK_THROWS_WITH_AS(RunDirectoryLock(dir.string()),
                         doctest::Contains(("run directory " + dir.string() + " is in use by process " +
                                            std::to_string(::getpid()))
                                               .c_str()),
                         Error);
    CHECK_THROWS_WITH_AS(Checkpointer(dir.string(), nlohmann::json::object()), doctest::Contains("is in use"), Error);
  }
  CHECK_NOTHROW(RunDirectoryLock(dir.string()));  // released with its owner
}
