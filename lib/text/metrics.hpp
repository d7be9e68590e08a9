#pragma once
// Translation metrics: token accuracy, exact match and corpus BLEU-4.
//
// corpus_bleu is Papineni et al.'s corpus-level BLEU-4 with nothing added:
//   * for each hypothesis and each n = 1..4, every n-gram count is clipped to the largest count
//     of that n-gram in any single reference of the same source, and the clipped counts and the
//     hypothesis n-gram totals are summed over the corpus: p_n = matches_n / totals_n;
//   * the reference length of a sentence is the length of its reference closest to the
//     hypothesis length, the shorter one on a tie; r and c are the corpus sums of reference and
//     hypothesis lengths; brevity penalty BP = 1 if c > r, else exp(1 - r / c) (0 if c = 0);
//   * BLEU = 100 * BP * (p_1 p_2 p_3 p_4)^(1/4), no smoothing: 0 when any p_n is 0 (including
//     a corpus with no n-gram of some order).
// This is what NLTK's corpus_bleu computes with its default weights and no smoothing function,
// with one difference: NLTK counts max(1, number of n-grams) for a hypothesis shorter than n,
// which lowers p_n for corpora with such hypotheses. Here a short hypothesis adds no n-grams
// of that order, as the definition says.
// The string overload splits on spaces; tokenize hypotheses and references the same way.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "lib/numerics/tensor.hpp"
#include "lib/text/vocab.hpp"

namespace qkv {

/// Fraction of the positions where `targets` is not `pad_id` at which `predictions` equals it.
/// Both [B, T]; throws ShapeError if the shapes differ and Error if every target is padding.
double token_accuracy(const IndexArray& predictions, const IndexArray& targets,
                      std::int64_t pad_id = Vocab::pad_id);
/// Fraction of rows whose every non-pad target position is predicted exactly. [B, T] each.
double exact_match(const IndexArray& predictions, const IndexArray& targets,
                   std::int64_t pad_id = Vocab::pad_id);
/// Fraction of hypotheses equal to one of their references.
double exact_match(std::span<const Tokens> hypotheses, std::span<const std::vector<Tokens>> references);

struct BleuScore {
  double bleu = 0;  // 0-100
  std::array<double, 4> precisions{};  // p_1..p_4 as fractions (0 where totals_n is 0)
  std::array<std::size_t, 4> matches{};  // clipped n-gram matches, summed over the corpus
  std::array<std::size_t, 4> totals{};   // hypothesis n-grams, summed over the corpus
  double brevity_penalty = 0;
  std::size_t hypothesis_length = 0;  // c
  std::size_t reference_length = 0;   // r
};

/// `references[i]` holds one or more references for `hypotheses[i]`.
BleuScore corpus_bleu(std::span<const Tokens> hypotheses, std::span<const std::vector<Tokens>> references);
/// Space-separated sentences.
BleuScore corpus_bleu(std::span<const std::string> hypotheses,
                      std::span<const std::vector<std::string>> references);

}  // namespace qkv
