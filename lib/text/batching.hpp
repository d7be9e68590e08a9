#pragma once
// Minibatches of sentence pairs as padded id arrays, the form seq2seq models consume.
//
// A batch of B pairs (sequences written with ids; P = <pad>, S = <bos>, E = <eos>):
//   source         [B, S]  source tokens (+ E if `source_eos`), padded with P
//   source_lengths [B]     non-pad source positions
//   target_input   [B, T]  S + target tokens, padded with P   (the decoder's input)
//   target_output  [B, T]  target tokens + E, padded with P   (the labels)
//   target_lengths [B]     non-pad label positions (tokens + 1)
// S and T are the batch's longest sequences, unless `num_steps` fixes them (d2l mode, below).
//
// Order. With `shuffle`, epoch e visits the pairs in a permutation drawn from (seed, e): the
// same seed and epoch give the same batches, on every build. With `bucket_batches` = k > 0,
// the shuffled order is cut into chunks of k batches, each chunk is sorted by (source length,
// target length) and cut into batches, and the batch order is shuffled again: batches hold
// pairs of similar length (less padding) while the epoch still mixes long and short batches.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "lib/text/corpus.hpp"
#include "lib/numerics/tensor.hpp"
#include "lib/text/vocab.hpp"

namespace qkv {

struct BatchOptions {
  std::size_t batch_size = 64;
  bool shuffle = true;
  std::uint64_t seed = 0;
  /// Sort within chunks of this many batches by length (0: no bucketing).
  std::size_t bucket_batches = 0;
  /// Drop a last batch smaller than batch_size.
  bool drop_last = false;
  /// Append <eos> to the source, as d2l.ai does.
  bool source_eos = true;
  /// 0: pad to the batch maximum. n > 0: d2l.ai's fixed length: source (with <eos>) and labels
  /// (target + <eos>) are cut or padded to n, and target_input is <bos> + labels[:-1], so it
  /// holds <eos> where a sentence ends before n, exactly as d2l's `tgt[:, :-1]`.
  std::size_t num_steps = 0;
};

struct Batch {
  IndexArray source;          // [B, S]
  IndexArray source_lengths;  // [B]
  IndexArray target_input;    // [B, T]
  IndexArray target_output;   // [B, T]
  IndexArray target_lengths;  // [B]
  /// Position of each row's pair in the pairs the Batcher was built from (to find its
  /// references, or to print it).
  std::vector<std::size_t> indices;
  std::size_t size() const { return indices.size(); }
};

/// Label positions that are not padding: the tokens a loss averages over.
std::size_t count_label_tokens(const IndexArray& labels);

class Batcher {
 public:
  /// Encodes every pair once; the Batcher keeps no reference to `pairs` or the vocabularies.
  Batcher(std::span<const SentencePair> pairs, const Vocab& source_vocab, const Vocab& target_vocab,
          const BatchOptions& options = {});

  /// All batches of epoch `epoch` (0-based).
  std::vector<Batch> epoch(std::size_t epoch) const;
  /// The batch of the given pairs, in the given order.
  Batch make_batch(std::span<const std::size_t> indices) const;
  std::size_t num_batches() const;
  std::size_t num_pairs() const { return sources_.size(); }

 private:
  std::vector<std::size_t> epoch_order(std::size_t epoch) const;

  std::vector<std::vector<std::int64_t>> sources_;
  std::vector<std::vector<std::int64_t>> targets_;
  BatchOptions options_;
};

}  // namespace qkv
