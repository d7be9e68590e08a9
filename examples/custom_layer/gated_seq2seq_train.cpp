// Trains this project's gated-attention translation model (gated_seq2seq.hpp) through qkv's
// installed training layer — the Trainer with validation, a Checkpointer, the console reporter
// and a stop target — then reloads the best checkpoint by name through qkv's model registry
// and beam-decodes the test set with it. Exits 1 unless the reloaded model decodes exactly as
// the trained one did and copies at least 90% of the test sequences exactly.
//
//   gated_seq2seq_train [RUN_DIR]     (default: a fresh directory under the temp dir)
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "gated_seq2seq.hpp"
#include "lib/text/tasks.hpp"
#include "models/decoding.hpp"
#include "models/registry.hpp"
#include "train/callbacks.hpp"
#include "train/checkpoint.hpp"
#include "train/evaluation.hpp"
#include "train/trainer.hpp"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  using namespace qkv;
  static_assert(sizeof(real) == 4, "the training build links qkv::train (float32)");
  custom::register_gated_seq2seq();
  const fs::path run = argc > 1 ? fs::path(argv[1]) : fs::temp_directory_path() / ("gated-seq2seq-" + std::to_string(::getpid()));
  fs::remove_all(run);

  const Dataset data = make_task("copy", {.train_size = 3000, .validation_size = 100, .test_size = 100, .seed = 1,
                                          .min_length = 3, .max_length = 8});
  const Vocabs vocabs = build_vocabs(data.train);
  // The kind's defaults (its options, as qkv-train would offer them) and an initialisation seed.
  nlohmann::json config = models::config_from_options(models::find_model_kind("gated_seq2seq"), {});
  config["seed"] = 3;
  const auto model = models::make_model("gated_seq2seq", config, vocabs.source.size(), vocabs.target.size());
  train::TrainOptions options;
  options.epochs = 12;
  options.batch_size = 32;
  options.lr = 3e-3;
  train::Trainer trainer(model, vocabs, data.train, options);
  trainer.set_evaluator(train::evaluate_on(data.validation));
  trainer.add_callback(std::make_shared<train::Checkpointer>(run.string(), nlohmann::json{{"task", "copy"}}));
  trainer.add_callback(std::make_shared<train::ConsoleReporter>(false));
  trainer.add_callback(std::make_shared<train::StopAtTarget>("exact", 0.99));
  const train::TrainResult result = trainer.train();
  std::printf("trained: %s after %lld steps (%s)\n", name_of(result.reason).c_str(),
              static_cast<long long>(trainer.progress().step), result.message.c_str());

  // New model objects, rebuilt from the directory alone: config.json names the kind. The last
  // checkpoint must decode exactly as the model in memory; the best one is what a user ships.
  const models::DecodeOptions beam{.beam = 3, .max_length = 12};
  const train::Checkpoint last = train::load_checkpoint(run.string());
  const train::Evaluation in_memory = train::evaluate(trainer.model(), data.test, vocabs, beam);
  const train::Evaluation reloaded_last = train::evaluate(*last.model, data.test, last.vocabs, beam);
  bool same = in_memory.decoded.size() == reloaded_last.decoded.size();
  for (std::size_t i = 0; same && i < in_memory.decoded.size(); ++i)
    same = in_memory.decoded[i].tokens == reloaded_last.decoded[i].tokens;
  const train::Checkpoint best = train::load_checkpoint((run / "best").string());
  const train::Evaluation reloaded = train::evaluate(*best.model, data.test, best.vocabs, beam);
  const auto text = [](const Tokens& tokens) {
    std::string joined;
    for (const std::string& token : tokens) joined += (joined.empty() ? "" : " ") + token;
    return joined;
  };
  std::printf("reloaded %s (kind %s, step %lld): beam 3 on %zu test sequences: exact %.3f, BLEU %.2f; first: %s -> %s\n",
              (run / "best").string().c_str(), best.model->kind().c_str(),
              static_cast<long long>(best.progress.step), reloaded.groups.size(), reloaded.exact_match, reloaded.bleu,
              text(reloaded.groups[0].source).c_str(), text(best.vocabs.target.decode(reloaded.decoded[0].tokens)).c_str());
  fs::remove_all(run);
  const bool learned = reloaded.exact_match >= 0.9;
  std::printf("gated seq2seq %s\n", learned && same ? "learned, checkpointed, reloaded and decoded"
                                                    : (same ? "did NOT learn" : "reloaded model decodes differently"));
  return learned && same ? 0 : 1;
}
