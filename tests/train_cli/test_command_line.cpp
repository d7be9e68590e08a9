// qkv-train's command line: which defaults apply — the generated tasks' (dates) defaults for
// --task, each model kind's corpus defaults for --data, and a flag given always winning.
#include "command_line.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "models/registry.hpp"

using namespace qkv;
using qkv::train_cli::CommandLine;

namespace {

CommandLine parse(std::vector<std::string> words) {
  words.insert(words.begin(), "qkv-train");
  std::vector<const char*> argv;
  for (const std::string& word : words) argv.push_back(word.c_str());
  return train_cli::parse_command_line(static_cast<int>(argv.size()), argv.data());
}

nlohmann::json model_config(const CommandLine& line) {
  return models::config_from_options(models::find_model_kind(line.model), line.model_options);
}

}  // namespace

TEST_CASE("qkv-train: --task keeps the dates defaults, --data takes the kind's corpus defaults") {
  const CommandLine task = parse({"--model", "transformer", "--task", "dates", "--out", "x"});
  CHECK(task.corpus_defaults_applied.empty());
  CHECK(model_config(task).at("d_model") == 64);
  CHECK(task.schedule == "constant");
  CHECK(task.label_smoothing == 0);

  const CommandLine corpus = parse({"--model", "transformer", "--data", "pairs.tsv", "--out", "x"});
  CHECK(!corpus.corpus_defaults_applied.empty());
  const nlohmann::json config = model_config(corpus);
  CHECK(config.at("d_model") == 128);
  CHECK(config.at("dim_feedforward") == 512);
  CHECK(config.at("dropout") == doctest::Approx(0.1));
  CHECK(corpus.schedule == "noam");
  CHECK(corpus.label_smoothing == doctest::Approx(0.1));
  CHECK(corpus.warmup_epochs == doctest::Approx(1.5));
  // The corpus defaults are not the user's choices.
  CHECK(!corpus.was_given("--d-model"));
  CHECK(!corpus.was_given("--schedule"));
  // 1.5 epochs of 270 batches: 405 warm-up steps.
  CHECK(train_cli::training_options(corpus, 270).warmup_steps == 405);

  const CommandLine bahdanau = parse({"--model", "bahdanau", "--data", "pairs.tsv", "--out", "x"});
  const nlohmann::json deep = model_config(bahdanau);
  CHECK(deep.at("readout") == "deep");
  CHECK(model_config(parse({"--model", "bahdanau", "--task", "dates", "--out", "x"})).at("readout") == "state");
}

TEST_CASE("qkv-train: a flag given wins over a corpus default") {
  const CommandLine line = parse({"--model", "transformer", "--data", "pairs.tsv", "--out", "x", "--d-model", "96",
                                  "--schedule", "constant", "--warmup", "50", "--label-smoothing", "0"});
  CHECK(model_config(line).at("d_model") == 96);
  CHECK(model_config(line).at("dim_feedforward") == 512);  // not given: the corpus default
  CHECK(line.schedule == "constant");
  CHECK(line.label_smoothing == 0);
  // --warmup given replaces --warmup-epochs' default too: one setting, two spellings.
  CHECK(line.warmup_epochs == 0);
  CHECK(train_cli::training_options(line, 270).warmup_steps == 50);
  CHECK(line.was_given("--d-model"));
  for (const std::string& applied : line.corpus_defaults_applied) {
    CHECK(applied.rfind("--d-model", 0) != 0);
    CHECK(applied.rfind("--warmup", 0) != 0);
  }
}

TEST_CASE("qkv-train: --resume and --help take no corpus defaults, and both warm-up spellings together are refused") {
  CHECK(parse({"--resume", "dir", "--data", "pairs.tsv"}).corpus_defaults_applied.empty());
  CHECK(parse({"--model", "transformer", "--data", "pairs.tsv", "--help"}).corpus_defaults_applied.empty());
  const CommandLine both = parse({"--model", "transformer", "--task", "dates", "--out", "x", "--warmup", "10",
                                  "--warmup-epochs", "2"});
  CHECK_THROWS_WITH_AS(train_cli::training_options(both, 100), "qkv-train: give one of --warmup and --warmup-epochs",
                       Error);
}

TEST_CASE("qkv-train: every built-in kind's corpus defaults parse as typed flags") {
  for (const std::string& name : models::model_kinds()) {
    CAPTURE(name);
    const CommandLine line = parse({"--model", name, "--data", "pairs.tsv", "--out", "x"});
    CHECK(line.corpus_defaults_applied.size() == models::find_model_kind(name).corpus_defaults.size());
    CHECK_NOTHROW(model_config(line));
  }
}

TEST_CASE("qkv-train: --kv-heads and --memory-slots reach the transformer config, --sink-tokens and --cache-window the decoding") {
  const CommandLine line = parse({"--model", "transformer", "--task", "dates", "--out", "x", "--kv-heads", "2",
                                  "--memory-slots", "8", "--sink-tokens", "4", "--cache-window", "16"});
  const nlohmann::json config = model_config(line);
  CHECK(config.at("num_kv_heads") == 2);
  CHECK(config.at("memory_slots") == 8);
  const train::TrainOptions options = train_cli::training_options(line, 100);
  CHECK(options.decode.cache_limit.sink_tokens == 4);
  CHECK(options.decode.cache_limit.window == 16);
  CHECK(model_config(parse({"--model", "transformer", "--task", "dates", "--out", "x"})).at("num_kv_heads") == 0);
}

TEST_CASE("qkv-train: --mup-base-d-model reaches the transformer config (0, off, by default)") {
  const CommandLine line = parse({"--model", "transformer", "--task", "dates", "--out", "x", "--mup-base-d-model", "32"});
  CHECK(model_config(line).at("mup_base_d_model") == 32);
  CHECK(model_config(parse({"--model", "transformer", "--task", "dates", "--out", "x"})).at("mup_base_d_model") == 0);
}
