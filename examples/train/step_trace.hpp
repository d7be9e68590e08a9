#pragma once
// qkv-train --trace-steps N: what a reference implementation needs to replay the first N
// optimizer steps of a run exactly (scripts/reference/torch_bahdanau.py reads it):
//   DIR/trace/initial.safetensors  the weights before step 1, by the model's parameter names
//   DIR/trace/steps.safetensors    per step k (1-based): "k.source", "k.source_lengths",
//                                  "k.target_input", "k.target_output" (the batch's id arrays),
//                                  and "loss" [N], the loss qkv computed at each step
// The batches are rebuilt from the same (pairs, vocabularies, batch options) the Trainer uses —
// batches are a pure function of (seed, epoch) — and each is checked against the step's token
// count, so a trace that does not describe the run it came from is refused, not written.
#include <cstddef>
#include <filesystem>
#include <map>
#include <string>
#include <memory>
#include <span>
#include <vector>

#include "lib/text/batching.hpp"
#include "train/trainer.hpp"

namespace qkv::train_cli {

class StepTrace : public train::TrainerCallback {
 public:
  StepTrace(std::span<const SentencePair> training_pairs, std::size_t steps, std::filesystem::path directory);
  void on_train_start(train::Trainer& trainer) override;
  void on_step_end(train::Trainer& trainer, const train::StepInfo& step) override;
  /// A run shorter than N steps writes the steps it took.
  void on_train_end(train::Trainer& trainer, const train::TrainResult& result) override;

 private:
  void write();

  std::vector<SentencePair> pairs_;
  std::size_t steps_;
  std::filesystem::path directory_;
  std::unique_ptr<Batcher> batcher_;
  std::size_t cached_epoch_ = 0;
  std::vector<Batch> cached_batches_;
  std::map<std::string, IndexArray> batches_;
  std::vector<double> losses_;
  bool written_ = false;
};

}  // namespace qkv::train_cli
