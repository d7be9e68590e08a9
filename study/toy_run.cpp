#include "study/toy_run.hpp"

#include <vector>

#include "lib/numerics/error.hpp"
#include "lib/text/tasks.hpp"
#include "models/registry.hpp"

namespace qkv::study {

namespace {

Dataset toy_data(const ToyRunOptions& options) {
  check_arg(options.steps > 0 && options.batch_size > 0 && options.validation_size > 0 && options.test_size > 0,
            "ToyRun", "steps, batch_size, validation_size and test_size must be positive");
  return make_task(options.task, {.train_size = options.steps * options.batch_size,
                                  .validation_size = options.validation_size,
                                  .test_size = options.test_size,
                                  .seed = options.model.seed,
                                  .min_length = options.min_length,
                                  .max_length = options.max_length});
}

models::TransformerConfig sized(models::TransformerConfig config, const Vocabs& vocabs) {
  config.source_vocab_size = vocabs.source.size(), config.target_vocab_size = vocabs.target.size();
  return config;
}

Batch every_row(const std::vector<SentencePair>& pairs, const Vocabs& vocabs) {
  std::vector<std::size_t> rows(pairs.size());
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = i;
  return Batcher(pairs, vocabs.source, vocabs.target, {.batch_size = rows.size(), .shuffle = false}).make_batch(rows);
}

train::TrainOptions one_epoch(const ToyRunOptions& options) {
  train::TrainOptions training = options.training;
  training.seed = options.model.seed;
  training.epochs = 1;
  training.batch_size = options.batch_size;
  training.best_metric = train::BestMetric::val_loss;
  return training;
}

}  // namespace

ToyRun::ToyRun(const ToyRunOptions& options)
    : data(toy_data(options)),
      vocabs(build_vocabs(data.train)),
      config(sized(options.model, vocabs)),
      model(models::make_model("transformer", nlohmann::json(config), config.source_vocab_size,
                               config.target_vocab_size)),
      probe_batch(every_row(data.validation, vocabs)),
      trainer(model, vocabs, data.train, one_epoch(options)) {}

}  // namespace qkv::study
