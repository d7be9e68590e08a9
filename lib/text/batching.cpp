#include "lib/text/batching.hpp"

#include <algorithm>
#include <numeric>

#include "lib/numerics/error.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

std::size_t count_label_tokens(const IndexArray& labels) {
  return std::size_t(std::count_if(labels.begin(), labels.end(), [](std::int64_t id) { return id != Vocab::pad_id; }));
}

namespace {

void shuffle(std::vector<std::size_t>& items, Rng& rng) {  // Fisher-Yates
  for (std::size_t i = items.size(); i > 1; --i)
    std::swap(items[i - 1], items[static_cast<std::size_t>(rng.below(i))]);
}

/// Writes `ids` into row `row` of the [B, width] array `out`, cut to `width`, padded with <pad>;
/// returns the non-pad count written.
std::int64_t write_row(IndexArray& out, std::size_t row, std::span<const std::int64_t> ids) {
  const std::size_t width = out.shape()[1];
  std::int64_t* destination = out.data() + row * width;
  const std::size_t kept = std::min(ids.size(), width);
  std::copy_n(ids.begin(), kept, destination);
  std::fill(destination + kept, destination + width, Vocab::pad_id);
  return static_cast<std::int64_t>(std::count_if(destination, destination + width,
                                                 [](std::int64_t id) { return id != Vocab::pad_id; }));
}

}  // namespace

Batcher::Batcher(std::span<const SentencePair> pairs, const Vocab& source_vocab,
                 const Vocab& target_vocab, const BatchOptions& options)
    : options_(options) {
  check_arg(options.batch_size > 0, "Batcher", "batch_size must be positive");
  sources_.reserve(pairs.size());
  targets_.reserve(pairs.size());
  for (const SentencePair& pair : pairs) {
    sources_.push_back(source_vocab.encode(pair.source));
    if (options.source_eos) sources_.back().push_back(Vocab::eos_id);
    targets_.push_back(target_vocab.encode(pair.target));
  }
}

std::size_t Batcher::num_batches() const {
  const std::size_t full = num_pairs() / options_.batch_size;
  return options_.drop_last || num_pairs() % options_.batch_size == 0 ? full : full + 1;
}

std::vector<std::size_t> Batcher::epoch_order(std::size_t epoch) const {
  std::vector<std::size_t> order(num_pairs());
  std::iota(order.begin(), order.end(), std::size_t{0});
  if (!options_.shuffle) return order;
  // One stream per (seed, epoch); the odd multiplier keeps (seed, epoch + 1) and (seed + 1,
  // epoch) apart, which plain addition would not.
  Rng rng(options_.seed ^ (0x9E3779B97F4A7C15ULL * (epoch + 1)));
  shuffle(order, rng);
  return order;
}

std::vector<Batch> Batcher::epoch(std::size_t epoch) const {
  std::vector<std::size_t> order = epoch_order(epoch);
  const std::size_t batch_size = options_.batch_size;
  const std::size_t usable = options_.drop_last ? order.size() / batch_size * batch_size : order.size();
  order.resize(usable);
  if (options_.bucket_batches > 0) {
    const std::size_t chunk = options_.bucket_batches * batch_size;
    for (std::size_t begin = 0; begin < order.size(); begin += chunk) {
      const auto first = order.begin() + static_cast<std::ptrdiff_t>(begin);
      const auto last = order.begin() + static_cast<std::ptrdiff_t>(std::min(begin + chunk, order.size()));
      std::stable_sort(first, last, [this](std::size_t a, std::size_t b) {
        return std::pair(sources_[a].size(), targets_[a].size()) <
               std::pair(sources_[b].size(), targets_[b].size());
      });
    }
  }
  std::vector<std::size_t> batch_starts;
  for (std::size_t begin = 0; begin < order.size(); begin += batch_size) batch_starts.push_back(begin);
  if (options_.bucket_batches > 0 && options_.shuffle) {
    // Sorted chunks would otherwise feed short batches, then long ones, in every chunk.
    Rng rng(options_.seed ^ (0xD1B54A32D192ED03ULL * (epoch + 1)));
    shuffle(batch_starts, rng);
  }
  std::vector<Batch> batches;
  batches.reserve(batch_starts.size());
  for (const std::size_t begin : batch_starts) {
    const std::size_t end = std::min(begin + batch_size, order.size());
    batches.push_back(make_batch(std::span(order).subspan(begin, end - begin)));
  }
  return batches;
}

Batch Batcher::make_batch(std::span<const std::size_t> indices) const {
  check_arg(!indices.empty(), "Batcher::make_batch", "no pairs given");
  const std::size_t rows = indices.size();
  std::size_t longest_source = 0, longest_target = 0;
  for (const std::size_t index : indices) {
    check_arg(index < num_pairs(), "Batcher::make_batch", [&] {
      return "index " + std::to_string(index) + " is outside [0, " + std::to_string(num_pairs()) + ")";
    });
    longest_source = std::max(longest_source, sources_[index].size());
    longest_target = std::max(longest_target, targets_[index].size() + 1);  // + <bos> or <eos>
  }
  const bool fixed = options_.num_steps > 0;
  const std::size_t source_width = fixed ? options_.num_steps : longest_source;
  const std::size_t target_width = fixed ? options_.num_steps : longest_target;
  Batch batch;
  batch.indices.assign(indices.begin(), indices.end());
  batch.source = IndexArray::from_shape({rows, source_width});        // [B, S]
  batch.source_lengths = IndexArray::from_shape({rows});              // [B]
  batch.target_input = IndexArray::from_shape({rows, target_width});  // [B, T]
  batch.target_output = IndexArray::from_shape({rows, target_width}); // [B, T]
  batch.target_lengths = IndexArray::from_shape({rows});              // [B]
  std::vector<std::int64_t> sequence;
  for (std::size_t row = 0; row < rows; ++row) {
    const std::size_t index = indices[row];
    const std::vector<std::int64_t>& target = targets_[index];
    batch.source_lengths(row) = write_row(batch.source, row, sources_[index]);
    // labels: tokens + <eos>
    sequence.assign(target.begin(), target.end());
    sequence.push_back(Vocab::eos_id);
    batch.target_lengths(row) = write_row(batch.target_output, row, sequence);
    // decoder input: <bos> + tokens, or d2l's <bos> + labels[:-1] with a fixed length
    if (!fixed) sequence.pop_back();
    sequence.insert(sequence.begin(), Vocab::bos_id);
    write_row(batch.target_input, row, sequence);
  }
  return batch;
}

}  // namespace qkv
