#include "train/evaluation.hpp"

#include <algorithm>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/text/batching.hpp"
#include "lib/text/metrics.hpp"
#include "train/options.hpp"

namespace qkv::train {
using models::Hypothesis;
using models::Seq2SeqOutput;

IndexArray argmax_last(const Array& logits) {  // [B, T, V] -> [B, T]
  const std::size_t vocab = logits.shape().back();
  IndexArray best = IndexArray::from_shape({logits.shape()[0], logits.shape()[1]});
  for (std::size_t row = 0; row < best.size(); ++row) {
    const real* begin = logits.data() + row * vocab;
    best.data()[row] = std::max_element(begin, begin + vocab) - begin;
  }
  return best;
}

Evaluation evaluate(models::Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                    const models::DecodeOptions& decode_options, std::size_t batch_size) {
  check_arg(!pairs.empty(), "evaluate", "no sentence pairs to evaluate");
  const NoGradGuard no_grad;
  model.eval();
  Evaluation result;

  // Teacher-forced loss and token accuracy over every pair.
  const Batcher batcher(pairs, vocabs.source, vocabs.target, {.batch_size = batch_size, .shuffle = false});
  double loss_sum = 0, correct = 0;
  std::size_t tokens = 0;
  for (const Batch& batch : batcher.epoch(0)) {
    const Seq2SeqOutput out = model.forward(batch.source, batch.source_lengths, batch.target_input);
    const Variable loss = cross_entropy(out.logits, batch.target_output, {.ignore_index = Vocab::pad_id});  // []
    const std::size_t n = count_label_tokens(batch.target_output);
    loss_sum += double(loss.item()) * double(n);
    correct += token_accuracy(argmax_last(out.logits.value()), batch.target_output) * double(n);
    tokens += n;
  }
  result.loss = loss_sum / double(tokens);
  result.token_accuracy = correct / double(tokens);

  // Decoding: each distinct source once, scored against all its references.
  result.groups = group_by_source(pairs);
  std::vector<SentencePair> sources;
  for (const SourceWithReferences& group : result.groups) sources.push_back({group.source, group.references[0]});
  const Batcher source_batcher(sources, vocabs.source, vocabs.target, {.batch_size = batch_size, .shuffle = false});
  result.decoded.resize(sources.size());
  for (const Batch& batch : source_batcher.epoch(0)) {
    std::vector<Hypothesis> hypotheses = models::decode(model, batch.source, batch.source_lengths, decode_options);
    for (std::size_t i = 0; i < batch.size(); ++i) result.decoded[batch.indices[i]] = std::move(hypotheses[i]);
  }
  std::vector<Tokens> hypotheses;
  std::vector<std::vector<Tokens>> references;
  for (std::size_t i = 0; i < sources.size(); ++i) {
    hypotheses.push_back(vocabs.target.decode(result.decoded[i].tokens));
    references.push_back(result.groups[i].references);
  }
  result.exact_match = exact_match(hypotheses, references);
  result.bleu = corpus_bleu(hypotheses, references).bleu;
  return result;
}

Evaluator evaluate_on(std::span<const SentencePair> pairs) {
  check_arg(!pairs.empty(), "evaluate_on", "no sentence pairs to evaluate on");
  return [pairs](models::Seq2SeqModel& model, const Vocabs& vocabs, const TrainOptions& options) {
    return evaluate(model, pairs, vocabs, options.decode, options.eval_batch_size);
  };
}

}  // namespace qkv::train
