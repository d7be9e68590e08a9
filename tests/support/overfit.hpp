#pragma once
// One training loop shared by the model tests that check a model can learn at all.
#include <utility>

#include "autograd/ops.hpp"
#include "lib/text/batching.hpp"
#include "models/seq2seq.hpp"
#include "optim/adam.hpp"

namespace qkv::test {

/// Trains `model` on one batch with Adam (cross-entropy ignoring <pad>) for `steps` steps and
/// returns the first and the last loss.
inline std::pair<double, double> overfit_one_batch(models::Seq2SeqModel& model, const Batch& batch, double lr,
                                                    int steps) {
  Adam adam(model.named_parameters(), {.lr = lr});
  const CrossEntropyOptions ignore_pad{.ignore_index = 0};
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    adam.zero_grad();
    Variable loss = cross_entropy(model.forward(batch.source, batch.source_lengths, batch.target_input).logits,
                                  batch.target_output, ignore_pad);
    loss.backward();
    adam.step();
    if (step == 0) first = loss.item();
    last = loss.item();
  }
  return {first, last};
}

}  // namespace qkv::test
