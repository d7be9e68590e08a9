#pragma once
// Token <-> id maps for sequence models.
//
// Ids 0..3 are fixed in every vocabulary, so models and batches can name them without a
// vocabulary at hand: `<pad>` = 0, `<bos>` = 1, `<eos>` = 2, `<unk>` = 3. Regular tokens follow,
// most frequent first, ties in byte order, which makes the ids a pure function of the counts.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace qkv {

/// One tokenized sentence.
using Tokens = std::vector<std::string>;

struct VocabOptions {
  /// Tokens seen fewer times than this map to `<unk>`.
  std::size_t min_freq = 1;
  /// Count only the first `max_tokens` tokens of each sentence (0: all). d2l.ai builds its
  /// vocabularies from sequences already cut to `num_steps`, so reproducing it needs this.
  std::size_t max_tokens = 0;
};

class Vocab {
 public:
  static constexpr std::int64_t pad_id = 0;
  static constexpr std::int64_t bos_id = 1;
  static constexpr std::int64_t eos_id = 2;
  static constexpr std::int64_t unk_id = 3;
  static constexpr std::size_t num_special = 4;

  /// The four special tokens only.
  Vocab();
  /// Counts the tokens of `sentences`. Special tokens found in the text are not counted twice:
  /// they keep their fixed ids.
  explicit Vocab(std::span<const Tokens> sentences, const VocabOptions& options = {});

  std::size_t size() const { return tokens_.size(); }
  /// The id of `token`, `unk_id` if it is not in the vocabulary.
  std::int64_t id(const std::string& token) const;
  bool contains(const std::string& token) const;
  /// The token of `id`; throws Error for an id outside [0, size()).
  const std::string& token(std::int64_t id) const;
  /// All tokens in id order.
  const std::vector<std::string>& tokens() const { return tokens_; }

  std::vector<std::int64_t> encode(const Tokens& tokens) const;
  /// Maps ids back to tokens, stopping at the first `<eos>` and skipping `<bos>` and `<pad>`:
  /// what a decoded model output should read as. `<unk>` stays.
  Tokens decode(std::span<const std::int64_t> ids) const;

  /// `{"format": "qkv.vocab", "version": 1, "tokens": [...]}`: the tokens in id order.
  nlohmann::json to_json() const;
  /// Throws Error unless the JSON is a qkv vocabulary whose first four tokens are the specials
  /// and whose tokens are distinct.
  static Vocab from_json(const nlohmann::json& json);
  void save(const std::filesystem::path& path) const;
  /// Throws Error naming the file if it cannot be read or parsed.
  static Vocab load(const std::filesystem::path& path);

  friend bool operator==(const Vocab& a, const Vocab& b) { return a.tokens_ == b.tokens_; }

 private:
  explicit Vocab(std::vector<std::string> tokens);
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, std::int64_t> ids_;
};

}  // namespace qkv
