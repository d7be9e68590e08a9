#pragma once
// qkv-train --trace-steps N: what a reference implementation needs to replay the first N
// optimizer steps of a run exactly (scripts/reference/torch_bahdanau.py reads it):
//   DIR/trace/initial.safetensors  the weights before step 1, by the model's parameter names
//   DIR/trace/steps.safetensors    per step k (1-based): "k.source", "k.source_lengths",
//                                  "k.target_input", "k.target_output" (the batch's id arrays),
//                                  and "loss" [N], the loss qkv computed at each step
// The batches are the Trainer's own (StepInfo::current_batch), so the trace describes the run it came from.
#include <cstddef>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "lib/text/batching.hpp"
#include "train/trainer.hpp"

namespace qkv::train_cli {

class StepTrace : public train::TrainerCallback {
 public:
  StepTrace(std::size_t steps, std::filesystem::path directory);
  void on_train_start(train::Trainer& trainer) override;
  void on_step_end(train::Trainer& trainer, const train::StepInfo& step) override;
  /// A run shorter than N steps writes the steps it took.
  void on_train_end(train::Trainer& trainer, const train::TrainResult& result) override;

 private:
  void write();

  std::size_t steps_;
  std::filesystem::path directory_;
  std::map<std::string, IndexArray> batches_;
  std::vector<double> losses_;
  bool written_ = false;
};

}  // namespace qkv::train_cli
