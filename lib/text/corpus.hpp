#pragma once
// Sentence pairs, datasets with train / validation / test splits, and parallel corpora read
// from two-column TSV files (the manythings.org / Tatoeba format d2l.ai trains on).
//
// Text processing is d2l.ai's, rule for rule (see shared/data/README.md, "How d2l.ai uses this
// file"), so a model trained here can be compared with the book's:
//   1. U+202F NARROW NO-BREAK SPACE and U+00A0 NO-BREAK SPACE become ' '.
//   2. Lowercase. Python's str.lower() is full Unicode; here ASCII, Latin-1, Latin Extended-A,
//      Greek and Cyrillic capitals are lowered (É -> é, Œ -> œ), which covers the corpora we use.
//   3. A ' ' is inserted before each of , . ! ? unless it starts the field or follows a ' '.
//   4. Split on ' ', dropping empty tokens. Nothing else (apostrophes, hyphens, U+2009) is touched.
//
// Bad lines. A line is bad if it is not valid UTF-8, has no tab, has more than two columns
// (unless `drop_extra_columns`), or has a side with no tokens. Each is reported as
// `FILE:LINE: reason` (lines counted from 1). With `BadLines::skip` (the default) a bad line is
// left out, the first 10 are logged with spdlog::warn, then one warning gives the total; the
// total is also returned in `TsvCorpus::bad_lines`. With `BadLines::strict` the first bad line
// throws ParseError with that message. A file that cannot be opened throws Error naming it.
// A trailing '\r' (CRLF files) is removed before anything else.
#include <cstddef>
#include <filesystem>
#include <istream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "lib/text/vocab.hpp"

namespace qkv {

/// A source sentence and its translation, as tokens.
struct SentencePair {
  Tokens source;
  Tokens target;
  friend bool operator==(const SentencePair&, const SentencePair&) = default;
};

struct Dataset {
  std::vector<SentencePair> train;
  std::vector<SentencePair> validation;
  std::vector<SentencePair> test;
};

/// A source sentence with every target it has: the references BLEU scores a translation against.
struct SourceWithReferences {
  Tokens source;
  std::vector<Tokens> references;
};

/// Groups `pairs` by source, sources in order of first appearance, targets in file order.
std::vector<SourceWithReferences> group_by_source(std::span<const SentencePair> pairs);

/// Source vocabulary from the sources of `pairs`, target vocabulary from the targets.
struct Vocabs {
  Vocab source;
  Vocab target;
};
Vocabs build_vocabs(std::span<const SentencePair> pairs, const VocabOptions& options = {});

// ---- text --------------------------------------------------------------------------------

/// The byte offset of the first invalid UTF-8 sequence (overlong forms, surrogates and code
/// points above U+10FFFF are invalid), or npos if `text` is valid.
std::size_t find_invalid_utf8(std::string_view text);
/// Lowercases as described above; other characters are copied. `text` must be valid UTF-8.
std::string lowercase_utf8(std::string_view text);
/// Steps 1-3 above on one field.
std::string preprocess_d2l(std::string_view text);
/// Splits on ' ', dropping empty tokens.
Tokens split_on_spaces(std::string_view text);

// ---- TSV corpora -------------------------------------------------------------------------

enum class BadLines { skip, strict };

struct TsvOptions {
  /// Swap the columns: the second column becomes the source.
  bool reverse = false;
  BadLines bad_lines = BadLines::skip;
  /// Newer manythings.org exports carry a third attribution column; set this to drop every
  /// column after the second instead of rejecting the line.
  bool drop_extra_columns = false;
  /// Read at most this many lines, bad ones included (0: all).
  std::size_t max_lines = 0;
};

struct TsvCorpus {
  std::vector<SentencePair> pairs;
  /// 1-based line number of each pair in the file.
  std::vector<std::size_t> line_numbers;
  std::size_t bad_lines = 0;
};

/// Reads and tokenizes a TSV corpus; bad lines as described at the top of this file.
TsvCorpus read_tsv(const std::filesystem::path& path, const TsvOptions& options = {});
/// The same from a stream; `name` stands for the file in messages (`NAME:LINE: reason`).
TsvCorpus read_tsv(std::istream& in, const std::string& name, const TsvOptions& options = {});

enum class CorpusSplit {
  /// Distinct sources in order of first appearance; the i-th (from 0) goes to validation when
  /// i % validation_every == validation_every - 1, with all its pairs (so its targets are its
  /// references). No source is in two splits. The test split stays empty.
  by_source,
  /// d2l.ai's MTFraEng exactly: read lines 0 .. num_train + num_val (d2l's `i > max` stopping
  /// rule reads one more than it asks for), the first num_train pairs train, the rest (129 with
  /// the defaults) validation. The same source may appear in both. Pair with
  /// `BatchOptions::num_steps = 9` and `d2l_vocabs` for d2l's arrays.
  d2l,
};
/// "default" (by_source) and "d2l": the names of --split and of a data spec's "split".
constexpr EnumNames<CorpusSplit, 2> enum_names(CorpusSplit) {
  return {"split", {{{CorpusSplit::by_source, "default"}, {CorpusSplit::d2l, "d2l"}}}};
}

struct CorpusOptions {
  TsvOptions tsv = {};
  CorpusSplit split = CorpusSplit::by_source;
  std::size_t validation_every = 10;
  std::size_t d2l_num_train = 512;
  std::size_t d2l_num_val = 128;
};

Dataset load_corpus(const std::filesystem::path& path, const CorpusOptions& options = {});

/// The `by_source` split of `pairs` (see CorpusSplit).
Dataset split_by_source(std::span<const SentencePair> pairs, std::size_t validation_every = 10);

/// d2l's vocabularies: min_freq 2 over the sentences cut to `num_steps` tokens (counting the
/// `<eos>` d2l appends), from train and validation together, as MTFraEng builds them. d2l's
/// sizes count only the specials that occur; ours always hold all four, so the English side
/// has one more (`<bos>`) than d2l reports.
Vocabs d2l_vocabs(const Dataset& dataset, std::size_t num_steps = 9);

}  // namespace qkv
