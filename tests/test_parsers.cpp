// Regression tests for what the fuzzers (tests/fuzz, docs/hardening.md) found in the parsers of
// outside input, and for finishing a checkpoint save that a kill interrupted. Each input here
// once crashed, hit undefined behaviour or escaped as something other than qkv::Error.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "lib/text/corpus.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/safetensors.hpp"
#include "lib/text/tasks.hpp"
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
using nlohmann::json;

namespace {

TrainOptions valid_options() {
  TrainOptions options;
  options.epochs = 1;
  options.batch_size = 16;
  return options;
}

}  // namespace

TEST_CASE("parsers: a safetensors path that is a directory is an Error, not a 2^63-byte allocation") {
  const fs::path dir = fresh_directory("parsers", "directory.safetensors");
  CHECK_THROWS_WITH_AS(read_safetensors(dir.string()), doctest::Contains("directory.safetensors: not a regular file"),
                       ParseError);
}

TEST_CASE("parsers: safetensors and TSV parse from memory with the same checks as from files") {
  std::string bytes(8, '\0');
  bytes[0] = 100;  // a header of 100 bytes in an 8-byte file
  CHECK_THROWS_WITH_AS(parse_safetensors(bytes, "in memory"),
                       "in memory: header length 100 runs past the end of the file", ParseError);
  std::istringstream tsv("Go.\tVa !\nno tab here\n");
  CHECK_THROWS_WITH_AS(read_tsv(tsv, "pairs.tsv", {.bad_lines = BadLines::strict}),
                       "pairs.tsv:2: no tab: expected two tab-separated columns", ParseError);
}

TEST_CASE("parsers: a model config that is not an object is an Error (fuzz_model_config)") {
  CHECK_THROWS_WITH_AS(make_model("transformer", json(2), 10, 10),
                       "make_model: the transformer config must be a JSON object, got 2", Error);
  CHECK_THROWS_WITH_AS(make_model("bahdanau", json::array(), 10, 10),
                       "make_model: the bahdanau config must be a JSON object, got []", Error);
}

TEST_CASE("parsers: transformer sizes must be non-negative integers (fuzz_model_config)") {
  // -8 used to wrap to 2^64 - 8 (std::bad_array_new_length), 1e30 to convert with undefined
  // behaviour.
  CHECK_THROWS_WITH_AS(make_model("transformer", {{"d_model", -8}, {"num_heads", 2}}, 10, 10),
                       "TransformerConfig: field \"d_model\" must be a non-negative integer, got -8", Error);
  CHECK_THROWS_WITH_AS(make_model("transformer", {{"dim_feedforward", 1e30}}, 10, 10),
                       "TransformerConfig: field \"dim_feedforward\" must be a non-negative integer, got 1e+30", Error);
  CHECK_THROWS_WITH_AS(make_model("transformer", {{"seed", 1.5}}, 10, 10),
                       doctest::Contains("field \"seed\" must be a non-negative integer"), Error);
  CHECK(make_model("transformer", {{"d_model", 8}, {"num_heads", 2}, {"dim_feedforward", 16}}, 10, 10) != nullptr);
}

TEST_CASE("parsers: TrainOptions integers must be integers in range (fuzz_checkpoint)") {
  const json valid = valid_options().to_json();
  CHECK(TrainOptions::from_json(valid).to_json() == valid);
  json negative = valid;
  negative["batch_size"] = -1;
  CHECK_THROWS_WITH_AS(TrainOptions::from_json(negative),
                       "config.json training: field \"batch_size\" must be a non-negative integer, got -1", Error);
  json fractional = valid;
  fractional["epochs"] = 1e300;
  CHECK_THROWS_WITH_AS(TrainOptions::from_json(fractional),
                       "config.json training: field \"epochs\" must be a non-negative integer, got 1e+300", Error);
  json signed_field = valid;
  signed_field["warmup_steps"] = 0.5;
  CHECK_THROWS_WITH_AS(TrainOptions::from_json(signed_field),
                       "config.json training: field \"warmup_steps\" must be an integer, got 0.5", Error);
  json huge = valid;
  huge["warmup_steps"] = std::uint64_t(1) << 63;  // above int64's range
  CHECK_THROWS_WITH_AS(TrainOptions::from_json(huge), doctest::Contains("field \"warmup_steps\" must be an integer"),
                       Error);
}

TEST_CASE("parsers: a checkpoint's format and version of the wrong type are Errors (fuzz_checkpoint)") {
  const fs::path dir = fresh_directory("parsers", "format");
  std::ofstream(dir / "config.json") << R"({"format": 1, "version": 1})";
  CHECK_THROWS_WITH_AS(load_checkpoint(dir.string()), doctest::Contains("not a qkv checkpoint"), Error);
  std::ofstream(dir / "config.json") << R"({"format": "qkv.checkpoint", "version": "1"})";
  CHECK_THROWS_WITH_AS(load_checkpoint(dir.string()), doctest::Contains("checkpoint version \"1\" is not supported"),
                       Error);
  std::ofstream(dir / "config.json") << R"({"format": "qkv.checkpoint"})";
  CHECK_THROWS_WITH_AS(load_checkpoint(dir.string()), doctest::Contains("checkpoint version (none) is not supported"),
                       Error);
}

TEST_CASE("checkpoints: a save killed between its renames is finished by the next load") {
  const Dataset data = reverse_task(
      {.train_size = 32, .validation_size = 8, .test_size = 8, .seed = 3, .min_length = 3, .max_length = 5});
  const Vocabs vocabs = build_vocabs(data.train);
  const json config = {{"d_model", 8}, {"num_heads", 2}, {"encoder_layers", 1}, {"decoder_layers", 1},
                       {"dim_feedforward", 16}, {"seed", 1}};
  const fs::path dir = fresh_directory("parsers", "torn"), later = fresh_directory("parsers", "later");
  const fs::path step2 = fresh_directory("parsers", "step2");
  TrainOptions options = valid_options();
  {
    Trainer trainer = checkpointed_trainer(make_model("transformer", config, vocabs.source.size(), vocabs.target.size()),
                                           vocabs, data, options, dir.string());
    trainer.train();  // DIR: the checkpoint of step 2
    Checkpointer(step2.string(), json::object()).save(trainer, step2.string());
  }
  options.epochs = 2;
  {
    Trainer continued = resumed_trainer(load_checkpoint(dir.string()), data, options);
    continued.train();  // and of step 4
    Checkpointer(later.string(), json::object()).save(continued, later.string());
  }

  // The step-4 save, killed after moving the weights into DIR: the optimizer and config.json
  // are still in DIR/.staging. As a set DIR is torn (weights of step 4, config of step 2).
  fs::copy_file(later / "model.safetensors", dir / "model.safetensors", fs::copy_options::overwrite_existing);
  fs::create_directories(dir / ".staging");
  for (const char* name : {"optimizer.safetensors", "config.json"})
    fs::copy_file(later / name, dir / ".staging" / name, fs::copy_options::overwrite_existing);
  const Checkpoint finished = load_checkpoint(dir.string());
  CHECK(finished.progress.step == 4);
  CHECK(fs::is_empty(dir / ".staging"));
  CHECK_NOTHROW(Trainer(load_checkpoint(dir.string()), data.train, options));  // the optimizer is from step 4 too

  // Without a complete staging set (no config.json there) nothing is moved, and the torn
  // directory is reported rather than loaded.
  fs::copy_file(later / "model.safetensors", dir / ".staging" / "model.safetensors");
  fs::copy_file(step2 / "model.safetensors", dir / "model.safetensors", fs::copy_options::overwrite_existing);
  CHECK_THROWS_WITH_AS(load_checkpoint(dir.string()), doctest::Contains("(a torn save?)"), Error);
  fs::remove_all(dir.parent_path());
}
