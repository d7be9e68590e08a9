#include "models/decoding.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "autograd/variable.hpp"
#include "lib/numerics/error.hpp"
#include "lib/text/vocab.hpp"

namespace qkv::models {
namespace {

constexpr double negative_infinity = -std::numeric_limits<double>::infinity();

/// Attention rows collected while a hypothesis grows: per name, one row of S_b weights per step.
struct AttentionTrace {
  std::vector<std::string> names;
  std::vector<std::vector<real>> rows;  // [name] -> steps * S_b values, row-major
};

/// log_softmax of one row of logits, in double (decoding ranks by sums of these).
void log_softmax_row(const real* logits, std::size_t size, std::vector<double>& out) {
  out.resize(size);
  double max = negative_infinity;
  for (std::size_t v = 0; v < size; ++v) max = std::max(max, double(logits[v]));
  double total = 0;
  for (std::size_t v = 0; v < size; ++v) total += std::exp(double(logits[v]) - max);
  const double log_total = max + std::log(total);
  for (std::size_t v = 0; v < size; ++v) out[v] = double(logits[v]) - log_total;
}

/// Appends row `row` of every step attention map ([N, S]), cut to the sentence's length.
void append_attention(AttentionTrace& trace, const std::vector<NamedAttention>& step_attention, std::size_t row,
                      std::size_t source_length) {
  if (trace.names.empty()) {
    for (const auto& [name, weights] : step_attention) trace.names.push_back(name);
    trace.rows.resize(trace.names.size());
  }
  check_arg(step_attention.size() == trace.names.size(), "decode",
            "the model reported " + std::to_string(step_attention.size()) + " attention maps at one step and " +
                std::to_string(trace.names.size()) + " at another");
  for (std::size_t i = 0; i < step_attention.size(); ++i) {
    const Array& weights = step_attention[i].second;  // [N, S]
    check_shape(weights.dimension() == 2 && weights.shape()[0] > row && weights.shape()[1] >= source_length,
                "decode", "step attention '" + step_attention[i].first + "' has shape " + to_string(shape_of(weights)) +
                              ", expected [rows, source length]");
    const real* begin = weights.data() + row * weights.shape()[1];
    trace.rows[i].insert(trace.rows[i].end(), begin, begin + source_length);
  }
}

std::vector<NamedAttention> finish_attention(const AttentionTrace& trace, std::size_t steps, std::size_t source_length) {
  std::vector<NamedAttention> maps;
  for (std::size_t i = 0; i < trace.names.size(); ++i) {
    Array weights = Array::from_shape({steps, source_length});  // [generated, S_b]
    std::copy(trace.rows[i].begin(), trace.rows[i].begin() + std::ptrdiff_t(steps * source_length), weights.data());
    maps.emplace_back(trace.names[i], std::move(weights));
  }
  return maps;
}

void check_inputs(const IndexArray& source, const IndexArray& source_lengths, std::size_t max_length) {
  check_shape(source.dimension() == 2, "decode", "source must be [B, S], got " + to_string(shape_of(source)));
  check_shape(source_lengths.dimension() == 1 && source_lengths.shape()[0] == source.shape()[0], "decode",
              "source_lengths must be [B] = [" + std::to_string(source.shape()[0]) + "], got " +
                  to_string(shape_of(source_lengths)));
  for (std::size_t b = 0; b < source_lengths.size(); ++b)
    check_arg(source_lengths(b) >= 1 && std::size_t(source_lengths(b)) <= source.shape()[1], "decode",
              "source length " + std::to_string(source_lengths(b)) + " of sentence " + std::to_string(b) +
                  " is outside [1, " + std::to_string(source.shape()[1]) + "]");
  check_arg(max_length >= 1, "decode", "max_length must be at least 1");
}

/// A hypothesis under construction.
struct Partial {
  std::vector<std::int64_t> tokens;  // generated, no <bos>
  double log_probability = negative_infinity;
  AttentionTrace attention;
};

Hypothesis complete(Partial partial, bool finished, std::size_t source_length, LengthPenalty penalty, double alpha) {
  Hypothesis hypothesis;
  const std::size_t generated = partial.tokens.size();
  hypothesis.attention = finish_attention(partial.attention, generated, source_length);
  if (finished) partial.tokens.pop_back();  // the <eos>
  hypothesis.tokens = std::move(partial.tokens);
  hypothesis.finished = finished;
  hypothesis.log_probability = partial.log_probability;
  hypothesis.score = partial.log_probability / length_penalty(generated, penalty, alpha);
  return hypothesis;
}

}  // namespace

double length_penalty(std::size_t length, LengthPenalty penalty, double alpha) {
  switch (penalty) {
    case LengthPenalty::none: return 1;
    case LengthPenalty::length: return std::pow(double(length), alpha);
    case LengthPenalty::gnmt: return std::pow((5.0 + double(length)) / 6.0, alpha);
  }
  return 1;
}

std::vector<Hypothesis> greedy_decode(Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                                      std::size_t max_length, LengthPenalty penalty, double alpha,
                                      const KVCacheLimit& cache_limit) {
  check_inputs(source, source_lengths, max_length);
  const NoGradGuard no_grad;
  const std::size_t batch = source.shape()[0];
  std::unique_ptr<DecoderState> state = model.start_decoding(source, source_lengths);
  if (cache_limit.limited() || cache_limit.sink_tokens > 0) state->limit_cache(cache_limit);
  std::vector<Partial> partials(batch);
  for (Partial& partial : partials) partial.log_probability = 0;
  std::vector<bool> finished(batch, false);
  IndexArray previous = xt::full_like(source_lengths, Vocab::bos_id);  // [B]
  std::vector<double> log_probs;
  for (std::size_t step = 0; step < max_length; ++step) {
    const StepOutput out = model.decode_step(*state, previous);
    const Array& logits = out.logits.value();  // [B, V]
    check_shape(logits.dimension() == 2 && logits.shape()[0] == batch, "greedy_decode",
                "decode_step returned logits of shape " + to_string(shape_of(logits)) + " for " +
                    std::to_string(batch) + " sentences");
    const std::size_t vocab = logits.shape()[1];
    for (std::size_t b = 0; b < batch; ++b) {
      if (finished[b]) continue;  // still computed (batched), but ignored
      log_softmax_row(logits.data() + b * vocab, vocab, log_probs);
      const auto best = std::size_t(std::max_element(log_probs.begin(), log_probs.end()) - log_probs.begin());
      partials[b].tokens.push_back(std::int64_t(best));
      partials[b].log_probability += log_probs[best];
      append_attention(partials[b].attention, out.attention, b, std::size_t(source_lengths(b)));
      previous(b) = std::int64_t(best);
      finished[b] = std::int64_t(best) == Vocab::eos_id;
    }
    if (std::all_of(finished.begin(), finished.end(), [](bool f) { return f; })) break;
  }
  std::vector<Hypothesis> result;
  for (std::size_t b = 0; b < batch; ++b)
    result.push_back(complete(std::move(partials[b]), finished[b], std::size_t(source_lengths(b)), penalty, alpha));
  return result;
}

std::vector<Hypothesis> beam_search(Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                                    const DecodeOptions& options) {
  check_inputs(source, source_lengths, options.max_length);
  check_arg(options.beam >= 1, "beam_search", "beam must be at least 1");
  const NoGradGuard no_grad;
  const std::size_t batch = source.shape()[0], beam = options.beam;
  auto score_of = [&](double log_probability, std::size_t length) {
    return log_probability / length_penalty(length, options.length_penalty, options.alpha);
  };

  // Row b * K + k of the decoder state is hypothesis k of sentence b. At the start only k = 0
  // is alive (the others would duplicate it).
  std::unique_ptr<DecoderState> state = model.start_decoding(source, source_lengths);
  if (options.cache_limit.limited() || options.cache_limit.sink_tokens > 0) state->limit_cache(options.cache_limit);
  std::vector<std::size_t> rows(batch * beam);
  for (std::size_t r = 0; r < rows.size(); ++r) rows[r] = r / beam;
  state->select_rows(rows);
  std::vector<std::vector<Partial>> live(batch, std::vector<Partial>(beam));
  for (auto& hypotheses : live) hypotheses[0].log_probability = 0;
  std::vector<std::vector<Hypothesis>> done(batch);
  std::vector<bool> sentence_done(batch, false);
  IndexArray previous = xt::full_like(IndexArray::from_shape({batch * beam}), Vocab::bos_id);  // [B*K]

  struct Candidate {
    double log_probability;
    std::size_t hypothesis;
    std::int64_t token;
  };
  std::vector<double> log_probs;
  std::vector<Candidate> candidates;
  for (std::size_t step = 0; step < options.max_length; ++step) {
    const bool last_step = step + 1 == options.max_length;
    const StepOutput out = model.decode_step(*state, previous);
    const Array& logits = out.logits.value();  // [B*K, V]
    check_shape(logits.dimension() == 2 && logits.shape()[0] == batch * beam, "beam_search",
                "decode_step returned logits of shape " + to_string(shape_of(logits)) + " for " +
                    std::to_string(batch * beam) + " hypotheses");
    const std::size_t vocab = logits.shape()[1];
    for (std::size_t b = 0; b < batch; ++b) {
      const std::size_t source_length = std::size_t(source_lengths(b));
      if (sentence_done[b]) {
        for (std::size_t k = 0; k < beam; ++k) rows[b * beam + k] = b * beam;  // keep any row
        continue;
      }
      candidates.clear();
      for (std::size_t k = 0; k < beam; ++k) {
        if (live[b][k].log_probability == negative_infinity) continue;
        log_softmax_row(logits.data() + (b * beam + k) * vocab, vocab, log_probs);
        for (std::size_t v = 0; v < vocab; ++v)
          candidates.push_back({live[b][k].log_probability + log_probs[v], k, std::int64_t(v)});
      }
      const std::size_t keep = std::min(candidates.size(), 2 * beam);
      // Ties broken by hypothesis then token, so the result does not depend on the sort.
      std::partial_sort(candidates.begin(), candidates.begin() + std::ptrdiff_t(keep), candidates.end(),
                        [](const Candidate& a, const Candidate& c) {
                          if (a.log_probability != c.log_probability) return a.log_probability > c.log_probability;
                          if (a.hypothesis != c.hypothesis) return a.hypothesis < c.hypothesis;
                          return a.token < c.token;
                        });
      std::vector<Partial> next;
      for (std::size_t rank = 0; rank < keep && next.size() < beam; ++rank) {
        const Candidate& candidate = candidates[rank];
        Partial grown;
        grown.tokens = live[b][candidate.hypothesis].tokens;
        grown.tokens.push_back(candidate.token);
        grown.log_probability = candidate.log_probability;
        grown.attention = live[b][candidate.hypothesis].attention;
        append_attention(grown.attention, out.attention, b * beam + candidate.hypothesis, source_length);
        if (candidate.token == Vocab::eos_id) {
          if (rank < beam)
            done[b].push_back(complete(std::move(grown), true, source_length, options.length_penalty, options.alpha));
          continue;
        }
        rows[b * beam + next.size()] = b * beam + candidate.hypothesis;
        next.push_back(std::move(grown));
      }
      for (std::size_t k = next.size(); k < beam; ++k) {  // fewer candidates than beams: dead rows
        rows[b * beam + k] = b * beam;
        next.emplace_back();
      }
      live[b] = std::move(next);

      // Stop when K hypotheses finished and the best live one cannot beat the worst of the best K.
      bool stop = last_step;
      if (done[b].size() >= beam) {
        std::vector<double> scores;
        for (const Hypothesis& h : done[b]) scores.push_back(h.score);
        std::nth_element(scores.begin(), scores.begin() + std::ptrdiff_t(beam - 1), scores.end(), std::greater<>());
        const double worst_kept = scores[beam - 1];
        const Partial& best_live = live[b][0];
        stop = stop || best_live.log_probability == negative_infinity ||
               score_of(best_live.log_probability, best_live.tokens.size()) <= worst_kept;
      }
      if (live[b][0].log_probability == negative_infinity) stop = true;  // nothing left alive
      if (stop) {
        sentence_done[b] = true;
        if (done[b].empty() || last_step)
          for (Partial& partial : live[b])
            if (partial.log_probability != negative_infinity)
              done[b].push_back(
                  complete(std::move(partial), false, source_length, options.length_penalty, options.alpha));
      }
    }
    if (std::all_of(sentence_done.begin(), sentence_done.end(), [](bool d) { return d; })) break;
    state->select_rows(rows);
    for (std::size_t b = 0; b < batch; ++b)
      for (std::size_t k = 0; k < beam; ++k)
        previous(b * beam + k) = live[b][k].tokens.empty() ? Vocab::bos_id : live[b][k].tokens.back();
  }

  // The best finished hypothesis; an unfinished one only when none finished.
  std::vector<Hypothesis> result;
  for (std::size_t b = 0; b < batch; ++b) {
    const auto better = [](const Hypothesis& a, const Hypothesis& c) {
      if (a.finished != c.finished) return a.finished;
      return a.score > c.score;
    };
    result.push_back(*std::min_element(done[b].begin(), done[b].end(), better));
  }
  return result;
}

std::vector<Hypothesis> decode(Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                               const DecodeOptions& options) {
  check_arg(options.beam >= 1, "decode", "beam must be at least 1");
  if (options.beam == 1)
    return greedy_decode(model, source, source_lengths, options.max_length, options.length_penalty, options.alpha,
                         options.cache_limit);
  return beam_search(model, source, source_lengths, options);
}

}  // namespace qkv::models
