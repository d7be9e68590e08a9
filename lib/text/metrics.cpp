#include "lib/text/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include "lib/text/corpus.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

void check_same_shape(const IndexArray& predictions, const IndexArray& targets, const char* op) {
  const Shape predicted = shape_of(predictions);
  const Shape expected = shape_of(targets);
  check_shape(predicted == expected && expected.size() == 2, op, [&] {
    return "predictions " + to_string(predicted) + " and targets " + to_string(expected) +
           " must be the same [B, T] shape";
  });
}

using NgramCounts = std::map<std::vector<std::string>, std::size_t>;

NgramCounts count_ngrams(const Tokens& tokens, std::size_t n) {
  NgramCounts counts;
  for (std::size_t i = 0; i + n <= tokens.size(); ++i)
    ++counts[std::vector<std::string>(tokens.begin() + static_cast<std::ptrdiff_t>(i),
                                      tokens.begin() + static_cast<std::ptrdiff_t>(i + n))];
  return counts;
}

}  // namespace

double token_accuracy(const IndexArray& predictions, const IndexArray& targets, std::int64_t pad_id) {
  check_same_shape(predictions, targets, "token_accuracy");
  std::size_t counted = 0, correct = 0;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (targets.data()[i] == pad_id) continue;
    ++counted;
    correct += predictions.data()[i] == targets.data()[i];
  }
  check_arg(counted > 0, "token_accuracy", "every target position is padding");
  return static_cast<double>(correct) / static_cast<double>(counted);
}

double exact_match(const IndexArray& predictions, const IndexArray& targets, std::int64_t pad_id) {
  check_same_shape(predictions, targets, "exact_match");
  const std::size_t rows = targets.shape()[0], width = targets.shape()[1];
  check_arg(rows > 0, "exact_match", "empty batch");
  std::size_t matched = 0;
  for (std::size_t row = 0; row < rows; ++row) {
    bool equal = true;
    for (std::size_t t = 0; t < width; ++t) {
      const std::int64_t target = targets.data()[row * width + t];
      if (target != pad_id && predictions.data()[row * width + t] != target) equal = false;
    }
    matched += equal;
  }
  return static_cast<double>(matched) / static_cast<double>(rows);
}

double exact_match(std::span<const Tokens> hypotheses, std::span<const std::vector<Tokens>> references) {
  check_arg(hypotheses.size() == references.size() && !hypotheses.empty(), "exact_match", [&] {
    return std::to_string(hypotheses.size()) + " hypotheses for " + std::to_string(references.size()) +
           " reference sets (need the same, nonzero number)";
  });
  std::size_t matched = 0;
  for (std::size_t i = 0; i < hypotheses.size(); ++i)
    matched += std::find(references[i].begin(), references[i].end(), hypotheses[i]) != references[i].end();
  return static_cast<double>(matched) / static_cast<double>(hypotheses.size());
}

BleuScore corpus_bleu(std::span<const Tokens> hypotheses, std::span<const std::vector<Tokens>> references) {
  check_arg(hypotheses.size() == references.size(), "corpus_bleu", [&] {
    return std::to_string(hypotheses.size()) + " hypotheses but " + std::to_string(references.size()) +
           " reference sets";
  });
  BleuScore score;
  for (std::size_t i = 0; i < hypotheses.size(); ++i) {
    const Tokens& hypothesis = hypotheses[i];
    check_arg(!references[i].empty(), "corpus_bleu",
              [&] { return "hypothesis " + std::to_string(i) + " has no reference"; });
    for (std::size_t n = 1; n <= 4; ++n) {
      NgramCounts max_reference_counts;
      for (const Tokens& reference : references[i])
        for (const auto& [ngram, count] : count_ngrams(reference, n))
          max_reference_counts[ngram] = std::max(max_reference_counts[ngram], count);
      for (const auto& [ngram, count] : count_ngrams(hypothesis, n)) {
        const auto it = max_reference_counts.find(ngram);
        score.matches[n - 1] += std::min(count, it == max_reference_counts.end() ? 0 : it->second);
        score.totals[n - 1] += count;
      }
    }
    // Closest reference length; on a tie the shorter, compared as (|diff|, length).
    const auto closest = std::min_element(
        references[i].begin(), references[i].end(), [&](const Tokens& a, const Tokens& b) {
          const auto distance = [&](const Tokens& r) {
            return r.size() > hypothesis.size() ? r.size() - hypothesis.size() : hypothesis.size() - r.size();
          };
          return std::pair(distance(a), a.size()) < std::pair(distance(b), b.size());
        });
    score.hypothesis_length += hypothesis.size();
    score.reference_length += closest->size();
  }
  const double c = static_cast<double>(score.hypothesis_length);
  const double r = static_cast<double>(score.reference_length);
  score.brevity_penalty = c > r ? 1.0 : c == 0 ? 0.0 : std::exp(1.0 - r / c);
  double log_sum = 0;
  bool any_zero = false;
  for (std::size_t n = 0; n < 4; ++n) {
    score.precisions[n] = score.totals[n] == 0 ? 0.0
                                               : static_cast<double>(score.matches[n]) /
                                                     static_cast<double>(score.totals[n]);
    if (score.precisions[n] == 0) any_zero = true;
    else log_sum += std::log(score.precisions[n]);
  }
  score.bleu = any_zero ? 0.0 : 100.0 * score.brevity_penalty * std::exp(log_sum / 4.0);
  return score;
}

BleuScore corpus_bleu(std::span<const std::string> hypotheses,
                      std::span<const std::vector<std::string>> references) {
  std::vector<Tokens> hypothesis_tokens;
  std::vector<std::vector<Tokens>> reference_tokens;
  for (const std::string& hypothesis : hypotheses) hypothesis_tokens.push_back(split_on_spaces(hypothesis));
  for (const auto& set : references) {
    reference_tokens.emplace_back();
    for (const std::string& reference : set) reference_tokens.back().push_back(split_on_spaces(reference));
  }
  return corpus_bleu(hypothesis_tokens, reference_tokens);
}

}  // namespace qkv
