#pragma once
// Greedy decoding and beam search over any Seq2SeqModel, batched over sentences, through the
// model's incremental interface (start_decoding / decode_step / select_rows). Both run under
// NoGradGuard and in whatever train/eval mode the caller left the model in (call eval() first).
//
// Scores. A hypothesis y_1..y_n (y_n = <eos> when it finished) has log-probability
// log P = sum_t log p(y_t | y_<t, x), every generated token counted, <eos> included. Beam search
// ranks finished hypotheses by log P / lp(n), where the length penalty lp is
//   LengthPenalty::gnmt    lp(n) = ((5 + n) / 6)^alpha      (Wu et al. 2016, GNMT; alpha 0.6 is
//                                                            their value, 0 turns it off)
//   LengthPenalty::length  lp(n) = n^alpha                  (alpha = 1: plain division by the
//                                                            length, the "average log-prob")
//   LengthPenalty::none    lp(n) = 1
// Without normalisation beam search prefers short outputs, since every token lowers log P.
//
// Beam search keeps K live hypotheses per sentence. Each step scores every (hypothesis, next
// token) pair, takes the 2K best by log P, sends those ending in <eos> among the first K of
// them to the sentence's finished list and keeps the best K others alive (fairseq's and
// Hugging Face's rule, so K live beams remain while K finish). A sentence stops when it has K
// finished hypotheses and no live one can still beat the worst of them: exactly decided for
// lp = 1 (log P only falls); for lp growing with n it uses the live beam's current length,
// the usual heuristic. At max_length the live beams are kept as unfinished hypotheses. With
// K = 1 and no normalisation beam search is greedy decoding (tested).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "models/seq2seq.hpp"

namespace qkv::models {

enum class LengthPenalty { none, length, gnmt };
constexpr EnumNames<LengthPenalty, 3> enum_names(LengthPenalty) {
  return {"length penalty",
          {{{LengthPenalty::none, "none"}, {LengthPenalty::length, "length"}, {LengthPenalty::gnmt, "gnmt"}}}};
}

struct DecodeOptions {
  /// Hypotheses kept per sentence; 1 is greedy.
  std::size_t beam = 1;
  /// Tokens generated at most, <eos> included.
  std::size_t max_length = 50;
  LengthPenalty length_penalty = LengthPenalty::gnmt;
  double alpha = 0.6;
  /// Bounds the decoder's self-attention cache: attention sinks + window (KVCacheLimit; the
  /// default keeps every step). A decode-time choice: not saved with a run's options.
  KVCacheLimit cache_limit = {};
};

struct Hypothesis {
  /// Generated ids without <bos> and without the final <eos>.
  std::vector<std::int64_t> tokens;
  /// True when the model produced <eos> (false: stopped at max_length).
  bool finished = false;
  /// Sum of the log-probabilities of every generated token, <eos> included.
  double log_probability = 0;
  /// log_probability / lp(number of generated tokens): what beam search ranks by.
  double score = 0;
  /// Cross-attention for every generated token (<eos> included), one map per name the model
  /// reports, each [generated, source_length of this sentence].
  std::vector<NamedAttention> attention;
};

/// lp(n) of the chosen penalty (see the top of this file).
double length_penalty(std::size_t length, LengthPenalty penalty, double alpha);

/// The most likely next token at every step. source [B, S], source_lengths [B] -> B hypotheses.
std::vector<Hypothesis> greedy_decode(Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                                      std::size_t max_length, LengthPenalty penalty = LengthPenalty::none,
                                      double alpha = 0, const KVCacheLimit& cache_limit = {});

/// Beam search as described above: the best hypothesis of each sentence.
std::vector<Hypothesis> beam_search(Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                                    const DecodeOptions& options);

/// greedy_decode for options.beam == 1, beam_search otherwise. Throws Error for beam 0 or
/// max_length 0.
std::vector<Hypothesis> decode(Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                               const DecodeOptions& options);

}  // namespace qkv::models
