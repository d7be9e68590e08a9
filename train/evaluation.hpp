#pragma once
// Scoring a Seq2SeqModel on held-out pairs: teacher-forced loss and token accuracy, then
// decoding for exact match and corpus BLEU-4 against every reference of each source.
#include <cstddef>
#include <functional>
#include <span>
#include <vector>

#include "lib/text/corpus.hpp"
#include "lib/text/corpus.hpp"
#include "models/decoding.hpp"
#include "models/seq2seq.hpp"

namespace qkv::train {

struct TrainOptions;

/// Validation (or test) results.
struct Evaluation {
  double loss = 0;            // teacher-forced cross-entropy per target token, no smoothing
  double token_accuracy = 0;  // teacher-forced argmax == label, over non-pad labels
  double exact_match = 0;     // decoded sentence equals one of its references
  double bleu = 0;            // corpus BLEU-4 (0-100), references grouped by source
  std::vector<SourceWithReferences> groups;  // the distinct sources with their references
  std::vector<models::Hypothesis> decoded;   // one per group
};

/// The most likely token at every position: logits [B, T, V] -> ids [B, T].
IndexArray argmax_last(const Array& logits);

/// Evaluates `pairs` (which must not be empty). Sets eval mode and leaves it set.
Evaluation evaluate(models::Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                    const models::DecodeOptions& decode, std::size_t batch_size = 128);

/// What a Trainer calls to score its model after every epoch (and when training stops early).
using Evaluator =
    std::function<Evaluation(models::Seq2SeqModel& model, const Vocabs& vocabs, const TrainOptions& options)>;

/// The usual Evaluator: evaluate() on `pairs` with the options' decoding and evaluation batch
/// size. The Evaluator keeps a view of `pairs`: they must outlive it.
Evaluator evaluate_on(std::span<const SentencePair> pairs);

}  // namespace qkv::train
