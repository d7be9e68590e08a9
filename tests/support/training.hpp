#pragma once
// Trainers set up as qkv-train sets them up, minus the console: validation after every epoch
// and a Checkpointer writing the run directory.
#include <memory>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "train/callbacks.hpp"
#include "train/trainer.hpp"

namespace qkv::test {

inline train::Trainer checkpointed_trainer(std::shared_ptr<models::Seq2SeqModel> model, const Vocabs& vocabs,
                                           const Dataset& data, const train::TrainOptions& options,
                                           const std::string& directory,
                                           nlohmann::json data_spec = nlohmann::json::object()) {
  train::Trainer trainer(std::move(model), vocabs, data.train, options);
  trainer.set_evaluator(train::evaluate_on(data.validation));
  trainer.add_callback(std::make_shared<train::Checkpointer>(directory, std::move(data_spec)));
  return trainer;
}

/// Continues the checkpoint with `options` (merge_on_resume decides what may change).
inline train::Trainer resumed_trainer(const train::Checkpoint& checkpoint, const Dataset& data,
                                      const train::TrainOptions& options) {
  train::Trainer trainer(checkpoint, data.train, options);
  trainer.set_evaluator(train::evaluate_on(data.validation));
  trainer.add_callback(std::make_shared<train::Checkpointer>(checkpoint.directory, checkpoint.data));
  return trainer;
}

inline train::Trainer resumed_trainer(const train::Checkpoint& checkpoint, const Dataset& data) {
  return resumed_trainer(checkpoint, data, checkpoint.options);
}

}  // namespace qkv::test
