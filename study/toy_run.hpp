#pragma once
// The toy-task training run every section of qkv-scaling-study that trains the tiny transformer
// starts from (training, mup, stability, length): one epoch of exactly `steps` batches of a
// toy task (lib/text/tasks.hpp) drawn from the run's seed, the vocabularies built from those
// pairs, the transformer of `model` over them, a Trainer with the section's options, and the
// probe batch of every validation pair (teacher-forced, in order). The seed of `model` is the
// run's seed: the data, the weights and the batch order all follow from it, so a run depends on
// its options alone (whatever thread or rank trains it).
#include <cstddef>
#include <memory>
#include <string>

#include "lib/text/batching.hpp"
#include "lib/text/corpus.hpp"
#include "models/transformer/transformer.hpp"
#include "train/options.hpp"
#include "train/trainer.hpp"

namespace qkv::study {

struct ToyRunOptions {
  std::string task = "reverse";                 // lib/text/tasks.hpp
  std::size_t min_length = 4, max_length = 12;  // reverse / copy sequence lengths
  /// The model; the vocabulary sizes are filled in from the task's pairs.
  models::TransformerConfig model;
  std::size_t steps = 0, batch_size = 0;  // training pairs: steps · batch_size, one epoch
  std::size_t validation_size = 1;        // the probe batch's pairs
  std::size_t test_size = 1;              // held-out pairs of the training lengths (a distinct pool)
  /// The Trainer's options: the section sets lr, clip_norm (and anything else it varies);
  /// seed, epochs (1), batch_size and best_metric (val_loss) are set from the fields above.
  train::TrainOptions training;
};

/// One run's data, model and Trainer, built in that order (no checkpointer: the study keeps
/// numbers, not run directories; no evaluator: a section that wants one sets it).
class ToyRun {
 public:
  explicit ToyRun(const ToyRunOptions& options);
  ToyRun(const ToyRun&) = delete;
  ToyRun& operator=(const ToyRun&) = delete;

  const Dataset data;
  const Vocabs vocabs;
  const models::TransformerConfig config;  // `model` with the vocabulary sizes
  const std::shared_ptr<models::Seq2SeqModel> model;
  const Batch probe_batch;  // every validation pair, in order
  train::Trainer trainer;
};

}  // namespace qkv::study
